//! Accounts over real HTTP: the whole token lifecycle, and every way to get it wrong.

mod common;

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

#[tokio::test]
async fn a_replayed_refresh_token_ends_the_session() {
    let server = Server::start(Db::Sqlite).await;
    let http = client();
    let bob = register(&server, "bob").await;
    let refresh = |t: String| {
        http.post(server.url("/v1/auth/refresh"))
            .json(&json!({ "refresh_token": t }))
            .send()
    };
    let res = refresh(bob.refresh.clone()).await.unwrap();
    let next = account_from(&res.json().await.unwrap(), &bob.password);
    expect_error(
        refresh(bob.refresh.clone()).await.unwrap(),
        401,
        "token_reused",
    )
    .await;
    // The thief's replay also killed the legitimate successor.
    expect_error(
        refresh(next.refresh.clone()).await.unwrap(),
        401,
        "invalid_token",
    )
    .await;
    expect_error(
        http.get(server.url("/v1/me"))
            .bearer_auth(&next.access)
            .send()
            .await
            .unwrap(),
        401,
        "invalid_token",
    )
    .await;
}

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
