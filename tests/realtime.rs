//! The realtime plane end to end: real server, real MQTT over TCP (rumqttc), on SQLite
//! and PostgreSQL.

mod common;

use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use serde_json::{json, Value};

fn inbox(a: &Account) -> String {
    format!("u/{}/in", a.id)
}
fn outbox(a: &Account) -> String {
    format!("u/{}/out", a.id)
}

async fn online(server: &Server, a: &Account) -> Mqtt {
    let mut m = Mqtt::connect(server, a, "test").await;
    m.subscribe(&inbox(a)).await;
    m
}

fn send(id: &str, conv: &str, body: &str) -> Value {
    json!({ "op": "send", "id": id, "conv": conv, "body": body })
}

/// Waits for the ack of command `id`.
async fn ack(m: &mut Mqtt, user: &Account, id: &str) -> Value {
    m.expect(&inbox(user), &format!("ack of {id}"), |v| {
        v["re"] == id && v["type"] == "ack"
    })
    .await
}

async fn message_events(m: &mut Mqtt, user: &Account, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let v = m
            .expect(&inbox(user), "a message event", |v| v["type"] == "message")
            .await;
        got.push(v);
    }
    got
}

async fn one_to_one(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let mut a = online(&server, &alice).await;
    let mut b = online(&server, &bob).await;

    for i in 0..5 {
        a.publish_json(
            &outbox(&alice),
            &send(&format!("m{i}"), &conv, &format!("hello {i}")),
        )
        .await;
    }
    // Alice's inbox carries her acks and, for her other devices, her own messages.
    let (mut acked, mut own) = (Vec::new(), 0);
    while acked.len() < 5 || own < 5 {
        let v = a
            .expect(&inbox(&alice), "ack or message", |v| {
                v["type"] == "ack" || v["type"] == "message"
            })
            .await;
        if v["type"] == "ack" {
            assert_eq!(v["conv"], conv.as_str());
            assert_eq!(v["re"], format!("m{}", acked.len()));
            acked.push(v["seq"].as_u64().unwrap());
        } else {
            own += 1;
        }
    }
    assert_eq!(acked, [1, 2, 3, 4, 5]);
    let got = message_events(&mut b, &bob, 5).await;
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "in per-conversation order");
    let iseqs: Vec<u64> = got.iter().map(|v| v["iseq"].as_u64().unwrap()).collect();
    assert!(
        iseqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap-free inbox sequence: {iseqs:?}"
    );
    assert_eq!(got[0]["sender"], alice.id.as_str());
    assert_eq!(got[4]["body"], "hello 4");

    // A retried send (same client id) is acked with the stored message, not stored again.
    a.publish_json(&outbox(&alice), &send("m2", &conv, "hello 2"))
        .await;
    let retry = ack(&mut a, &alice, "m2").await;
    assert_eq!(retry["seq"], 3);
    assert!(
        b.drain(Duration::from_millis(500)).await.is_empty(),
        "no second delivery"
    );
    let events = sync(&server, &bob, 0).await;
    let messages: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "message")
        .collect();
    assert_eq!(messages.len(), 5, "stored once each");

    // What an operator watches: the five sends stored, ten inbox events delivered (each
    // message to both members), at least one batch, and the HTTP calls above by route.
    assert_eq!(server.metric("tidings_messages_stored_total").await, 5.0);
    assert_eq!(server.metric("tidings_events_delivered_total").await, 10.0);
    assert!(server.metric("tidings_worker_batch_size_count").await >= 1.0);
    assert!(server.metric("tidings_store_batch_seconds_count").await >= 1.0);
    // Every command read is timed to its answer (the five sends and their retry).
    assert!(server.metric("tidings_command_queue_seconds_count").await >= 6.0);
    assert!(server.metric("tidings_command_seconds_count").await >= 6.0);
    let text = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"route="/v1/sync",status="200""#),
        "HTTP requests by route and status: {text}"
    );
}

