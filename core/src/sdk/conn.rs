//! The connection loop and the event processor.
//!
//! rumqttc's `EventLoop` reconnects on its next poll with no backoff and no
//! re-subscribe, and drops in-flight QoS 1 publishes with a clean session. So this loop
//! builds a fresh client per attempt (with the current access token as password),
//! sleeps with exponential backoff and jitter between attempts, subscribes the inbox
//! on every CONNACK and, once subscribed, hands over to the processor. The processor
//! puts live traffic first: it republishes the outbox with the same ids and reports
//! `Connected` at once, then catches up in the background (the inbox from the last
//! seq over HTTP, the conversation list, typing and presence subscriptions), applying
//! what the background tasks fetch in inbox order. The backoff between attempts only
//! starts over after a connection stayed up for [`STABLE_AFTER`], so a server that
//! accepts and drops at once is not hammered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, Transport};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::protocol::ephemeral::{Presence, Typing};
use crate::protocol::event::{
    ErrorCode, EventBody, MemberAction, MessageView, ReceiptKind as ReceiptKindView,
};
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
/// A connection that lasted this long resets the backoff; a shorter one does not.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(20);
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
    /// A page of the inbox from the background sync, in iseq order.
    SyncPage(Vec<crate::protocol::Event>),
    /// The background sync reached the end (or failed and will be tried again).
    SyncDone(std::result::Result<(), String>),
    /// Typing and presence filters to subscribe, found by a background fetch.
    Topics(Vec<String>),
    /// The upload of a queued attachment message ended (the attachment id, or why not).
    Uploaded(String, std::result::Result<String, SdkError>),
    /// The app aborted a queued command: stop its upload if one runs.
    Aborted(String),
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
            syncing: false,
            resync: false,
            sync_failure_reported: false,
            tx: tx.downgrade(),
            ahead: Default::default(),
            uploads: HashMap::new(),
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
        let mut connected_at: Option<Instant> = None;
        let mut inbox_pending = false;
        let mut tls_failure = None;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    connected_at = Some(Instant::now());
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
        if connected_at.is_some_and(|at| at.elapsed() >= STABLE_AFTER) {
            attempt = 0;
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
            conv.muted = item["muted"].as_bool().unwrap_or(false);
            conv.archived = item["archived"].as_bool().unwrap_or(false);
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

/// Pages of `/v1/sync` from `since`, each handed to the processor as it arrives.
async fn sync_pages(
    inner: &Inner,
    mut since: u64,
    tx: &mpsc::UnboundedSender<Input>,
) -> Result<()> {
    loop {
        let page: Value = inner
            .api
            .get(&format!("/v1/sync?since={since}&limit=200"))
            .await?;
        let events = page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ev| serde_json::from_value::<crate::protocol::Event>(ev.clone()).ok())
            .collect();
        if tx.send(Input::SyncPage(events)).is_err() {
            return Ok(());
        }
        let next = page["next"].as_u64().unwrap_or(since);
        if !page["has_more"].as_bool().unwrap_or(false) || next <= since {
            return Ok(());
        }
        since = next;
    }
}

/// The filters to follow a conversation live: its typing, its other members' presence
/// (only filters the server's ACL allows: a refused SUBSCRIBE closes the connection).
async fn conversation_topics(inner: &Inner, me: &str, conv: &str) -> Vec<String> {
    let mut topics = vec![topics::typing_filter(conv)];
    if let Ok(members) = fetch_members(inner, conv).await {
        topics.extend(
            members
                .into_iter()
                .filter(|m| m.user_id != me && crate::protocol::ids::is_server_id(&m.user_id))
                .map(|m| topics::presence(&m.user_id)),
        );
    }
    topics
}

