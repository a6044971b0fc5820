//! The connection loop and the event processor.
//!
//! rumqttc's `EventLoop` reconnects on its next poll with no backoff and no
//! re-subscribe, and drops in-flight QoS 1 publishes with a clean session. So this loop
//! builds a fresh client per attempt (with the current access token as password),
//! sleeps with exponential backoff and jitter between attempts, subscribes the inbox
//! on every CONNACK and, once subscribed, hands over to the processor, which syncs from
//! the last inbox seq over HTTP and republishes the outbox with the same ids.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, Transport};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::protocol::ephemeral::{Presence, Typing};
use crate::protocol::event::{ErrorCode, EventBody, MemberAction, MessageView};
use crate::protocol::{topics, Codec, JsonCodec, Topic};
use crate::sdk::client::Inner;
use crate::sdk::config::BrokerTransport;
use crate::sdk::error::{Result, SdkError};
use crate::sdk::types::*;

/// Largest MQTT packet either way (the server's own limit).
const MAX_PACKET: usize = 256 * 1024;
/// An unacknowledged command is sent again after this long.
const RESEND_AFTER: Duration = Duration::from_secs(8);
const BACKOFF_BASE_MS: u64 = 250;
const BACKOFF_CAP_MS: u64 = 10_000;
/// Commands published per flush (the request channel holds 256).
const FLUSH_BATCH: usize = 200;
/// The client's own send budget, the server's default (`limits.send_*`): pacing to it
/// means a long offline queue goes out without meeting the server's limit at all.
const SEND_BURST: f64 = 30.0;
const SEND_PER_SECOND: f64 = 10.0;
/// Retryable refusals (`rate_limited`, `unavailable`, `internal`) of one command before
/// its conversation's queue is reported wedged (the app may retry or abort it).
const MAX_ATTEMPTS: u32 = 8;

pub(crate) enum Input {
    /// Subscribed to the inbox on a fresh connection.
    Online,
    Offline,
    Publish(String, Vec<u8>),
    /// The outbox has something new.
    Flush,
    Tick,
    /// Subscribe typing and presence for a conversation.
    Subscribe(String),
    /// The app asked to try wedged queues again.
    RetryWedged,
}

/// Exponential backoff with full jitter in the upper half: `[d/2, d]`.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let d = BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempt.min(16))
        .min(BACKOFF_CAP_MS);
    Duration::from_millis(rand::thread_rng().gen_range(d / 2..=d))
}

pub(crate) fn spawn(
    inner: Arc<Inner>,
    me: String,
    tx: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let h = inner.handle.clone();
    let ticker = {
        let tx = tx.clone();
        h.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            loop {
                every.tick().await;
                if tx.send(Input::Tick).is_err() {
                    return;
                }
            }
        })
    };
    let processor = h.spawn(
        Processor {
            inner: inner.clone(),
            me: me.clone(),
            online: false,
            need_sync: false,
            sent: HashMap::new(),
            queue: SendQueue::default(),
        }
        .run(rx),
    );
    let conn = h.spawn(connection_loop(inner, me, tx));
    vec![conn, processor, ticker]
}

/// MqttOptions from a validated config; none of the setters used here can panic with
/// these values (keep-alive ≥ 1 s, non-empty client id, in-flight > 0). WebSocket
/// transports dial the whole URL (rumqttc reads host and port from it).
fn options(inner: &Inner, me: &str, token: String) -> MqttOptions {
    let cfg = &inner.config;
    let broker = &inner.broker;
    let (addr, transport) = match broker.transport {
        BrokerTransport::Tcp => (broker.host.clone(), Transport::Tcp),
        BrokerTransport::Tls => (broker.host.clone(), Transport::Tls(inner.tls())),
        BrokerTransport::Ws => (broker.url.clone(), Transport::Ws),
        BrokerTransport::Wss => (broker.url.clone(), Transport::Wss(inner.tls())),
    };
    let mut o = MqttOptions::new(format!("{me}:{}", cfg.device_id), addr, broker.port);
    o.set_transport(transport);
    o.set_keep_alive(cfg.keep_alive())
        .set_credentials(me, token)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(100)
        .set_request_channel_capacity(256);
    o
}

/// Whether a failed MQTT attempt was TLS refusing the server (certificate not trusted,
/// wrong name, not TLS at all) rather than the network.
fn mqtt_tls_failure(e: &ConnectionError) -> Option<String> {
    match e {
        ConnectionError::Tls(t) => Some(t.to_string()),
        other => crate::sdk::error::tls_cause(other),
    }
}

