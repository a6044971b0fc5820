//! Account administration end to end: the operator's CLI (`tidings user …`,
//! `tidings session …`) run as a separate process against a live server's database,
//! and `DELETE /v1/me`, on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use serde_json::{json, Value};

/// Runs `tidings ARGS` against `server`'s database; (success, stdout, stderr).
async fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("TIDINGS_DATA_DIR", &server.data_dir)
        .env("TIDINGS_LOG_FILTER", "warn")
        .stdin(std::process::Stdio::null());
    if let Some(url) = &server.database_url {
        cmd.env("TIDINGS_DATABASE_URL", url);
    }
    let out = cmd.output().await.expect("run the tidings CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_ok(server: &Server, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(server, args).await;
    assert!(ok, "tidings {args:?} failed: {stderr}");
    stdout
}

async fn me_status(server: &Server, account: &Account) -> u16 {
    client()
        .get(server.url("/v1/me"))
        .bearer_auth(&account.access)
        .send()
        .await
        .expect("GET /v1/me")
        .status()
        .as_u16()
}

async fn login_as(server: &Server, username: &str, password: &str) -> reqwest::Response {
    client()
        .post(server.url("/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .expect("login")
}

async fn refresh(server: &Server, account: &Account) -> reqwest::Response {
    client()
        .post(server.url("/v1/auth/refresh"))
        .json(&json!({ "refresh_token": account.refresh }))
        .send()
        .await
        .expect("refresh")
}

/// The revocation poll runs every second by default; the CLI's changes must reach
/// live connections well within this.
const NOTICED: Duration = Duration::from_secs(5);

async fn disabling_a_user_from_the_cli_closes_their_connections_at_once(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let mut alice_mqtt = Mqtt::connect(&server, &alice, "phone").await;
    let mut bob_mqtt = Mqtt::connect(&server, &bob, "phone").await;

    let list = cli_ok(&server, &["user", "list"]).await;
    assert!(
        list.lines()
            .any(|l| l.starts_with(&alice.id) && l.contains("\talice\tactive\t1\t")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(&bob.id) && l.contains("\tbob\tactive\t")),
        "{list}"
    );
    let shown = cli_ok(&server, &["user", "show", "alice"]).await;
    assert!(
        shown.contains(&format!("id: {}", alice.id)) && shown.contains("status: active"),
        "{shown}"
    );

    let out = cli_ok(&server, &["user", "disable", "alice"]).await;
    assert!(out.contains("disabled"), "{out}");
    alice_mqtt
        .closed(NOTICED)
        .await
        .expect("the disabled user's live connection is closed");
    assert_eq!(
        me_status(&server, &alice).await,
        401,
        "access token refused"
    );
    expect_error(refresh(&server, &alice).await, 401, "invalid_token").await;
    expect_error(
        login_as(&server, "alice", &alice.password).await,
        403,
        "account_disabled",
    )
    .await;
    // A wrong password still says only that: being disabled is told to the owner alone.
    expect_error(
        login_as(&server, "alice", "not-her-password").await,
        401,
        "invalid_credentials",
    )
    .await;
    assert!(
        common::mqtt::ConnectAs::account(&server, &alice, "tablet")
            .connect()
            .await
            .is_err(),
        "no new MQTT connection"
    );
    // Positive control: everyone else carries on.
    bob_mqtt.drain(Duration::from_millis(500)).await;
    assert_eq!(me_status(&server, &bob).await, 200);
    let shown = cli_ok(&server, &["user", "show", &alice.id]).await;
    assert!(
        shown.contains("status: disabled") && shown.contains("active_sessions: 0"),
        "{shown}"
    );

    cli_ok(&server, &["user", "enable", "alice"]).await;
    assert_eq!(
        me_status(&server, &alice).await,
        401,
        "old sessions stay ended"
    );
    assert_eq!(
        login_as(&server, "alice", &alice.password).await.status(),
        200
    );

    let (ok, _, err) = cli(&server, &["user", "disable", "nobody"]).await;
    assert!(!ok && err.contains("no account"), "{err}");
}

async fn sessions_are_listed_and_revoked_from_the_cli(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let phone = login(&server, &alice, "phone").await;
    let laptop = login(&server, &alice, "laptop").await;
    let mut phone_mqtt = Mqtt::connect(&server, &phone, "phone").await;
    let mut laptop_mqtt = Mqtt::connect(&server, &laptop, "laptop").await;

    let list = cli_ok(&server, &["session", "list", "alice"]).await;
    let phone_session = list
        .lines()
        .find(|l| l.contains("\tphone\t"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("no phone session in {list}"))
        .to_owned();
    assert_eq!(list.lines().count(), 4, "header and three sessions: {list}");

    cli_ok(&server, &["session", "revoke", &phone_session]).await;
    phone_mqtt
        .closed(NOTICED)
        .await
        .expect("the revoked session's connection closes");
    assert_eq!(me_status(&server, &phone).await, 401);
    laptop_mqtt.drain(Duration::from_millis(500)).await;
    assert_eq!(
        me_status(&server, &laptop).await,
        200,
        "other sessions are untouched"
    );
    let (ok, _, err) = cli(&server, &["session", "revoke", &phone_session]).await;
    assert!(!ok && err.contains("no live session"), "{err}");

    let out = cli_ok(&server, &["session", "revoke", "--user", "alice"]).await;
    assert!(out.contains("revoked 2 sessions"), "{out}");
    laptop_mqtt
        .closed(NOTICED)
        .await
        .expect("every session's connection closes");
    assert_eq!(me_status(&server, &alice).await, 401);
}

async fn a_password_reset_from_the_cli_ends_every_session(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let mut mqtt = Mqtt::connect(&server, &alice, "phone").await;
    let (ok, _, err) = cli(
        &server,
        &["user", "reset-password", "alice", "--password", "short"],
    )
    .await;
    assert!(
        !ok && err.contains("invalid"),
        "a too-short password is refused: {err}"
    );
    assert_eq!(
        me_status(&server, &alice).await,
        200,
        "a refused reset changes nothing"
    );
    cli_ok(
        &server,
        &[
            "user",
            "reset-password",
            "alice",
            "--password",
            "a-brand-new-password",
        ],
    )
    .await;
    mqtt.closed(NOTICED).await.expect("connections close");
    assert_eq!(me_status(&server, &alice).await, 401);
    expect_error(
        login_as(&server, "alice", &alice.password).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        login_as(&server, "alice", "a-brand-new-password")
            .await
            .status(),
        200
    );
}

async fn deleting_a_user_from_the_cli_needs_yes_and_erases_the_profile(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;
    let mut bob_mqtt = Mqtt::connect(&server, &bob, "phone").await;

    let (ok, _, err) = cli(&server, &["user", "delete", "bob"]).await;
    assert!(!ok && err.contains("--yes"), "{err}");
    assert_eq!(
        me_status(&server, &bob).await,
        200,
        "nothing happened without --yes"
    );

    cli_ok(&server, &["user", "delete", "bob", "--yes"]).await;
    bob_mqtt
        .closed(NOTICED)
        .await
        .expect("the deleted user's connection closes");
    assert_eq!(me_status(&server, &bob).await, 401);
    expect_error(
        login_as(&server, "bob", &bob.password).await,
        401,
        "invalid_credentials",
    )
    .await;
    let shown = cli_ok(&server, &["user", "show", &bob.id]).await;
    assert!(
        shown.contains("status: deleted")
            && shown.contains(&format!("username: deleted-{}", bob.id)),
        "{shown}"
    );
    let members: Value = client()
        .get(server.url(&format!("/v1/conversations/{conv}/members")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    assert!(
        !members.to_string().contains(&bob.id),
        "bob left the group: {members}"
    );
}

async fn delete_me_needs_the_password_and_keeps_messages_from_a_deleted_user(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let carol = register(&server, "carol").await;
    let conv = conversation(&server, &alice, "group", &[&carol]).await;
    let sent = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&carol.access)
        .json(&json!({ "client_msg_id": "c1", "body": "hello from carol" }))
        .send()
        .await
        .expect("send");
    assert!(sent.status().is_success(), "{}", sent.status());
    let mut carol_mqtt = Mqtt::connect(&server, &carol, "phone").await;
    let mut alice_mqtt = Mqtt::connect(&server, &alice, "phone").await;
    alice_mqtt.subscribe(&format!("u/{}/in", alice.id)).await;

    let delete = |password: &str| {
        client()
            .delete(server.url("/v1/me"))
            .bearer_auth(&carol.access)
            .json(&json!({ "password": password }))
            .send()
    };
    expect_error(
        delete("not-the-password").await.expect("delete"),
        403,
        "wrong_password",
    )
    .await;
    assert_eq!(
        me_status(&server, &carol).await,
        200,
        "a wrong password deletes nothing"
    );

    let res = delete(&carol.password).await.expect("delete");
    assert_eq!(res.status(), 204);
    carol_mqtt
        .closed(Duration::from_secs(2))
        .await
        .expect("the deleted account's connection closes at once");
    alice_mqtt
        .expect(&format!("u/{}/in", alice.id), "carol leaving", |e| {
            e["type"] == "member" && e["user"] == carol.id.as_str() && e["action"] == "left"
        })
        .await;
    assert_eq!(me_status(&server, &carol).await, 401);
    expect_error(
        login_as(&server, "carol", &carol.password).await,
        401,
        "invalid_credentials",
    )
    .await;
    let found: Value = client()
        .get(server.url("/v1/users?q=carol"))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    assert!(!found.to_string().contains(&carol.id), "{found}");
    let history: Value = client()
        .get(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert!(
        history.to_string().contains("hello from carol") && history.to_string().contains(&carol.id),
        "the message stays, from the deleted account: {history}"
    );
    // The name is free for someone new.
    let again = register(&server, "carol").await;
    assert_ne!(again.id, carol.id);
}

on_both_databases!(
    disabling_a_user_from_the_cli_closes_their_connections_at_once,
    sessions_are_listed_and_revoked_from_the_cli,
    a_password_reset_from_the_cli_ends_every_session,
    deleting_a_user_from_the_cli_needs_yes_and_erases_the_profile,
    delete_me_needs_the_password_and_keeps_messages_from_a_deleted_user,
);
