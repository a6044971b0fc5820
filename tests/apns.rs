//! APNs end to end: the real binary pushing to an HTTP/2-over-TLS server in the test
//! (rustls + hyper, certificate from a test CA the server is told to trust through
//! `push.apns_ca_file`), which checks what Apple checks — the path, the APNs headers
//! and the ES256 provider token against the public half of the test `.p8` key — and
//! answers as scripted: 200, 400 BadDeviceToken, 410 Unregistered, 429 with
//! Retry-After, 500. On SQLite and PostgreSQL.

mod common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/apns");
const KEY_ID: &str = "TEST123456";
const TEAM_ID: &str = "TEAM654321";
const TOPIC: &str = "chat.tidings.test";

/// One scripted answer: status, APNs reason, Retry-After seconds.
type Answer = (u16, Option<&'static str>, Option<u64>);

#[derive(Debug, Clone)]
struct Seen {
    token: String,
    at: Instant,
    status: u16,
    jwt: String,
    collapse_id: String,
    payload: Value,
}

#[derive(Default)]
struct AppleState {
    script: HashMap<String, VecDeque<Answer>>,
    seen: Vec<Seen>,
    /// Every way a request differed from what APNs requires.
    problems: Vec<String>,
    /// How long each answer takes (to let several nodes share the work).
    delay: Duration,
}

#[derive(Clone, Default)]
struct Apple(Arc<Mutex<AppleState>>);

impl Apple {
    async fn start() -> (Apple, String) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(format!("{FIXTURES}/server.pem"))
            .expect("server.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key =
            PrivateKeyDer::from_pem_file(format!("{FIXTURES}/server.key")).expect("server.key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
        // APNs speaks HTTP/2 only; offering nothing else proves the client negotiates it.
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let apple = Apple::default();
        let state = apple.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        (apple, url)
    }

    fn script(&self, token: &str, answers: impl IntoIterator<Item = Answer>) {
        self.0
            .lock()
            .expect("lock")
            .script
            .entry(token.to_owned())
            .or_default()
            .extend(answers);
    }

    fn seen(&self, token: &str) -> Vec<Seen> {
        let s = self.0.lock().expect("lock");
        s.seen
            .iter()
            .filter(|x| x.token == token)
            .cloned()
            .collect()
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let delay = self.0.lock().expect("lock").delay;
        tokio::time::sleep(delay).await;
        let mut problems = Vec::new();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        if req.version() != hyper::Version::HTTP_2 {
            problems.push(format!("HTTP version {:?}", req.version()));
        }
        if req.method() != hyper::Method::POST {
            problems.push(format!("method {}", req.method()));
        }
        let token = req
            .uri()
            .path()
            .strip_prefix("/3/device/")
            .unwrap_or_else(|| {
                problems.push(format!("path {}", req.uri().path()));
                ""
            })
            .to_owned();
        // Alerts are priority 10 with a collapse id; background (badge-only) pushes
        // must be priority 5 and carry no collapse id.
        let background = header("apns-push-type") == "background";
        let (push_type, priority) = if background {
            ("background", "5")
        } else {
            ("alert", "10")
        };
        for (name, want) in [
            ("apns-topic", TOPIC),
            ("apns-push-type", push_type),
            ("apns-priority", priority),
        ] {
            if header(name) != want {
                problems.push(format!("{name}: {:?}", header(name)));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        if header("apns-expiration")
            .parse::<u64>()
            .map_or(true, |e| e <= now)
        {
            problems.push(format!("apns-expiration: {:?}", header("apns-expiration")));
        }
        let collapse_id = header("apns-collapse-id");
        if background != collapse_id.is_empty() || collapse_id.len() > 64 {
            problems.push(format!("apns-collapse-id: {collapse_id:?}"));
        }
        // The auth scheme is case-insensitive (RFC 9110 §11.1); Apple writes "bearer".
        let authorization = header("authorization");
        let jwt = authorization
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.to_owned())
            .unwrap_or_else(|| {
                problems.push(format!("authorization: {:?}", header("authorization")));
                String::new()
            });
        if let Err(e) = check_provider_token(&jwt, now) {
            problems.push(format!("provider token: {e}"));
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let payload: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            problems.push(format!("body is not JSON: {e}"));
            Value::Null
        });
        let mut state = self.0.lock().expect("lock");
        let (status, reason, retry_after) = state
            .script
            .get_mut(&token)
            .and_then(VecDeque::pop_front)
            .unwrap_or((200, None, None));
        state.problems.extend(problems);
        state.seen.push(Seen {
            token,
            at: Instant::now(),
            status,
            jwt,
            collapse_id,
            payload,
        });
        let mut res = Response::builder().status(status);
        if let Some(s) = retry_after {
            res = res.header("retry-after", s.to_string());
        }
        let body = match reason {
            Some(r) => json!({ "reason": r }).to_string(),
            None => String::new(),
        };
        res.body(Full::new(Bytes::from(body))).expect("response")
    }
}

/// Verifies the provider token as APNs does: ES256 by the team's key (`kid`), issued by
/// the team, and recently.
fn check_provider_token(jwt: &str, now: u64) -> Result<(), String> {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let header = decode_header(jwt).map_err(|e| e.to_string())?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(KEY_ID) {
        return Err(format!("header {header:?}"));
    }
    let pem =
        std::fs::read(format!("{FIXTURES}/AuthKey_{KEY_ID}.pub.pem")).map_err(|e| e.to_string())?;
    let key = DecodingKey::from_ec_pem(&pem).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let claims = decode::<Value>(jwt, &key, &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims["iss"] != TEAM_ID {
        return Err(format!("iss {}", claims["iss"]));
    }
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    if iat > now + 60 || iat + 3600 < now {
        return Err(format!("iat {iat}, now {now}"));
    }
    Ok(())
}

fn options(db: Db, url: &str) -> Options {
    let mut opts = Options::new(db);
    opts.env = vec![
        ("TIDINGS_PUSH_APNS_URL".into(), url.into()),
        (
            "TIDINGS_PUSH_APNS_KEY_FILE".into(),
            format!("{FIXTURES}/AuthKey_{KEY_ID}.p8"),
        ),
        ("TIDINGS_PUSH_APNS_KEY_ID".into(), KEY_ID.into()),
        ("TIDINGS_PUSH_APNS_TEAM_ID".into(), TEAM_ID.into()),
        (
            "TIDINGS_PUSH_APNS_CA_FILE".into(),
            format!("{FIXTURES}/ca.pem"),
        ),
        ("TIDINGS_PUSH_POLL_MS".into(), "50".into()),
        ("TIDINGS_PUSH_BACKOFF_BASE_MS".into(), "100".into()),
    ];
    opts
}

async fn register_apns(server: &Server, who: &Account, token: &str) -> u16 {
    client()
        .put(server.url("/v1/me/push"))
        .bearer_auth(&who.access)
        .json(&json!({ "platform": "apns", "token": token, "app_id": TOPIC }))
        .send()
        .await
        .expect("register")
        .status()
        .as_u16()
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

async fn apns_requests_are_well_formed_and_answers_are_honoured(db: Db) {
    let (apple, url) = Apple::start().await;
    let server = Server::start_with(options(db, &url)).await;
    let alice = register(&server, "alice").await;
    let mut users = Vec::new();
    for name in ["bob", "carol", "dave", "erin", "frank"] {
        users.push(register(&server, name).await);
    }
    let token = |i: usize| format!("{:02x}", 0xa0 + i).repeat(32);
    for (i, u) in users.iter().enumerate() {
        assert_eq!(register_apns(&server, u, &token(i)).await, 200);
    }
    assert_eq!(register_apns(&server, &users[0], "not-hex!").await, 422);
    apple.script(
        &token(0),
        [(429, Some("TooManyRequests"), Some(2)), (200, None, None)],
    );
    apple.script(&token(1), [(400, Some("BadDeviceToken"), None)]);
    apple.script(&token(2), [(410, Some("Unregistered"), None)]);
    apple.script(
        &token(3),
        [(500, Some("InternalServerError"), None), (200, None, None)],
    );
    apple.script(&token(4), [(400, Some("PayloadTooLarge"), None)]);
    let members: Vec<&Account> = users.iter().collect();
    let conv = conversation(&server, &alice, "group", &members).await;
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&alice.access)
        .json(&json!({ "client_msg_id": "m1", "body": "hello phones" }))
        .send()
        .await
        .expect("send");
    assert!(res.status().is_success());

    let deadline = Instant::now() + Duration::from_secs(20);
    while apple.seen(&token(0)).len() < 2 || apple.seen(&token(3)).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "retries did not happen:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let problems = apple.0.lock().expect("lock").problems.clone();
    assert!(
        problems.is_empty(),
        "requests APNs would refuse: {problems:#?}"
    );

    // 429 with Retry-After: 2 — the retry waited for it (the backoff alone is ~0.1 s).
    let bob = apple.seen(&token(0));
    assert_eq!(bob.iter().map(|s| s.status).collect::<Vec<_>>(), [429, 200]);
    let gap = bob[1].at - bob[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After ignored: {gap:?}"
    );
    // 500: retried after the backoff.
    assert_eq!(
        apple
            .seen(&token(3))
            .iter()
            .map(|s| s.status)
            .collect::<Vec<_>>(),
        [500, 200]
    );
    // Dead tokens are pruned after one try; a refused push is dropped, its token kept.
    for i in [1, 2, 4] {
        assert_eq!(apple.seen(&token(i)).len(), 1, "token {i} tried again");
    }
    assert_eq!(targets(&server, &users[1]).await, 0, "BadDeviceToken kept");
    assert_eq!(targets(&server, &users[2]).await, 0, "Unregistered kept");
    assert_eq!(
        targets(&server, &users[4]).await,
        1,
        "token of a refused push removed"
    );
    assert_eq!(targets(&server, &users[0]).await, 1);

    // The payload: ids only, badge, thread and collapse id = the conversation.
    let n = &bob[1];
    assert_eq!(n.collapse_id, conv);
    assert_eq!(n.payload["aps"]["thread-id"], conv.as_str());
    assert_eq!(n.payload["aps"]["badge"], 1);
    assert_eq!(n.payload["aps"]["mutable-content"], 1);
    assert_eq!(n.payload["aps"]["alert"]["loc-key"], "TIDINGS_NEW_MESSAGE");
    assert_eq!(n.payload["tidings"]["conversation"], conv.as_str());
    assert!(
        !n.payload.to_string().contains("hello phones"),
        "text in an ids-only push"
    );
    // One provider token for all of them: Apple refuses one made for every request.
    let all = apple.0.lock().expect("lock").seen.clone();
    assert!(
        all.iter().all(|s| s.jwt == all[0].jwt),
        "provider token not reused"
    );
    assert_eq!(server.metric("tidings_push_tokens_pruned_total").await, 2.0);

    // Bob reads on another device: his phone gets a background push setting badge 0.
    let laptop = login(&server, &users[0], "laptop").await;
    let mqtt = common::mqtt::Mqtt::connect(&server, &laptop, "laptop").await;
    let read =
        json!({ "op": "read", "id": "r1", "conv": conv, "seq": n.payload["tidings"]["seq"] });
    mqtt.publish_json(&format!("u/{}/out", users[0].id), &read)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while apple.seen(&token(0)).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no badge push:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let badge = &apple.seen(&token(0))[2];
    assert_eq!(
        badge.payload["aps"],
        json!({ "badge": 0, "content-available": 1 })
    );
    assert!(badge.collapse_id.is_empty());
    let problems = apple.0.lock().expect("lock").problems.clone();
    assert!(
        problems.is_empty(),
        "requests APNs would refuse: {problems:#?}"
    );
}

/// Two nodes on one PostgreSQL database share the queue and one provider token (Apple
/// counts refreshes per team across senders); a token APNs calls expired is replaced
/// once, not by every node or push that saw it refused.
#[tokio::test]
async fn nodes_share_one_provider_token_and_replace_a_refused_one_once() {
    let (apple, url) = Apple::start().await;
    apple.0.lock().expect("lock").delay = Duration::from_millis(100);
    let mut opts = options(Db::Postgres, &url);
    opts.env.push(("TIDINGS_PUSH_BATCH".into(), "1".into()));
    let a = Server::start_with(Options {
        db: Db::Postgres,
        cwd: None,
        env: opts.env.clone(),
        database_url: None,
    })
    .await;
    let b = Server::start_with(Options {
        db: Db::Postgres,
        cwd: None,
        env: opts.env.clone(),
        database_url: a.database_url.clone(),
    })
    .await;
    let alice = register(&a, "alice").await;
    let mut users = Vec::new();
    let token = |i: usize| format!("{:02x}", 0x10 + i).repeat(32);
    for i in 0..8 {
        let u = register(&a, &format!("user{i}")).await;
        assert_eq!(register_apns(&a, &u, &token(i)).await, 200);
        users.push(u);
    }
    let members: Vec<&Account> = users.iter().collect();
    let conv = conversation(&a, &alice, "group", &members).await;
    let send = |id: &'static str| {
        let (server, alice, conv) = (&a, &alice, &conv);
        async move {
            let res = client()
                .post(server.url(&format!("/v1/conversations/{conv}/messages")))
                .bearer_auth(&alice.access)
                .json(&json!({ "client_msg_id": id, "body": "hi" }))
                .send()
                .await
                .expect("send");
            assert!(res.status().is_success());
        }
    };
    let wait_requests = |n: usize| {
        let apple = apple.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while apple.0.lock().expect("lock").seen.len() < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} pushes arrived",
                    apple.0.lock().expect("lock").seen.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    send("m1").await;
    wait_requests(8).await;
    let sent = (
        a.metric("tidings_push_sent_total").await,
        b.metric("tidings_push_sent_total").await,
    );
    assert!(
        sent.0 > 0.0 && sent.1 > 0.0,
        "both nodes should have sent: {sent:?}"
    );
    let jwts = |from: usize| {
        let s = apple.0.lock().expect("lock");
        let mut j: Vec<String> = s.seen[from..].iter().map(|x| x.jwt.clone()).collect();
        j.sort();
        j.dedup();
        j
    };
    assert_eq!(jwts(0).len(), 1, "nodes made separate provider tokens");

    // APNs says the token expired: one new token replaces it for everyone.
    apple.script(&token(0), [(403, Some("ExpiredProviderToken"), None)]);
    send("m2").await;
    wait_requests(17).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        jwts(0).len(),
        2,
        "the refused token was replaced more than once"
    );
    // Two workers on one queue: each (event, device) once, plus the one retry.
    assert_eq!(apple.0.lock().expect("lock").seen.len(), 17);
    let problems = apple.0.lock().expect("lock").problems.clone();
    assert!(problems.is_empty(), "{problems:#?}");
}

on_both_databases!(apns_requests_are_well_formed_and_answers_are_honoured);
