//! The MQTT front door under attack and under churn, through real sockets: each attack
//! that killed or leaked rumqttd's own network front is a test here, and each has a
//! positive control that proves the listener would have seen a leak.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::mqtt::{ConnectAs, Mqtt};
use common::*;
use rumqttc::mqttbytes::v4;
use rumqttc::ConnectReturnCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CONNECT packet for `account`'s device, as bytes.
fn connect_packet(account: &Account, device: &str, password: &str) -> Vec<u8> {
    let mut c = v4::Connect::new(format!("{}:{device}", account.id));
    c.keep_alive = 30;
    c.set_login(account.id.clone(), password);
    let mut buf = BytesMut::new();
    c.write(&mut buf).expect("encode CONNECT");
    buf.to_vec()
}

/// Sends a CONNECT and resets the socket (SO_LINGER 0) before the CONNACK can arrive,
/// as a phone whose network drops mid-handshake does.
async fn connect_then_reset(server: &Server, packet: &[u8]) {
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.mqtt_port)).expect("tcp");
    let socket = socket2::Socket::from(stream);
    socket.set_linger(Some(Duration::ZERO)).expect("linger 0");
    let mut stream: std::net::TcpStream = socket.into();
    std::io::Write::write_all(&mut stream, packet).expect("write CONNECT");
    drop(stream); // RST
}

/// Reads the CONNACK return code of a raw connection.
async fn connack_code(stream: &mut TcpStream) -> Option<u8> {
    let mut reply = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply)).await {
        Ok(Ok(_)) if reply[0] == 0x20 => Some(reply[3]),
        _ => None,
    }
}

/// A server started with extra `TIDINGS_*` settings.
async fn start_with_env(env: &[(&str, &str)]) -> Server {
    Server::start_with(Options {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Options::new(Db::Sqlite)
    })
    .await
}

async fn alice_and_bob(server: &Server) -> (Account, Account) {
    (
        register(server, "alice").await,
        register(server, "bob").await,
    )
}

/// alice, bob, carol and dave, in a group alice created.
async fn four_in_a_group(server: &Server) -> (Account, Account, Account, Account, String) {
    let (alice, bob) = alice_and_bob(server).await;
    let (carol, dave) = (
        register(server, "carol").await,
        register(server, "dave").await,
    );
    let group = conversation(server, &alice, "group", &[&bob, &carol, &dave]).await;
    (alice, bob, carol, dave, group)
}

/// `by` removes `who` from `group` over REST.
async fn remove_member(server: &Server, by: &Account, group: &str, who: &Account) {
    let res = client()
        .delete(server.url(&format!("/v1/conversations/{group}/members/{}", who.id)))
        .bearer_auth(&by.access)
        .send()
        .await
        .expect("remove");
    assert!(res.status().is_success(), "{}", res.status());
}

async fn wait_for_metric(server: &Server, name: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = server.metric(name).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// alice and bob in a direct conversation, each with a live connection on their inbox.
async fn chat_works(server: &Server, alice: &Account, bob: &Account, tag: &str) {
    let conv = conversation(server, alice, "direct", &[bob]).await;
    let mut a = Mqtt::connect(server, alice, &format!("check-{tag}")).await;
    let mut b = Mqtt::connect(server, bob, &format!("check-{tag}")).await;
    a.subscribe(&format!("u/{}/in", alice.id)).await;
    b.subscribe(&format!("u/{}/in", bob.id)).await;
    a.publish_json(
        &format!("u/{}/out", alice.id),
        &json!({"op": "send", "id": format!("m-{tag}"), "conv": conv, "body": tag}),
    )
    .await;
    b.expect(&format!("u/{}/in", bob.id), "message", |v| {
        v["type"] == "message" && v["body"] == tag
    })
    .await;
}

#[tokio::test]
async fn reset_before_connack_then_retry_leaves_the_listener_up_and_nothing_behind() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, bob) = alice_and_bob(&server).await;
    let packet = connect_packet(&alice, "phone", &alice.access);
    for _ in 0..30 {
        connect_then_reset(&server, &packet).await;
    }
    // The same client id right after: rumqttd panicked here and its listener was dead
    // for everyone from then on.
    let phone = Mqtt::connect(&server, &alice, "phone").await;
    drop(phone);
    chat_works(&server, &alice, &bob, "after-resets").await;
    // Every reset connection was unregistered: no slot, client id or subscription left
    // once the good clients are gone too.
    wait_for_metric(&server, "tidings_mqtt_connections", 0.0).await;
    wait_for_metric(&server, "tidings_mqtt_client_ids", 0.0).await;
    wait_for_metric(&server, "tidings_mqtt_subscription_keys", 0.0).await;
    assert!(!server.logs().contains("panicked"), "{}", server.logs());
}

