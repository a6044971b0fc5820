//! Trying to break the realtime plane. A legitimate listener (bob) stays subscribed
//! throughout, proving that live traffic keeps flowing and that nothing reaches the
//! attacker (eve).

mod common;

use std::time::Duration;

use common::mqtt::{ConnectAs, Mqtt};
use common::*;
use rumqttc::ConnectReturnCode;
use serde_json::{json, Value};
use tidings_auth::{AccessClaims, TokenKeys};
use tidings_core::protocol::{CborCodec, Codec, Command, Op};

struct Scene {
    server: Server,
    alice: Account,
    bob: Account,
    eve: Account,
    /// alice + bob only.
    private: String,
    /// alice + bob + eve.
    team: String,
    bob_mqtt: Mqtt,
    alice_mqtt: Mqtt,
}

async fn scene(db: Db) -> Scene {
    let server = Server::start(db).await;
    let (alice, bob, eve) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
        register(&server, "eve").await,
    );
    let private = conversation(&server, &alice, "direct", &[&bob]).await;
    let team = conversation(&server, &alice, "group", &[&bob, &eve]).await;
    let mut bob_mqtt = Mqtt::connect(&server, &bob, "phone").await;
    bob_mqtt.subscribe(&format!("u/{}/in", bob.id)).await;
    bob_mqtt.subscribe(&format!("c/{team}/t/+")).await;
    let mut alice_mqtt = Mqtt::connect(&server, &alice, "phone").await;
    alice_mqtt.subscribe(&format!("u/{}/in", alice.id)).await;
    Scene {
        server,
        alice,
        bob,
        eve,
        private,
        team,
        bob_mqtt,
        alice_mqtt,
    }
}

impl Scene {
    /// Alice says something private to bob; bob must receive it.
    async fn private_traffic(&mut self, n: usize) {
        let id = format!("p{n}");
        let body = format!("secret {n}");
        self.alice_mqtt
            .publish_json(
                &format!("u/{}/out", self.alice.id),
                &json!({"op": "send", "id": id, "conv": self.private, "body": body}),
            )
            .await;
        let inbox = format!("u/{}/in", self.bob.id);
        self.bob_mqtt
            .expect(&inbox, "private message", |v| v["body"] == body.as_str())
            .await;
    }
}

fn assert_nothing_leaked(seen: &[(String, Vec<u8>)], what: &str) {
    let leaked: Vec<String> = seen
        .iter()
        .map(|(t, p)| format!("{t}: {}", String::from_utf8_lossy(p)))
        .filter(|s| s.contains("secret") || s.contains("\"type\""))
        .collect();
    assert!(leaked.is_empty(), "{what} leaked: {leaked:?}");
}

#[tokio::test]
async fn forbidden_subscriptions_are_refused_in_the_suback_and_leak_nothing() {
    let mut s = scene(Db::Sqlite).await;
    let filters = [
        "#".to_string(),
        "+/+/+".into(),
        "u/+/in".into(),
        "u/#".into(),
        format!("u/{}/in", s.bob.id),
        format!("u/{}/in/c", s.bob.id),
        format!("u/{}/out", s.bob.id),
        "$share/g/u/+/in".into(),
        "$SYS/#".into(),
        format!("c/{}/m", s.private),
        format!("c/{}/t/+", s.private),
        "c/+/m".into(),
        "u/+/p".into(),
    ];
    // One connection tries them all: each is refused in its SUBACK, and the
    // connection stays up (a granted filter still works afterwards).
    let mut eve = Mqtt::connect(&s.server, &s.eve, "subs").await;
    for filter in &filters {
        assert!(!eve.try_subscribe(filter).await, "{filter} must be refused");
    }
    s.private_traffic(0).await;
    let seen = eve.drain(Duration::from_secs(1)).await;
    for filter in &filters {
        assert_nothing_leaked(&seen, filter);
    }
    assert!(s.server.logs().contains("subscription refused"));
    // Positive control: the same connection, once granted its own inbox, does receive.
    eve.subscribe(&format!("u/{}/in", s.eve.id)).await;
    eve.publish_json(
        &format!("u/{}/out", s.eve.id),
        &json!({"op": "send", "id": "still-up", "conv": s.team, "body": "hi"}),
    )
    .await;
    eve.expect(&format!("u/{}/in", s.eve.id), "ack", |v| {
        v["re"] == "still-up"
    })
    .await;
}

