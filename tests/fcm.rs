//! FCM HTTP v1 end to end: the real binary with a service account whose `token_uri` is
//! an OAuth token endpoint in the test, which verifies the RS256 assertion against the
//! account's public key, and a send endpoint that accepts only the token it issued,
//! answering as scripted (200, 404 UNREGISTERED, 429 + Retry-After, 503, 400). On
//! SQLite and PostgreSQL.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use common::*;
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fcm");
const EMAIL: &str = "push@tidings-test.iam.gserviceaccount.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// One scripted answer: status, FCM error code, Retry-After seconds.
type Answer = (u16, Option<&'static str>, Option<u64>);

#[derive(Default)]
struct GoogleState {
    token_uri: String,
    issued: Vec<String>,
    script: HashMap<String, VecDeque<Answer>>,
    /// (device token, when, status)
    seen: Vec<(String, Instant, u16, Value)>,
    problems: Vec<String>,
}

#[derive(Clone, Default)]
struct Google(Arc<Mutex<GoogleState>>);

impl Google {
    async fn start() -> (Google, String) {
        let google = Google::default();
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .fallback(send)
            .with_state(google.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        google.0.lock().expect("lock").token_uri = format!("{base}/token");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (google, base)
    }

    fn script(&self, token: &str, answers: impl IntoIterator<Item = Answer>) {
        let mut s = self.0.lock().expect("lock");
        s.script
            .entry(token.to_owned())
            .or_default()
            .extend(answers);
    }

    fn seen(&self, token: &str) -> Vec<(Instant, u16, Value)> {
        let s = self.0.lock().expect("lock");
        s.seen
            .iter()
            .filter(|(t, ..)| t == token)
            .map(|(_, at, status, m)| (*at, *status, m.clone()))
            .collect()
    }
}

async fn token(State(g): State<Google>, Form(form): Form<HashMap<String, String>>) -> Response {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    let mut s = g.0.lock().expect("lock");
    let check = || -> Result<(), String> {
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return Err(format!("grant_type {:?}", form.get("grant_type")));
        }
        let assertion = form.get("assertion").ok_or("no assertion")?;
        let pem = std::fs::read(format!("{FIXTURES}/public.pem")).map_err(|e| e.to_string())?;
        let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| e.to_string())?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[s.token_uri.as_str()]);
        v.set_issuer(&[EMAIL]);
        let claims = decode::<Value>(assertion, &key, &v)
            .map_err(|e| e.to_string())?
            .claims;
        if claims["scope"] != SCOPE {
            return Err(format!("scope {}", claims["scope"]));
        }
        let lifetime = claims["exp"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(claims["iat"].as_u64().unwrap_or(0));
        if lifetime > 3600 {
            return Err(format!("assertion valid for {lifetime} s"));
        }
        Ok(())
    };
    if let Err(e) = check() {
        s.problems.push(format!("token endpoint: {e}"));
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_grant" })),
        )
            .into_response();
    }
    let issued = format!("ya29.test-{}", s.issued.len() + 1);
    s.issued.push(issued.clone());
    Json(json!({ "access_token": issued, "expires_in": 3599, "token_type": "Bearer" }))
        .into_response()
}

