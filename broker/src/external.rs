//! External-broker mode: no front door of our own. A clustered MQTT broker (EMQX,
//! VerneMQ, rmqtt, ...) holds the devices' connections and asks the REST API's hooks
//! for auth and ACL decisions; this node's persistence worker takes its share of
//! every user's commands through an MQTT 5 shared subscription
//! (`$share/<group>/u/+/out`), and everything the hub routes (acks, inbox events, the
//! conversation mirror) is published back to the broker.
//!
//! The worker is the embedded mode's, unchanged: each command taken from the broker is
//! handed over as if from a connection of the topic's user, a [`ConnHandle::sharing`]
//! whose queue is this bridge's. The worker's PUBACK for it (sent once the command is
//! stored, after its `ack` event was published) is what the bridge turns into the
//! MQTT PUBACK to the broker (manual acks): a node that dies mid-batch leaves its
//! unacknowledged commands with the broker, which hands them to another member of the
//! group, and a command that arrives twice is stored once (sender + client id).
//!
//! One broker connection per node. Its session starts clean, so after a reconnect the
//! broker has already given what was in flight to the other members; PUBACKs still
//! owed on the old connection are dropped with its queue (their packet ids mean
//! nothing on the new one).
//!
//! A broker checks a subscription once, so revocations are also acted on there: the
//! clients of a removed member or an ended session are disconnected by a session
//! takeover with their client ids ([`kick_revoked`]), and come back through the hooks.
//!
//! Presence is not decided here: the broker's connect/disconnect events reach the
//! REST API's hooks, which publish it through the hub (and so through this bridge).
//! Rate limits are the worker's as in embedded mode, shared by every node when
//! `limits.shared` says so (PostgreSQL).
//!
//! A device credential limited to some conversations, or receive-only, publishes its
//! commands on its own topic `u/{uid}/out/{credential id}` (the ACL hook admits only
//! that credential there), also taken through the share: the worker looks the
//! credential up and holds each command to its grant, as the front door does.
//!
//! Not carried over from the embedded broker: the compact profile (per-connection
//! topics `i`/`o`), the inbox for credentials limited to some conversations (the
//! broker cannot filter it per grant; they follow `c/{cid}/m`), and the echo
//! preference.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::{Deserialize, Serialize};
use tidings_core::protocol::ids::is_server_id;
use tidings_store::{Backend, Revocation, Store};
use tokio::sync::{mpsc, watch};

use crate::fanout::Fanout;
use crate::hub::{ConnHandle, Hub, Outbound};
use crate::worker::{Inbound, Worker};

/// `[broker]`: which MQTT broker devices connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// `embedded` (Tidings' own front door, the default) or `external`.
    pub mode: BrokerMode,
    /// External mode: the broker's MQTT listeners, `host:port`, tried in turn (a
    /// cluster's nodes, or one load-balanced address). Plain TCP: keep it on a private
    /// network. From the environment also as one string, commas between addresses.
    #[serde(deserialize_with = "one_or_many")]
    pub addrs: Vec<String>,
    /// External mode: this node's MQTT identity (the hooks' `node_username` /
    /// `node_secret`, a superuser there).
    pub username: Option<String>,
    pub password: Option<String>,
    /// External mode: this node's MQTT client id; unique per node. Default:
    /// `tidings-worker-<random>`.
    pub client_id: Option<String>,
    /// External mode: the shared-subscription group every node's worker joins.
    pub share_group: String,
    /// External mode: MQTT keep-alive of the worker's connection (at least 5).
    pub keep_alive_secs: u64,
    /// External mode: commands the broker may have in flight to this node at once
    /// (MQTT 5 receive maximum); the rest wait at the broker, or go to another node.
    pub receive_maximum: u16,
    /// External mode: publishes to the broker waiting to be sent; past it, live
    /// deliveries are dropped (counted in `tidings_external_dropped_total`; devices
    /// recover them with sync, since every durable event is stored first).
    pub outbound_queue: usize,
    /// External mode: longest wait between reconnection attempts.
    pub max_reconnect_backoff_ms: u64,
    /// External mode: when a member is removed or a session ends, disconnect that
    /// user's (that session's) clients at the broker by connecting with their client
    /// ids (an MQTT session takeover, which every broker honours cluster-wide); they
    /// reconnect through the hooks, which refuse what they lost. Needs `username` /
    /// `password` to be the hooks' node identity.
    pub kick_on_revocation: bool,
    /// External mode: revocations waiting for their kicks; past it, kicks are dropped
    /// (counted in `tidings_external_kicks_dropped_total`).
    pub kick_queue: usize,
    /// External mode: how long one kick may take (connect, CONNACK, disconnect).
    pub kick_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerMode {
    Embedded,
    External,
}

