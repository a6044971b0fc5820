//! The REST plane over real HTTP, on SQLite and PostgreSQL: conversations and their
//! rules, history paging, sending over HTTP, sync, search, unread counts, rate limits.

mod common;

use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// One authenticated call; returns status and JSON body (Null when empty).
async fn call(
    server: &Server,
    who: &Account,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client()
        .request(method, server.url(path))
        .bearer_auth(&who.access);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(server: &Server, who: &Account, path: &str) -> (u16, Value) {
    call(server, who, Method::GET, path, None).await
}

async fn post(server: &Server, who: &Account, path: &str, body: Value) -> (u16, Value) {
    call(server, who, Method::POST, path, Some(body)).await
}

async fn send_rest(
    server: &Server,
    who: &Account,
    conv: &str,
    id: &str,
    body: &str,
) -> (u16, Value) {
    post(
        server,
        who,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": id, "body": body}),
    )
    .await
}

/// The server's own database, for seeding bulk data through the same write path.
async fn server_store(server: &Server) -> std::sync::Arc<dyn tidings_store::Store> {
    let url = server
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", server.data_path("tidings.db").display()));
    tidings_store::connect(&url)
        .await
        .expect("open the server's database")
}

async fn conversations_and_roles(db: Db) {
    let server = Server::start(db).await;
    let (owner, admin, member, outsider) = (
        register(&server, "owner").await,
        register(&server, "admin").await,
        register(&server, "member").await,
        register(&server, "outsider").await,
    );
    let group = conversation(&server, &owner, "group", &[&admin, &member]).await;
    let path = |p: &str| format!("/v1/conversations/{group}{p}");

    // Direct: one per pair, whoever starts it.
    let d1 = conversation(&server, &owner, "direct", &[&member]).await;
    let d2 = conversation(&server, &member, "direct", &[&owner]).await;
    assert_eq!(d1, d2);
    let (status, _) = post(
        &server,
        &owner,
        "/v1/conversations",
        json!({"kind": "direct", "members": []}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = post(
        &server,
        &owner,
        "/v1/conversations",
        json!({"kind": "group", "members": ["01HZZZZZZZZZZZZZZZZZZZZZZ9"]}),
    )
    .await;
    assert_eq!(status, 422, "unknown users are refused");

    // Outsiders learn nothing; members see members.
    assert_eq!(get(&server, &outsider, &path("")).await.0, 404);
    assert_eq!(get(&server, &outsider, &path("/members")).await.0, 404);
    let (status, body) = get(&server, &member, &path("")).await;
    assert_eq!(
        (status, body["members"].as_array().map(Vec::len)),
        (200, Some(3))
    );

    // Only owners grant roles; admins manage members but cannot touch owners.
    let (status, _) = call(
        &server,
        &admin,
        Method::PUT,
        &path(&format!("/members/{}/role", admin.id)),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = call(
        &server,
        &owner,
        Method::PUT,
        &path(&format!("/members/{}/role", admin.id)),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!((status, body["role"].as_str()), (200, Some("admin")));
    assert_eq!(
        call(
            &server,
            &member,
            Method::PATCH,
            &path(""),
            Some(json!({"name": "mine"}))
        )
        .await
        .0,
        403
    );
    let (status, body) = call(
        &server,
        &admin,
        Method::PATCH,
        &path(""),
        Some(json!({"name": "Team", "topic": "launch"})),
    )
    .await;
    assert_eq!(
        (status, body["name"].as_str(), body["topic"].as_str()),
        (200, Some("Team"), Some("launch"))
    );
    assert_eq!(
        call(
            &server,
            &admin,
            Method::DELETE,
            &path(&format!("/members/{}", owner.id)),
            None
        )
        .await
        .0,
        403,
        "an admin cannot remove an owner"
    );
    assert_eq!(
        post(
            &server,
            &member,
            &path("/members"),
            json!({"user_ids": [outsider.id]})
        )
        .await
        .0,
        403
    );

    // Membership changes reach the realtime ACL at once.
    let mut late = Mqtt::connect(&server, &outsider, "phone").await;
    assert!(
        !late.try_subscribe(&format!("c/{group}/m")).await,
        "outsider refused before joining"
    );
    let (status, body) = post(
        &server,
        &admin,
        &path("/members"),
        json!({"user_ids": [outsider.id]}),
    )
    .await;
    assert_eq!((status, body.as_array().map(Vec::len)), (200, Some(4)));
    let mut now_member = Mqtt::connect(&server, &outsider, "phone").await;
    now_member.subscribe(&format!("c/{group}/m")).await;
    assert_eq!(
        call(
            &server,
            &admin,
            Method::DELETE,
            &path(&format!("/members/{}", outsider.id)),
            None
        )
        .await
        .0,
        204
    );
    let mut removed = Mqtt::connect(&server, &outsider, "tablet").await;
    assert!(
        !removed.try_subscribe(&format!("c/{group}/m")).await,
        "refused again after removal"
    );

    // Member events reached everyone's inbox, the removed user included.
    let events = sync(&server, &outsider, 0).await;
    let kinds: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "member")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["user"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("removed".into(), outsider.id.clone())),
        "{kinds:?}"
    );

    // The last owner cannot leave or step down; after handing over they can.
    assert_eq!(
        post(&server, &owner, &path("/leave"), json!({})).await.0,
        409
    );
    let (status, _) = call(
        &server,
        &owner,
        Method::PUT,
        &path(&format!("/members/{}/role", owner.id)),
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(status, 409);
    call(
        &server,
        &owner,
        Method::PUT,
        &path(&format!("/members/{}/role", admin.id)),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(
        post(&server, &owner, &path("/leave"), json!({})).await.0,
        204
    );
    assert_eq!(
        get(&server, &owner, &path("")).await.0,
        404,
        "gone after leaving"
    );
    assert_eq!(
        post(
            &server,
            &member,
            &format!("/v1/conversations/{d1}/leave"),
            json!({})
        )
        .await
        .0,
        422
    );

    // Public rooms are listed and open; private groups are not joinable.
    let room = {
        let (status, body) = post(
            &server,
            &member,
            "/v1/conversations",
            json!({"kind": "room", "name": "lobby"}),
        )
        .await;
        assert_eq!(status, 201);
        body["id"].as_str().unwrap().to_owned()
    };
    let (_, listed) = get(&server, &outsider, "/v1/rooms").await;
    assert!(listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == room.as_str() && r["member_count"] == 1));
    assert_eq!(
        get(&server, &outsider, &format!("/v1/conversations/{room}"))
            .await
            .0,
        200,
        "rooms are visible"
    );
    assert_eq!(
        post(
            &server,
            &outsider,
            &format!("/v1/conversations/{room}/join"),
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(&server, &outsider, &path("/join"), json!({})).await.0,
        404
    );
}

async fn list_unread_archive_and_mute(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob, carol) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
        register(&server, "carol").await,
    );
    let first = conversation(&server, &alice, "direct", &[&bob]).await;
    let second = conversation(&server, &carol, "group", &[&bob]).await;
    for i in 0..3 {
        assert_eq!(
            send_rest(
                &server,
                &alice,
                &first,
                &format!("a{i}"),
                &format!("hi {i}")
            )
            .await
            .0,
            201
        );
    }
    send_rest(&server, &carol, &second, "c0", "newest").await;
    let (_, list) = get(&server, &bob, "/v1/conversations").await;
    let rows = list["conversations"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], second.as_str(), "most recent activity first");
    assert_eq!(
        (rows[0]["unread"].as_u64(), rows[1]["unread"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(rows[1]["last_message"]["body"], "hi 2");
    let (_, alice_list) = get(&server, &alice, "/v1/conversations").await;
    assert_eq!(
        alice_list["conversations"][0]["unread"], 0,
        "your own messages are not unread"
    );
    assert_eq!(
        get(&server, &bob, "/v1/me/unread").await.1,
        json!({"messages": 4, "conversations": 2})
    );

    // Cursor paging: one per page, no repeats.
    let (_, page1) = get(&server, &bob, "/v1/conversations?limit=1").await;
    let cursor = page1["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, page2) = get(
        &server,
        &bob,
        &format!("/v1/conversations?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(page2["conversations"][0]["id"], first.as_str());
    assert_eq!(
        get(&server, &bob, "/v1/conversations?cursor=garbage")
            .await
            .0,
        422
    );

    // Muted conversations leave the badge; archived ones can be filtered.
    let (status, body) = call(
        &server,
        &bob,
        Method::PATCH,
        &format!("/v1/conversations/{first}/membership"),
        Some(json!({"muted": true, "archived": true})),
    )
    .await;
    assert_eq!(
        (status, body["muted"].as_bool(), body["archived"].as_bool()),
        (200, Some(true), Some(true))
    );
    assert_eq!(
        get(&server, &bob, "/v1/me/unread").await.1,
        json!({"messages": 1, "conversations": 1})
    );
    let (_, active) = get(&server, &bob, "/v1/conversations?archived=false").await;
    assert_eq!(active["conversations"].as_array().unwrap().len(), 1);

    // Reading clears unread.
    let mut b = Mqtt::connect(&server, &bob, "phone").await;
    b.subscribe(&format!("u/{}/in", bob.id)).await;
    b.publish_json(
        &format!("u/{}/out", bob.id),
        &json!({"op": "read", "id": "r1", "conv": second, "seq": 1}),
    )
    .await;
    b.expect(&format!("u/{}/in", bob.id), "ack", |v| v["re"] == "r1")
        .await;
    assert_eq!(
        get(&server, &bob, "/v1/me/unread").await.1,
        json!({"messages": 0, "conversations": 0})
    );
}

async fn history_walks_a_thousand_messages_both_ways(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob, eve) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
        register(&server, "eve").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    // Seed through the store's own batch path (REST and MQTT sends are rate limited).
    let store = server_store(&server).await;
    for chunk in 0..4 {
        let ops: Vec<tidings_store::WriteOp> = (0..250)
            .map(|i| {
                let n = chunk * 250 + i;
                tidings_store::WriteOp::Send(tidings_store::NewMessage {
                    id: tidings_core::protocol::ids::new_id(),
                    conv: conv.clone(),
                    sender: if n % 2 == 0 {
                        alice.id.clone()
                    } else {
                        bob.id.clone()
                    },
                    client_msg_id: format!("seed{n}"),
                    body: format!("message number {n}"),
                    reply_to: None,
                    mentions: vec![],
                    attachment: None,
                    created_at: tidings_store::now_ms(),
                })
            })
            .collect();
        store.write_batch(&ops).await.unwrap();
    }
    let path = format!("/v1/conversations/{conv}/messages");
    let mut seen: Vec<u64> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let q = before.map_or_else(
            || "?limit=37".to_owned(),
            |b| format!("?limit=37&before={b}"),
        );
        let (status, page) = get(&server, &bob, &format!("{path}{q}")).await;
        assert_eq!(status, 200);
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "ascending within a page"
        );
        seen.splice(0..0, seqs.iter().copied());
        before = seqs.first().copied();
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<u64>>(),
        "backwards: no gap, no duplicate"
    );
    let mut seen: Vec<u64> = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = get(&server, &alice, &format!("{path}?limit=41&after={after}")).await;
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        seen.extend(&seqs);
        after = *seqs.last().unwrap_or(&after);
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<u64>>(),
        "forwards: no gap, no duplicate"
    );
    assert_eq!(
        get(&server, &alice, &format!("{path}?limit=100000"))
            .await
            .1["messages"]
            .as_array()
            .unwrap()
            .len(),
        200,
        "page size is capped"
    );
    assert_eq!(
        get(&server, &eve, &path).await.0,
        404,
        "non-members see no history"
    );
    assert_eq!(
        get(&server, &alice, &format!("{path}?before=5&after=1"))
            .await
            .0,
        422
    );
}

async fn history_shows_reactions_replies_edits_and_deletions(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "group", &[&bob]).await;
    let (_, first) = send_rest(
        &server,
        &alice,
        &conv,
        "q1",
        "what's for lunch? a long question indeed",
    )
    .await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    let (status, reply) = post(
        &server,
        &bob,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": "r1", "body": "pizza", "reply_to": first_id}),
    )
    .await;
    assert_eq!(status, 201);
    let mut a = Mqtt::connect(&server, &alice, "phone").await;
    a.subscribe(&format!("u/{}/in", alice.id)).await;
    let mut b = Mqtt::connect(&server, &bob, "phone").await;
    b.subscribe(&format!("u/{}/in", bob.id)).await;
    for (m, who, id, emoji) in [
        (&a, &alice, "x1", "🍕"),
        (&b, &bob, "x2", "🍕"),
        (&b, &bob, "x3", "👍"),
    ] {
        m.publish_json(
            &format!("u/{}/out", who.id),
            &json!({"op": "react", "id": id, "msg": reply["id"], "emoji": emoji}),
        )
        .await;
    }
    b.expect(&format!("u/{}/in", bob.id), "ack x3", |v| v["re"] == "x3")
        .await;
    // Positive control: before the edit, sync replays the original text.
    let replay = sync(&server, &bob, 0).await.to_string();
    assert!(replay.contains("a long question"), "{replay}");
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &json!({"op": "edit", "id": "e1", "msg": first_id, "body": "lunch?"}),
    )
    .await;
    a.expect(&format!("u/{}/in", alice.id), "ack e1", |v| v["re"] == "e1")
        .await;
    // An edit meant to remove something removes it from replays too.
    let replay = sync(&server, &bob, 0).await.to_string();
    assert!(
        !replay.contains("a long question") && replay.contains("lunch?"),
        "sync must replay the current text only: {replay}"
    );
    let (_, page) = get(
        &server,
        &alice,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["body"], "lunch?");
    assert!(msgs[0]["edited_at"].as_i64().is_some());
    assert_eq!(msgs[1]["reply_preview"]["id"], first_id.as_str());
    assert_eq!(msgs[1]["reply_preview"]["body"], "lunch?");
    assert_eq!(
        msgs[1]["reactions"],
        json!([{"emoji": "🍕", "count": 2, "me": true}, {"emoji": "👍", "count": 1, "me": false}])
    );

    // Deleting scrubs the body from history, reply previews and sync replays alike.
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &json!({"op": "delete", "id": "d1", "msg": first_id}),
    )
    .await;
    a.expect(&format!("u/{}/in", alice.id), "ack d1", |v| v["re"] == "d1")
        .await;
    let (_, page) = get(&server, &bob, &format!("/v1/conversations/{conv}/messages")).await;
    assert_eq!(
        (
            page["messages"][0]["deleted"].as_bool(),
            page["messages"][0]["body"].as_str()
        ),
        (Some(true), Some(""))
    );
    assert_eq!(page["messages"][1]["reply_preview"]["deleted"], true);
    let replay = sync(&server, &bob, 0).await.to_string();
    assert!(
        !replay.contains("lunch") && !replay.contains("a long question"),
        "sync must not resurrect deleted text: {replay}"
    );
}