async fn group_of_five(db: Db) {
    let server = Server::start(db).await;
    let mut users = Vec::new();
    for name in ["ann", "ben", "cat", "dan", "eva"] {
        users.push(register(&server, name).await);
    }
    let others: Vec<&Account> = users[1..].iter().collect();
    let conv = conversation(&server, &users[0], "group", &others).await;
    let mut clients = Vec::new();
    for u in &users {
        clients.push(online(&server, u).await);
    }
    for (i, (u, c)) in users.iter().zip(&clients).enumerate() {
        for j in 0..2 {
            c.publish_json(
                &outbox(u),
                &send(
                    &format!("g{i}-{j}"),
                    &conv,
                    &format!("{} says {j}", u.username),
                ),
            )
            .await;
        }
    }
    for (u, c) in users.iter().zip(clients.iter_mut()) {
        let got = message_events(c, u, 10).await;
        let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=10).collect::<Vec<_>>(),
            "{} sees every message once, in order",
            u.username
        );
        assert!(c
            .drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|(_, p)| !String::from_utf8_lossy(p).contains("\"type\":\"message\"")));
    }
}

async fn edits_reactions_and_receipts(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "group", &[&bob]).await;
    let mut a = online(&server, &alice).await;
    let mut b = online(&server, &bob).await;
    a.publish_json(&outbox(&alice), &send("s1", &conv, "helo"))
        .await;
    let msg = ack(&mut a, &alice, "s1").await["msg"]
        .as_str()
        .unwrap()
        .to_owned();
    b.expect(&inbox(&bob), "message", |v| v["type"] == "message")
        .await;

    b.publish_json(
        &outbox(&bob),
        &json!({"op": "edit", "id": "e0", "msg": msg, "body": "hijack"}),
    )
    .await;
    let err = b.expect(&inbox(&bob), "error", |v| v["re"] == "e0").await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    b.publish_json(
        &outbox(&bob),
        &json!({"op": "delete", "id": "d0", "msg": msg}),
    )
    .await;
    assert_eq!(
        b.expect(&inbox(&bob), "error", |v| v["re"] == "d0").await["code"],
        "forbidden"
    );

    a.publish_json(
        &outbox(&alice),
        &json!({"op": "edit", "id": "e1", "msg": msg, "body": "hello"}),
    )
    .await;
    let updated = b
        .expect(&inbox(&bob), "message_updated", |v| {
            v["type"] == "message_updated"
        })
        .await;
    assert_eq!(updated["body"], "hello");
    assert!(updated["edited_at"].as_i64().is_some());

    b.publish_json(
        &outbox(&bob),
        &json!({"op": "react", "id": "r1", "msg": msg, "emoji": "👍"}),
    )
    .await;
    let reaction = a
        .expect(&inbox(&alice), "reaction", |v| v["type"] == "reaction")
        .await;
    assert_eq!(
        (
            reaction["user"].as_str(),
            reaction["emoji"].as_str(),
            reaction["added"].as_bool()
        ),
        (Some(bob.id.as_str()), Some("👍"), Some(true))
    );

    b.publish_json(
        &outbox(&bob),
        &json!({"op": "delivered", "id": "dl", "conv": conv, "seq": 1}),
    )
    .await;
    let receipt = a
        .expect(&inbox(&alice), "delivered receipt", |v| {
            v["type"] == "receipt"
        })
        .await;
    assert_eq!(
        (receipt["kind"].as_str(), receipt["seq"].as_u64()),
        (Some("delivered"), Some(1))
    );
    b.publish_json(
        &outbox(&bob),
        &json!({"op": "read", "id": "rd", "conv": conv, "seq": 1}),
    )
    .await;
    let receipt = a
        .expect(&inbox(&alice), "read receipt", |v| {
            v["type"] == "receipt" && v["kind"] == "read"
        })
        .await;
    assert_eq!(receipt["user"], bob.id.as_str());
    ack(&mut b, &bob, "rd").await;

    a.publish_json(
        &outbox(&alice),
        &json!({"op": "delete", "id": "x1", "msg": msg}),
    )
    .await;
    let deleted = b
        .expect(&inbox(&bob), "deletion", |v| {
            v["type"] == "message_updated" && v["deleted"] == true
        })
        .await;
    assert_eq!(deleted["body"], "");

    // The markers and the message moved in the database itself.
    let url = server
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", server.data_path("tidings.db").display()));
    let store = tidings_store::connect(&url)
        .await
        .expect("open the server's database");
    let member = store.member(&conv, &bob.id).await.unwrap().unwrap();
    assert_eq!((member.read_seq, member.delivered_seq), (1, 1));
    let stored = store.message(&msg).await.unwrap().unwrap();
    assert!(stored.deleted && stored.body.is_empty() && stored.edited_at.is_some());
    assert_eq!(
        store.reactions(&msg).await.unwrap(),
        vec![(bob.id.clone(), "👍".to_string())]
    );
}

