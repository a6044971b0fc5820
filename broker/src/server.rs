//! Wiring the realtime plane on our tokio runtime: rumqttd's router thread, its
//! listeners (wrapped in the guard), the worker's broker link, presence and fan-out.
//!
//! rumqttd facts this follows (from its 0.20 source): `RouterConfig::default()` is all
//! zeros and panics on the first subscribe, so every size is set here; a listener binds
//! inside `Server::start`, which only returns on error; a local link's `LinkTx` and
//! `LinkBuilder::build` block, so they live on their own threads; a link must answer
//! `Notification::Unschedule` with `ready()` or it stalls; a reader that falls off a
//! filter's log loses messages, so the reader thread only moves publishes into a queue.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::Protocol;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server, ServerSettings,
    Strategy,
};
use tidings_auth::TokenKeys;
use tidings_core::protocol::limits::MAX_COMMAND_BYTES;
use tidings_core::protocol::{topics, ErrorCode, Event, Topic, WireFormat};
use tidings_store::Store;
use tokio::sync::mpsc::error::TrySendError;

use crate::fanout::{Fanout, Outbound, Publisher};
use crate::guard::{Guard, GuardShared};
use crate::presence::PresenceTracker;
use crate::worker::{Inbound, Worker};

/// The worker's client id on the router. It has no `:`, so no device can claim it
/// (the guard only admits `{user}:{device}`), and a remote client cannot kick the link.
const WORKER_LINK_ID: &str = "tidings-worker";
/// Commands waiting for the worker. Past this, senders get `unavailable` errors rather
/// than the link falling behind rumqttd's log (which would lose commands silently).
const INBOUND_CAPACITY: usize = 65_536;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// MQTT 3.1.1 over TCP.
    pub listen: SocketAddr,
    /// MQTT 3.1.1 over WebSocket, if wanted.
    pub ws_listen: Option<SocketAddr>,
    /// MQTT 5 over TCP, if wanted. Same guard, same ACL; MQTT 5 properties are
    /// dropped on the way in (see guard.rs), so v5 clients get v3.1.1 semantics.
    pub v5_listen: Option<SocketAddr>,
    pub max_connections: usize,
}

/// The running realtime plane.
pub struct Realtime {
    pub fanout: Arc<Fanout>,
    pub guard: Arc<GuardShared>,
    pub mqtt_addr: SocketAddr,
    pub ws_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Realtime {
    /// Stops accepting connections. (rumqttd has no shutdown API: the router thread
    /// lives until the process exits.)
    pub fn stop_listeners(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn router_config(max_connections: usize) -> RouterConfig {
    // Each distinct subscription filter gets its own log of up to size x count bytes.
    // Chat needs many small logs (one per inbox), not the example's 100 MB x 10: a
    // subscriber that falls 96 KiB behind on its inbox loses the oldest events and
    // recovers them through sync (its iseq shows the gap). The worker's own filter gets
    // a deep log, because a command lost there is lost for good.
    let mut custom = HashMap::new();
    custom.insert(
        topics::ALL_OUTBOXES.to_owned(),
        rumqttd::SegmentConfig {
            max_segment_size: 8 * 1024 * 1024,
            max_segment_count: 8,
        },
    );
    RouterConfig {
        max_connections,
        max_outgoing_packet_count: 200,
        max_segment_size: 32 * 1024,
        max_segment_count: 3,
        custom_segment: Some(custom),
        initialized_filters: None,
        shared_subscriptions_strategy: Strategy::RoundRobin,
    }
}

fn server_settings(
    name: &str,
    listen: SocketAddr,
    store: Arc<dyn Store>,
    keys: Arc<TokenKeys>,
) -> ServerSettings {
    let mut settings = ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            // Larger than the command limit so an oversized command reaches the worker
            // and gets a typed `too_large` error instead of a dropped connection.
            max_payload_size: MAX_COMMAND_BYTES * 8,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
        },
    };
    settings.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            let (store, keys) = (store.clone(), keys.clone());
            async move {
                match crate::auth::check(store.as_ref(), &keys, &client_id, &username, &password)
                    .await
                {
                    Ok(_) => true,
                    Err(why) => {
                        tracing::info!(client_id, ?why, "MQTT CONNECT refused");
                        false
                    }
                }
            }
        },
    );
    settings
}

/// A free loopback port for a private listener (rumqttd cannot bind port 0).
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?)
}