#[tokio::test]
async fn forbidden_publishes_close_the_connection_and_change_nothing() {
    let mut s = scene(Db::Sqlite).await;
    let forged_send =
        json!({"op": "send", "id": "forged", "conv": s.private, "body": "from bob, honest"});
    let attempts: Vec<(String, Vec<u8>)> = vec![
        (
            format!("u/{}/out", s.bob.id),
            serde_json::to_vec(&forged_send).unwrap(),
        ),
        (
            format!("u/{}/in", s.eve.id),
            br#"{"type":"message","body":"fake"}"#.to_vec(),
        ),
        (
            format!("u/{}/in", s.bob.id),
            br#"{"type":"message","body":"fake"}"#.to_vec(),
        ),
        (format!("u/{}/p", s.eve.id), br#"{"online":true}"#.to_vec()),
        (
            format!("c/{}/t/{}", s.team, s.bob.id),
            br#"{"typing":true}"#.to_vec(),
        ),
        (
            format!("c/{}/t/{}", s.private, s.eve.id),
            br#"{"typing":true}"#.to_vec(),
        ),
        (format!("c/{}/m", s.team), br#"{"type":"message"}"#.to_vec()),
        (format!("c/{}/t/{}", s.team, s.eve.id), vec![b' '; 10_000]),
        ("u//out".into(), b"{}".to_vec()),
    ];
    for (i, (topic, payload)) in attempts.iter().enumerate() {
        let mut eve = Mqtt::connect(&s.server, &s.eve, &format!("pub{i}")).await;
        eve.client
            .publish(
                topic.as_str(),
                rumqttc::QoS::AtMostOnce,
                false,
                payload.clone(),
            )
            .await
            .unwrap();
        eve.closed(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("publishing on {topic}: {e}"));
        s.private_traffic(i).await;
    }
    // Retained publishes on her own topics are refused too (they would outlive her rights).
    let mut eve = Mqtt::connect(&s.server, &s.eve, "retain").await;
    eve.client
        .publish(
            format!("c/{}/t/{}", s.team, s.eve.id),
            rumqttc::QoS::AtMostOnce,
            true,
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    eve.closed(Duration::from_secs(5))
        .await
        .expect("retained publish refused");

    // Nothing of it arrived: bob saw no forged typing, nobody's inbox has the forgery.
    let stray = s.bob_mqtt.drain(Duration::from_millis(500)).await;
    assert!(
        stray.iter().all(|(t, _)| !t.contains("/t/")),
        "forged typing reached bob: {stray:?}"
    );
    for who in [&s.alice, &s.bob] {
        let events = sync(&s.server, who, 0).await;
        let text = events.to_string();
        assert!(
            !text.contains("from bob, honest") && !text.contains("fake"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn bad_credentials_and_foreign_client_ids_are_refused_at_connect() {
    let s = scene(Db::Sqlite).await;
    let keys = TokenKeys::new(TEST_JWT_SECRET.as_bytes(), 900, 3600).unwrap();
    let sid = keys.verify_access(&s.eve.access).unwrap().sid;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = keys
        .sign(&AccessClaims {
            sub: s.eve.id.clone(),
            sid: sid.clone(),
            iat: now - 7200,
            exp: now - 3600,
            iss: "tidings".into(),
        })
        .unwrap();
    let forged = TokenKeys::new(&[9u8; 48], 900, 3600)
        .unwrap()
        .issue_access(&s.bob.id, &sid, now)
        .unwrap();
    let as_eve = |password: &str| {
        let mut c = ConnectAs::account(&s.server, &s.eve, "x");
        c.password = password.to_owned();
        c
    };
    let mut cases: Vec<(&str, ConnectAs)> = vec![
        ("no credentials", {
            let mut c = ConnectAs::account(&s.server, &s.eve, "x");
            c.username.clear();
            c.password.clear();
            c
        }),
        ("expired token", as_eve(&expired)),
        ("token signed with another key", as_eve(&forged)),
        ("garbage token", as_eve("not.a.jwt")),
        ("empty password", as_eve("")),
        ("eve's token, claiming to be bob", {
            let mut c = ConnectAs::account(&s.server, &s.bob, "x");
            c.password = s.eve.access.clone();
            c
        }),
        ("eve's client id names bob", {
            let mut c = ConnectAs::account(&s.server, &s.eve, "x");
            c.client_id = format!("{}:x", s.bob.id);
            c
        }),
        ("client id without a device", {
            let mut c = ConnectAs::account(&s.server, &s.eve, "x");
            c.client_id = s.eve.id.clone();
            c
        }),
        ("client id with wildcards", {
            let mut c = ConnectAs::account(&s.server, &s.eve, "x");
            c.client_id = format!("{}:#", s.eve.id);
            c
        }),
        ("the worker's own link id", {
            let mut c = ConnectAs::account(&s.server, &s.eve, "x");
            c.client_id = "tidings-worker".into();
            c
        }),
        ("a will on bob's outbox", {
            let mut c = ConnectAs::account(&s.server, &s.eve, "x");
            c.will = Some((format!("u/{}/out", s.bob.id), br#"{"op":"send"}"#.to_vec()));
            c
        }),
    ];
    // A logged-out session's token is dead too.
    let old = login(&s.server, &s.eve, "old-phone").await;
    let res = client()
        .post(s.server.url("/v1/auth/logout"))
        .bearer_auth(&old.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    cases.push(("a logged-out session", as_eve(&old.access)));

    for (what, attempt) in cases {
        match attempt.connect_or_code().await {
            Ok(_) => panic!("{what} must be refused"),
            // Every refusal is a CONNACK code a device can act on, never a bare close.
            Err((why, code)) => assert!(
                matches!(
                    code,
                    Some(
                        ConnectReturnCode::BadClientId
                            | ConnectReturnCode::BadUserNamePassword
                            | ConnectReturnCode::NotAuthorized
                    )
                ),
                "{what}: {why}"
            ),
        }
    }
    // Eve's real credentials still work, and the worker link survived the impersonation.
    Mqtt::connect(&s.server, &s.eve, "x").await;
    let mut s = s;
    s.private_traffic(99).await;
}

async fn error_of(m: &mut Mqtt, user: &Account, pred: impl Fn(&Value) -> bool) -> Value {
    m.expect(&format!("u/{}/in", user.id), "an error event", |v| {
        v["type"] == "error" && pred(v)
    })
    .await
}

#[tokio::test]
async fn bad_commands_get_typed_errors_and_the_connection_stays_up() {
    let s = scene(Db::Sqlite).await;
    let mut eve = Mqtt::connect(&s.server, &s.eve, "x").await;
    eve.subscribe(&format!("u/{}/in", s.eve.id)).await;
    let out = format!("u/{}/out", s.eve.id);

    eve.publish(&out, b"this is not json".to_vec()).await;
    let e = error_of(&mut eve, &s.eve, |_| true).await;
    assert_eq!(e["code"], "malformed");
    assert!(e["re"].is_null());

    eve.publish_json(&out, &json!({"op": "launch", "id": "u1"}))
        .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |_| true).await["code"],
        "unknown_op"
    );
    eve.publish_json(
        &out,
        &json!({"op": "send", "id": "v9", "v": 9, "conv": s.team, "body": "x"}),
    )
    .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |_| true).await["code"],
        "unsupported_version"
    );
    eve.publish_json(&out, &json!({"op": "send", "id": "s1"}))
        .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |_| true).await["code"],
        "malformed"
    );
    eve.publish_json(
        &out,
        &json!({"op": "send", "id": "big", "conv": s.team, "body": "x".repeat(20_000)}),
    )
    .await;
    let e = error_of(&mut eve, &s.eve, |v| v["re"] == "big").await;
    assert_eq!(e["code"], "too_large");
    eve.publish_json(
        &out,
        &json!({"op": "send", "id": "huge", "conv": s.team, "body": "y".repeat(100_000)}),
    )
    .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |_| true).await["code"],
        "too_large"
    );
    eve.publish_json(
        &out,
        &json!({"op": "send", "id": "nm", "conv": s.private, "body": "let me in"}),
    )
    .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |v| v["re"] == "nm").await["code"],
        "not_found",
        "a conversation one is not in looks like one that does not exist"
    );
    eve.publish_json(
        &out,
        &json!({"op": "send", "id": "bad/id", "conv": s.team, "body": "x"}),
    )
    .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |v| v["re"] == "bad/id").await["code"],
        "invalid"
    );
    eve.publish_json(
        &out,
        &json!({"op": "read", "id": "r", "conv": "nope", "seq": 1}),
    )
    .await;
    assert_eq!(
        error_of(&mut eve, &s.eve, |v| v["re"] == "r").await["code"],
        "invalid"
    );

    // Still connected: a proper message goes through.
    eve.publish_json(
        &out,
        &json!({"op": "send", "id": "ok", "conv": s.team, "body": "hi team"}),
    )
    .await;
    let ack = eve
        .expect(&format!("u/{}/in", s.eve.id), "ack", |v| v["type"] == "ack")
        .await;
    assert_eq!(ack["re"], "ok");
    assert!(!s.server.logs().contains("panicked"));
}