/// A list, or one string of comma-separated items (`TIDINGS_BROKER_ADDRS=a:1883,b:1883`
/// without TOML brackets).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            mode: BrokerMode::Embedded,
            addrs: Vec::new(),
            username: None,
            password: None,
            client_id: None,
            share_group: "tidings".into(),
            keep_alive_secs: 30,
            receive_maximum: 1024,
            outbound_queue: 65_536,
            max_reconnect_backoff_ms: 5_000,
            kick_on_revocation: true,
            kick_queue: 1024,
            kick_timeout_ms: 5_000,
        }
    }
}

impl BrokerConfig {
    /// Refuses what would make rumqttc panic or the bridge unable to work.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == BrokerMode::Embedded {
            return Ok(());
        }
        if self.addrs.is_empty() {
            return Err("broker.mode = external needs broker.addrs".into());
        }
        for addr in &self.addrs {
            parse_addr(addr)?;
        }
        if self.keep_alive_secs < 5 {
            return Err("broker.keep_alive_secs must be at least 5".into());
        }
        if self.receive_maximum == 0 || self.outbound_queue == 0 || self.kick_queue == 0 {
            return Err(
                "broker.receive_maximum, broker.outbound_queue and broker.kick_queue must be > 0"
                    .into(),
            );
        }
        let group_ok = !self.share_group.is_empty() && !self.share_group.contains(['/', '+', '#']);
        if !group_ok {
            return Err("broker.share_group must be a non-empty topic level".into());
        }
        if self.client_id.as_deref() == Some("") {
            return Err("broker.client_id must not be empty".into());
        }
        Ok(())
    }
}