async fn sending_over_http_matches_mqtt(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob, eve) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
        register(&server, "eve").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let mut b = Mqtt::connect(&server, &bob, "phone").await;
    b.subscribe(&format!("u/{}/in", bob.id)).await;
    let (status, stored) = send_rest(&server, &alice, &conv, "bot-1", "deploy finished").await;
    assert_eq!((status, stored["seq"].as_u64()), (201, Some(1)));
    let live = b
        .expect(&format!("u/{}/in", bob.id), "message", |v| {
            v["type"] == "message"
        })
        .await;
    assert_eq!(
        (live["id"].as_str(), live["body"].as_str()),
        (stored["id"].as_str(), Some("deploy finished"))
    );
    let (status, again) = send_rest(&server, &alice, &conv, "bot-1", "deploy finished").await;
    assert_eq!(
        (status, again["id"].as_str()),
        (200, stored["id"].as_str()),
        "idempotent on client id"
    );
    assert!(
        b.drain(Duration::from_millis(300)).await.is_empty(),
        "no second delivery"
    );

    let (status, refused) = send_rest(&server, &eve, &conv, "e1", "hi").await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(send_rest(&server, &alice, &conv, "e2", "   ").await.0, 422);
    assert_eq!(
        send_rest(&server, &alice, &conv, "bad id", "x").await.0,
        422
    );
    assert_eq!(
        send_rest(&server, &alice, &conv, "big", &"x".repeat(20_000))
            .await
            .0,
        413
    );
    assert_eq!(
        send_rest(&server, &alice, "01HZZZZZZZZZZZZZZZZZZZZZZ9", "n1", "x")
            .await
            .0,
        404
    );
    // Eve's sync holds nothing of theirs.
    let eve_events = sync(&server, &eve, 0).await.to_string();
    assert!(!eve_events.contains("deploy"), "{eve_events}");

    // Rate limited with a Retry-After, never a silent drop.
    let mut limited = None;
    for i in 0..60 {
        let res = client()
            .post(server.url(&format!("/v1/conversations/{conv}/messages")))
            .bearer_auth(&alice.access)
            .json(&json!({"client_msg_id": format!("flood{i}"), "body": "flood"}))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
    }
    let res = limited.expect("a flood is rate limited");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    expect_error(res, 429, "rate_limited").await;
}