/// Starts a rumqttd listener. rumqttd binds inside `start` and only logs a failure, so
/// the address is tried first (a clear error now beats a dead listener later), and the
/// task is given a moment to fail on its own.
async fn start_listener<P: Protocol + Clone + Send + Sync + 'static>(
    mut server: Server<Guard<P>>,
    link: LinkType,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    drop(std::net::TcpListener::bind(addr).with_context(|| format!("could not listen on {addr}"))?);
    let task = tokio::spawn(async move {
        if let Err(e) = server.start(link).await {
            tracing::error!(error = ?e, "MQTT listener failed");
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    if task.is_finished() {
        return Err(anyhow!("could not listen on {addr}"));
    }
    Ok(task)
}

pub async fn start(
    config: BrokerConfig,
    store: Arc<dyn Store>,
    keys: Arc<TokenKeys>,
) -> anyhow::Result<Realtime> {
    let router_tx = Router::new(0, router_config(config.max_connections)).spawn();

    // The worker's link: subscribe to every outbox, then split into a reader thread and
    // a publisher thread (both block by design).
    let link_router = router_tx.clone();
    let (link_tx, link_rx) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(LinkTx, LinkRx)> {
            let (mut tx, rx, _connack) =
                rumqttd::local::LinkBuilder::new(WORKER_LINK_ID, link_router)
                    .build()
                    .map_err(|e| anyhow!("broker link: {e:?}"))?;
            tx.subscribe(topics::ALL_OUTBOXES)
                .map_err(|e| anyhow!("subscribe: {e:?}"))?;
            Ok((tx, rx))
        })
        .await??;

    let (out_tx, out_rx) = std::sync::mpsc::channel::<Outbound>();
    let publisher = Publisher::new(out_tx);
    std::thread::Builder::new()
        .name("tidings-publisher".into())
        .spawn(move || publish_loop(link_tx, out_rx))
        .context("spawning the publisher thread")?;

    let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
    let presence = Arc::new(PresenceTracker::new(presence_tx));
    let fanout = Arc::new(Fanout::new(publisher.clone(), presence.clone()));

    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Inbound>(INBOUND_CAPACITY);
    let overflow = fanout.clone();
    std::thread::Builder::new()
        .name("tidings-link-reader".into())
        .spawn(move || read_loop(link_rx, in_tx, overflow))
        .context("spawning the link reader thread")?;

    let mut tasks = vec![
        tokio::spawn(crate::presence::run(presence_rx, store.clone(), publisher)),
        tokio::spawn(Worker::new(store.clone(), fanout.clone()).run(in_rx)),
    ];

    let guard = Arc::new(GuardShared {
        index: store.membership(),
        presence,
        violations: AtomicU64::new(0),
    });
    let tcp = Server::new(
        server_settings("mqtt", config.listen, store.clone(), keys.clone()),
        router_tx.clone(),
        Guard::new(V4, guard.clone()),
    );
    tasks.push(start_listener(tcp, LinkType::Remote, config.listen).await?);
    tracing::info!(addr = %config.listen, "mqtt listening");

    if let Some(public) = config.ws_listen {
        let private = free_loopback_port()?;
        let ws = Server::new(
            server_settings("mqtt-ws", private, store.clone(), keys.clone()),
            router_tx.clone(),
            Guard::new(V4, guard.clone()),
        );
        tasks.push(start_listener(ws, LinkType::Websocket, private).await?);
        let listener = tokio::net::TcpListener::bind(public)
            .await
            .with_context(|| format!("binding MQTT over WebSocket on {public}"))?;
        tracing::info!(addr = %listener.local_addr()?, "mqtt websocket listening");
        tasks.push(tokio::spawn(crate::ws_gate::run(listener, private)));
    }

    if let Some(addr) = config.v5_listen {
        let v5 = Server::new(
            server_settings("mqtt5", addr, store.clone(), keys.clone()),
            router_tx.clone(),
            Guard::new(V5, guard.clone()),
        );
        tasks.push(start_listener(v5, LinkType::Remote, addr).await?);
        tracing::info!(addr = %addr, "mqtt5 listening");
    }

    Ok(Realtime {
        fanout,
        guard,
        mqtt_addr: config.listen,
        ws_addr: config.ws_listen,
        tasks,
    })
}

/// Owns the link's sending half: every publish of the server goes through here.
fn publish_loop(mut tx: LinkTx, outbound: std::sync::mpsc::Receiver<Outbound>) {
    // LinkTx's only way to publish with `retain` is its async `send`; it completes
    // without awaiting anything, so a tiny current-thread runtime drives it.
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "publisher runtime");
            return;
        }
    };
    while let Ok(out) = outbound.recv() {
        let sent = if out.retain {
            let packet = Packet::Publish(
                Publish::new(Bytes::from(out.topic), Bytes::from(out.payload), true),
                None,
            );
            runtime.block_on(tx.send(packet))
        } else {
            tx.publish(out.topic, out.payload)
        };
        if let Err(e) = sent {
            tracing::error!(error = ?e, "broker link refused a publish; stopping the publisher");
            return;
        }
    }
}

/// Owns the link's receiving half: moves each command into the worker's queue at once.
fn read_loop(mut rx: LinkRx, inbound: tokio::sync::mpsc::Sender<Inbound>, fanout: Arc<Fanout>) {
    loop {
        match rx.recv() {
            Ok(Some(Notification::Forward(forward))) => {
                let item = Inbound {
                    topic: forward.publish.topic,
                    payload: forward.publish.payload,
                };
                match inbound.try_send(item) {
                    Ok(()) => {}
                    Err(TrySendError::Full(item)) => refuse_overflow(&fanout, &item),
                    Err(TrySendError::Closed(_)) => return,
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if let Err(e) = rx.ready() {
                    tracing::error!(error = ?e, "broker link closed");
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = ?e, "broker link closed");
                return;
            }
        }
    }
}

fn refuse_overflow(fanout: &Fanout, item: &Inbound) {
    if let Some(Topic::Outbox(user)) = std::str::from_utf8(&item.topic).ok().and_then(Topic::parse)
    {
        let event = Event::error(
            None,
            ErrorCode::Unavailable,
            "the server is overloaded; retry with the same id",
        );
        fanout.reply(&user, WireFormat::sniff(&item.payload), &event);
    }
}