#[tokio::test]
async fn a_full_broker_refuses_with_a_code_and_admits_again_when_a_slot_frees() {
    let server = start_with_env(&[("TIDINGS_MQTT_MAX_CONNECTIONS", "3")]).await;
    let (alice, bob) = alice_and_bob(&server).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(Mqtt::connect(&server, &alice, &format!("d{i}")).await);
    }
    // Full: refused with "server unavailable", several times, retrying the same id and
    // resetting mid-CONNECT in between.
    for _ in 0..5 {
        let refused = ConnectAs::account(&server, &bob, "late")
            .connect_or_code()
            .await;
        assert!(
            matches!(
                refused,
                Err((_, Some(ConnectReturnCode::ServiceUnavailable)))
            ),
            "{:?}",
            refused.err()
        );
        connect_then_reset(&server, &connect_packet(&bob, "late", &bob.access)).await;
    }
    drop(held.pop());
    wait_for_metric(&server, "tidings_mqtt_connections", 2.0).await;
    let mut late = Mqtt::connect(&server, &bob, "late").await;
    late.subscribe(&format!("u/{}/in", bob.id)).await;
    assert!(server.metric("tidings_mqtt_connect_refused_total").await >= 5.0);
}

#[tokio::test]
async fn the_per_user_cap_refuses_one_device_too_many() {
    let server = start_with_env(&[("TIDINGS_MQTT_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let alice = register(&server, "alice").await;
    let _a = Mqtt::connect(&server, &alice, "a").await;
    let _b = Mqtt::connect(&server, &alice, "b").await;
    let third = ConnectAs::account(&server, &alice, "c")
        .connect_or_code()
        .await;
    assert!(matches!(
        third,
        Err((_, Some(ConnectReturnCode::NotAuthorized)))
    ));
    // Taking over an existing device is not one more connection.
    let _b2 = Mqtt::connect(&server, &alice, "b").await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over_the_first() {
    let server = Server::start(Db::Sqlite).await;
    let alice = register(&server, "alice").await;
    let mut first = Mqtt::connect(&server, &alice, "phone").await;
    first.subscribe(&format!("u/{}/in", alice.id)).await;
    let _second = Mqtt::connect(&server, &alice, "phone").await;
    first
        .closed(Duration::from_secs(5))
        .await
        .expect("the older connection is closed");
    assert!(
        server
            .logged("session taken over", Duration::from_secs(5))
            .await,
        "{}",
        server.logs()
    );
    wait_for_metric(&server, "tidings_mqtt_connections", 1.0).await;
}

/// A small deterministic generator, so a failing sequence can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn random_connect_sequences_leave_no_slot_will_or_entry_behind() {
    let server = start_with_env(&[
        ("TIDINGS_MQTT_MAX_CONNECTIONS", "4"),
        ("TIDINGS_MQTT_MAX_CONNECTIONS_PER_USER", "3"),
    ])
    .await;
    let (alice, bob) = alice_and_bob(&server).await;
    let conv = conversation(&server, &alice, "group", &[&bob]).await;
    let mut rng = Lcg(0x7d1d_1e55);
    let mut held: Vec<Mqtt> = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for step in 0..120 {
        let who = if rng.next(2) == 0 { &alice } else { &bob };
        let device = format!("d{}", rng.next(5));
        match rng.next(7) {
            // Connect (maybe taking over an existing device), with a will on typing.
            0..=2 => {
                let mut c = ConnectAs::account(&server, who, &device);
                c.will = Some((
                    format!("c/{conv}/t/{}", who.id),
                    b"{\"typing\":false}".to_vec(),
                ));
                match c.connect_or_code().await {
                    Ok(m) => {
                        // Not waiting for the SUBACK: a reset CONNECT of an earlier
                        // step, still being authenticated, may take this one over.
                        let _ = m
                            .client
                            .subscribe(format!("c/{conv}/t/+"), rumqttc::QoS::AtMostOnce)
                            .await;
                        accepted += 1;
                        held.push(m);
                    }
                    // The broker or the user is full: refused with a code.
                    Err((
                        _,
                        Some(
                            ConnectReturnCode::ServiceUnavailable
                            | ConnectReturnCode::NotAuthorized,
                        ),
                    )) => refused += 1,
                    Err((why, None)) => panic!("step {step}: no CONNACK: {why}"),
                    Err((why, Some(code))) => panic!("step {step}: refused with {code:?}: {why}"),
                }
            }
            3 => connect_then_reset(&server, &connect_packet(who, &device, &who.access)).await,
            4 => {
                // A bad token: always a CONNACK code.
                let mut c = ConnectAs::account(&server, who, &device);
                c.password = "bad".into();
                assert!(c.connect_or_code().await.is_err());
            }
            // Drop a held connection, cleanly or not.
            _ => {
                if !held.is_empty() {
                    let i = rng.next(held.len() as u64) as usize;
                    let m = held.swap_remove(i);
                    if rng.next(2) == 0 {
                        m.kill();
                    } else {
                        let _ = m.client.disconnect().await;
                    }
                }
            }
        }
    }
    assert!(
        accepted > 10 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
    for m in held.drain(..) {
        m.kill();
    }
    wait_for_metric(&server, "tidings_mqtt_connections", 0.0).await;
    wait_for_metric(&server, "tidings_mqtt_client_ids", 0.0).await;
    wait_for_metric(&server, "tidings_mqtt_subscription_keys", 0.0).await;
    // A fresh client connects and chats: the broker is whole.
    chat_works(&server, &alice, &bob, "after-churn").await;
    assert!(!server.logs().contains("panicked"));
}

#[tokio::test]
async fn a_stalled_websocket_handshake_does_not_block_other_websocket_clients() {
    let server = start_with_env(&[("TIDINGS_MQTT_CONNECT_TIMEOUT_SECS", "2")]).await;
    let alice = register(&server, "alice").await;
    // The sockets that blocked rumqttd's accept loop: silent, a bare blank line, and
    // a partial upgrade request.
    let mut stalled = Vec::new();
    for opening in [
        &b""[..],
        b"\r\n\r\n",
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: web",
    ] {
        let mut s = TcpStream::connect(&server.ws_addr).await.expect("ws tcp");
        s.write_all(opening).await.expect("write");
        stalled.push(s);
    }
    // Another WebSocket client gets through at once.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/mqtt",
            server.ws_addr
        ))
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("handshake not blocked")
    .expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"mqtt"[..])
    );
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        connect_packet(&alice, "browser", &alice.access).into(),
    ))
    .await
    .expect("send CONNECT");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("CONNACK in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(reply.into_data().as_ref(), &[0x20, 0x02, 0x00, 0x00]);
    // And the stalled sockets are closed at the deadline instead of held forever.
    for mut s in stalled {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a stalled socket was held past the deadline"
        );
    }
}

