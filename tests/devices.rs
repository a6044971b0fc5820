//! Device credentials and the MQTT-only device protocol, on SQLite and PostgreSQL:
//! credentials limited to some conversations or to one direction, the `sync` and
//! `conversations` commands in JSON, bots on REST, and errors that reach a device in a
//! codec it reads. (The end-to-end chat with an SDK user, the byte targets and
//! revocation are in bindings/tests/device_chat.rs.)

mod common;

use std::time::Duration;

use common::mqtt::{ConnectAs, Mqtt};
use common::*;
use serde_json::{json, Value};

async fn get(server: &Server, who: &Account, path: &str) -> (u16, Value) {
    let res = client()
        .get(server.url(path))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("get");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn send_json(mqtt: &Mqtt, user: &str, id: &str, conv: &str, body: &str) {
    mqtt.publish_json(
        &format!("u/{user}/out"),
        &json!({"op": "send", "id": id, "conv": conv, "body": body}),
    )
    .await;
}

async fn a_limited_credential_reaches_only_its_conversations(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let allowed = conversation(&server, &alice, "group", &[&bob]).await;
    let other = conversation(&server, &alice, "group", &[&bob]).await;
    let (_, dev) = device_credential(
        &server,
        &bob,
        json!({"name": "bot", "conversations": [allowed]}),
    )
    .await;

    let mut d = ConnectAs::account(&server, &dev, "bot")
        .connect()
        .await
        .expect("connect");
    let inbox = format!("u/{}/in", bob.id);
    d.subscribe(&inbox).await;
    assert!(d.try_subscribe(&format!("c/{allowed}/m")).await);
    assert!(
        !d.try_subscribe(&format!("c/{other}/m")).await,
        "out of scope"
    );

    // Deliveries: the other conversation's message is filtered out, the allowed one
    // (sent after it: the positive control) arrives.
    let a = Mqtt::connect(&server, &alice, "phone").await;
    send_json(&a, &alice.id, "x1", &other, "secret elsewhere").await;
    send_json(&a, &alice.id, "x2", &allowed, "for the bot").await;
    let seen = d
        .expect(&inbox, "the allowed message", |v| {
            v["body"] == "for the bot"
        })
        .await;
    assert_eq!(seen["conv"], allowed.as_str());
    let rest = d.drain(Duration::from_millis(500)).await;
    assert!(
        !rest
            .iter()
            .any(|(_, p)| String::from_utf8_lossy(p).contains("secret elsewhere")),
        "a limited credential saw another conversation"
    );

    // Sends: in scope stored; out of scope refused like a conversation that is not there.
    send_json(&d, &bob.id, "b1", &allowed, "from the bot").await;
    d.expect(&inbox, "ack", |v| v["type"] == "ack" && v["re"] == "b1")
        .await;
    send_json(&d, &bob.id, "b2", &other, "nope").await;
    let err = d.expect(&inbox, "error", |v| v["re"] == "b2").await;
    assert_eq!(err["code"], "not_found", "{err}");
    // Ops that name only a message are refused for a limited credential.
    d.publish_json(
        &format!("u/{}/out", bob.id),
        &json!({"op": "react", "id": "b3", "msg": seen["id"], "emoji": "👍"}),
    )
    .await;
    let err = d.expect(&inbox, "error", |v| v["re"] == "b3").await;
    assert_eq!(err["code"], "forbidden", "{err}");

    // `sync` over MQTT returns only the allowed conversation's events.
    d.publish_json(
        &format!("u/{}/out", bob.id),
        &json!({"op": "sync", "id": "s1", "since": 0}),
    )
    .await;
    let page = d.expect(&inbox, "sync page", |v| v["type"] == "sync").await;
    let events = page["events"].as_array().expect("events");
    assert!(events.iter().any(|e| e["body"] == "for the bot"), "{page}");
    assert!(
        events
            .iter()
            .all(|e| e.get("conv").is_none_or(|c| c == allowed.as_str())
                && e.get("id").is_none_or(|c| c != other.as_str())),
        "{page}"
    );

    // REST: the allowed conversation's history is readable; another one is a 404; the
    // routes that are not about one conversation are out of scope.
    let (status, _) = get(
        &server,
        &dev,
        &format!("/v1/conversations/{allowed}/messages"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = get(
        &server,
        &dev,
        &format!("/v1/conversations/{other}/messages"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = get(&server, &dev, "/v1/sync").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("credential_scope"))
    );
}

async fn receive_only_and_send_only_credentials_keep_to_their_direction(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let conv = conversation(&server, &alice, "group", &[]).await;
    let (_, reader) = device_credential(
        &server,
        &alice,
        json!({"name": "display", "mode": "receive_only"}),
    )
    .await;
    let (_, writer) = device_credential(
        &server,
        &alice,
        json!({"name": "sensor", "mode": "send_only"}),
    )
    .await;
    let inbox = format!("u/{}/in", alice.id);

    let mut r = ConnectAs::account(&server, &reader, "display")
        .connect()
        .await
        .expect("connect");
    r.subscribe(&inbox).await;
    send_json(&r, &alice.id, "r1", &conv, "should not be stored").await;
    let err = r.expect(&inbox, "error", |v| v["re"] == "r1").await;
    assert_eq!(err["code"], "forbidden");

    let mut w = ConnectAs::account(&server, &writer, "sensor")
        .connect()
        .await
        .expect("connect");
    assert!(
        !w.try_subscribe(&inbox).await,
        "a send-only credential reads nothing"
    );
    send_json(&w, &alice.id, "w1", &conv, "a reading: 21.5").await;
    // The receive-only display sees the sensor's message: stored, and delivered.
    r.expect(&inbox, "the reading", |v| v["body"] == "a reading: 21.5")
        .await;
    let (status, _) = get(
        &server,
        &reader,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!(status, 200);
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&reader.access)
        .json(&json!({"client_msg_id": "r2", "body": "no"}))
        .send()
        .await
        .expect("post");
    expect_error(res, 403, "credential_scope").await;
}

async fn a_full_credential_is_a_bot_on_rest_but_cannot_manage_the_account(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let conv = conversation(&server, &alice, "group", &[]).await;
    let (id, bot) = device_credential(&server, &alice, json!({"name": "ci bot"})).await;
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&bot.access)
        .json(&json!({"client_msg_id": "deploy-1", "body": "deployed"}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    let (status, list) = get(&server, &bot, "/v1/conversations").await;
    assert_eq!(status, 200, "{list}");
    for (method, path) in [
        (reqwest::Method::POST, "/v1/me/devices"),
        (reqwest::Method::DELETE, "/v1/me"),
        (reqwest::Method::PATCH, "/v1/me"),
    ] {
        let res = client()
            .request(method, server.url(path))
            .bearer_auth(&bot.access)
            .json(&json!({"name": "x", "password": "x"}))
            .send()
            .await
            .expect("request");
        expect_error(res, 403, "credential_scope").await;
    }
    // Revoked: 401 on REST at once; another user cannot revoke it (404).
    let mallory = register(&server, "mallory").await;
    let res = client()
        .delete(server.url(&format!("/v1/me/devices/{id}")))
        .bearer_auth(&mallory.access)
        .send()
        .await
        .expect("delete");
    expect_error(res, 404, "not_found").await;
    let res = client()
        .delete(server.url(&format!("/v1/me/devices/{id}")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), 204);
    let (status, _) = get(&server, &bot, "/v1/conversations").await;
    assert_eq!(status, 401);
    let (_, list) = get(&server, &alice, "/v1/me/devices").await;
    assert_eq!(list["devices"], json!([]));
}

async fn conversations_and_sync_commands_work_in_json(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let first = conversation(&server, &alice, "group", &[&bob]).await;
    let second = conversation(&server, &bob, "group", &[&alice]).await;
    let mut a = Mqtt::connect(&server, &alice, "phone").await;
    let inbox = format!("u/{}/in", alice.id);
    a.subscribe(&inbox).await;
    let out = format!("u/{}/out", alice.id);
    a.publish_json(&out, &json!({"op": "conversations", "id": "c1"}))
        .await;
    let list = a
        .expect(&inbox, "conversation list", |v| v["re"] == "c1")
        .await;
    let handles: Vec<(String, u64)> = list["conversations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["handle"].as_u64().unwrap(),
            )
        })
        .collect();
    // Handles number the user's conversations in the order they joined them.
    let mut sorted = handles.clone();
    sorted.sort_by_key(|(_, h)| *h);
    assert_eq!(sorted, [(first.clone(), 1), (second.clone(), 2)]);

    let b = Mqtt::connect(&server, &bob, "phone").await;
    for i in 0..5 {
        send_json(&b, &bob.id, &format!("m{i}"), &second, &format!("page {i}")).await;
    }
    a.expect(&inbox, "last message", |v| v["body"] == "page 4")
        .await;
    // Paged: 2 at a time, in order, until has_more is false.
    let (mut since, mut bodies) = (0u64, Vec::new());
    for round in 0.. {
        assert!(round < 10, "sync never ended");
        a.publish_json(
            &out,
            &json!({"op": "sync", "id": format!("s{round}"), "since": since, "limit": 2}),
        )
        .await;
        let re = format!("s{round}");
        let page = a
            .expect(&inbox, "sync page", |v| v["re"] == re.as_str())
            .await;
        let events = page["events"].as_array().expect("events");
        assert!(events.len() <= 2);
        bodies.extend(
            events
                .iter()
                .filter_map(|e| e["body"].as_str().map(str::to_owned)),
        );
        since = page["next"].as_u64().expect("next");
        if page["has_more"] == false {
            break;
        }
    }
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("page {i}")).collect::<Vec<_>>()
    );
    let rest = sync(&server, &alice, 0).await;
    assert_eq!(
        rest["next"].as_u64(),
        Some(since),
        "MQTT and HTTP sync agree"
    );
}

