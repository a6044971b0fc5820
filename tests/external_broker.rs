//! External-broker mode (issue 12) against a real third-party broker: Debian's
//! Mosquitto 2 (MQTT 5, shared subscriptions; scripts/test.sh installs it). Tidings runs
//! no MQTT listener of its own; its worker takes commands from `$share/<group>/u/+/out`,
//! stores them, and publishes the `ack` and the members' events back through the broker.
//! Mosquitto has no HTTP auth hooks, so it admits anyone here: this proves the data
//! path; tests/hooks.rs proves the hooks.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// What a device's `seen` gets when the broker closes its connection.
const CLOSED: &str = "$closed";

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto() -> Mosquitto {
    assert!(
        std::path::Path::new(MOSQUITTO).exists(),
        "{MOSQUITTO} is missing: run the tests with scripts/test.sh, which installs mosquitto"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    let mut f = std::fs::File::create(&conf).expect("conf");
    writeln!(
        f,
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error"
    )
    .expect("write conf");
    let child = Command::new(MOSQUITTO)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Mosquitto {
        child,
        port,
        _dir: dir,
    }
}

/// A device talking MQTT 5 to the broker, never to Tidings.
struct Device {
    client: AsyncClient,
    seen: mpsc::UnboundedReceiver<(String, Value)>,
    _task: tokio::task::JoinHandle<()>,
}

impl Device {
    async fn connect(port: u16, client_id: &str, inbox: &str) -> Device {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, seen) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = subscribed_tx.send(());
                    }
                    Event::Incoming(Packet::Disconnect(_)) => break,
                    Event::Incoming(Packet::Publish(p)) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = tx.send((topic, v));
                        }
                    }
                    _ => {}
                }
            }
            // The broker closed the connection (a takeover, say): tell the test.
            let _ = tx.send((CLOSED.into(), Value::Null));
        });
        client
            .subscribe(inbox, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
            .await
            .expect("SUBACK");
        Device {
            client,
            seen,
            _task: task,
        }
    }

    async fn send(&self, me: &str, conv: &str, id: &str, body: &str) {
        let command = json!({ "op": "send", "id": id, "conv": conv, "body": body });
        self.client
            .publish(
                format!("u/{me}/out"),
                QoS::AtLeastOnce,
                false,
                command.to_string(),
            )
            .await
            .expect("publish");
    }

    /// Waits for the broker to close this device's connection.
    async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some((topic, _))) if topic == CLOSED => return true,
                Ok(Some(_)) => continue,
                _ => return false,
            }
        }
    }

    async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some((_, v))) if pred(&v) => return v,
                Ok(Some(_)) => continue,
                _ => panic!("timed out waiting for {what}"),
            }
        }
    }
}

async fn history(server: &Server, who: &Account, conv: &str) -> Vec<Value> {
    let res = client()
        .get(server.url(&format!("/v1/conversations/{conv}/messages?limit=200")))
        .bearer_auth(&who.access)
        .send()
        .await
        .expect("history");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    body["messages"]
        .as_array()
        .or_else(|| body.as_array())
        .cloned()
        .unwrap_or_default()
}