/// A TLS failure is shown, not retried into silence: the state becomes `TlsFailed` and
/// one `tls` error event says why (once per streak). Retrying goes on with backoff,
/// since a captive portal or a proxy mid-change fails the handshake too.
fn report_tls(inner: &Inner, reported: &mut bool, detail: &str) {
    inner.set_state(ConnectionState::TlsFailed);
    if !*reported {
        *reported = true;
        inner.events.emit(ClientEvent::Error {
            client_id: None,
            code: "tls".into(),
            detail: detail.to_owned(),
        });
    }
}

async fn connection_loop(inner: Arc<Inner>, me: String, tx: mpsc::UnboundedSender<Input>) {
    let mut attempt: u32 = 0;
    let mut failures: u32 = 0;
    let mut tls_reported = false;
    loop {
        inner.set_state(ConnectionState::Connecting);
        let force = failures >= 2 && inner.api.token_rejected().await;
        let token = match inner.api.access_token(force).await {
            Ok(t) => t,
            Err(e @ (SdkError::Auth { .. } | SdkError::NotLoggedIn)) => {
                inner.events.emit(ClientEvent::Error {
                    client_id: None,
                    code: "unauthorized".into(),
                    detail: e.to_string(),
                });
                inner.set_state(ConnectionState::LoggedOut);
                return;
            }
            Err(e) => {
                match e {
                    SdkError::Tls { detail } => report_tls(&inner, &mut tls_reported, &detail),
                    _ => inner.set_state(ConnectionState::WaitingToRetry),
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options(&inner, &me, token), 256);
        eventloop.network_options.set_connection_timeout(10);
        let mut connected = false;
        let mut inbox_pending = false;
        let mut tls_failure = None;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    attempt = 0;
                    failures = 0;
                    tls_reported = false;
                    inner
                        .subscribed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                    let _ = client.try_subscribe(topics::inbox(&me), QoS::AtLeastOnce);
                    inbox_pending = true;
                    *inner.mqtt.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) if inbox_pending => {
                    inbox_pending = false;
                    let _ = tx.send(Input::Online);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Input::Publish(p.topic, p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "tidings sdk: mqtt connection ended");
                    if !connected {
                        tls_failure = mqtt_tls_failure(&e);
                    }
                    break;
                }
            }
        }
        inner.mqtt.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = tx.send(Input::Offline);
        if !connected {
            failures = failures.saturating_add(1);
        }
        match tls_failure {
            Some(detail) => report_tls(&inner, &mut tls_reported, &detail),
            None => inner.set_state(ConnectionState::WaitingToRetry),
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// `GET /v1/conversations`, cached.
pub(crate) async fn fetch_conversations(inner: &Inner) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!(
                "/v1/conversations?limit=200&cursor={}",
                crate::sdk::http::q(c)
            ),
            None => "/v1/conversations?limit=200".to_owned(),
        };
        let page: Value = inner.api.get(&path).await?;
        for item in page["conversations"].as_array().into_iter().flatten() {
            let Ok(view) =
                serde_json::from_value::<crate::protocol::event::ConversationView>(item.clone())
            else {
                continue;
            };
            let mut conv = Conversation::from(view);
            conv.last_seq = item["last_seq"].as_u64().unwrap_or(0);
            conv.unread = item["unread"].as_u64().unwrap_or(0);
            conv.last_message = serde_json::from_value::<MessageView>(item["last_message"].clone())
                .ok()
                .map(Message::from);
            inner.local.save_conversation(&conv)?;
            out.push(conv);
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() || out.len() >= 1000 {
            return Ok(out);
        }
    }
}

pub(crate) async fn fetch_members(inner: &Inner, conv: &str) -> Result<Vec<Member>> {
    let list: Value = inner
        .api
        .get(&format!("/v1/conversations/{conv}/members"))
        .await?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(Member {
                user_id: m["user_id"].as_str()?.to_owned(),
                role: m["role"].as_str().unwrap_or("member").to_owned(),
                read_seq: m["read_seq"].as_u64().unwrap_or(0),
                delivered_seq: m["delivered_seq"].as_u64().unwrap_or(0),
            })
        })
        .collect())
}

struct Processor {
    inner: Arc<Inner>,
    me: String,
    online: bool,
    need_sync: bool,
    /// When each outbox entry was last published on this connection.
    sent: HashMap<String, Instant>,
    queue: SendQueue,
}