#[tokio::test]
async fn removed_members_and_logged_out_sessions_receive_nothing_more() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, bob, carol, dave, group) = four_in_a_group(&server).await;
    let follow = [
        format!("c/{group}/m"),
        format!("c/{group}/t/+"),
        format!("u/{}/p", alice.id),
    ];
    let a = Mqtt::connect(&server, &alice, "a").await;
    let mut listeners = Vec::new();
    for who in [&bob, &carol, &dave] {
        let mut m = Mqtt::connect(&server, who, "l").await;
        for filter in &follow {
            m.subscribe(filter).await;
        }
        listeners.push(m);
    }
    let [mut b, mut c, mut d]: [Mqtt; 3] = listeners.try_into().ok().expect("three");
    let say = |n: &str| json!({"op": "send", "id": n, "conv": group, "body": n});
    a.publish_json(&format!("u/{}/out", alice.id), &say("before"))
        .await;
    // Positive control: all three listeners hear the mirror before anything changes.
    for m in [&mut b, &mut c, &mut d] {
        m.expect(&format!("c/{group}/m"), "mirror", |v| v["body"] == "before")
            .await;
    }

    // Carol is removed; dave logs out (his session ends: its connections close).
    remove_member(&server, &alice, &group, &carol).await;
    let res = client()
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&dave.access)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), 204);
    d.closed(Duration::from_secs(5))
        .await
        .expect("a logged-out session's connection is closed at once");

    // Traffic after the change: messages, typing, a presence change of alice.
    a.publish_json(&format!("u/{}/out", alice.id), &say("after"))
        .await;
    a.publish(
        &format!("c/{group}/t/{}", alice.id),
        br#"{"typing":true}"#.to_vec(),
    )
    .await;
    a.client.disconnect().await.expect("disconnect");
    let mut a2 = Mqtt::connect(&server, &alice, "a2").await;
    a2.subscribe(&format!("u/{}/in", alice.id)).await;

    // Bob (still a member) sees all of it: the listener would have seen a leak.
    // The typing is relayed at once and the mirror only once stored: either may be first.
    let (mirror, typing) = (format!("c/{group}/m"), format!("c/{group}/t/{}", alice.id));
    b.expect_each(&[
        (&mirror, "mirror", &|v: &Value| v["body"] == "after"),
        (&typing, "typing", &|v: &Value| v["typing"] == true),
    ])
    .await;
    // Carol's connection stays up, but nothing of the group reaches it any more.
    let seen = c.drain(Duration::from_secs(2)).await;
    let leaked: Vec<&(String, Vec<u8>)> = seen
        .iter()
        .filter(|(t, p)| {
            t.starts_with(&format!("c/{group}")) || String::from_utf8_lossy(p).contains("after")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "a removed member still received: {leaked:?}"
    );
    // A fresh subscription attempt is refused, too.
    assert!(!c.try_subscribe(&format!("c/{group}/m")).await);
}