async fn commands_through_an_external_broker_are_stored_acked_and_fanned_out(db: Db) {
    let broker = start_mosquitto();
    let mut opts = Options::new(db);
    opts.env = vec![
        ("TIDINGS_BROKER_MODE".into(), "external".into()),
        (
            "TIDINGS_BROKER_ADDRS".into(),
            format!("127.0.0.1:{}", broker.port),
        ),
    ];
    let server = Server::start_with(opts).await;
    // No front door of its own.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.mqtt_port)).is_err(),
        "the embedded MQTT listener is off in external mode"
    );
    // Ready once the worker is connected to the broker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = client()
            .get(server.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        if res.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;

    let mut alice_dev = Device::connect(
        broker.port,
        &format!("{}:phone", alice.id),
        &format!("u/{}/in", alice.id),
    )
    .await;
    let mut bob_dev = Device::connect(
        broker.port,
        &format!("{}:phone", bob.id),
        &format!("u/{}/in", bob.id),
    )
    .await;

    alice_dev
        .send(&alice.id, &conv, "cmd-1", "hello through the broker")
        .await;
    let ack = alice_dev
        .expect("the ack", |v| v["type"] == "ack" && v["re"] == "cmd-1")
        .await;
    let event = bob_dev
        .expect("the message", |v| {
            v["type"] == "message" && v["body"] == "hello through the broker"
        })
        .await;
    assert!(event["iseq"].as_u64().is_some(), "{event}");
    assert!(
        ack.to_string().contains(&conv) || ack["seq"].is_u64(),
        "{ack}"
    );

    // A retry with the same id (a lost PUBACK, another node taking it) is acked again
    // and stored once.
    alice_dev
        .send(&alice.id, &conv, "cmd-1", "hello through the broker")
        .await;
    alice_dev
        .expect("the retry's ack", |v| {
            v["type"] == "ack" && v["re"] == "cmd-1"
        })
        .await;
    let stored = history(&server, &bob, &conv).await;
    let copies = stored
        .iter()
        .filter(|m| m["body"] == "hello through the broker")
        .count();
    assert_eq!(copies, 1, "{stored:?}");

    // A refused command gets its error event through the broker too.
    alice_dev
        .send(&alice.id, "01HZZZZZZZZZZZZZZZZZZZZZZZ", "cmd-2", "x")
        .await;
    alice_dev
        .expect("the error", |v| v["type"] == "error" && v["re"] == "cmd-2")
        .await;

    // The REST API's events go out through the broker as well.
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&bob.access)
        .json(&json!({ "client_msg_id": "rest-1", "body": "hello over REST" }))
        .send()
        .await
        .expect("send");
    assert!(res.status().is_success(), "{}", res.status());
    alice_dev
        .expect("the REST message", |v| {
            v["type"] == "message" && v["body"] == "hello over REST"
        })
        .await;
}

/// What a broker does at CONNECT: ask the auth hook, which records the client's session.
async fn broker_asks_authn(server: &Server, client_id: &str, who: &Account) {
    let res = client()
        .post(server.url("/v1/hooks/emqx/authn"))
        .json(&json!({ "clientid": client_id, "username": who.id, "password": who.access }))
        .send()
        .await
        .expect("authn hook");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["result"], "allow", "{body}");
}

/// A broker checks a subscription once, so a removed member or an ended session must be
/// disconnected there: Tidings takes over their client ids at the broker (Mosquitto has
/// no auth hooks, so the test asks the hook itself, as a broker would at CONNECT).
async fn revocations_disconnect_the_clients_at_the_broker(db: Db) {
    let broker = start_mosquitto();
    let mut opts = Options::new(db);
    opts.env = vec![
        ("TIDINGS_BROKER_MODE".into(), "external".into()),
        (
            "TIDINGS_BROKER_ADDRS".into(),
            format!("127.0.0.1:{}", broker.port),
        ),
        ("TIDINGS_HOOKS_ENABLED".into(), "true".into()),
    ];
    let server = Server::start_with(opts).await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let conv = conversation(&server, &alice, "group", &[&bob, &carol]).await;
    let connect = |who: &Account, device: &str| {
        let (server, port) = (&server, broker.port);
        let (who, client_id) = (who.clone(), format!("{}:{device}", who.id));
        async move {
            broker_asks_authn(server, &client_id, &who).await;
            let inbox = format!("u/{}/in", who.id);
            Device::connect(port, &client_id, &inbox).await
        }
    };
    let mut alice_dev = connect(&alice, "phone").await;
    let mut bob_dev = connect(&bob, "phone").await;
    let carol_tablet = login(&server, &carol, "tablet").await;
    let mut carol_phone = connect(&carol, "phone").await;
    let mut carol_tab = connect(&carol_tablet, "tablet").await;

    // Bob is removed: his client is disconnected at the broker.
    let res = client()
        .delete(server.url(&format!("/v1/conversations/{conv}/members/{}", bob.id)))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("remove");
    assert!(res.status().is_success(), "{}", res.status());
    assert!(
        bob_dev.closed(Duration::from_secs(5)).await,
        "a removed member's client stays connected at the broker"
    );

    // Carol's tablet session logs out: that client goes, her phone stays.
    let res = client()
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&carol_tablet.access)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), 204);
    assert!(
        carol_tab.closed(Duration::from_secs(5)).await,
        "a logged-out session's client stays connected at the broker"
    );
    assert!(
        !carol_phone.closed(Duration::from_millis(500)).await,
        "another session's client was disconnected"
    );
    assert!(
        !alice_dev.closed(Duration::from_millis(100)).await,
        "an unaffected user was disconnected"
    );
}

