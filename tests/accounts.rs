//! Accounts over real HTTP: the whole token lifecycle, and every way to get it wrong.

mod common;

use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use serde_json::{json, Value};
use tidings_auth::{AccessClaims, TokenKeys};

async fn lifecycle(db: Db) {
    let server = Server::start(db).await;
    let http = client();
    let alice = register(&server, "Alice").await;
    assert_eq!(alice.username, "alice", "usernames are lower-cased");

    let res = http
        .post(server.url("/v1/auth/login"))
        .json(&json!({ "username": "alice", "password": alice.password, "device_id": "phone-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let login: Value = res.json().await.unwrap();
    assert_eq!(login["token_type"], "Bearer");
    let session = account_from(&login, &alice.password);
    assert_eq!(session.id, alice.id);

    let me: Value = http
        .get(server.url("/v1/me"))
        .bearer_auth(&session.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["id"].as_str(), me["username"].as_str()),
        (Some(alice.id.as_str()), Some("alice"))
    );

    let res = http
        .post(server.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": session.refresh }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rotated = account_from(&res.json().await.unwrap(), &alice.password);
    assert_ne!(rotated.refresh, session.refresh, "refresh tokens rotate");
    assert_eq!(
        http.get(server.url("/v1/me"))
            .bearer_auth(&rotated.access)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let res = http
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&rotated.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = http
        .post(server.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": rotated.refresh }))
        .send()
        .await
        .unwrap();
    expect_error(res, 401, "invalid_token").await;
    let res = http
        .get(server.url("/v1/me"))
        .bearer_auth(&rotated.access)
        .send()
        .await
        .unwrap();
    expect_error(res, 401, "invalid_token").await;

    // The registration session is separate and still alive.
    assert_eq!(
        http.get(server.url("/v1/me"))
            .bearer_auth(&alice.access)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn register_login_me_refresh_logout_on_sqlite() {
    lifecycle(Db::Sqlite).await;
}

#[tokio::test]
async fn register_login_me_refresh_logout_on_postgres() {
    lifecycle(Db::Postgres).await;
}

async fn refresh(server: &Server, token: &str) -> reqwest::Response {
    client()
        .post(server.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .expect("POST /v1/auth/refresh")
}

/// New tokens from a refresh that must succeed.
async fn refreshed(server: &Server, account: &Account) -> Account {
    let res = refresh(server, &account.refresh).await;
    assert_eq!(res.status(), 200, "refresh");
    account_from(&res.json().await.expect("json"), &account.password)
}

async fn me_status(server: &Server, access: &str) -> u16 {
    client()
        .get(server.url("/v1/me"))
        .bearer_auth(access)
        .send()
        .await
        .expect("GET /v1/me")
        .status()
        .as_u16()
}

fn session_of(access: &str) -> String {
    let keys = TokenKeys::new(TEST_JWT_SECRET.as_bytes(), 900, 3600).expect("keys");
    keys.verify_access(access)
        .expect("a valid access token")
        .sid
}

/// A session that lives until the test ends it: its first refresh token, and an MQTT
/// connection on it so the test can see the session's end close it.
async fn session_with_connection(server: &Server, name: &str) -> (Account, Mqtt) {
    let account = register(server, name).await;
    let mqtt = Mqtt::connect(server, &account, "phone").await;
    (account, mqtt)
}

/// The device lost the reply to its refresh and retries with the old token: it gets the
/// same new refresh token and an access token for the same session, and the session
/// goes on (the new token rotates as usual afterwards).
async fn a_retried_refresh_gets_the_same_token_and_keeps_the_session(db: Db) {
    let server = Server::start(db).await;
    let (bob, mut mqtt) = session_with_connection(&server, "bob").await;
    let lost = refreshed(&server, &bob).await;
    assert_ne!(lost.refresh, bob.refresh, "refresh tokens rotate");

    let retry = refreshed(&server, &bob).await;
    assert_eq!(retry.refresh, lost.refresh, "the same successor again");
    assert_eq!(session_of(&retry.access), session_of(&bob.access));
    assert_eq!(me_status(&server, &retry.access).await, 200);
    let again = refreshed(&server, &bob).await;
    assert_eq!(again.refresh, lost.refresh, "a second retry too");

    let next = refreshed(&server, &retry).await;
    assert_ne!(next.refresh, retry.refresh);
    assert_eq!(session_of(&next.access), session_of(&bob.access));
    assert_eq!(me_status(&server, &next.access).await, 200);
    assert_eq!(
        me_status(&server, &bob.access).await,
        200,
        "the session never ended"
    );
    // Panics if the connection closes: the session's live connection stays open.
    mqtt.drain(Duration::from_millis(500)).await;
}

/// A replay after the window is reuse: the session ends, and with it the successor,
/// its access tokens and its live connections.
async fn a_replay_after_the_grace_window_ends_the_session(db: Db) {
    let mut opts = Options::new(db);
    opts.env
        .push(("TIDINGS_AUTH_REFRESH_GRACE_SECS".into(), "2".into()));
    let server = Server::start_with(opts).await;
    let (bob, mut mqtt) = session_with_connection(&server, "bob").await;
    let next = refreshed(&server, &bob).await;
    let rotated_at = std::time::Instant::now();
    // Positive control: inside the configured window the retry is still answered, so
    // the 401 below comes from the window closing, not from retries being refused.
    assert_eq!(refreshed(&server, &bob).await.refresh, next.refresh);

    let past_window = rotated_at + Duration::from_millis(2500);
    tokio::time::sleep(past_window.saturating_duration_since(std::time::Instant::now())).await;
    expect_error(refresh(&server, &bob.refresh).await, 401, "token_reused").await;
    mqtt.closed(NOTICED)
        .await
        .expect("the ended session's connection closes");
    expect_error(refresh(&server, &next.refresh).await, 401, "invalid_token").await;
    assert_eq!(me_status(&server, &next.access).await, 401);
}

/// Once the successor was used, the device did get its reply and moved on: whoever
/// presents the old token now is not that device, so the session ends even inside the
/// window, taking the thief's and the device's tokens with it.
async fn a_replay_after_the_successor_was_used_ends_the_session(db: Db) {
    let server = Server::start(db).await;
    let (bob, mut mqtt) = session_with_connection(&server, "bob").await;
    let next = refreshed(&server, &bob).await;
    let after = refreshed(&server, &next).await;
    expect_error(refresh(&server, &bob.refresh).await, 401, "token_reused").await;
    mqtt.closed(NOTICED)
        .await
        .expect("the ended session's connection closes");
    expect_error(refresh(&server, &after.refresh).await, 401, "invalid_token").await;
    expect_error(refresh(&server, &next.refresh).await, 401, "invalid_token").await;
    assert_eq!(me_status(&server, &after.access).await, 401);
}

/// With the window off, any second use is reuse, as before there was one.
async fn with_no_grace_window_an_immediate_replay_ends_the_session(db: Db) {
    let mut opts = Options::new(db);
    opts.env
        .push(("TIDINGS_AUTH_REFRESH_GRACE_SECS".into(), "0".into()));
    let server = Server::start_with(opts).await;
    let (bob, mut mqtt) = session_with_connection(&server, "bob").await;
    let next = refreshed(&server, &bob).await;
    expect_error(refresh(&server, &bob.refresh).await, 401, "token_reused").await;
    mqtt.closed(NOTICED)
        .await
        .expect("the ended session's connection closes");
    expect_error(refresh(&server, &next.refresh).await, 401, "invalid_token").await;
    assert_eq!(me_status(&server, &next.access).await, 401);
}

const NOTICED: Duration = Duration::from_secs(5);

on_both_databases!(
    a_retried_refresh_gets_the_same_token_and_keeps_the_session,
    a_replay_after_the_grace_window_ends_the_session,
    a_replay_after_the_successor_was_used_ends_the_session,
    with_no_grace_window_an_immediate_replay_ends_the_session,
);

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let server = Server::start(Db::Sqlite).await;
    let http = client();
    let carol = register(&server, "carol").await;
    let post = |path: &str, body: Value| http.post(server.url(path)).json(&body).send();

    expect_error(
        post(
            "/v1/auth/register",
            json!({"username": "carol", "password": "another-pass"}),
        )
        .await
        .unwrap(),
        409,
        "username_taken",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/register",
            json!({"username": "CAROL", "password": "another-pass"}),
        )
        .await
        .unwrap(),
        409,
        "username_taken",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/login",
            json!({"username": "carol", "password": "wrong-password"}),
        )
        .await
        .unwrap(),
        401,
        "invalid_credentials",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/login",
            json!({"username": "nobody", "password": "whatever-123"}),
        )
        .await
        .unwrap(),
        401,
        "invalid_credentials",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/register",
            json!({"username": "x", "password": "long-enough"}),
        )
        .await
        .unwrap(),
        422,
        "invalid",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/register",
            json!({"username": "has space", "password": "long-enough"}),
        )
        .await
        .unwrap(),
        422,
        "invalid",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/register",
            json!({"username": "dave", "password": "short"}),
        )
        .await
        .unwrap(),
        422,
        "invalid",
    )
    .await;
    expect_error(
        post("/v1/auth/register", json!({"username": "dave"}))
            .await
            .unwrap(),
        422,
        "invalid",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/register",
            json!({"username": 5, "password": "long-enough"}),
        )
        .await
        .unwrap(),
        422,
        "invalid",
    )
    .await;
    expect_error(
        post(
            "/v1/auth/login",
            json!({"username": "carol", "password": carol.password, "device_id": "bad/device"}),
        )
        .await
        .unwrap(),
        422,
        "invalid",
    )
    .await;

    let raw = |body: &'static str, ctype: &'static str| {
        http.post(server.url("/v1/auth/login"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    expect_error(
        raw("{\"username\": ", "application/json").await.unwrap(),
        400,
        "malformed",
    )
    .await;
    expect_error(
        raw("not json at all", "application/json").await.unwrap(),
        400,
        "malformed",
    )
    .await;
    expect_error(
        raw("{}", "text/plain").await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    let huge = format!(
        "{{\"username\":\"{}\",\"password\":\"x\"}}",
        "a".repeat(200 * 1024)
    );
    let res = http
        .post(server.url("/v1/auth/register"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    expect_error(res, 413, "too_large").await;
    expect_error(
        http.get(server.url("/v1/nothing-here"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert!(
        server.logs().lines().all(|l| !l.contains("panicked")),
        "no panics:\n{}",
        server.logs()
    );
}

#[tokio::test]
async fn expired_forged_and_missing_tokens_are_refused() {
    let server = Server::start(Db::Sqlite).await;
    let http = client();
    let erin = register(&server, "erin").await;
    let me = |token: &str| {
        http.get(server.url("/v1/me"))
            .bearer_auth(token.to_owned())
            .send()
    };
    let real = TokenKeys::new(TEST_JWT_SECRET.as_bytes(), 900, 3600).unwrap();
    let sid = real.verify_access(&erin.access).unwrap().sid;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = real
        .sign(&AccessClaims {
            sub: erin.id.clone(),
            sid: sid.clone(),
            iat: now - 3600,
            exp: now - 600,
            iss: "tidings".into(),
        })
        .unwrap();
    expect_error(me(&expired).await.unwrap(), 401, "token_expired").await;
    let forger = TokenKeys::new(&[42u8; 48], 900, 3600).unwrap();
    expect_error(
        me(&forger.issue_access(&erin.id, &sid, now).unwrap())
            .await
            .unwrap(),
        401,
        "invalid_token",
    )
    .await;
    // A valid signature on a token whose body was altered (someone else's user id).
    let mut parts: Vec<String> = erin.access.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    expect_error(me(&parts.join(".")).await.unwrap(), 401, "invalid_token").await;
    expect_error(me("not-a-jwt").await.unwrap(), 401, "invalid_token").await;
    expect_error(
        http.get(server.url("/v1/me")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        http.get(server.url("/v1/me"))
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn a_fresh_directory_starts_with_no_config_and_a_restart_keeps_users() {
    let cwd = tempfile::tempdir().unwrap();
    let mut opts = Options::new(Db::Sqlite);
    opts.cwd = Some(cwd.path().to_path_buf());
    let mut server = Server::start_with(opts).await;
    let http = client();
    let health: Value = http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        cwd.path().join("data/tidings.db").exists(),
        "SQLite database created under ./data"
    );
    let frank = register(&server, "frank").await;

    let mut opts = Options::new(Db::Sqlite);
    opts.cwd = Some(cwd.path().to_path_buf());
    server.restart(&opts);
    assert_eq!(
        http.get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let res = http
        .post(server.url("/v1/auth/login"))
        .json(&json!({ "username": "frank", "password": frank.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "users survive a restart");
    // Tokens issued before the restart still verify: the signing key is persistent.
    assert_eq!(
        http.get(server.url("/v1/me"))
            .bearer_auth(&frank.access)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(server.stop().success());
    assert!(!server.logs().contains("ERROR"), "{}", server.logs());
}

#[test]
fn cli_migrates_and_creates_users() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(args)
            .env("TIDINGS_DATA_DIR", dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(run(&["migrate"], "").status.success());
    assert!(
        run(&["migrate"], "").status.success(),
        "migrating twice is a no-op"
    );
    let out = run(
        &["user", "create", "--username", "grace"],
        "a-good-password\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap();
    assert_eq!(id.trim().len(), 26, "prints the new user's id");
    let dup = run(
        &[
            "user",
            "create",
            "--username",
            "grace",
            "--password",
            "a-good-password",
        ],
        "",
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("username_taken"));
}