async fn an_unreadable_command_gets_its_error_in_either_codec(db: Db) {
    let server = Server::start(db).await;
    let alice = register(&server, "alice").await;
    let mut a = Mqtt::connect(&server, &alice, "cbor-device").await;
    let cbor_inbox = format!("u/{}/in/c", alice.id);
    a.subscribe(&cbor_inbox).await;
    // A CBOR command wrapped in the self-describe tag (0xd9d9f7): not a plain map, so
    // not recognised as CBOR by its first byte. The device reads only CBOR; its error
    // still reaches it.
    let mut payload = vec![0xd9, 0xd9, 0xf7];
    ciborium::into_writer(&json!({"op": "send", "id": "t1"}), &mut payload).expect("cbor");
    a.publish(&format!("u/{}/out", alice.id), payload).await;
    let got = a.drain(Duration::from_secs(2)).await;
    let (_, bytes) = got
        .iter()
        .find(|(t, _)| *t == cbor_inbox)
        .expect("an error on the CBOR inbox");
    let event: Value = ciborium::from_reader(bytes.as_slice()).expect("a CBOR event");
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["code"], "malformed");
}

on_both_databases!(
    a_limited_credential_reaches_only_its_conversations,
    receive_only_and_send_only_credentials_keep_to_their_direction,
    a_full_credential_is_a_bot_on_rest_but_cannot_manage_the_account,
    conversations_and_sync_commands_work_in_json,
    an_unreadable_command_gets_its_error_in_either_codec,
);
