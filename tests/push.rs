//! Push notifications end to end: the real binary pushing through a Matrix push gateway
//! (an axum server in the test that records what arrives and answers as scripted), on
//! SQLite and PostgreSQL. Who gets pushed (offline devices only, never one's own
//! messages, mute/block rules), registration tied to the session (logout, token moving
//! to another user), retries and pruning, and a crash mid-queue.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use common::mqtt::Mqtt;
use common::*;
use serde_json::{json, Value};

/// How the test gateway answers one request.
#[derive(Debug, Clone)]
enum Answer {
    Accept,
    Reject,
    Status(u16),
}

#[derive(Default)]
struct GatewayState {
    /// Scripted answers, used in order; when empty, `Accept`.
    script: VecDeque<Answer>,
    /// Every request's notification, with the answer it got.
    seen: Vec<(Value, &'static str)>,
}

#[derive(Clone, Default)]
struct Gateway(Arc<Mutex<GatewayState>>);

impl Gateway {
    async fn start() -> (Gateway, String) {
        let gw = Gateway::default();
        let app = axum::Router::new()
            .route("/_matrix/push/v1/notify", axum::routing::post(notify))
            .with_state(gw.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let url = format!(
            "http://{}/_matrix/push/v1/notify",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (gw, url)
    }

    fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.0.lock().expect("lock").script.extend(answers);
    }

    /// Notifications the gateway accepted (answered 200 without rejecting).
    fn accepted(&self) -> Vec<Value> {
        self.seen_with("accepted")
    }

    fn seen_with(&self, answer: &str) -> Vec<Value> {
        let state = self.0.lock().expect("lock");
        state
            .seen
            .iter()
            .filter(|(_, a)| *a == answer)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn all(&self) -> Vec<Value> {
        let state = self.0.lock().expect("lock");
        state.seen.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Waits until `f` holds for what arrived, or panics after `wait`.
    async fn wait_for(&self, wait: Duration, what: &str, f: impl Fn(&Gateway) -> bool) {
        let deadline = Instant::now() + wait;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "gateway: {what} did not happen; saw {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn notify(State(gw): State<Gateway>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let mut state = gw.0.lock().expect("lock");
    let answer = state.script.pop_front().unwrap_or(Answer::Accept);
    let n = body["notification"].clone();
    let pushkey = n["devices"][0]["pushkey"].clone();
    let (status, label, reply) = match answer {
        Answer::Accept => (200, "accepted", json!({ "rejected": [] })),
        Answer::Reject => (200, "rejected", json!({ "rejected": [pushkey] })),
        Answer::Status(s) => (s, "failed", json!({})),
    };
    state.seen.push((n, label));
    (StatusCode::from_u16(status).expect("status"), Json(reply))
}

fn push_options(db: Db, gateway_url: &str) -> Options {
    let mut opts = Options::new(db);
    opts.env = vec![
        ("TIDINGS_PUSH_GATEWAY_URL".into(), gateway_url.into()),
        ("TIDINGS_PUSH_POLL_MS".into(), "50".into()),
        ("TIDINGS_PUSH_BACKOFF_BASE_MS".into(), "100".into()),
        ("TIDINGS_PUSH_REQUEST_TIMEOUT_SECS".into(), "2".into()),
        ("TIDINGS_PUSH_LEASE_SECS".into(), "3".into()),
    ];
    opts
}

async fn register_push(server: &Server, who: &Account, token: &str, full_text: bool) {
    let res = client()
        .put(server.url("/v1/me/push"))
        .bearer_auth(&who.access)
        .json(&json!({ "platform": "gateway", "token": token, "app_id": "chat.tidings.test", "full_text": full_text }))
        .send()
        .await
        .expect("register push");
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

async fn push_targets(server: &Server, who: &Account) -> Vec<Value> {
    let res = client()
        .get(server.url("/v1/me/push"))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("list push");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    body["targets"].as_array().cloned().unwrap_or_default()
}

async fn send(server: &Server, who: &Account, conv: &str, body: Value) -> Value {
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&who.access)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert!(res.status().is_success(), "send: {}", res.status());
    res.json().await.expect("json")
}

async fn put(server: &Server, who: &Account, path: &str, body: Value) {
    let res = client()
        .request(reqwest::Method::PUT, server.url(path))
        .bearer_auth(&who.access)
        .json(&body)
        .send()
        .await
        .expect("put");
    assert!(res.status().is_success(), "PUT {path}: {}", res.status());
}

fn text(id: &str, body: &str) -> Value {
    json!({ "client_msg_id": id, "body": body })
}

fn for_token<'a>(ns: &'a [Value], token: &str) -> Vec<&'a Value> {
    ns.iter()
        .filter(|n| n["devices"][0]["pushkey"] == token)
        .collect()
}

/// Long enough for the worker (polling every 50 ms) to have sent anything it would.
const SETTLE: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(15);

async fn only_offline_devices_are_pushed_once_with_ids_only(db: Db) {
    let (gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let phone = login(&server, &bob, "phone").await;
    let laptop = login(&server, &bob, "laptop").await;
    register_push(&server, &phone, "tok-phone", false).await;
    register_push(&server, &laptop, "tok-laptop", false).await;
    register_push(&server, &alice, "tok-alice", false).await;
    // The laptop is connected: it gets the event over MQTT, not a push.
    let _live = Mqtt::connect(&server, &laptop, "laptop").await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;

    let sent = send(&server, &alice, &conv, text("m1", "secret words")).await;
    gw.wait_for(WAIT, "a push to the phone", |g| {
        !for_token(&g.accepted(), "tok-phone").is_empty()
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let all = gw.all();
    assert_eq!(for_token(&all, "tok-phone").len(), 1, "{all:#?}");
    assert!(
        for_token(&all, "tok-laptop").is_empty(),
        "connected device pushed: {all:#?}"
    );
    assert!(
        for_token(&all, "tok-alice").is_empty(),
        "own message pushed: {all:#?}"
    );
    let n = for_token(&all, "tok-phone")[0];
    assert_eq!(n["room_id"], conv.as_str());
    assert_eq!(n["event_id"], sent["id"]);
    assert_eq!(n["tidings"]["seq"], sent["seq"]);
    assert_eq!(n["tidings"]["reason"], "message");
    assert_eq!(n["counts"]["unread"], 1);
    assert!(
        n.get("content").is_none() && n.get("sender").is_none(),
        "ids only by default: {n}"
    );
    assert!(!n.to_string().contains("secret words"), "{n}");

    // Opting in to text puts the sender and body in.
    register_push(&server, &phone, "tok-phone", true).await;
    send(&server, &alice, &conv, text("m2", "hello bob")).await;
    gw.wait_for(WAIT, "a second push", |g| {
        for_token(&g.accepted(), "tok-phone").len() == 2
    })
    .await;
    let accepted = gw.accepted();
    let n = for_token(&accepted, "tok-phone")[1];
    assert_eq!(n["content"]["body"], "hello bob");
    assert_eq!(n["sender"], alice.id.as_str());
    assert_eq!(n["counts"]["unread"], 2, "badge = total unread");
}

async fn mute_and_block_rules_decide_who_is_pushed(db: Db) {
    let (gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let alice = register(&server, "alice").await;
    let carol = register(&server, "carol").await;
    let bob = register(&server, "bob").await;
    let phone = login(&server, &bob, "phone").await;
    register_push(&server, &phone, "tok-bob", false).await;
    let conv = conversation(&server, &alice, "group", &[&bob, &carol]).await;

    let res = client()
        .patch(server.url(&format!("/v1/conversations/{conv}/membership")))
        .bearer_auth(&bob.access)
        .json(&json!({ "muted": true }))
        .send()
        .await
        .expect("mute");
    assert!(res.status().is_success());
    send(&server, &alice, &conv, text("plain", "nobody is pushed")).await;
    let mention = json!({ "client_msg_id": "mention", "body": "@bob", "mentions": [bob.id] });
    send(&server, &alice, &conv, mention).await;
    gw.wait_for(WAIT, "the mention breaking through the mute", |g| {
        !g.accepted().is_empty()
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let all = gw.all();
    assert_eq!(
        all.len(),
        1,
        "only the mention pushes from a muted conversation: {all:#?}"
    );
    assert_eq!(all[0]["tidings"]["reason"], "mention");

    // A reply to bob's own message breaks through too.
    let mine = send(&server, &bob, &conv, text("b1", "my message")).await;
    let reply = json!({ "client_msg_id": "reply", "body": "re", "reply_to": mine["id"] });
    send(&server, &alice, &conv, reply).await;
    gw.wait_for(WAIT, "the reply breaking through the mute", |g| {
        g.accepted().len() == 2
    })
    .await;
    assert_eq!(gw.accepted()[1]["tidings"]["reason"], "reply");

    // Without break-through, a mention stays silent too.
    put(
        &server,
        &bob,
        "/v1/me/push/settings",
        json!({ "breakthrough": false }),
    )
    .await;
    let mention = json!({ "client_msg_id": "mention2", "body": "@bob", "mentions": [bob.id] });
    send(&server, &alice, &conv, mention).await;
    // Unmuted, but carol is blocked: her messages never push, alice's do.
    let res = client()
        .patch(server.url(&format!("/v1/conversations/{conv}/membership")))
        .bearer_auth(&bob.access)
        .json(&json!({ "muted": false }))
        .send()
        .await
        .expect("unmute");
    assert!(res.status().is_success());
    put(
        &server,
        &bob,
        &format!("/v1/me/blocks/{}", carol.id),
        json!({}),
    )
    .await;
    send(&server, &carol, &conv, text("c1", "from a blocked user")).await;
    send(&server, &alice, &conv, text("a2", "after unmute")).await;
    gw.wait_for(WAIT, "a push after unmuting", |g| g.accepted().len() == 3)
        .await;
    tokio::time::sleep(SETTLE).await;
    let all = gw.all();
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[2]["tidings"]["reason"], "message");
    assert_eq!(all[2]["sender"], Value::Null);
}

async fn logout_and_a_moved_token_stop_pushes_to_the_old_owner(db: Db) {
    let (gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let bob_phone = login(&server, &bob, "phone").await;
    register_push(&server, &bob_phone, "shared-phone", false).await;
    // Carol signs in on the same phone: the token is hers now.
    let carol_phone = login(&server, &carol, "phone").await;
    register_push(&server, &carol_phone, "shared-phone", false).await;
    assert!(
        push_targets(&server, &bob).await.is_empty(),
        "the token moved"
    );
    assert_eq!(push_targets(&server, &carol).await.len(), 1);

    let to_bob = conversation(&server, &alice, "group", &[&bob]).await;
    let to_carol = conversation(&server, &alice, "group", &[&carol]).await;
    send(&server, &alice, &to_bob, text("b1", "for bob")).await;
    send(&server, &alice, &to_carol, text("c1", "for carol")).await;
    gw.wait_for(WAIT, "carol's push", |g| !g.accepted().is_empty())
        .await;
    tokio::time::sleep(SETTLE).await;
    let all = gw.all();
    assert_eq!(
        all.len(),
        1,
        "the previous owner of a token gets nothing: {all:#?}"
    );
    assert_eq!(all[0]["room_id"], to_carol.as_str());

    // Logging out removes the session's target.
    let res = client()
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&carol_phone.access)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), 204);
    assert!(push_targets(&server, &carol).await.is_empty());
    send(&server, &alice, &to_carol, text("c2", "after logout")).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(gw.all().len(), 1, "pushed after logout: {:#?}", gw.all());

    // Unregistering by hand does the same; a second time there is nothing to remove.
    let bob_tablet = login(&server, &bob, "tablet").await;
    register_push(&server, &bob_tablet, "tok-tablet", false).await;
    for status in [204, 404] {
        let res = client()
            .delete(server.url("/v1/me/push"))
            .bearer_auth(&bob_tablet.access)
            .send()
            .await
            .expect("unregister");
        assert_eq!(res.status(), status);
    }
}

async fn failures_are_retried_and_a_rejected_token_is_pruned(db: Db) {
    let (gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let phone = login(&server, &bob, "phone").await;
    register_push(&server, &phone, "tok-dying", false).await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;

    gw.script([Answer::Status(500), Answer::Status(429), Answer::Reject]);
    send(&server, &alice, &conv, text("m1", "hi")).await;
    gw.wait_for(WAIT, "the rejection", |g| {
        !g.seen_with("rejected").is_empty()
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(gw.seen_with("failed").len(), 2);
    assert_eq!(gw.all().len(), 3, "{:#?}", gw.all());
    assert!(
        push_targets(&server, &bob).await.is_empty(),
        "rejected token kept"
    );
    assert_eq!(server.metric("tidings_push_tokens_pruned_total").await, 1.0);
}

async fn a_crash_mid_queue_loses_no_push_and_repeats_none(db: Db) {
    let (gw, url) = Gateway::start().await;
    let opts = push_options(db, &url);
    let mut server = Server::start_with(Options {
        db,
        cwd: None,
        env: opts.env.clone(),
        database_url: None,
    })
    .await;
    let opts = Options {
        db,
        cwd: None,
        env: opts.env,
        database_url: server.database_url.clone(),
    };
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let phone = login(&server, &bob, "phone").await;
    register_push(&server, &phone, "tok-phone", false).await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;

    // The first push is accepted, then the gateway fails: the rest wait in the queue.
    gw.script([Answer::Accept]);
    gw.script(std::iter::repeat_n(Answer::Status(503), 1000));
    for i in 0..4 {
        send(&server, &alice, &conv, text(&format!("m{i}"), "hi")).await;
    }
    gw.wait_for(WAIT, "one accepted and retries failing", |g| {
        g.accepted().len() == 1 && g.seen_with("failed").len() >= 3
    })
    .await;
    server.kill9();
    gw.0.lock().expect("lock").script.clear();
    server.start_again(&opts);

    gw.wait_for(WAIT, "every push accepted after the restart", |g| {
        g.accepted().len() >= 4
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let mut seqs: Vec<u64> = gw
        .accepted()
        .iter()
        .map(|n| n["tidings"]["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + 4).collect::<Vec<_>>(),
        "each message accepted exactly once"
    );
}

async fn registration_is_validated(db: Db) {
    let (_gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let bob = register(&server, "bob").await;
    for (body, why) in [
        (
            json!({ "platform": "apns", "token": "t", "app_id": "a" }),
            "apns is not configured",
        ),
        (
            json!({ "platform": "gateway", "token": "", "app_id": "a" }),
            "empty token",
        ),
        (
            json!({ "platform": "gateway", "token": "x".repeat(4097), "app_id": "a" }),
            "token too long",
        ),
        (
            json!({ "platform": "gateway", "token": "t", "app_id": "a\u{0}" }),
            "control character",
        ),
        (
            json!({ "platform": "gateway", "token": "t", "app_id": "a", "lang": "en US" }),
            "bad language tag",
        ),
        (
            json!({ "platform": "gateway", "token": "t", "app_id": "a", "data": { "k": "v".repeat(5000) } }),
            "data too large",
        ),
    ] {
        let res = client()
            .put(server.url("/v1/me/push"))
            .bearer_auth(&bob.access)
            .json(&body)
            .send()
            .await
            .expect("register");
        assert_eq!(res.status(), 422, "{why}");
    }
    let res = client()
        .put(server.url("/v1/me/push"))
        .bearer_auth(&bob.access)
        .json(&json!({ "platform": "carrier-pigeon", "token": "t", "app_id": "a" }))
        .send()
        .await
        .expect("register");
    assert!(res.status().is_client_error());
    let res = client()
        .get(server.url("/v1/me/push/settings"))
        .bearer_auth(&bob.access)
        .send()
        .await
        .expect("settings");
    let settings: Value = res.json().await.expect("json");
    assert_eq!(settings["breakthrough"], true);
}

async fn reading_on_another_device_sends_a_rate_limited_badge_push(db: Db) {
    let (gw, url) = Gateway::start().await;
    let mut opts = push_options(db, &url);
    opts.env
        .push(("TIDINGS_PUSH_BADGE_MIN_INTERVAL_SECS".into(), "2".into()));
    let server = Server::start_with(opts).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let phone = login(&server, &bob, "phone").await;
    register_push(&server, &phone, "tok-phone", false).await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;
    send(&server, &alice, &conv, text("m1", "one")).await;
    let m2 = send(&server, &alice, &conv, text("m2", "two")).await;
    gw.wait_for(WAIT, "two message pushes", |g| g.accepted().len() == 2)
        .await;

    // Bob reads both on his laptop: the phone's badge goes to 0 with a quiet push.
    let laptop = login(&server, &bob, "laptop").await;
    let mqtt = Mqtt::connect(&server, &laptop, "laptop").await;
    let out = format!("u/{}/out", bob.id);
    let read = |id: &str, seq: &Value| json!({ "op": "read", "id": id, "conv": conv, "seq": seq });
    mqtt.publish_json(&out, &read("r1", &m2["seq"])).await;
    gw.wait_for(WAIT, "a badge push", |g| g.accepted().len() == 3)
        .await;
    let first_badge = Instant::now();
    let badge = gw.accepted()[2].clone();
    assert_eq!(badge["tidings"]["reason"], "badge", "{badge}");
    assert_eq!(badge["counts"]["unread"], 0);
    assert_eq!(badge["prio"], "low");
    assert_eq!(badge["devices"][0]["pushkey"], "tok-phone");
    // Reading the same again moves nothing: no push.
    mqtt.publish_json(&out, &read("r2", &m2["seq"])).await;

    // A new message (badge 1), read at once: the badge push waits out the interval.
    let m3 = send(&server, &alice, &conv, text("m3", "three")).await;
    gw.wait_for(WAIT, "the third message's push", |g| {
        g.accepted().len() == 4
    })
    .await;
    assert_eq!(gw.accepted()[3]["counts"]["unread"], 1);
    mqtt.publish_json(&out, &read("r3", &m3["seq"])).await;
    gw.wait_for(WAIT, "the second badge push", |g| g.accepted().len() == 5)
        .await;
    let gap = first_badge.elapsed();
    assert!(
        gap >= Duration::from_millis(1900),
        "badge pushes {gap:?} apart"
    );
    let badge = &gw.accepted()[4];
    assert_eq!(badge["tidings"]["reason"], "badge");
    assert_eq!(badge["counts"]["unread"], 0);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(gw.all().len(), 5, "{:#?}", gw.all());
}

async fn an_invitation_pushes_the_invited_user(db: Db) {
    let (gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let res = client()
        .patch(server.url("/v1/me"))
        .bearer_auth(&bob.access)
        .json(&json!({ "group_adds": "nobody" }))
        .send()
        .await
        .expect("group_adds");
    assert!(res.status().is_success());
    let phone = login(&server, &bob, "phone").await;
    register_push(&server, &phone, "tok-bob", true).await;
    // Bob lets nobody add him: he gets an invitation instead, and a push for it.
    let conv = conversation(&server, &alice, "group", &[&bob]).await;
    gw.wait_for(WAIT, "the invitation push", |g| !g.accepted().is_empty())
        .await;
    tokio::time::sleep(SETTLE).await;
    let all = gw.all();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["tidings"]["reason"], "invitation");
    assert_eq!(all[0]["room_id"], conv.as_str());
    assert_eq!(all[0]["type"], "m.room.member");
    assert_eq!(all[0]["sender"], alice.id.as_str());
}

/// Push targets of `user`, counted in the database itself (after the account is
/// deleted there is no session left to ask the API with).
async fn targets_in_database(server: &Server, user: &str) -> i64 {
    use sqlx::{Connection, Row};
    let query = "SELECT COUNT(*) AS n FROM push_targets WHERE user_id = $1";
    match &server.database_url {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            let row = sqlx::query(query)
                .bind(user)
                .fetch_one(&mut c)
                .await
                .expect("count");
            row.get("n")
        }
        None => {
            let url = format!("sqlite://{}", server.data_dir.join("tidings.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            let row = sqlx::query(query)
                .bind(user)
                .fetch_one(&mut c)
                .await
                .expect("count");
            row.get("n")
        }
    }
}

/// The session id (`sid`) inside an access token.
fn session_of(account: &Account) -> String {
    use base64::Engine;
    let claims = account.access.split('.').nth(1).expect("JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&claims).expect("claims");
    claims["sid"].as_str().expect("sid").to_owned()
}

async fn revocation_by_the_admin_cli_and_account_deletion_remove_targets(db: Db) {
    let (_gw, url) = Gateway::start().await;
    let server = Server::start_with(push_options(db, &url)).await;
    let bob = register(&server, "bob").await;
    let phone = login(&server, &bob, "phone").await;
    let laptop = login(&server, &bob, "laptop").await;
    register_push(&server, &phone, "tok-phone", false).await;
    register_push(&server, &laptop, "tok-laptop", false).await;
    assert_eq!(targets_in_database(&server, &bob.id).await, 2);

    // An operator revokes the phone's session from another process.
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    cli.args(["session", "revoke", &session_of(&phone)])
        .env_remove("RUST_LOG")
        .env("TIDINGS_DATA_DIR", &server.data_dir)
        .env("TIDINGS_LOG_FILTER", "warn")
        .stdin(std::process::Stdio::null());
    if let Some(url) = &server.database_url {
        cli.env("TIDINGS_DATABASE_URL", url);
    }
    let out = cli.output().await.expect("run the CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = push_targets(&server, &laptop).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["this_session"], true);

    // Deleting the account removes the rest.
    let res = client()
        .delete(server.url("/v1/me"))
        .bearer_auth(&laptop.access)
        .json(&json!({ "password": bob.password }))
        .send()
        .await
        .expect("delete account");
    assert_eq!(res.status(), 204);
    assert_eq!(targets_in_database(&server, &bob.id).await, 0);
}

on_both_databases!(
    revocation_by_the_admin_cli_and_account_deletion_remove_targets,
    an_invitation_pushes_the_invited_user,
    reading_on_another_device_sends_a_rate_limited_badge_push,
    only_offline_devices_are_pushed_once_with_ids_only,
    mute_and_block_rules_decide_who_is_pushed,
    logout_and_a_moved_token_stop_pushes_to_the_old_owner,
    failures_are_retried_and_a_rejected_token_is_pruned,
    a_crash_mid_queue_loses_no_push_and_repeats_none,
    registration_is_validated,
);