async fn search_finds_only_your_messages(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob, eve) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
        register(&server, "eve").await,
    );
    let ours = conversation(&server, &alice, "direct", &[&bob]).await;
    let theirs = conversation(&server, &eve, "direct", &[&bob]).await;
    send_rest(
        &server,
        &alice,
        &ours,
        "s1",
        "the quarterly report is ready",
    )
    .await;
    send_rest(
        &server,
        &bob,
        &ours,
        "s2",
        "report report report: thanks for the report",
    )
    .await;
    send_rest(&server, &alice, &ours, "s3", "lunch at noon").await;
    send_rest(&server, &eve, &theirs, "s4", "secret report from eve").await;

    let (status, found) = get(&server, &alice, "/v1/search?q=report").await;
    assert_eq!(status, 200);
    let bodies: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        !bodies.iter().any(|b| b.contains("eve")),
        "never from others' conversations"
    );
    assert!(bodies[0].starts_with("report report"), "ranked: {bodies:?}");
    let (_, prefix) = get(&server, &alice, "/v1/search?q=quart").await;
    assert_eq!(
        prefix["results"].as_array().unwrap().len(),
        1,
        "prefix search while typing"
    );
    let (_, scoped) = get(
        &server,
        &bob,
        &format!("/v1/search?q=report&conversation_id={theirs}"),
    )
    .await;
    assert_eq!(scoped["results"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(
            &server,
            &alice,
            &format!("/v1/search?q=report&conversation_id={theirs}")
        )
        .await
        .0,
        404
    );
    assert_eq!(get(&server, &alice, "/v1/search?q=").await.0, 422);
    let (status, odd) = get(&server, &alice, "/v1/search?q=%22report%20OR%20*%20NEAR(").await;
    assert_eq!(
        status, 200,
        "operators are searched for, never a 500: {odd}"
    );

    let (_, users) = get(&server, &alice, "/v1/users?q=bo").await;
    assert_eq!(
        users
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    assert_eq!(
        client()
            .get(server.url("/v1/users?q=bo"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

common::on_both_databases!(
    conversations_and_roles,
    list_unread_archive_and_mute,
    history_walks_a_thousand_messages_both_ways,
    history_shows_reactions_replies_edits_and_deletions,
    sending_over_http_matches_mqtt,
    search_finds_only_your_messages,
);

#[tokio::test]
async fn password_guessing_is_rate_limited_per_address() {
    let server = Server::start(Db::Sqlite).await;
    register(&server, "target").await;
    let mut last = None;
    for _ in 0..40 {
        let res = client()
            .post(server.url("/v1/auth/login"))
            .json(&json!({"username": "target", "password": "guess-guess"}))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            last = Some(res);
            break;
        }
        assert_eq!(res.status(), 401);
    }
    let res = last.expect("guessing is throttled");
    assert!(res.headers().contains_key("retry-after"));
    expect_error(res, 429, "rate_limited").await;
}
