//! A small MQTT test client over rumqttc: connects with an account's token, records
//! every publish it receives, and reports whether the server closed the connection.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use serde_json::Value;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::{Account, Server};

#[derive(Debug)]
pub enum Seen {
    ConnAck,
    /// `true` per filter the server granted.
    SubAck(Vec<bool>),
    PubAck(u16),
    /// The CONNACK refused the connection with this code.
    Refused(ConnectReturnCode),
    Publish {
        topic: String,
        payload: Vec<u8>,
    },
    Closed(String),
}

/// One event [`Mqtt::expect_each`] waits for: its topic, what to call it when it
/// never comes, and the test its JSON payload must pass.
pub type Wanted<'a> = (&'a str, &'a str, &'a dyn Fn(&Value) -> bool);

pub struct Mqtt {
    pub client: AsyncClient,
    events: UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
    pub user: String,
}

pub struct ConnectAs<'a> {
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub will: Option<(String, Vec<u8>)>,
    server: &'a Server,
}

impl<'a> ConnectAs<'a> {
    pub fn account(server: &'a Server, account: &Account, device: &str) -> Self {
        ConnectAs {
            client_id: format!("{}:{device}", account.id),
            username: account.id.clone(),
            password: account.access.clone(),
            will: None,
            server,
        }
    }

    /// Connects; `Err` with the reason if no CONNACK came (refused or closed).
    pub async fn connect(self) -> Result<Mqtt, String> {
        self.connect_or_code().await.map_err(|(why, _)| why)
    }

    /// Connects; on refusal, the reason and the CONNACK code if there was one.
    pub async fn connect_or_code(self) -> Result<Mqtt, (String, Option<ConnectReturnCode>)> {
        let mut opts = MqttOptions::new(self.client_id, "127.0.0.1", self.server.mqtt_port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
        if !self.username.is_empty() || !self.password.is_empty() {
            opts.set_credentials(self.username.clone(), self.password);
        }
        if let Some((topic, payload)) = self.will {
            opts.set_last_will(LastWill::new(topic, payload, QoS::AtMostOnce, false));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, mut events) = unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let seen = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::ConnAck,
                    Ok(Event::Incoming(Packet::SubAck(ack))) => Seen::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|c| matches!(c, SubscribeReasonCode::Success(_)))
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => Seen::PubAck(ack.pkid),
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        let _ = tx.send(Seen::Refused(code));
                        return;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    },
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Seen::Closed(describe(&e)));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(Seen::ConnAck)) => Ok(Mqtt {
                client,
                events,
                task,
                user: self.username,
            }),
            Ok(Some(Seen::Refused(code))) => Err((format!("refused: {code:?}"), Some(code))),
            Ok(Some(other)) => Err((format!("{other:?}"), None)),
            Ok(None) => Err(("event loop ended".into(), None)),
            Err(_) => Err(("no CONNACK within 10s".into(), None)),
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    e.to_string()
}

impl Mqtt {
    pub async fn connect(server: &Server, account: &Account, device: &str) -> Mqtt {
        ConnectAs::account(server, account, device)
            .connect()
            .await
            .expect("MQTT connect")
    }

    /// Subscribes and waits for the SUBACK, which must grant the filter.
    pub async fn subscribe(&mut self, filter: &str) {
        assert!(self.try_subscribe(filter).await, "{filter} was refused");
    }

    /// Subscribes and waits for the SUBACK; whether the filter was granted.
    pub async fn try_subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Seen::SubAck(granted)) => return granted == [true],
                Some(Seen::Publish { topic, payload }) => self.stash(topic, payload),
                other => panic!("expected SUBACK for {filter}, got {other:?}"),
            }
        }
    }

    fn stash(&mut self, _topic: String, _payload: Vec<u8>) {
        // Retained or early publishes that race the SUBACK are rare in these tests and
        // never what a test waits for; dropping them keeps the client simple.
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    pub async fn publish_json(&self, topic: &str, value: &Value) {
        self.publish(topic, serde_json::to_vec(value).expect("json"))
            .await;
    }

    pub async fn next(&mut self, wait: Duration) -> Option<Seen> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next publish on `topic` as JSON, skipping others; None after `wait`.
    pub async fn next_json(&mut self, topic: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Seen::Publish { topic: t, payload } if t == topic => {
                    return Some(serde_json::from_slice(&payload).expect("JSON payload"));
                }
                Seen::Closed(why) => panic!("connection closed while waiting on {topic}: {why}"),
                _ => {}
            }
        }
    }

    /// Waits for the next event on `topic` matching `pred`.
    pub async fn expect(
        &mut self,
        topic: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(topic, left).await {
                Some(v) if pred(&v) => return v,
                Some(_) => continue,
                None => panic!("timed out waiting for {what} on {topic}"),
            }
        }
    }

    /// Waits until each `(topic, what, pred)` has matched one event, in any order:
    /// events that take different paths (a stored message's mirror, relayed typing)
    /// may overtake each other, and [`expect`](Mqtt::expect) would skip the early one.
    pub async fn expect_each(&mut self, wanted: &[Wanted<'_>]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut missing: Vec<usize> = (0..wanted.len()).collect();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Seen::Publish { topic, payload }) => {
                    let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                        continue;
                    };
                    missing.retain(|&i| !(wanted[i].0 == topic && (wanted[i].2)(&v)));
                }
                Some(Seen::Closed(why)) => panic!("connection closed while waiting: {why}"),
                Some(_) => {}
                None => {
                    let names: Vec<String> = missing
                        .iter()
                        .map(|&i| format!("{} on {}", wanted[i].1, wanted[i].0))
                        .collect();
                    panic!("timed out waiting for {}", names.join(", "));
                }
            }
        }
    }

    /// Collects every publish for `wait`; panics if the connection closes.
    pub async fn drain(&mut self, wait: Duration) -> Vec<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                None => return got,
                Some(Seen::Publish { topic, payload }) => got.push((topic, payload)),
                Some(Seen::Closed(why)) => panic!("connection closed: {why}"),
                Some(_) => {}
            }
        }
    }

    /// Waits until the server closes the connection; returns every publish seen first.
    pub async fn closed(&mut self, wait: Duration) -> Result<Vec<(String, Vec<u8>)>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                None => return Err(format!("still open after {wait:?}")),
                Some(Seen::Closed(_)) => return Ok(got),
                Some(Seen::Publish { topic, payload }) => got.push((topic, payload)),
                Some(_) => {}
            }
        }
    }

    /// Drops the TCP connection without an MQTT DISCONNECT, as a crash or lost network would.
    pub fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}