on_both_databases!(
    commands_through_an_external_broker_are_stored_acked_and_fanned_out,
    revocations_disconnect_the_clients_at_the_broker,
);

/// Two Tidings nodes on one PostgreSQL database share the commands through the broker's
/// shared subscription; one is killed with -9 in the middle of a burst. The survivor
/// takes all ingress, the device resends (with the same ids) what was never acked, as
/// the SDK's outbox does, and every message ends up stored exactly once.
#[tokio::test]
async fn a_node_killed_mid_burst_loses_nothing_acked_and_nothing_is_stored_twice() {
    const BURST: usize = 200;
    let broker = start_mosquitto();
    let url = fresh_pg_database().await;
    let opts = || {
        let mut o = Options::new(Db::Postgres);
        o.database_url = Some(url.clone());
        o.env = vec![
            ("TIDINGS_BROKER_MODE".into(), "external".into()),
            (
                "TIDINGS_BROKER_ADDRS".into(),
                format!("127.0.0.1:{}", broker.port),
            ),
            // The burst is the point here, not the per-user budget.
            ("TIDINGS_LIMITS_SEND_BURST".into(), "100000".into()),
            ("TIDINGS_LIMITS_SEND_PER_SECOND".into(), "100000".into()),
        ];
        o
    };
    let mut a = Server::start_with(opts()).await;
    let b = Server::start_with(opts()).await;
    for node in [&a, &b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client()
            .get(node.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            != 200
        {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let alice = register(&b, "alice").await;
    let bob = register(&b, "bob").await;
    let conv = conversation(&b, &alice, "group", &[&bob]).await;
    let mut alice_dev = Device::connect(
        broker.port,
        &format!("{}:phone", alice.id),
        &format!("u/{}/in", alice.id),
    )
    .await;

    let mut acked = std::collections::BTreeSet::new();
    let drain = |dev: &mut Device, acked: &mut std::collections::BTreeSet<String>| {
        while let Ok((_, v)) = dev.seen.try_recv() {
            if v["type"] == "ack" {
                if let Some(re) = v["re"].as_str() {
                    acked.insert(re.to_owned());
                }
            }
        }
    };
    let mut killed_after = None;
    for i in 0..BURST {
        alice_dev
            .send(&alice.id, &conv, &format!("b-{i}"), &format!("burst {i}"))
            .await;
        if i == BURST / 4 {
            // Both nodes have taken a share by now, then A dies mid-burst.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (on_a, on_b) = (
                a.metric("tidings_messages_stored_total").await,
                b.metric("tidings_messages_stored_total").await,
            );
            assert!(
                on_a > 0.0 && on_b > 0.0,
                "the share split: A {on_a}, B {on_b}"
            );
            a.kill9();
            drain(&mut alice_dev, &mut acked);
            killed_after = Some(acked.len());
        }
    }
    // Resend what was never acked, as the SDK's outbox does, until everything is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drain(&mut alice_dev, &mut acked);
        if acked.len() == BURST {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {BURST} acked after resending",
            acked.len()
        );
        for i in 0..BURST {
            let id = format!("b-{i}");
            if !acked.contains(&id) {
                alice_dev
                    .send(&alice.id, &conv, &id, &format!("burst {i}"))
                    .await;
            }
        }
    }
    assert!(
        killed_after.is_some_and(|n| n < BURST),
        "the kill came mid-burst"
    );

    // Stored exactly once each, and the survivor's sync agrees with the history.
    let stored = history(&b, &bob, &conv).await;
    let mut bodies: Vec<String> = stored
        .iter()
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .filter(|b| b.starts_with("burst "))
        .collect();
    bodies.sort();
    let before = bodies.len();
    bodies.dedup();
    assert_eq!(before, bodies.len(), "a message was stored twice");
    assert_eq!(bodies.len(), BURST, "every acked message is stored");
    let mut synced = Vec::new();
    let mut since = 0;
    loop {
        let page = sync(&b, &bob, since).await;
        synced.extend(page["events"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) if page["has_more"] == true => since = next,
            _ => break,
        }
    }
    let mut in_sync: Vec<&str> = synced
        .iter()
        .filter(|e| e["type"] == "message")
        .filter_map(|e| e["body"].as_str())
        .collect();
    in_sync.sort_unstable();
    assert_eq!(in_sync, bodies, "sync returns each stored message once");
}