#[tokio::test]
async fn wills_are_checked_against_membership_and_size_when_they_fire() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, bob, carol, dave, group) = four_in_a_group(&server).await;
    let mut b = Mqtt::connect(&server, &bob, "b").await;
    b.subscribe(&format!("c/{group}/t/+")).await;
    let with_will = |who: &Account| {
        let mut c = ConnectAs::account(&server, who, "w");
        c.will = Some((
            format!("c/{group}/t/{}", who.id),
            br#"{"typing":false,"will":true}"#.to_vec(),
        ));
        c
    };
    let carol_conn = with_will(&carol).connect().await.expect("carol");
    let dave_conn = with_will(&dave).connect().await.expect("dave");
    // Carol leaves the group; then both connections drop without a DISCONNECT.
    remove_member(&server, &alice, &group, &carol).await;
    carol_conn.kill();
    dave_conn.kill();
    // Dave's will (still a member) arrives: the positive control. Carol's does not.
    b.expect(&format!("c/{group}/t/{}", dave.id), "dave's will", |v| {
        v["will"] == true
    })
    .await;
    let seen = b.drain(Duration::from_secs(2)).await;
    assert!(
        seen.iter().all(|(t, _)| !t.ends_with(&carol.id)),
        "a removed member's will was published: {seen:?}"
    );
    // A will over the typing size limit is refused at CONNECT with a code.
    let mut big = ConnectAs::account(&server, &dave, "big");
    big.will = Some((format!("c/{group}/t/{}", dave.id), vec![b' '; 10_000]));
    assert!(matches!(
        big.connect_or_code().await,
        Err((_, Some(ConnectReturnCode::NotAuthorized)))
    ));
    assert!(server.logs().contains("will not published"));
}

