//! The SDK's session state machine against a real server: an account switch on one
//! device never crosses users (not in what is sent, not in what is received or cached),
//! a session revoked while connected ends in `LoggedOut` without error spam, and
//! `connect()` after `LoggedOut` connects again.

mod common;

use std::time::{Duration, Instant};

use common::recorder::{client, has_message};
use common::Server;
use serde_json::Value;
use tidings_core::sdk::*;

/// A conversation's messages as its member sees them over HTTP: (sender, body).
async fn history(server: &Server, token: &str, conv: &str) -> Vec<(String, String)> {
    let page: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/conversations/{conv}/messages",
            server.http()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["messages"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|m| {
            (
                m["sender"].as_str().unwrap_or("").into(),
                m["body"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_switch_never_crosses_users() {
    let server = Server::start();
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (device, rec) = client(&server, dir.path(), "shared-tablet");
    let (carol, _) = client(&server, other_dir.path(), "carol-phone");
    let b = device.register("bob", "bob-password").await.unwrap();
    let c = carol.register("carol", "carol-password").await.unwrap();
    let a = device.register("alice", "alice-password").await.unwrap();
    carol.connect().await.unwrap();
    device.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;

    // Alice's conversation with carol, and a message queued while offline-ish.
    let with_carol = device
        .create_conversation("group", Some("alice+carol".into()), vec![c.user_id.clone()])
        .await
        .unwrap();
    device
        .send_text(&with_carol.id, "from alice", None, vec![])
        .await
        .unwrap();
    rec.wait_for("alice's own message", |evs| {
        has_message(evs, "from alice").then_some(())
    })
    .await;

    // Switch to bob while connected: the loop restarts as bob.
    device.login("bob", "bob-password").await.unwrap();
    assert_eq!(device.session().await.unwrap().user_id, b.user_id);
    rec.state(ConnectionState::Connected).await;
    assert!(
        device.cached_conversations().unwrap().is_empty(),
        "alice's cache survived the switch"
    );
    let bobs = device
        .create_conversation("group", Some("bob's notes".into()), vec![])
        .await
        .unwrap();
    rec.clear();
    device
        .send_text(&bobs.id, "from bob", None, vec![])
        .await
        .unwrap();
    rec.wait_for("bob's own message", |evs| {
        has_message(evs, "from bob").then_some(())
    })
    .await;

    // Stored as bob's, in bob's conversation; nothing of bob's reached alice's.
    let bob_token = server.access_token("bob", "bob-password").await;
    let alice_token = server.access_token("alice", "alice-password").await;
    assert_eq!(
        history(&server, &bob_token, &bobs.id).await,
        [(b.user_id.clone(), "from bob".into())]
    );
    let alices = history(&server, &alice_token, &with_carol.id).await;
    assert_eq!(alices, [(a.user_id.clone(), "from alice".into())]);

    // And alice's conversation no longer reaches this device: carol writes to alice.
    carol
        .send_text(&with_carol.id, "for alice only", None, vec![])
        .await
        .unwrap();
    carol
        .send_text(&with_carol.id, "for alice only 2", None, vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !rec.got_message("for alice only"),
        "bob's device got alice's message"
    );
    assert!(!rec.got_message("for alice only 2"));
    device.shutdown();
    carol.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_ends_in_logged_out_and_connect_works_again() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (device, rec) = client(&server, dir.path(), "phone");
    let me = device.register("dora", "dora-password").await.unwrap();
    device.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;

    // Revoked by the operator while connected.
    server.admin(&["session", "revoke", "--user", &me.user_id]);
    rec.state(ConnectionState::LoggedOut).await;
    // No error storm afterwards: at most the one `unauthorized` that said why.
    rec.clear();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let errors: Vec<ClientEvent> = rec
        .all()
        .into_iter()
        .filter(|e| matches!(e, ClientEvent::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "errors after LoggedOut: {errors:#?}");
    assert_eq!(device.connection_state(), ConnectionState::LoggedOut);

    // Logging in again and connecting works (the old loop is gone).
    device.login("dora", "dora-password").await.unwrap();
    device.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;
    device.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_device_starts_at_the_inbox_head_without_replaying_it() {
    const HISTORY: usize = 5_000;
    let server = Server::start_with_env(&[
        ("TIDINGS_LIMITS_SEND_PER_SECOND", "100000"),
        ("TIDINGS_LIMITS_SEND_BURST", "100000"),
    ]);
    let http = reqwest::Client::new();
    let reg: Value = http
        .post(format!("{}/v1/auth/register", server.http()))
        .json(&serde_json::json!({"username": "erin", "password": "erin-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (me, token) = (
        reg["user"]["id"].as_str().unwrap().to_owned(),
        reg["access_token"].as_str().unwrap().to_owned(),
    );
    let conv: Value = http
        .post(format!("{}/v1/conversations", server.http()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"kind": "group", "name": "history"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conv = conv["id"].as_str().unwrap().to_owned();

    // 5,000 messages from another device of hers, over raw MQTT.
    let mut opts = rumqttc::MqttOptions::new(format!("{me}:loader"), "127.0.0.1", server.mqtt_port);
    opts.set_credentials(&me, &token).set_inflight(200);
    let (mqtt, mut events) = rumqttc::AsyncClient::new(opts, 512);
    let (stored_tx, stored) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut acked, mut stored_tx) = (0, Some(stored_tx));
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == HISTORY {
                        if let Some(tx) = stored_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    for i in 0..HISTORY {
        let cmd = serde_json::json!({"op": "send", "id": format!("h{i}"), "conv": conv, "body": format!("old {i}")});
        mqtt.publish(
            format!("u/{me}/out"),
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&cmd).unwrap(),
        )
        .await
        .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), stored)
        .await
        .expect("stored")
        .unwrap();

    // A new device: Connected quickly, and not one old message handed over as live.
    let dir = tempfile::tempdir().unwrap();
    let (device, rec) = client(&server, dir.path(), "new-phone");
    device.login("erin", "erin-password").await.unwrap();
    let started = Instant::now();
    device.connect().await.unwrap();
    rec.state(ConnectionState::Connected).await;
    let took = started.elapsed();
    println!("fresh device with {HISTORY} inbox events: Connected after {took:?}");
    assert!(took < Duration::from_secs(2), "Connected after {took:?}");
    let replayed = rec
        .all()
        .iter()
        .filter(|e| matches!(e, ClientEvent::Message { .. }))
        .count();
    assert_eq!(replayed, 0, "old messages were replayed as live");
    // Its conversation list is there (with the newest message), and live traffic flows.
    let convs = device.conversations().await.unwrap();
    let listed = convs
        .iter()
        .find(|c| c.id == conv)
        .expect("the conversation is listed");
    assert_eq!(
        listed.last_message.as_ref().map(|m| m.body.as_str()),
        Some("old 4999")
    );
    mqtt.publish(
        format!("u/{me}/out"),
        rumqttc::QoS::AtMostOnce,
        false,
        serde_json::to_vec(
            &serde_json::json!({"op": "send", "id": "live", "conv": conv, "body": "new one"}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    rec.wait_for("the live message", |evs| {
        has_message(evs, "new one").then_some(())
    })
    .await;
    device.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_message_offline_queue_goes_out_in_order_without_rate_limit_failures() {
    const QUEUED: usize = 200;
    // The server's default send limit: a burst of 30, then 10 a second.
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let (device, rec) = client(&server, dir.path(), "phone");
    device.register("fay", "fay-password").await.unwrap();
    let conv = device
        .create_conversation("group", Some("queue".into()), vec![])
        .await
        .unwrap();
    // Offline: everything goes to the outbox.
    let mut ids = Vec::new();
    for i in 0..QUEUED {
        ids.push(
            device
                .send_text(&conv.id, &format!("q{i}"), None, vec![])
                .await
                .unwrap(),
        );
    }
    assert_eq!(device.pending().unwrap(), ids, "queued in order");
    let started = Instant::now();
    device.connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sent = rec
            .all()
            .iter()
            .filter(|e| matches!(e, ClientEvent::Sent { .. }))
            .count();
        if sent >= QUEUED {
            break;
        }
        assert!(Instant::now() < deadline, "only {sent} of {QUEUED} sent");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{QUEUED} queued messages flushed in {:?}",
        started.elapsed()
    );
    let errors: Vec<ClientEvent> = rec
        .all()
        .into_iter()
        .filter(|e| matches!(e, ClientEvent::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "errors while flushing: {errors:#?}");
    assert!(device.pending().unwrap().is_empty());
    // Stored in the order they were queued.
    let token = server.access_token("fay", "fay-password").await;
    let mut stored = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let url = match before {
            Some(b) => format!(
                "{}/v1/conversations/{}/messages?limit=200&before={b}",
                server.http(),
                conv.id
            ),
            None => format!(
                "{}/v1/conversations/{}/messages?limit=200",
                server.http(),
                conv.id
            ),
        };
        let page: Value = reqwest::Client::new()
            .get(url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        for m in &msgs {
            stored.push((
                m["seq"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_owned(),
            ));
        }
        before = stored.iter().map(|(s, _)| *s).min();
        if msgs.len() < 200 {
            break;
        }
    }
    stored.sort();
    let bodies: Vec<String> = stored.into_iter().map(|(_, b)| b).collect();
    assert_eq!(
        bodies,
        (0..QUEUED).map(|i| format!("q{i}")).collect::<Vec<_>>()
    );
    device.shutdown();
}