/// Ordering and retries of the outbox. Commands of one conversation go out one at a
/// time, in order (the next only once the previous is settled), so a refused and
/// retried message can never be overtaken by a later one; conversations do not wait
/// for each other. Sends are paced by a token bucket, and a retryable refusal holds
/// its conversation back with exponential backoff and jitter.
#[derive(Default)]
pub(crate) struct SendQueue {
    tokens: f64,
    refilled: Option<Instant>,
    /// Per queue key: no publish before this instant.
    retry_at: HashMap<String, Instant>,
    /// Retryable refusals so far, per command id.
    attempts: HashMap<String, u32>,
    /// Queue keys given up on until the app calls `retry_wedged`.
    pub(crate) wedged: std::collections::HashSet<String>,
}

impl SendQueue {
    fn take_token(&mut self, now: Instant) -> bool {
        let last = *self.refilled.get_or_insert(now - Duration::from_secs(60));
        let earned = now.duration_since(last).as_secs_f64() * SEND_PER_SECOND;
        self.tokens = (self.tokens + earned).min(SEND_BURST);
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Commands of one conversation share a queue; those naming only a message (edit,
/// delete, react) share one of their own.
fn queue_key(cmd: &crate::protocol::Command) -> String {
    use crate::protocol::Op;
    match &cmd.op {
        Op::Send { conv, .. } | Op::Delivered { conv, .. } | Op::Read { conv, .. } => conv.clone(),
        _ => String::new(),
    }
}

impl Processor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        while let Some(input) = rx.recv().await {
            match input {
                Input::Online => {
                    self.online = true;
                    self.sent.clear();
                    self.need_sync = true;
                    self.catch_up().await;
                    self.inner.set_state(ConnectionState::Connected);
                }
                Input::Offline => self.online = false,
                Input::Publish(topic, payload) => self.on_publish(&topic, &payload).await,
                Input::Flush => self.flush(false),
                Input::Tick => {
                    if self.online && self.need_sync {
                        self.catch_up().await;
                    } else {
                        self.flush(true);
                    }
                }
                Input::Subscribe(conv) => self.subscribe_conversation(&conv).await,
                Input::RetryWedged => {
                    self.queue.wedged.clear();
                    self.queue.attempts.clear();
                    self.queue.retry_at.clear();
                    self.flush(false);
                }
            }
        }
    }

    fn emit(&self, e: ClientEvent) {
        self.inner.events.emit(e);
    }

    /// Sync from the last inbox seq, refresh the conversation list and subscriptions,
    /// then republish the outbox.
    async fn catch_up(&mut self) {
        if let Err(e) = self.sync().await {
            self.emit(ClientEvent::Error {
                client_id: None,
                code: "sync_failed".into(),
                detail: e.to_string(),
            });
            return;
        }
        self.need_sync = false;
        match fetch_conversations(&self.inner).await {
            Ok(list) => {
                for c in list.iter().take(100) {
                    self.subscribe_conversation(&c.id).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "tidings sdk: conversation list"),
        }
        self.flush(true);
    }

    fn subscribe(&self, topic: String) {
        let mut subs = self
            .inner
            .subscribed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if subs.contains(&topic) {
            return;
        }
        if let Some(c) = self
            .inner
            .mqtt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if c.try_subscribe(topic.clone(), QoS::AtMostOnce).is_ok() {
                subs.insert(topic);
            }
        }
    }

    /// Typing of a conversation and presence of its members (only filters the server's
    /// ACL allows: a refused SUBSCRIBE closes the connection).
    async fn subscribe_conversation(&mut self, conv: &str) {
        if !self.online || !crate::protocol::ids::is_server_id(conv) {
            return;
        }
        self.subscribe(topics::typing_filter(conv));
        if let Ok(members) = fetch_members(&self.inner, conv).await {
            for m in members.into_iter().filter(|m| m.user_id != self.me) {
                if crate::protocol::ids::is_server_id(&m.user_id) {
                    self.subscribe(topics::presence(&m.user_id));
                }
            }
        }
    }

    /// Publishes what is due from the outbox, oldest first, with the original ids: per
    /// conversation only its first unsettled command (sent again if it went unanswered
    /// for a while, with `stale`), and only as the pacing and any backoff allow.
    fn flush(&mut self, stale: bool) {
        if !self.online {
            return;
        }
        let Some(client) = self
            .inner
            .mqtt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let Ok(entries) = self.inner.local.outbox() else {
            return;
        };
        let topic = topics::outbox(&self.me);
        let now = Instant::now();
        let mut published = 0;
        let mut queues_seen = std::collections::HashSet::new();
        for e in entries {
            let key = queue_key(&e.command);
            if !queues_seen.insert(key.clone()) {
                continue; // an earlier command of this conversation is not settled yet
            }
            if self.queue.wedged.contains(&key)
                || self.queue.retry_at.get(&key).is_some_and(|t| now < *t)
            {
                continue;
            }
            let due = match self.sent.get(&e.id) {
                None => true,
                Some(at) => stale && now.duration_since(*at) >= RESEND_AFTER,
            };
            if !due {
                continue;
            }
            // Receipts do not count against the server's send limit.
            let paced = !matches!(
                e.command.op,
                crate::protocol::Op::Delivered { .. } | crate::protocol::Op::Read { .. }
            );
            if paced && !self.sent.contains_key(&e.id) && !self.queue.take_token(now) {
                continue;
            }
            let Ok(payload) = JsonCodec.encode_command(&e.command) else {
                continue;
            };
            if client
                .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                return;
            }
            self.sent.insert(e.id, now);
            published += 1;
            if published >= FLUSH_BATCH {
                return;
            }
        }
    }

