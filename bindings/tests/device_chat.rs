//! A device with nothing but MQTT and a device credential chats with an SDK user for
//! longer than an access token lives, catches up over MQTT after being offline, and is
//! cut off the moment its credential is revoked. Its traffic goes through a recording
//! TCP proxy, so the compact profile's byte targets are asserted on the packets as they
//! crossed the socket: the uplink "hello" PUBLISH ≤ 48 bytes, the delivered one ≤ 64.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::recorder::Recorder;
use common::Server;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tidings_core::protocol::compact::{Context, Handles};
use tidings_core::protocol::event::EventBody;
use tidings_core::protocol::Event as WireEvent;
use tidings_core::sdk::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Access tokens live this long here; the device outlives several of them.
const ACCESS_TTL_SECS: u64 = 2;

// ---------------------------------------------------------------- the recording proxy

/// Bytes that crossed the socket, per direction, for every connection proxied.
#[derive(Default, Clone)]
struct Capture {
    up: Arc<Mutex<Vec<u8>>>,
    down: Arc<Mutex<Vec<u8>>>,
}

/// A TCP proxy in front of the broker that records both directions.
async fn recording_proxy(target: u16) -> (u16, Capture) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let capture = Capture::default();
    let cap = capture.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, cap.up.clone()));
            tokio::spawn(pump(sr, cw, cap.down.clone()));
        }
    });
    (port, capture)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Splits a recorded byte stream into whole MQTT packets (fixed header included).
fn packets(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        let (mut len, mut shift, mut j) = (0usize, 0, i + 1);
        loop {
            let Some(b) = stream.get(j) else { return out };
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            j += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = j + len;
        if end > stream.len() {
            break;
        }
        out.push(stream[i..end].to_vec());
        i = end;
    }
    out
}

/// The PUBLISH packets of a recorded direction whose bytes contain `needle`.
fn publishes_with(stream: &Mutex<Vec<u8>>, needle: &[u8]) -> Vec<Vec<u8>> {
    packets(&stream.lock().unwrap())
        .into_iter()
        .filter(|p| p[0] >> 4 == 3 && p.windows(needle.len()).any(|w| w == needle))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ------------------------------------------------------------------------- the device

/// What the device's MQTT loop saw.
#[derive(Debug)]
enum Seen {
    Publish(String, Vec<u8>),
    PubAck,
    Closed(String),
}

struct Device {
    client: AsyncClient,
    seen: UnboundedReceiver<Seen>,
}

/// Connects a raw MQTT client (no SDK) with the device credential.
async fn device_connect(port: u16, user: &str, secret: &str) -> Result<Device, String> {
    let mut opts = MqttOptions::new(format!("{user}:sensor"), "127.0.0.1", port);
    opts.set_credentials(user, secret);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let (tx, seen) = unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        loop {
            let seen = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(Ok(()));
                    }
                    continue;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    Seen::Publish(p.topic, p.payload.to_vec())
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => Seen::PubAck,
                Ok(_) => continue,
                Err(e) => {
                    let why = match &e {
                        ConnectionError::ConnectionRefused(code) => format!("refused: {code:?}"),
                        other => other.to_string(),
                    };
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(Err(why.clone()));
                    }
                    let _ = tx.send(Seen::Closed(why));
                    return;
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), ready).await {
        Ok(Ok(Ok(()))) => Ok(Device { client, seen }),
        Ok(Ok(Err(why))) => Err(why),
        _ => Err("no CONNACK".into()),
    }
}

/// Handles as the device learned them from its `conversations` answer.
#[derive(Default)]
struct Learned(HashMap<String, u32>);

impl Handles for Learned {
    fn handle(&self, conv: &str) -> Option<u32> {
        self.0.get(conv).copied()
    }
    fn conv(&self, handle: u32) -> Option<String> {
        self.0
            .iter()
            .find(|(_, h)| **h == handle)
            .map(|(c, _)| c.clone())
    }
}

/// A compact command: a CBOR map with integer keys, as a microcontroller would write it.
fn cbor(entries: Vec<(u64, ciborium::Value)>) -> Vec<u8> {
    let map = ciborium::Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (ciborium::Value::Integer(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).unwrap();
    out
}

fn int(n: u64) -> ciborium::Value {
    ciborium::Value::Integer(n.into())
}

fn text(s: &str) -> ciborium::Value {
    ciborium::Value::Text(s.into())
}

impl Device {
    async fn send(&self, payload: Vec<u8>) {
        self.client
            .publish("o", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// The next compact event on `i`, decoded; PUBACKs are skipped.
    async fn next_event(&mut self, me: &str, handles: &Learned, wait: Duration) -> WireEvent {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some(Seen::Publish(topic, payload))) => {
                    if topic != "i" {
                        continue; // the JSON inbox, followed briefly for comparison
                    }
                    let ctx = Context { user: me, handles };
                    return ctx.decode_event(&payload).expect("a compact event");
                }
                Ok(Some(Seen::PubAck)) => continue,
                Ok(Some(Seen::Closed(why))) => panic!("device connection closed: {why}"),
                Ok(None) | Err(_) => panic!("no event within {wait:?}"),
            }
        }
    }

    /// Waits for a compact message event with `body`, returning its iseq.
    async fn expect_message(&mut self, me: &str, handles: &Learned, body: &str) -> u64 {
        loop {
            let e = self.next_event(me, handles, Duration::from_secs(15)).await;
            if let EventBody::Message(m) = &e.body {
                if m.body == body {
                    return e.seq.expect("a delivered message has an iseq");
                }
            }
        }
    }
}

