//! Two Tidings processes on one PostgreSQL database (issue 12): a membership change or
//! a revocation made through one node reaches the other's embedded broker at once,
//! through NOTIFY from the writing transaction, not through the revocation poll (set
//! to ten minutes here so it cannot be what carries them).

mod common;

use std::time::Duration;

use common::mqtt::{ConnectAs, Mqtt};
use common::*;
use serde_json::{json, Value};

/// How long a change may take to reach the other node: far below the poll interval.
const AT_ONCE: Duration = Duration::from_secs(2);

async fn two_nodes() -> (Server, Server) {
    let url = fresh_pg_database().await;
    let opts = || {
        let mut o = Options::new(Db::Postgres);
        o.database_url = Some(url.clone());
        o.env = vec![("TIDINGS_AUTH_REVOCATION_POLL_MS".into(), "600000".into())];
        o
    };
    let a = Server::start_with(opts()).await;
    let b = Server::start_with(opts()).await;
    (a, b)
}

/// Subscribes, retrying while the node has not heard of the membership yet.
async fn subscribe_when_known(mqtt: &mut Mqtt, filter: &str) {
    let deadline = tokio::time::Instant::now() + AT_ONCE;
    while !mqtt.try_subscribe(filter).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{filter} still refused on the other node after {AT_ONCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(server: &Server, who: &Account, conv: &str, id: &str) {
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&who.access)
        .json(&json!({ "client_msg_id": id, "body": format!("message {id}") }))
        .send()
        .await
        .expect("send");
    assert!(res.status().is_success(), "{}", res.status());
}

fn bodies(seen: &[(String, Vec<u8>)], topic: &str) -> Vec<String> {
    seen.iter()
        .filter(|(t, _)| t == topic)
        .filter_map(|(_, p)| serde_json::from_slice::<Value>(p).ok())
        .filter_map(|v| v["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_member_removed_on_one_node_stops_receiving_on_the_other() {
    let (a, b) = two_nodes().await;
    let alice = register(&a, "alice").await;
    let bob = register(&a, "bob").await;
    let conv = conversation(&a, &alice, "group", &[&bob]).await;
    let mirror = format!("c/{conv}/m");

    // Node B learned of the new conversation's members from node A's transaction.
    let mut bob_on_b = Mqtt::connect(&b, &bob, "phone").await;
    subscribe_when_known(&mut bob_on_b, &mirror).await;
    let mut alice_on_b = Mqtt::connect(&b, &alice, "phone").await;
    alice_on_b.subscribe(&mirror).await;
    send(&b, &alice, &conv, "m1").await;
    bob_on_b
        .expect(&mirror, "the first message", |v| v["body"] == "message m1")
        .await;

    // Removed through node A: node B's hub drops Bob's subscription.
    let res = client()
        .delete(a.url(&format!("/v1/conversations/{conv}/members/{}", bob.id)))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("remove");
    assert!(res.status().is_success(), "{}", res.status());
    tokio::time::sleep(AT_ONCE).await;
    send(&b, &alice, &conv, "m2").await;
    alice_on_b
        .expect(&mirror, "the second message (positive control)", |v| {
            v["body"] == "message m2"
        })
        .await;
    let seen = bob_on_b.drain(Duration::from_millis(500)).await;
    assert!(
        bodies(&seen, &mirror).is_empty(),
        "a removed member still receives through node B: {:?}",
        bodies(&seen, &mirror)
    );
    assert!(
        !bob_on_b.try_subscribe(&mirror).await,
        "node B still lets a removed member subscribe"
    );
}

#[tokio::test]
async fn a_logout_on_one_node_closes_the_connection_on_the_other() {
    let (a, b) = two_nodes().await;
    let bob = register(&a, "bob").await;
    let tablet = login(&a, &bob, "tablet").await;
    let mut phone_on_b = Mqtt::connect(&b, &bob, "phone").await;
    let mut tablet_on_b = Mqtt::connect(&b, &tablet, "tablet").await;
    let res = client()
        .post(a.url("/v1/auth/logout"))
        .bearer_auth(&tablet.access)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), 204);
    tablet_on_b
        .closed(AT_ONCE)
        .await
        .expect("node B closes the logged-out session's connection at once");
    assert!(
        phone_on_b
            .drain(Duration::from_millis(300))
            .await
            .is_empty(),
        "the other session stays connected"
    );
}

#[tokio::test]
async fn a_device_credential_revoked_on_one_node_is_cut_off_on_the_other() {
    let (a, b) = two_nodes().await;
    let bob = register(&a, "bob").await;
    let res = client()
        .post(a.url("/v1/me/devices"))
        .bearer_auth(&bob.access)
        .json(&json!({ "name": "sensor" }))
        .send()
        .await
        .expect("create device");
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    let (id, secret) = (
        created["id"].as_str().expect("id").to_owned(),
        created["secret"].as_str().expect("secret").to_owned(),
    );
    let mut sensor = ConnectAs::account(&b, &bob, "sensor");
    sensor.password = secret;
    let mut sensor_on_b = sensor
        .connect()
        .await
        .expect("the device connects to node B");
    let res = client()
        .delete(a.url(&format!("/v1/me/devices/{id}")))
        .bearer_auth(&bob.access)
        .send()
        .await
        .expect("revoke");
    assert!(res.status().is_success(), "{}", res.status());
    sensor_on_b
        .closed(AT_ONCE)
        .await
        .expect("node B closes the revoked credential's connection at once");
}

#[tokio::test]
async fn a_node_whose_listener_dropped_reloads_and_keeps_following() {
    use sqlx::{Connection, Executor};
    let (a, b) = two_nodes().await;
    let alice = register(&a, "alice").await;
    let bob = register(&a, "bob").await;
    let conv = conversation(&a, &alice, "group", &[&bob]).await;
    let mirror = format!("c/{conv}/m");
    let mut bob_on_b = Mqtt::connect(&b, &bob, "phone").await;
    subscribe_when_known(&mut bob_on_b, &mirror).await;

    // Cut every node's listening connection, as a database restart or a network
    // blip would.
    let url = b.database_url.clone().expect("PostgreSQL");
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("connect");
    let cut = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .await
        .expect("terminate the listeners");
    assert!(cut.rows_affected() >= 2, "both nodes listen");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !b.logs().contains("membership index reloaded") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node B did not reload:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let res = client()
        .delete(a.url(&format!("/v1/conversations/{conv}/members/{}", bob.id)))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("remove");
    assert!(res.status().is_success(), "{}", res.status());
    tokio::time::sleep(AT_ONCE).await;
    assert!(
        !bob_on_b.try_subscribe(&mirror).await,
        "node B no longer hears removals after its listener came back"
    );
}
