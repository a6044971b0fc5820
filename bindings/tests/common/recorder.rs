//! A listener that records every event the SDK hands the app, and waits on them; and
//! SDK clients that report to one.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_core::sdk::{
    Client, ClientConfig, ClientEvent, ConnectionState, Message, TidingsListener,
};

use super::Server;

/// A client of `config` (on the current tokio runtime) with a recorder listening.
pub fn client_with(config: ClientConfig) -> (Client, Arc<Recorder>) {
    let c = Client::new(config, tokio::runtime::Handle::current()).expect("client");
    let rec = Arc::new(Recorder::default());
    c.set_listener(rec.clone());
    (c, rec)
}

/// A client of `server` (plain HTTP and MQTT) keeping its data in `dir`.
pub fn client(server: &Server, dir: &Path, device: &str) -> (Client, Arc<Recorder>) {
    client_with(ClientConfig::new(
        server.http(),
        server.mqtt(),
        dir.to_string_lossy(),
        device,
    ))
}

/// Polls `f` every 20 ms for up to 10 s.
pub async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
pub struct Recorder(Mutex<Vec<ClientEvent>>);

impl TidingsListener for Recorder {
    fn on_event(&self, event: ClientEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<ClientEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// Waits (up to 20 s) until `f` finds something in the events so far.
    pub async fn wait_for<T>(&self, what: &str, f: impl Fn(&[ClientEvent]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f(&self.0.lock().unwrap()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the last connection-state event is `want`.
    pub async fn state(&self, want: ConnectionState) {
        self.wait_for(&format!("{want:?}"), |evs| {
            evs.iter()
                .rev()
                .find_map(|e| match e {
                    ClientEvent::ConnectionState { state } => Some(*state),
                    _ => None,
                })
                .filter(|s| *s == want)
        })
        .await;
    }

    /// Waits for a message with this body.
    pub async fn message(&self, body: &str) -> Message {
        self.wait_for(&format!("message {body:?}"), |evs| {
            evs.iter().find_map(|e| match e {
                ClientEvent::Message { message, .. } if message.body == body => {
                    Some(message.clone())
                }
                _ => None,
            })
        })
        .await
    }

    /// Every message event with this body (to count duplicates).
    pub fn messages_with_body(&self, body: &str) -> Vec<Message> {
        self.all()
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Message { message, .. } if message.body == body => Some(message),
                _ => None,
            })
            .collect()
    }

    pub fn got_message(&self, body: &str) -> bool {
        has_message(&self.all(), body)
    }
}

pub fn has_message(events: &[ClientEvent], body: &str) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::Message { message, .. } if message.body == body))
}