async fn typing_and_presence(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let mut b = online(&server, &bob).await;
    b.subscribe(&format!("c/{conv}/t/+")).await;
    b.subscribe(&format!("u/{}/p", alice.id)).await;

    let a = online(&server, &alice).await;
    let presence = b
        .expect(&format!("u/{}/p", alice.id), "alice online", |v| {
            v["online"] == true
        })
        .await;
    assert!(presence.get("last_seen").is_none());

    let typing_topic = format!("c/{conv}/t/{}", alice.id);
    a.client
        .publish(
            &typing_topic,
            rumqttc::QoS::AtMostOnce,
            false,
            br#"{"typing":true}"#.to_vec(),
        )
        .await
        .unwrap();
    let typing = b.expect(&typing_topic, "typing", |_| true).await;
    assert_eq!(typing["typing"], true);
    // Typing never reaches the store: bob's inbox holds only the conversation event.
    let events = sync(&server, &bob, 0).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");

    a.kill();
    let offline = b
        .expect(&format!("u/{}/p", alice.id), "alice offline", |v| {
            v["online"] == false
        })
        .await;
    let last_seen = offline["last_seen"].as_i64().expect("last_seen");
    let now = tidings_store::now_ms();
    assert!(
        now - last_seen < 30_000 && last_seen <= now,
        "{last_seen} vs {now}"
    );

    // A late subscriber gets the retained state.
    let carol = register(&server, "carol").await;
    conversation(&server, &carol, "direct", &[&alice]).await;
    let mut c = Mqtt::connect(&server, &carol, "test").await;
    c.client
        .subscribe(format!("u/{}/p", alice.id), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = c
        .expect(&format!("u/{}/p", alice.id), "retained presence", |_| true)
        .await;
    assert_eq!(retained["online"], false);
}

async fn offline_users_catch_up(db: Db) {
    let server = Server::start(db).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let mut a = online(&server, &alice).await;
    for i in 0..3 {
        a.publish_json(
            &outbox(&alice),
            &send(&format!("o{i}"), &conv, &format!("while you were out {i}")),
        )
        .await;
        ack(&mut a, &alice, &format!("o{i}")).await;
    }
    // Bob comes back: first his live inbox, then catch-up by sync from the last iseq he knew (1).
    let mut b = online(&server, &bob).await;
    let caught_up = sync(&server, &bob, 1).await;
    let bodies: Vec<&str> = caught_up["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "while you were out 0",
            "while you were out 1",
            "while you were out 2"
        ]
    );
    assert_eq!(caught_up["next"], 4);
    assert_eq!(caught_up["has_more"], false);
    // And live delivery continues after the synced point.
    a.publish_json(&outbox(&alice), &send("o3", &conv, "welcome back"))
        .await;
    let live = b
        .expect(&inbox(&bob), "live message", |v| v["type"] == "message")
        .await;
    assert_eq!(live["iseq"], 5);
}

common::on_both_databases!(
    one_to_one,
    group_of_five,
    edits_reactions_and_receipts,
    typing_and_presence,
    offline_users_catch_up
);