#[tokio::test]
async fn a_puback_means_stored_even_when_the_server_is_killed_right_after() {
    let opts = Options::new(Db::Sqlite);
    let mut server = start_with_env(&[("TIDINGS_LIMITS_SEND_BURST", "100000")]).await;
    let (alice, bob) = alice_and_bob(&server).await;
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    // A raw client, so the test sees exactly which packet ids were acknowledged.
    let mut stream = TcpStream::connect(("127.0.0.1", server.mqtt_port))
        .await
        .expect("tcp");
    stream
        .write_all(&connect_packet(&alice, "raw", &alice.access))
        .await
        .expect("CONNECT");
    assert_eq!(connack_code(&mut stream).await, Some(0));
    let total: u16 = 200;
    let mut out = BytesMut::new();
    for pkid in 1..=total {
        let cmd = json!({"op": "send", "id": format!("c{pkid}"), "conv": conv, "body": format!("n{pkid}")});
        let mut p = v4::Publish::new(
            format!("u/{}/out", alice.id),
            rumqttc::QoS::AtLeastOnce,
            serde_json::to_vec(&cmd).expect("json"),
        );
        p.pkid = pkid;
        p.write(&mut out).expect("encode");
    }
    stream.write_all(&out).await.expect("publishes");
    // Read PUBACKs until about half have arrived, then kill -9 at once.
    let mut acked = Vec::new();
    let mut buf = BytesMut::new();
    while acked.len() < usize::from(total / 2) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
            .await
            .expect("PUBACKs in time")
            .expect("read");
        assert!(n > 0, "closed early");
        while let Ok(packet) = v4::Packet::read(&mut buf, 1 << 20) {
            if let v4::Packet::PubAck(ack) = packet {
                acked.push(ack.pkid);
            }
        }
    }
    server.kill9();
    drop(stream);
    server.start_again(&opts);

    let res = client()
        .get(server.url(&format!("/v1/conversations/{conv}/messages?limit=200")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .expect("history");
    let body: Value = res.json().await.expect("json");
    let bodies: Vec<String> = body["messages"]
        .as_array()
        .expect("a list of messages")
        .iter()
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect();
    for pkid in &acked {
        let want = format!("n{pkid}");
        let copies = bodies.iter().filter(|b| **b == want).count();
        assert_eq!(copies, 1, "PUBACKed command {pkid} stored {copies} times");
    }
    // PUBACKs came in publish order, as MQTT requires.
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
}

#[tokio::test]
async fn typing_is_rate_limited_with_an_error_event() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, bob) = alice_and_bob(&server).await;
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let mut a = Mqtt::connect(&server, &alice, "a").await;
    a.subscribe(&format!("u/{}/in", alice.id)).await;
    let mut b = Mqtt::connect(&server, &bob, "b").await;
    b.subscribe(&format!("c/{conv}/t/+")).await;
    for _ in 0..40 {
        a.publish(
            &format!("c/{conv}/t/{}", alice.id),
            br#"{"typing":true}"#.to_vec(),
        )
        .await;
    }
    let err = a
        .expect(&format!("u/{}/in", alice.id), "error", |v| {
            v["type"] == "error"
        })
        .await;
    assert_eq!(err["code"], "rate_limited");
    let relayed = b.drain(Duration::from_secs(1)).await.len();
    assert!((1..40).contains(&relayed), "relayed {relayed} of 40");
}

#[tokio::test]
async fn one_send_budget_covers_mqtt_and_http() {
    let server = start_with_env(&[
        ("TIDINGS_LIMITS_SEND_BURST", "5"),
        ("TIDINGS_LIMITS_SEND_PER_SECOND", "1"),
    ])
    .await;
    let (alice, bob) = alice_and_bob(&server).await;
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    let mut a = Mqtt::connect(&server, &alice, "a").await;
    a.subscribe(&format!("u/{}/in", alice.id)).await;
    for i in 0..5 {
        a.publish_json(
            &format!("u/{}/out", alice.id),
            &json!({"op": "send", "id": format!("s{i}"), "conv": conv, "body": "x"}),
        )
        .await;
        a.expect(&format!("u/{}/in", alice.id), "ack", |v| {
            v["re"] == format!("s{i}")
        })
        .await;
    }
    let res = client()
        .post(server.url(&format!("/v1/conversations/{conv}/messages")))
        .bearer_auth(&alice.access)
        .json(&json!({"client_msg_id": "http-1", "body": "over http"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 429, "the MQTT sends used the budget");
}

#[tokio::test]
async fn readiness_is_a_real_mqtt_connect() {
    let server = Server::start(Db::Sqlite).await;
    let res = client()
        .get(server.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(res.status(), 200);
    // The probe's refusal is expected and kept out of the info log.
    assert!(!server.logs().contains("tidings-readyz"));
}

#[tokio::test]
async fn sigterm_ends_the_process_promptly_with_stuck_mqtt_clients_connected() {
    let mut server = Server::start(Db::Sqlite).await;
    let alice = register(&server, "alice").await;
    // A socket that never sends its CONNECT, and a connected client that never reads.
    let _silent = TcpStream::connect(("127.0.0.1", server.mqtt_port))
        .await
        .expect("tcp");
    let mut stuck = TcpStream::connect(("127.0.0.1", server.mqtt_port))
        .await
        .expect("tcp");
    stuck
        .write_all(&connect_packet(&alice, "stuck", &alice.access))
        .await
        .expect("CONNECT");
    assert_eq!(connack_code(&mut stuck).await, Some(0));
    let mut sub = BytesMut::new();
    v4::Subscribe::new(format!("u/{}/in", alice.id), rumqttc::QoS::AtMostOnce)
        .write(&mut sub)
        .expect("encode");
    stuck.write_all(&sub).await.expect("SUBSCRIBE");
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("join");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}