struct Processor {
    inner: Arc<Inner>,
    me: String,
    online: bool,
    /// The inbox may have events this device has not applied (a gap, a failed sync).
    need_sync: bool,
    /// A background sync is running; `resync`: run another when it ends.
    syncing: bool,
    resync: bool,
    /// `sync_failed` was reported for the current outage (reported once, not per retry).
    sync_failure_reported: bool,
    /// Inbox seqs of new messages that arrived live across a gap and were applied at
    /// once (the app sees them without waiting for the sync); the sync skips them.
    ahead: std::collections::BTreeSet<u64>,
    /// Uploads of queued attachment messages in progress, by outbox id.
    uploads: HashMap<String, tokio::task::JoinHandle<()>>,
    /// For the background tasks' results (weak: the loop ends when the client stops).
    tx: mpsc::WeakUnboundedSender<Input>,
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
                    self.sync_failure_reported = false;
                    self.flush(false);
                    self.inner.set_state(ConnectionState::Connected);
                    self.start_sync();
                    self.watch_all_conversations();
                }
                Input::Offline => self.online = false,
                Input::Publish(topic, payload) => self.on_publish(&topic, &payload).await,
                Input::Flush => self.flush(false),
                Input::Tick => {
                    if self.online && self.need_sync && !self.syncing {
                        self.start_sync();
                    }
                    self.flush(true);
                }
                Input::Subscribe(conv) => self.watch_conversation(&conv),
                Input::SyncPage(events) => self.apply_synced(events).await,
                Input::SyncDone(result) => self.sync_done(result),
                Input::Uploaded(id, result) => self.uploaded(id, result),
                Input::Aborted(id) => {
                    if let Some(upload) = self.uploads.remove(&id) {
                        upload.abort();
                    }
                    self.flush(false);
                }
                Input::Topics(topics) => {
                    if self.online {
                        for t in topics {
                            self.subscribe(t);
                        }
                    }
                }
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

    /// Catches up on the inbox in the background: a task fetches the pages from the
    /// last applied seq and hands them back here, where they are applied in order with
    /// the live events (whichever comes first is applied, the other skipped).
    fn start_sync(&mut self) {
        if self.syncing {
            self.resync = true;
            return;
        }
        let (Some(tx), Ok(since)) = (self.tx.upgrade(), self.inner.local.last_iseq()) else {
            return;
        };
        self.syncing = true;
        self.need_sync = true;
        let inner = self.inner.clone();
        self.inner.handle.spawn(async move {
            let result = sync_pages(&inner, since, &tx).await;
            let _ = tx.send(Input::SyncDone(result.map_err(|e| e.to_string())));
        });
    }

    async fn apply_synced(&mut self, events: Vec<crate::protocol::Event>) {
        for event in events {
            let Some(iseq) = event.seq else { continue };
            if iseq > self.inner.local.last_iseq().unwrap_or(0) {
                self.apply_in_order(iseq, event.body, true).await;
            }
        }
    }

    /// Applies the next inbox event (unless it was applied ahead) and moves the
    /// position past it.
    async fn apply_in_order(&mut self, iseq: u64, body: EventBody, historical: bool) {
        if !self.ahead.remove(&iseq) {
            self.apply(body, historical).await;
        }
        let _ = self.inner.local.set_last_iseq(iseq);
        let passed: Vec<u64> = self.ahead.range(..=iseq).copied().collect();
        for old in passed {
            self.ahead.remove(&old);
        }
    }

    fn sync_done(&mut self, result: std::result::Result<(), String>) {
        self.syncing = false;
        match result {
            Ok(()) => {
                self.need_sync = false;
                self.sync_failure_reported = false;
            }
            Err(detail) => {
                // Tried again on the next tick while connected.
                self.need_sync = true;
                if !std::mem::replace(&mut self.sync_failure_reported, true) {
                    self.emit(ClientEvent::Error {
                        client_id: None,
                        code: "sync_failed".into(),
                        detail,
                    });
                }
            }
        }
        if std::mem::take(&mut self.resync) && self.online {
            self.start_sync();
        }
    }

    /// Typing and presence subscriptions for every conversation (the first 100 of the
    /// list, most recently active first), fetched in the background.
    fn watch_all_conversations(&self) {
        let Some(tx) = self.tx.upgrade() else { return };
        let (inner, me) = (self.inner.clone(), self.me.clone());
        self.inner.handle.spawn(async move {
            match fetch_conversations(&inner).await {
                Ok(list) => {
                    for c in list.iter().take(100) {
                        let topics = conversation_topics(&inner, &me, &c.id).await;
                        if tx.send(Input::Topics(topics)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "conversation list"),
            }
        });
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

    /// Typing of a conversation and presence of its members, fetched in the background.
    fn watch_conversation(&self, conv: &str) {
        if !self.online || !crate::protocol::ids::is_server_id(conv) {
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        let (inner, me, conv) = (self.inner.clone(), self.me.clone(), conv.to_owned());
        self.inner.handle.spawn(async move {
            let topics = conversation_topics(&inner, &me, &conv).await;
            let _ = tx.send(Input::Topics(topics));
        });
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
            // A message whose attachment is not uploaded yet holds its conversation's
            // queue until the upload is done.
            if let Ok(Some(file)) = self.inner.local.pending_file(&e.id) {
                if !self.uploads.contains_key(&e.id) {
                    self.start_upload(e.id.clone(), file);
                }
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
            // The first time, what is published is what the outbox holds now (an edit may
            // have changed it since it was read above), and from then on it cannot be
            // edited; a resend needs no write.
            let command = if e.published {
                e.command
            } else {
                match self.inner.local.outbox_mark_published(&e.id) {
                    Ok(Some(c)) => c,
                    _ => continue, // aborted meanwhile
                }
            };
            let Ok(payload) = JsonCodec.encode_command(&command) else {
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

    /// Uploads a queued message's file in the background.
    fn start_upload(&mut self, id: String, file: crate::sdk::local::PendingFile) {
        let Some(tx) = self.tx.upgrade() else { return };
        let inner = self.inner.clone();
        let key = id.clone();
        let task = self.inner.handle.spawn(async move {
            let result = match tokio::fs::read(&file.path).await {
                Ok(bytes) => inner
                    .api
                    .upload(bytes, &file.mime, file.filename.as_deref())
                    .await
                    .and_then(|v| {
                        v["id"]
                            .as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| SdkError::network("upload answer has no id"))
                    }),
                Err(e) => Err(SdkError::Storage {
                    detail: format!("{}: {e}", file.path.display()),
                }),
            };
            let _ = tx.send(Input::Uploaded(key, result));
        });
        self.uploads.insert(id, task);
    }

    /// A queued attachment's upload ended: the message goes out, waits to try again,
    /// or (refused for good: type, size) is dropped and reported.
    fn uploaded(&mut self, id: String, result: std::result::Result<String, SdkError>) {
        self.uploads.remove(&id);
        let error = match result {
            Ok(attachment) => {
                let _ = self.inner.local.attach_uploaded(&id, &attachment);
                self.flush(false);
                return;
            }
            Err(e) => e,
        };
        let permanent = match &error {
            SdkError::Server { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            SdkError::InvalidArgument { .. } | SdkError::Storage { .. } => true,
            _ => false,
        };
        if permanent {
            let code = match &error {
                SdkError::Server { code, .. } => code.clone(),
                _ => "upload_failed".to_owned(),
            };
            if self.inner.local.outbox_remove(&id).unwrap_or(false) {
                self.emit(ClientEvent::Error {
                    client_id: Some(id),
                    code,
                    detail: error.to_string(),
                });
            }
        } else if self.retry_later(&id) {
            self.emit(ClientEvent::Error {
                client_id: Some(id),
                code: "wedged".into(),
                detail: format!(
                    "the attachment could not be uploaded ({error}); retry_wedged() or abort_pending()"
                ),
            });
        }
        self.flush(false);
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
                            // A gap: fetch everything missed. A new message is shown at
                            // once (it depends on nothing before it); other events wait
                            // for the sync, which brings them in order.
                            if matches!(event.body, EventBody::Message(_))
                                && self.ahead.insert(iseq)
                            {
                                self.apply(event.body, false).await;
                            }
                            self.start_sync();
                            return;
                        }
                        self.apply_in_order(iseq, event.body, false).await;
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

    /// Applies one durable inbox event: cache, outbox, listener. `historical`: it came
    /// from catching up, not live.
    async fn apply(&mut self, body: EventBody, historical: bool) {
        let local = &self.inner.local;
        match body {
            EventBody::Message(view) => {
                let m = Message::from(view);
                let m = local.save_message(&m).unwrap_or(m);
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
                self.emit(ClientEvent::Message {
                    message: m,
                    historical,
                });
            }
            EventBody::MessageUpdated(view) => {
                let m = Message::from(view);
                let m = local.save_message(&m).unwrap_or(m);
                if m.deleted {
                    self.emit(ClientEvent::MessageDeleted {
                        conversation_id: m.conversation_id,
                        message_id: m.id,
                    });
                } else {
                    self.emit(ClientEvent::MessageUpdated { message: m });
                }
            }
            EventBody::Reaction(r) => {
                let mine = r.user == self.me;
                let counts = local
                    .apply_reaction(&r.msg, &r.emoji, mine, r.added)
                    .unwrap_or(None);
                let reaction = Reaction { counts, ..r.into() };
                self.emit(ClientEvent::Reaction { reaction });
            }
            EventBody::Receipt(r) => {
                if r.user == self.me && r.kind == ReceiptKindView::Read {
                    let _ = local.mark_read(&r.conv, r.seq);
                }
                self.emit(ClientEvent::Receipt { receipt: r.into() })
            }
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
                    self.watch_conversation(&conv);
                }
            }
            EventBody::Conversation(view) => {
                let mut conv = Conversation::from(view);
                if let Ok(Some(old)) = local.conversation(&conv.id) {
                    conv.last_seq = old.last_seq;
                    conv.unread = old.unread;
                    conv.last_message = old.last_message;
                    conv.muted = old.muted;
                    conv.archived = old.archived;
                }
                let _ = local.save_conversation(&conv);
                let id = conv.id.clone();
                self.emit(ClientEvent::Conversation { conversation: conv });
                self.watch_conversation(&id);
            }
            // The SDK catches up over HTTP; `sync`/`conversations` answer commands it
            // never sends.
            EventBody::Invitation(i) => self.emit(ClientEvent::Invitation {
                invitation: Invitation {
                    id: i.id,
                    conversation_id: i.conv,
                    name: i.name,
                    invited_by: i.by,
                    role: None,
                    created_at: i.created_at,
                },
            }),
            EventBody::Ack(_)
            | EventBody::Error(_)
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