    /// A retryable refusal of command `re`: its conversation waits (backoff with
    /// jitter), then the same command goes again; past `MAX_ATTEMPTS` the queue is
    /// wedged and the app is told. Returns whether it was given up on.
    fn retry_later(&mut self, re: &str) -> bool {
        self.sent.remove(re);
        let Some(entry) = self
            .inner
            .local
            .outbox()
            .ok()
            .and_then(|all| all.into_iter().find(|e| e.id == re))
        else {
            return false;
        };
        let key = queue_key(&entry.command);
        let attempts = self.queue.attempts.entry(re.to_owned()).or_insert(0);
        *attempts += 1;
        if *attempts >= MAX_ATTEMPTS {
            self.queue.wedged.insert(key);
            return true;
        }
        let wait = backoff(*attempts).max(Duration::from_millis(200));
        self.queue.retry_at.insert(key, Instant::now() + wait);
        false
    }

    async fn sync(&mut self) -> Result<()> {
        loop {
            let since = self.inner.local.last_iseq()?;
            let page: Value = self
                .inner
                .api
                .get(&format!("/v1/sync?since={since}&limit=200"))
                .await?;
            for ev in page["events"].as_array().into_iter().flatten() {
                if let Ok(event) = serde_json::from_value::<crate::protocol::Event>(ev.clone()) {
                    if let Some(iseq) = event.seq {
                        if iseq > self.inner.local.last_iseq()? {
                            self.apply(event.body).await;
                            self.inner.local.set_last_iseq(iseq)?;
                        }
                    }
                }
            }
            let next = page["next"].as_u64().unwrap_or(since);
            if !page["has_more"].as_bool().unwrap_or(false) || next <= since {
                return Ok(());
            }
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        match Topic::parse(topic) {
            Some(Topic::Inbox(_)) => {
                let Ok(event) = JsonCodec.decode_event(payload) else {
                    return;
                };
                match (event.seq, event.re) {
                    (Some(iseq), _) => {
                        let last = self.inner.local.last_iseq().unwrap_or(0);
                        if iseq <= last {
                            return; // already applied (sync overlap or duplicate)
                        }
                        if iseq > last + 1 {
                            // A gap: fetch everything missed, this event included.
                            if self.sync().await.is_err() {
                                self.need_sync = true;
                            }
                            return;
                        }
                        self.apply(event.body).await;
                        let _ = self.inner.local.set_last_iseq(iseq);
                    }
                    (None, Some(re)) => self.on_reply(re, event.body),
                    (None, None) => {
                        if let EventBody::Error(err) = event.body {
                            if err.code == ErrorCode::Unavailable {
                                self.sent.clear();
                            }
                            self.emit(ClientEvent::Error {
                                client_id: None,
                                code: err.code.as_str().into(),
                                detail: err.message,
                            });
                        }
                    }
                }
            }
            Some(Topic::Typing { conv, user }) if user != self.me => {
                let typing = serde_json::from_slice::<Typing>(payload)
                    .map(|t| t.typing)
                    .unwrap_or(true);
                self.emit(ClientEvent::Typing {
                    conversation_id: conv,
                    user_id: user,
                    typing,
                });
            }
            Some(Topic::Presence(user)) => {
                if let Ok(p) = serde_json::from_slice::<Presence>(payload) {
                    self.emit(ClientEvent::Presence {
                        user_id: user,
                        online: p.online,
                        last_seen: p.last_seen,
                    });
                }
            }
            _ => {}
        }
    }

    /// An `ack` or `error` for one of my commands.
    fn on_reply(&mut self, re: String, body: EventBody) {
        match body {
            EventBody::Ack(ack) => {
                self.sent.remove(&re);
                self.queue.attempts.remove(&re);
                if self.inner.local.outbox_remove(&re).unwrap_or(false) {
                    self.emit(ClientEvent::Sent {
                        client_id: re,
                        conversation_id: ack.conv,
                        message_id: ack.msg,
                        seq: ack.seq,
                    });
                }
                // Settled: the next command of its conversation may go.
                self.flush(false);
            }
            EventBody::Error(err) => {
                let retry = matches!(
                    err.code,
                    ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
                );
                if retry {
                    // Not a failure yet: the queue sends it again after a pause. Only a
                    // command given up on is reported.
                    if self.retry_later(&re) {
                        self.emit(ClientEvent::Error {
                            client_id: Some(re),
                            code: "wedged".into(),
                            detail: format!(
                                "still queued after {MAX_ATTEMPTS} refusals ({}): {}; \
                                 retry_wedged() or abort_pending()",
                                err.code.as_str(),
                                err.message
                            ),
                        });
                    }
                    return;
                }
                self.sent.remove(&re);
                self.queue.attempts.remove(&re);
                if !self.inner.local.outbox_remove(&re).unwrap_or(false) {
                    return; // not mine (another device) or already settled
                }
                self.emit(ClientEvent::Error {
                    client_id: Some(re),
                    code: err.code.as_str().into(),
                    detail: err.message,
                });
                self.flush(false);
            }
            _ => {}
        }
    }

    /// Applies one durable inbox event: cache, outbox, listener.
    async fn apply(&mut self, body: EventBody) {
        let local = &self.inner.local;
        match body {
            EventBody::Message(view) => {
                let m = Message::from(view);
                let _ = local.save_message(&m);
                if m.sender == self.me && local.outbox_remove(&m.client_msg_id).unwrap_or(false) {
                    self.sent.remove(&m.client_msg_id);
                    self.queue.attempts.remove(&m.client_msg_id);
                    self.emit(ClientEvent::Sent {
                        client_id: m.client_msg_id.clone(),
                        conversation_id: Some(m.conversation_id.clone()),
                        message_id: Some(m.id.clone()),
                        seq: Some(m.seq),
                    });
                    self.flush(false);
                }
                self.emit(ClientEvent::Message { message: m });
            }
            EventBody::MessageUpdated(view) => {
                let m = Message::from(view);
                let _ = local.save_message(&m);
                if m.deleted {
                    self.emit(ClientEvent::MessageDeleted {
                        conversation_id: m.conversation_id,
                        message_id: m.id,
                    });
                } else {
                    self.emit(ClientEvent::MessageUpdated { message: m });
                }
            }
            EventBody::Reaction(r) => self.emit(ClientEvent::Reaction { reaction: r.into() }),
            EventBody::Receipt(r) => self.emit(ClientEvent::Receipt { receipt: r.into() }),
            EventBody::Member(m) => {
                if m.user == self.me
                    && matches!(m.action, MemberAction::Left | MemberAction::Removed)
                {
                    let _ = local.remove_conversation(&m.conv);
                }
                let conv = m.conv.clone();
                let joined = m.action == MemberAction::Joined;
                self.emit(ClientEvent::Membership {
                    membership: m.into(),
                });
                if joined {
                    self.subscribe_conversation(&conv).await;
                }
            }
            EventBody::Conversation(view) => {
                let mut conv = Conversation::from(view);
                if let Ok(Some(old)) = local.conversation(&conv.id) {
                    conv.last_seq = old.last_seq;
                    conv.unread = old.unread;
                    conv.last_message = old.last_message;
                }
                let _ = local.save_conversation(&conv);
                let id = conv.id.clone();
                self.emit(ClientEvent::Conversation { conversation: conv });
                self.subscribe_conversation(&id).await;
            }
            // Invitations are answered over HTTP (`GET /v1/invitations`); the SDK has no
            // call for them yet.
            // The SDK catches up over HTTP; `sync`/`conversations` answer commands it
            // never sends.
            EventBody::Ack(_)
            | EventBody::Error(_)
            | EventBody::Invitation(_)
            | EventBody::Sync(_)
            | EventBody::Conversations(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt).as_millis() as u64;
            let full = (BACKOFF_BASE_MS << attempt.min(16)).min(BACKOFF_CAP_MS);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}ms");
        }
        assert!(backoff(30) <= Duration::from_millis(BACKOFF_CAP_MS));
    }
}