async fn send(State(g): State<Google>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = g.0.lock().expect("lock");
    if path != "/v1/projects/tidings-test/messages:send" {
        s.problems.push(format!("path {path}"));
    }
    if !s.issued.contains(&bearer) {
        s.problems
            .push(format!("bearer {bearer:?} was never issued"));
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let m = &body["message"];
    let device = m["token"].as_str().unwrap_or_default().to_owned();
    if !m["data"]
        .as_object()
        .is_some_and(|d| d.values().all(Value::is_string))
    {
        s.problems
            .push(format!("data values must be strings: {}", m["data"]));
    }
    if m["android"]["collapse_key"] != m["data"]["conversation"] {
        s.problems
            .push(format!("collapse_key {}", m["android"]["collapse_key"]));
    }
    let (status, code, retry_after) = s
        .script
        .get_mut(&device)
        .and_then(VecDeque::pop_front)
        .unwrap_or((200, None, None));
    s.seen.push((device, Instant::now(), status, m.clone()));
    let body = match code {
        None => json!({ "name": "projects/tidings-test/messages/1" }),
        Some(code) => json!({ "error": { "code": status, "status": code, "details": [
            { "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code }
        ] } }),
    };
    let mut res = (StatusCode::from_u16(status).expect("status"), Json(body)).into_response();
    if let Some(secs) = retry_after {
        res.headers_mut().insert("retry-after", secs.into());
    }
    res
}

async fn targets(server: &Server, who: &Account) -> usize {
    let res = client()
        .get(server.url("/v1/me/push"))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("list");
    let body: Value = res.json().await.expect("json");
    body["targets"].as_array().map_or(0, Vec::len)
}

async fn fcm_authenticates_once_and_answers_are_honoured(db: Db) {
    let (google, base) = Google::start().await;
    // The fixture's service account, pointed at this test's token endpoint.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut account: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/service-account.json")).expect("fixture"),
    )
    .expect("json");
    account["token_uri"] = json!(format!("{base}/token"));
    let account_file = dir.path().join("service-account.json");
    std::fs::write(&account_file, account.to_string()).expect("write");
    let mut opts = Options::new(db);
    opts.env = vec![
        (
            "TIDINGS_PUSH_FCM_SERVICE_ACCOUNT_FILE".into(),
            account_file.display().to_string(),
        ),
        ("TIDINGS_PUSH_FCM_URL".into(), base.clone()),
        ("TIDINGS_PUSH_POLL_MS".into(), "50".into()),
        ("TIDINGS_PUSH_BACKOFF_BASE_MS".into(), "100".into()),
    ];
    let server = Server::start_with(opts).await;

    let alice = register(&server, "alice").await;
    let names = ["bob", "carol", "dave", "erin"];
    let mut users = Vec::new();
    for name in names {
        let u = register(&server, name).await;
        let res = client()
            .put(server.url("/v1/me/push"))
            .bearer_auth(&u.access)
            .json(&json!({ "platform": "fcm", "token": format!("fcm-{name}"), "app_id": "chat.tidings.test" }))
            .send()
            .await
            .expect("register");
        assert_eq!(res.status(), 200);
        users.push(u);
    }
    google.script(
        "fcm-bob",
        [(429, Some("QUOTA_EXCEEDED"), Some(2)), (200, None, None)],
    );
    google.script("fcm-carol", [(404, Some("UNREGISTERED"), None)]);
    google.script(
        "fcm-dave",
        [(503, Some("UNAVAILABLE"), None), (200, None, None)],
    );
    google.script("fcm-erin", [(400, Some("INVALID_ARGUMENT"), None)]);
    let members: Vec<&Account> = users.iter().collect();
    let conv = conversation(&server, &alice, "group", &members).await;
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&alice.access)
        .json(&json!({ "client_msg_id": "m1", "body": "hello android" }))
        .send()
        .await
        .expect("send");
    assert!(res.status().is_success());

    let deadline = Instant::now() + Duration::from_secs(20);
    while google.seen("fcm-bob").len() < 2 || google.seen("fcm-dave").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "retries did not happen:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (problems, issued) = {
        let state = google.0.lock().expect("lock");
        (state.problems.clone(), state.issued.len())
    };
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(issued, 1, "one access token serves every push");

    let bob = google.seen("fcm-bob");
    assert_eq!(bob.iter().map(|s| s.1).collect::<Vec<_>>(), [429, 200]);
    assert!(
        bob[1].0 - bob[0].0 >= Duration::from_millis(1900),
        "Retry-After ignored"
    );
    assert_eq!(
        google
            .seen("fcm-dave")
            .iter()
            .map(|s| s.1)
            .collect::<Vec<_>>(),
        [503, 200]
    );
    assert_eq!(google.seen("fcm-carol").len(), 1);
    assert_eq!(google.seen("fcm-erin").len(), 1);
    assert_eq!(
        targets(&server, &users[1]).await,
        0,
        "UNREGISTERED token kept"
    );
    assert_eq!(
        targets(&server, &users[3]).await,
        1,
        "token of a refused push removed"
    );
    let m = &bob[1].2;
    assert_eq!(m["data"]["conversation"], conv.as_str());
    assert_eq!(m["data"]["unread"], "1");
    assert!(m.get("notification").is_none(), "ids only by default: {m}");
}

on_both_databases!(fcm_authenticates_once_and_answers_are_honoured);