fn parse_addr(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("broker address {addr:?} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("broker address {addr:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("broker address {addr:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

/// The running bridge, as `/readyz` sees it.
pub struct ExternalLink {
    connected: AtomicBool,
}

impl ExternalLink {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// What the poller tells the bridge.
enum FromBroker {
    /// A (new) connection is up; commands of earlier connections are no longer ours.
    Connected,
    Publish(Box<Publish>),
    Disconnected,
}

/// Starts the worker and the bridge to the external broker.
pub(crate) async fn start(
    config: BrokerConfig,
    worker_queue: usize,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    fanout: Arc<Fanout>,
    sends: Arc<tidings_store::ratelimit::Budget>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Arc<ExternalLink>, Vec<tokio::task::JoinHandle<()>>)> {
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tidings-worker-{}", ulid_suffix()));
    let options = options_for(&config, 0, &client_id)?;
    let (client, eventloop) = AsyncClient::new(options, config.outbound_queue);

    // Everything the hub routes goes to the broker, except the compact profile's
    // per-connection inbox, which has no meaning there.
    let forward_client = client.clone();
    hub.forward_all_to(Box::new(move |topic, payload| {
        if topic.ends_with("/k") {
            return;
        }
        if forward_client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .is_err()
        {
            metrics::counter!("tidings_external_dropped_total").increment(1);
        }
    }));

    let (worker_tx, worker_rx) = mpsc::channel(worker_queue.max(1));
    let worker = Worker::new(store.clone(), fanout, sends);
    let mut tasks = vec![if store.backend() == Backend::Sqlite {
        crate::server::spawn_writer_thread(worker, worker_rx)?
    } else {
        tokio::spawn(worker.run(worker_rx, tokio::runtime::Handle::current()))
    }];

    let link = Arc::new(ExternalLink {
        connected: AtomicBool::new(false),
    });
    let (events_tx, events_rx) = mpsc::channel(usize::from(config.receive_maximum) + 8);
    // Users' command topics, and each device credential's own (`u/{uid}/out/{id}`,
    // which the ACL hook lets only that credential publish on).
    let filters = vec![
        format!("$share/{}/u/+/out", config.share_group),
        format!("$share/{}/u/+/out/+", config.share_group),
    ];
    tasks.push(tokio::spawn(poll(
        eventloop,
        config.clone(),
        client_id.clone(),
        events_tx,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(bridge(
        client,
        filters,
        store.clone(),
        usize::from(config.receive_maximum),
        events_rx,
        worker_tx,
        link.clone(),
        shutdown,
    )));
    if config.kick_on_revocation {
        let (kick_tx, kick_rx) = mpsc::channel(config.kick_queue);
        store.membership().watch(move |revocation| {
            if kick_tx.try_send(revocation.clone()).is_err() {
                metrics::counter!("tidings_external_kicks_dropped_total").increment(1);
            }
        });
        tasks.push(tokio::spawn(kick_revoked(
            kick_rx,
            store.clone(),
            config.clone(),
        )));
    }
    tracing::info!(addrs = ?config.addrs, group = %config.share_group, %client_id, "external broker mode");
    Ok((link, tasks))
}

fn ulid_suffix() -> String {
    tidings_core::protocol::ids::new_id().to_lowercase()
}

fn options_for(
    config: &BrokerConfig,
    attempt: usize,
    client_id: &str,
) -> anyhow::Result<MqttOptions> {
    let addr = &config.addrs[attempt % config.addrs.len()];
    let (host, port) = parse_addr(addr).map_err(|e| anyhow::anyhow!(e))?;
    let mut options = MqttOptions::new(client_id, host, port);
    // The bridge writes many small publishes (acks, deliveries) whose latency is the
    // point; with Nagle on, each waited for the broker's delayed ACK (the `nodes`
    // bench saw a 24 ms median at 250 msg/s). rumqttc still writes what is queued in
    // one go, so batching under load is kept.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)))
        .set_clean_start(true)
        .set_manual_acks(true)
        .set_max_packet_size(Some(16 * 1024 * 1024));
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(config.receive_maximum.max(1));
    props.session_expiry_interval = Some(0);
    options.set_connect_properties(props);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    Ok(options)
}

/// Drives the MQTT connection (on its own task: rumqttc's `poll` must not be
/// cancelled mid-read), reconnecting with backoff to the next configured address.
async fn poll(
    mut eventloop: EventLoop,
    config: BrokerConfig,
    client_id: String,
    events: mpsc::Sender<FromBroker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(100);
    let max_backoff = Duration::from_millis(config.max_reconnect_backoff_ms.max(100));
    loop {
        let event = tokio::select! {
            () = stopped(&mut shutdown) => return,
            event = eventloop.poll() => event,
        };
        let sent = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(addr = %config.addrs[attempt % config.addrs.len()], "connected to the external broker");
                events.send(FromBroker::Connected).await
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // Without its share of the commands this node stores nothing: say so.
                let refused = ack.return_codes.iter().any(|c| {
                    !matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                });
                if refused {
                    tracing::error!(codes = ?ack.return_codes, "the broker refused the shared subscription to the commands");
                } else {
                    tracing::info!("subscribed to the commands");
                }
                Ok(())
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                events.send(FromBroker::Publish(Box::new(publish))).await
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "external broker connection failed; reconnecting");
                metrics::counter!("tidings_external_disconnects_total").increment(1);
                let sent = events.send(FromBroker::Disconnected).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                attempt += 1;
                match options_for(&config, attempt, &client_id) {
                    Ok(options) => eventloop.options = options,
                    Err(e) => tracing::error!(error = %e, "bad broker address"),
                }
                sent
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Turns the broker's publishes into worker commands, and the worker's answers into
/// PUBACKs and publishes to the broker.
#[allow(clippy::too_many_arguments)]
async fn bridge(
    client: AsyncClient,
    filters: Vec<String>,
    store: Arc<dyn Store>,
    in_flight: usize,
    mut events: mpsc::Receiver<FromBroker>,
    worker: mpsc::Sender<Inbound>,
    link: Arc<ExternalLink>,
    mut shutdown: watch::Receiver<bool>,
) {
    let next_id = AtomicU64::new(1);
    // This connection's queue and the commands waiting for their PUBACK, by packet id.
    // Each PUBACK the worker owes is one packet, and each query answer one more, so
    // twice the broker's in-flight limit never fills.
    let queue = in_flight * 2 + 16;
    let (mut out_tx, mut out_rx) = crate::outbox::channel::<Outbound>(queue);
    let mut waiting: HashMap<u16, Publish> = HashMap::new();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            event = events.recv() => match event {
                None => return,
                Some(FromBroker::Connected) => {
                    // A fresh session: what was in flight went to other nodes, and the
                    // old connection's packet ids mean nothing now.
                    (out_tx, out_rx) = crate::outbox::channel(queue);
                    waiting.clear();
                    link.connected.store(true, Ordering::Release);
                    for filter in &filters {
                        if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe to the commands");
                        }
                    }
                }
                Some(FromBroker::Disconnected) => link.connected.store(false, Ordering::Release),
                Some(FromBroker::Publish(publish)) => {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let from = if let Some(user) = command_sender(&publish.topic) {
                        ConnHandle::sharing(id, user.clone(), format!("{user}:external"), out_tx.clone())
                    } else if let Some((user, session)) = credential_sender(&publish.topic) {
                        // One indexed read per command on a credential's topic, so a
                        // revoked credential's next command is refused at once.
                        match store.device_credential(&session).await {
                            Ok(Some(c)) if c.user_id == user => ConnHandle::sharing_as(
                                id,
                                user.clone(),
                                format!("{user}:external"),
                                session,
                                c.grant,
                                out_tx.clone(),
                            ),
                            other => {
                                // Ended, not a device credential, or unknown: nothing
                                // is stored (the broker has acked the device already).
                                if let Err(e) = other {
                                    tracing::warn!(error = %e, "cannot look up a device credential");
                                }
                                metrics::counter!("tidings_external_credential_refused_total").increment(1);
                                ack(&client, &publish);
                                continue;
                            }
                        }
                    } else {
                        // Not a command topic: nothing of ours; let it go.
                        ack(&client, &publish);
                        continue;
                    };
                    let pkid = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
                    let command = Inbound::Command {
                        from,
                        payload: publish.payload.clone(),
                        pkid,
                        compact: false,
                        received: std::time::Instant::now(),
                    };
                    if pkid.is_some() {
                        waiting.insert(publish.pkid, *publish);
                    }
                    if worker.send(command).await.is_err() {
                        return;
                    }
                }
            },
            out = out_rx.recv() => match out {
                Some(Outbound::PubAck { pkid, .. }) => {
                    // Whatever the outcome (stored, or refused with an error event the
                    // sender got), the command is answered: the broker may forget it.
                    if let Some(publish) = waiting.remove(&pkid) {
                        ack(&client, &publish);
                    }
                }
                Some(Outbound::Publish { topic, payload }) => {
                    // A query's answer for the asking device: with no connection of its
                    // own to answer on, it goes to the user's inbox topic.
                    let topic = String::from_utf8_lossy(&topic).into_owned();
                    if client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                        metrics::counter!("tidings_external_dropped_total").increment(1);
                    }
                }
                None => {}
            },
        }
    }
}

/// Disconnects, at the broker, the clients whose rights a revocation ended: a removed
/// member's (the broker checked their subscriptions once, at SUBSCRIBE, and would keep
/// delivering the conversation) and an ended session's. Every node hears every
/// revocation (PostgreSQL NOTIFY), so each kicks: a second kick of a client that
/// reconnected only makes it reconnect once more, through the hooks again.
async fn kick_revoked(
    mut revocations: mpsc::Receiver<Revocation>,
    store: Arc<dyn Store>,
    config: BrokerConfig,
) {
    while let Some(revocation) = revocations.recv().await {
        let clients = match &revocation {
            Revocation::MemberRemoved { user, .. } => store.mqtt_clients_of_user(user).await,
            Revocation::SessionEnded { session } => store.mqtt_clients_of_session(session).await,
        };
        let clients = match clients {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up whom to disconnect at the broker");
                continue;
            }
        };
        for client_id in clients {
            match kick(&config, &client_id).await {
                Ok(()) => {
                    metrics::counter!("tidings_external_kicks_total").increment(1);
                    tracing::info!(%client_id, "disconnected at the broker after a revocation");
                }
                Err(e) => {
                    metrics::counter!("tidings_external_kick_failures_total").increment(1);
                    tracing::warn!(%client_id, error = %e, "could not disconnect a client at the broker");
                }
            }
        }
    }
}

/// Takes over `client_id`'s session at the broker (connect with its id, clean start),
/// then disconnects; through the first configured address that answers.
async fn kick(config: &BrokerConfig, client_id: &str) -> anyhow::Result<()> {
    let mut last = anyhow::anyhow!("no broker address");
    for attempt in 0..config.addrs.len() {
        match kick_at(config, attempt, client_id).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn kick_at(config: &BrokerConfig, attempt: usize, client_id: &str) -> anyhow::Result<()> {
    let mut options = options_for(config, attempt, client_id)?;
    options.set_manual_acks(false);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let deadline = Duration::from_millis(config.kick_timeout_ms.max(100));
    tokio::time::timeout(deadline, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success {
                        anyhow::bail!("the broker refused the takeover: {:?}", ack.code);
                    }
                    client.try_disconnect()?;
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {deadline:?}"))?
}

/// Resolves once shutdown is asked for (the guard `wait_for` returns is not `Send`, so
/// it is dropped here rather than held in a `select!`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn ack(client: &AsyncClient, publish: &Publish) {
    if let Err(e) = client.try_ack(publish) {
        tracing::warn!(error = %e, "cannot acknowledge a command to the broker");
    }
}

/// The user and device credential whose own command topic `topic` is
/// (`u/{uid}/out/{credential}`).
fn credential_sender(topic: &Bytes) -> Option<(String, String)> {
    let topic = std::str::from_utf8(topic).ok()?;
    let (user, session) = tidings_store::acl::credential_outbox(topic)?;
    Some((user.to_owned(), session.to_owned()))
}

/// The user whose outbox `topic` is (`u/{uid}/out`).
fn command_sender(topic: &Bytes) -> Option<String> {
    let topic = std::str::from_utf8(topic).ok()?;
    let user = topic.strip_prefix("u/")?.strip_suffix("/out")?;
    is_server_id(user).then(|| user.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_topics_name_their_sender() {
        let uid = tidings_core::protocol::ids::new_id();
        let topic = |s: String| Bytes::from(s);
        assert_eq!(
            command_sender(&topic(format!("u/{uid}/out"))),
            Some(uid.clone())
        );
        assert_eq!(command_sender(&topic(format!("u/{uid}/in"))), None);
        assert_eq!(command_sender(&topic("u/x/out".into())), None);
        assert_eq!(command_sender(&topic(format!("u/{uid}/out/x"))), None);
    }

    #[test]
    fn external_settings_are_checked() {
        let mut c = BrokerConfig::default();
        assert!(c.validate().is_ok(), "embedded needs nothing");
        c.mode = BrokerMode::External;
        assert!(c.validate().is_err(), "no addresses");
        c.addrs = vec!["127.0.0.1:1883".into(), "[::1]:1884".into()];
        assert!(c.validate().is_ok());
        c.addrs.push("nowhere".into());
        assert!(c.validate().is_err());
        c.addrs.pop();
        c.keep_alive_secs = 1;
        assert!(c.validate().is_err(), "rumqttc would panic");
        c.keep_alive_secs = 30;
        c.share_group = "a/b".into();
        assert!(c.validate().is_err());
    }
}