#[tokio::test]
async fn compact_devices_speak_cbor() {
    let s = scene(Db::Sqlite).await;
    let mut eve = Mqtt::connect(&s.server, &s.eve, "sensor").await;
    eve.subscribe(&format!("u/{}/in/c", s.eve.id)).await;
    let cmd = Command {
        v: 1,
        id: "c1".into(),
        op: Op::Send {
            conv: s.team.clone(),
            body: "tiny".into(),
            reply_to: None,
            mentions: vec![],
            attachment: None,
        },
    };
    let bytes = CborCodec.encode_command(&cmd).unwrap();
    eve.publish(&format!("u/{}/out", s.eve.id), bytes).await;
    let mut saw_ack = false;
    let mut saw_message = false;
    for (topic, payload) in eve.drain(Duration::from_secs(2)).await {
        assert_eq!(topic, format!("u/{}/in/c", s.eve.id));
        let event = CborCodec.decode_event(&payload).expect("CBOR event");
        match event.body {
            tidings_core::protocol::EventBody::Ack(_) => {
                saw_ack = event.re.as_deref() == Some("c1")
            }
            tidings_core::protocol::EventBody::Message(m) => {
                saw_message = m.body == "tiny" && event.seq.is_some()
            }
            _ => {}
        }
    }
    assert!(
        saw_ack && saw_message,
        "CBOR ack and message on the compact inbox"
    );
}

#[tokio::test]
async fn senders_are_rate_limited_with_an_error_not_a_drop() {
    let s = scene(Db::Sqlite).await;
    let mut eve = Mqtt::connect(&s.server, &s.eve, "spam").await;
    let inbox = format!("u/{}/in", s.eve.id);
    eve.subscribe(&inbox).await;
    let out = format!("u/{}/out", s.eve.id);
    for i in 0..60 {
        eve.publish_json(
            &out,
            &json!({"op": "send", "id": format!("f{i}"), "conv": s.team, "body": "flood"}),
        )
        .await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 60 {
        let v = eve
            .expect(&inbox, "ack or error", |v| {
                v["type"] == "ack" || v["type"] == "error"
            })
            .await;
        if v["type"] == "ack" {
            acks += 1;
        } else {
            assert_eq!(v["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited > 0 && acks >= 30, "acks {acks}, limited {limited}");
}
