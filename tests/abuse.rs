//! Abuse controls through the real binary: budgets on group operations (creation,
//! renames, member additions), each answered 429 `rate_limited` with `Retry-After`
//! once spent, and each scoped so that other users and conversations are unaffected.
//! In-memory limits, no store involved: SQLite only.

mod common;

use common::*;
use serde_json::{json, Value};

async fn start_with_small_budgets() -> Server {
    let mut opts = Options::new(Db::Sqlite);
    for (k, v) in [
        ("TIDINGS_LIMITS_CONVERSATIONS_BURST", "3"),
        ("TIDINGS_LIMITS_CONVERSATIONS_PER_MINUTE", "1"),
        ("TIDINGS_LIMITS_RENAMES_BURST", "2"),
        ("TIDINGS_LIMITS_RENAMES_PER_MINUTE", "1"),
        ("TIDINGS_LIMITS_MEMBER_ADDS_BURST", "2"),
        ("TIDINGS_LIMITS_MEMBER_ADDS_PER_MINUTE", "1"),
    ] {
        opts.env.push((k.into(), v.into()));
    }
    Server::start_with(opts).await
}

async fn send(
    server: &Server,
    who: &Account,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> reqwest::Response {
    client()
        .request(method, server.url(path))
        .bearer_auth(&who.access)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn create_group(server: &Server, who: &Account, members: &[&Account]) -> reqwest::Response {
    let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
    send(
        server,
        who,
        reqwest::Method::POST,
        "/v1/conversations",
        json!({"kind": "group", "name": "g", "members": ids}),
    )
    .await
}

async fn expect_rate_limited(res: reqwest::Response) {
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
    expect_error(res, 429, "rate_limited").await;
}

#[tokio::test]
async fn conversation_creation_is_rate_limited_per_user() {
    let server = start_with_small_budgets().await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    for _ in 0..3 {
        assert_eq!(create_group(&server, &alice, &[&bob]).await.status(), 201);
    }
    expect_rate_limited(create_group(&server, &alice, &[&bob]).await).await;
    // Refused requests do not spend the budget of anyone else.
    assert_eq!(create_group(&server, &bob, &[&alice]).await.status(), 201);
    // An invalid request is refused for what it is, not counted.
    let res = send(
        &server,
        &bob,
        reqwest::Method::POST,
        "/v1/conversations",
        json!({"kind": "direct", "members": []}),
    )
    .await;
    expect_error(res, 422, "invalid").await;
    assert_eq!(create_group(&server, &bob, &[&alice]).await.status(), 201);
}

#[tokio::test]
async fn renames_are_rate_limited_per_conversation() {
    let server = start_with_small_budgets().await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let first = conversation(&server, &alice, "group", &[&bob]).await;
    let second = conversation(&server, &alice, "group", &[&bob]).await;
    let rename = |conv: String, name: &'static str| {
        let (server, alice) = (&server, &alice);
        async move {
            send(
                server,
                alice,
                reqwest::Method::PATCH,
                &format!("/v1/conversations/{conv}"),
                json!({"name": name}),
            )
            .await
        }
    };
    assert_eq!(rename(first.clone(), "one").await.status(), 200);
    assert_eq!(rename(first.clone(), "two").await.status(), 200);
    expect_rate_limited(rename(first.clone(), "three").await).await;
    let topic = send(
        &server,
        &alice,
        reqwest::Method::PATCH,
        &format!("/v1/conversations/{first}"),
        json!({"topic": "t"}),
    )
    .await;
    expect_rate_limited(topic).await;
    assert_eq!(
        rename(second, "other").await.status(),
        200,
        "another conversation has its own budget"
    );
    // Only the allowed renames reached the members' inboxes.
    let events = sync(&server, &bob, 0).await;
    let renamed = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "conversation" && e["id"] == first.as_str())
        .count();
    assert_eq!(renamed, 3, "created, then renamed twice: {events}");
}

#[tokio::test]
async fn member_additions_are_rate_limited_per_user() {
    let server = start_with_small_budgets().await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let mut others = Vec::new();
    for n in 0..3 {
        others.push(register(&server, &format!("user{n}")).await);
    }
    let conv = conversation(&server, &alice, "group", &[]).await;
    let add = |user: &Account| {
        let (server, alice, conv, id) = (&server, &alice, conv.clone(), user.id.clone());
        async move {
            send(
                server,
                alice,
                reqwest::Method::POST,
                &format!("/v1/conversations/{conv}/members"),
                json!({"user_ids": [id]}),
            )
            .await
        }
    };
    assert_eq!(add(&others[0]).await.status(), 200);
    assert_eq!(add(&others[1]).await.status(), 200);
    expect_rate_limited(add(&others[2]).await).await;
    // Positive control: bob's own group takes additions.
    let bobs = conversation(&server, &bob, "group", &[]).await;
    let res = send(
        &server,
        &bob,
        reqwest::Method::POST,
        &format!("/v1/conversations/{bobs}/members"),
        json!({"user_ids": [others[2].id]}),
    )
    .await;
    assert_eq!(res.status(), 200);
}