// ------------------------------------------------------------------- the SDK side

async fn http_json(req: reqwest::RequestBuilder, status: u16) -> Value {
    let res = req.send().await.expect("http");
    assert_eq!(res.status().as_u16(), status);
    res.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_only_device_chats_catches_up_and_is_cut_off_on_revocation() {
    let ttl = ACCESS_TTL_SECS.to_string();
    let server = Server::start_with_env(&[("TIDINGS_AUTH_ACCESS_TTL_SECS", &ttl)]);
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.http());

    // The device's owner provisions it once over HTTP; the device never logs in.
    let owner = http_json(
        http.post(url("/v1/auth/register"))
            .json(&json!({"username": "sensor", "password": "sensor-password"})),
        201,
    )
    .await;
    let sensor = owner["user"]["id"].as_str().unwrap().to_owned();
    let owner_token = owner["access_token"].as_str().unwrap().to_owned();
    let created = http_json(
        http.post(url("/v1/me/devices"))
            .bearer_auth(&owner_token)
            .json(&json!({"name": "kitchen sensor", "acks": false, "echo": false})),
        201,
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let credential = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tdk_"));
    let listed = http_json(
        http.get(url("/v1/me/devices")).bearer_auth(&owner_token),
        200,
    )
    .await;
    assert_eq!(listed["devices"][0]["id"], credential.as_str());
    assert!(
        listed["devices"][0].get("secret").is_none(),
        "the secret is shown once"
    );

    // The SDK user, and a direct conversation with the sensor.
    let dir = tempfile::tempdir().unwrap();
    let alice = Client::new(
        ClientConfig::new(
            server.http(),
            server.mqtt(),
            dir.path().to_string_lossy(),
            "alice-phone",
        ),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let rec = Arc::new(Recorder::default());
    alice.set_listener(rec.clone());
    alice.register("alice", "alice-password").await.unwrap();
    alice.connect().await.unwrap();
    let conv = alice
        .create_conversation("direct", None, vec![sensor.clone()])
        .await
        .unwrap();

    // The device: MQTT only, through the recording proxy.
    let (port, capture) = recording_proxy(server.mqtt_port).await;
    let mut dev = device_connect(port, &sensor, &secret)
        .await
        .expect("device connects");
    dev.client.subscribe("i", QoS::AtLeastOnce).await.unwrap();
    dev.send(cbor(vec![(0, int(9)), (1, int(1))])).await; // conversations
    let mut handles = Learned::default();
    let listing = dev
        .next_event(&sensor, &handles, Duration::from_secs(10))
        .await;
    let EventBody::Conversations(list) = listing.body else {
        panic!("expected the conversation list, got {listing:?}");
    };
    let entry = list
        .conversations
        .iter()
        .find(|c| c.id == conv.id)
        .expect("listed");
    handles.0.insert(conv.id.clone(), entry.handle);

    // Device -> SDK user, by handle. No `ack` comes back (the device asked for none).
    dev.send(cbor(vec![
        (0, int(1)),
        (1, int(2)),
        (2, int(entry.handle.into())),
        (3, text("hello")),
    ]))
    .await;
    let got = rec.message("hello").await;
    assert_eq!(got.sender, sensor);
    // SDK user -> device.
    alice
        .send_text(&conv.id, "hello", None, vec![])
        .await
        .unwrap();
    let mut last_iseq = dev.expect_message(&sensor, &handles, "hello").await;

    // The bytes as they crossed the socket.
    let up = publishes_with(&capture.up, b"hello");
    let down = publishes_with(&capture.down, b"hello");
    assert_eq!(up.len(), 1, "one uplink hello");
    assert_eq!(
        down.len(),
        1,
        "one delivery (no echo of the device's own hello)"
    );
    println!("uplink hello PUBLISH ({} B): {}", up[0].len(), hex(&up[0]));
    println!(
        "delivered hello PUBLISH ({} B): {}",
        down[0].len(),
        hex(&down[0])
    );
    assert!(up[0].len() <= 48, "uplink hello is {} bytes", up[0].len());
    assert!(
        down[0].len() <= 64,
        "delivered hello is {} bytes",
        down[0].len()
    );

    // The same exchange in JSON on the long topics, for the report.
    let json_inbox = format!("u/{sensor}/in");
    dev.client
        .subscribe(&json_inbox, QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cmd = json!({"op": "send", "id": "j1", "conv": conv.id, "body": "hola"});
    let topic = format!("u/{sensor}/out");
    let payload = serde_json::to_vec(&cmd).unwrap();
    dev.client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    rec.message("hola").await;
    alice
        .send_text(&conv.id, "hola", None, vec![])
        .await
        .unwrap();
    last_iseq = last_iseq.max(dev.expect_message(&sensor, &handles, "hola").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let json_up = publishes_with(&capture.up, b"hola");
    let json_down: Vec<Vec<u8>> = publishes_with(&capture.down, b"hola")
        .into_iter()
        .filter(|p| {
            p.windows(json_inbox.len())
                .any(|w| w == json_inbox.as_bytes())
        })
        .collect();
    assert_eq!((json_up.len(), json_down.len()), (1, 1));
    dev.client.unsubscribe(&json_inbox).await.unwrap();
    if let Some(path) = std::env::var_os("TIDINGS_WIRE_REPORT") {
        // "hola" is one byte shorter than "hello": +1 compares like with like.
        let report = format!(
            "| a \"hello\" | compact profile (`o`/`i`, CBOR) | JSON (`u/{{id}}/out`, `u/{{id}}/in`) | target |\n\
             |---|---|---|---|\n\
             | uplink send, whole PUBLISH | {} B | {} B | ≤ 48 B |\n\
             | delivered message, whole PUBLISH | {} B | {} B | ≤ 64 B |\n\n\
             Compact uplink: `{}`\n\nCompact delivery: `{}`\n",
            up[0].len(),
            json_up[0].len() + 1,
            down[0].len(),
            json_down[0].len() + 1,
            hex(&up[0]),
            hex(&down[0]),
        );
        std::fs::write(path, report).expect("write the wire report");
    }

    // Longer than an access token lives: the device neither refreshes nor reconnects.
    tokio::time::sleep(Duration::from_secs(ACCESS_TTL_SECS * 2 + 1)).await;
    dev.send(cbor(vec![
        (0, int(1)),
        (1, int(3)),
        (2, int(entry.handle.into())),
        (3, text("still here")),
    ]))
    .await;
    rec.message("still here").await;
    alice
        .send_text(&conv.id, "still hearing you", None, vec![])
        .await
        .unwrap();
    last_iseq = last_iseq.max(
        dev.expect_message(&sensor, &handles, "still hearing you")
            .await,
    );

    // Offline: what arrives meanwhile is caught up over MQTT with `sync`.
    dev.client.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=3 {
        alice
            .send_text(&conv.id, &format!("while away {i}"), None, vec![])
            .await
            .unwrap();
    }
    rec.message("while away 3").await; // stored (the SDK's own echo)
    let mut dev = device_connect(port, &sensor, &secret)
        .await
        .expect("device reconnects");
    dev.client.subscribe("i", QoS::AtLeastOnce).await.unwrap();
    dev.send(cbor(vec![(0, int(8)), (1, int(4)), (9, int(last_iseq))]))
        .await;
    let page = loop {
        let e = dev
            .next_event(&sensor, &handles, Duration::from_secs(10))
            .await;
        if let EventBody::Sync(page) = e.body {
            assert_eq!(e.re.as_deref(), Some("4"));
            break page;
        }
    };
    let bodies: Vec<String> = page
        .events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Message(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["while away 1", "while away 2", "while away 3"]);
    assert!(!page.has_more);
    let iseqs: Vec<u64> = page.events.iter().filter_map(|e| e.seq).collect();
    assert!(iseqs.windows(2).all(|w| w[0] < w[1]) && iseqs[0] > last_iseq);

    // An undecodable command gets its error on `i`, in the compact codec.
    dev.send(vec![0xFF, 0x00]).await;
    loop {
        let e = dev
            .next_event(&sensor, &handles, Duration::from_secs(10))
            .await;
        if let EventBody::Error(err) = e.body {
            assert_eq!(err.code.as_str(), "malformed");
            break;
        }
    }

    // Revocation cuts the live connection at once, and the secret no longer connects.
    let relogin = http_json(
        http.post(url("/v1/auth/login"))
            .json(&json!({"username": "sensor", "password": "sensor-password"})),
        200,
    )
    .await;
    let token = relogin["access_token"].as_str().unwrap().to_owned();
    let revoked_at = Instant::now();
    let res = http
        .delete(url(&format!("/v1/me/devices/{credential}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), dev.seen.recv()).await {
            Ok(Some(Seen::Closed(why))) => break why,
            Ok(Some(_)) => continue,
            Ok(None) => break "ended".into(),
            Err(_) => panic!("the device was still connected 3 s after revocation"),
        }
    };
    println!(
        "closed {:?} after revocation: {closed}",
        revoked_at.elapsed()
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(2));
    let refused = device_connect(port, &sensor, &secret)
        .await
        .err()
        .expect("refused");
    assert!(
        refused.contains(&format!("{:?}", ConnectReturnCode::BadUserNamePassword)),
        "{refused}"
    );
    alice.shutdown();
}
