//! MQTT 5 clients (rumqttc's v5 client): same front door, same ACL, on the second
//! listener and on the main one alike (every listener speaks both versions); client
//! properties are never forwarded, and a topic alias (which would rename a topic after
//! the ACL check) is refused.

mod common;

use std::time::Duration;

use common::mqtt::Mqtt;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

enum Seen {
    ConnAck,
    SubAck(Vec<bool>),
    Publish(String, Vec<u8>),
    Closed,
}

async fn connect_v5(
    server: &Server,
    account: &Account,
    device: &str,
) -> (AsyncClient, UnboundedReceiver<Seen>) {
    let mut opts = MqttOptions::new(
        format!("{}:{device}", account.id),
        "127.0.0.1",
        server.v5_port,
    );
    opts.set_credentials(account.id.clone(), account.access.clone());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, mut rx) = unbounded_channel();
    tokio::spawn(async move {
        loop {
            let seen = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::ConnAck,
                Ok(Event::Incoming(Packet::SubAck(ack))) => Seen::SubAck(
                    ack.return_codes
                        .iter()
                        .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        .collect(),
                ),
                Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish(
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    p.payload.to_vec(),
                ),
                Ok(_) => continue,
                Err(_) => {
                    let _ = tx.send(Seen::Closed);
                    return;
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(Seen::ConnAck)) => (client, rx),
        _ => panic!("MQTT 5 CONNECT for {} was not accepted", account.username),
    }
}

async fn next_json(
    rx: &mut UnboundedReceiver<Seen>,
    topic: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Seen::Publish(t, payload))) if t == topic => {
                let v: Value = serde_json::from_slice(&payload).expect("json");
                if pred(&v) {
                    return v;
                }
            }
            Ok(Some(Seen::Closed)) => panic!("v5 connection closed while waiting on {topic}"),
            Ok(Some(_)) => {}
            _ => panic!("timed out waiting on {topic}"),
        }
    }
}

#[tokio::test]
async fn mqtt5_clients_chat_with_mqtt311_clients_and_properties_are_dropped() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, bob) = (
        register(&server, "alice").await,
        register(&server, "bob").await,
    );
    let conv = conversation(&server, &alice, "direct", &[&bob]).await;
    // Bob on MQTT 3.1.1 subscribes to the conversation mirror too: a forwarded v5
    // property would crash his connection's encoder.
    let mut b = Mqtt::connect(&server, &bob, "v4").await;
    b.subscribe(&format!("u/{}/in", bob.id)).await;
    b.subscribe(&format!("c/{conv}/t/+")).await;

    let (a, mut a_rx) = connect_v5(&server, &alice, "v5").await;
    let inbox = format!("u/{}/in", alice.id);
    a.subscribe(inbox.clone(), QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let props = PublishProperties {
        user_properties: vec![("trace".into(), "x".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let cmd = json!({"op": "send", "id": "v5-1", "conv": conv, "body": "from MQTT 5"});
    a.publish_with_properties(
        format!("u/{}/out", alice.id),
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&cmd).unwrap(),
        props.clone(),
    )
    .await
    .unwrap();
    let ack = next_json(&mut a_rx, &inbox, |v| v["re"] == "v5-1").await;
    assert_eq!(ack["type"], "ack");
    let got = b
        .expect(&format!("u/{}/in", bob.id), "message", |v| {
            v["type"] == "message"
        })
        .await;
    assert_eq!(got["body"], "from MQTT 5");
    // Typing with properties reaches the v4 member intact.
    a.publish_with_properties(
        format!("c/{conv}/t/{}", alice.id),
        QoS::AtMostOnce,
        false,
        br#"{"typing":true}"#.to_vec(),
        props,
    )
    .await
    .unwrap();
    b.expect(&format!("c/{conv}/t/{}", alice.id), "typing", |v| {
        v["typing"] == true
    })
    .await;
    // And bob answers from MQTT 3.1.1 to the MQTT 5 client.
    b.publish_json(
        &format!("u/{}/out", bob.id),
        &json!({"op": "send", "id": "v4-1", "conv": conv, "body": "from 3.1.1"}),
    )
    .await;
    let reply = next_json(&mut a_rx, &inbox, |v| {
        v["type"] == "message" && v["body"] == "from 3.1.1"
    })
    .await;
    assert_eq!(reply["sender"], bob.id.as_str());
}

#[tokio::test]
async fn the_acl_holds_on_mqtt5() {
    let server = Server::start(Db::Sqlite).await;
    let (alice, eve) = (
        register(&server, "alice").await,
        register(&server, "eve").await,
    );
    let (eve_client, mut rx) = connect_v5(&server, &eve, "probe").await;
    for filter in [
        "#".to_string(),
        format!("u/{}/in", alice.id),
        "$share/g/u/+/in".to_string(),
    ] {
        eve_client
            .subscribe(filter.clone(), QoS::AtMostOnce)
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Some(Seen::SubAck(granted)) => return granted,
                    Some(Seen::Publish(t, _)) => panic!("{filter} leaked a publish on {t}"),
                    Some(Seen::Closed) | None => panic!("{filter}: connection closed"),
                    Some(Seen::ConnAck) => {}
                }
            }
        })
        .await;
        assert_eq!(
            answer,
            Ok(vec![false]),
            "subscribing {filter} on MQTT 5 must be refused (0x87) in the SUBACK"
        );
    }
}
