//! The front door's listeners, read like tokio's mini-redis `server.rs`: bind, accept
//! in a loop, cap connections with a semaphore, and stop on a shutdown broadcast.
//!
//! Each accepted socket becomes a task running [`session::serve`]. A socket accepted
//! while the broker is full still gets an answer ("server busy" in its CONNACK), from a
//! second, small pool of refusal slots; past that it is closed unanswered, so a flood
//! cannot turn refusals into the next exhaustion. Accept errors (out of file
//! descriptors, say) back off instead of spinning, and are logged at most once a
//! second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tidings_auth::TokenKeys;
use tidings_store::{Backend, Revocation, Store};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::{Listeners, MqttLimits};
use crate::connection::CloseReason;
use crate::fanout::Fanout;
use crate::hub::Hub;
use crate::presence::PresenceTracker;
use crate::session::{self, Admission, Shared};
use crate::worker::Worker;

/// The running realtime plane.
pub struct Realtime {
    pub fanout: Arc<Fanout>,
    pub hub: Arc<Hub>,
    /// The front door's MQTT listener (`None` in external-broker mode).
    pub mqtt_addr: Option<SocketAddr>,
    /// The link to the external broker (external-broker mode only).
    pub external: Option<Arc<crate::external::ExternalLink>>,
    pub ws_addr: Option<SocketAddr>,
    pub v5_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    WebSocket,
}

impl Realtime {
    /// Stops accepting, asks every connection to close (MQTT 5 clients hear "server
    /// shutting down"), and waits up to `grace` for them to go.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.hub.stats().connections > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }

    /// A real MQTT CONNECT on loopback: the front door is ready when it answers with a
    /// CONNACK (any code; the probe has no credentials, so it is refused, quietly).
    /// In external-broker mode: the worker's connection to the broker is up.
    pub async fn probe(&self) -> Result<(), String> {
        match (&self.external, self.mqtt_addr) {
            (Some(link), _) if link.is_connected() => Ok(()),
            (Some(_), _) => Err("not connected to the external broker".into()),
            (None, Some(addr)) => crate::probe::connack(addr).await,
            (None, None) => Err("no MQTT listener".into()),
        }
    }
}

/// Runs the persistence worker on a thread of its own (a current-thread runtime) and
/// returns a task that stands for it: aborting that task stops the worker.
///
/// Why: a `write_batch` on SQLite is about ten statements, each a hop to sqlx's SQLite
/// thread and back. On the shared runtime every hop back put the worker at the end of a
/// run queue full of connection tasks, so at 3k msg/s a batch spent most of its time
/// waiting to be polled (the store's batch latency was ~95% of wall time while its
/// thread was busy half of it) and batches could not grow. On its own thread the worker
/// continues the moment its statement is done. (PostgreSQL keeps the shared runtime:
/// its connections are sockets registered with the runtime that opened them.)
pub(crate) fn spawn_writer_thread(
    worker: Worker,
    inbound: tokio::sync::mpsc::Receiver<crate::worker::Inbound>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let main = tokio::runtime::Handle::current();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not build the writer's runtime")?;
    std::thread::Builder::new()
        .name("tidings-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = worker.run(inbound, main) => {}
                    _ = stopped => {}
                }
            });
            let _ = done.send(());
        })
        .context("could not start the writer thread")?;
    Ok(tokio::spawn(async move {
        // Dropped with this task (on abort): that is the worker's stop signal.
        let _stop = stop;
        let _ = finished.await;
    }))
}

pub async fn start(
    listeners: Listeners,
    limits: MqttLimits,
    store: Arc<dyn Store>,
    keys: Arc<TokenKeys>,
    sends: Arc<tidings_store::ratelimit::Budget>,
) -> anyhow::Result<Realtime> {
    let index = store.membership();
    let hub = Arc::new(Hub::new(index.clone()));
    let fanout = Arc::new(Fanout::new(hub.clone()));

    // Revocations act on live connections at once: a removed member's subscriptions
    // go (deliveries were already refused by the grant check), an ended session's
    // connections close.
    let watcher = hub.clone();
    index.watch(move |revocation| match revocation {
        Revocation::MemberRemoved { user, .. } => watcher.prune_user(user),
        Revocation::SessionEnded { session } => {
            let n = watcher.close_session(session, CloseReason::Revoked);
            if n > 0 {
                tracing::info!(
                    session,
                    connections = n,
                    "session ended: closing its connections"
                );
            }
        }
    });

    let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
    let presence = Arc::new(PresenceTracker::new(presence_tx));
    let (worker_tx, worker_rx) = tokio::sync::mpsc::channel(limits.worker_queue.max(1));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut tasks = vec![tokio::spawn(crate::presence::run(
        presence_rx,
        store.clone(),
        hub.clone(),
    ))];
    let worker = Worker::new(store.clone(), fanout.clone(), sends);
    tasks.push(if store.backend() == Backend::Sqlite {
        spawn_writer_thread(worker, worker_rx)?
    } else {
        tokio::spawn(worker.run(worker_rx, tokio::runtime::Handle::current()))
    });

    let shared = Arc::new(Shared {
        hub: hub.clone(),
        store,
        keys,
        presence,
        fanout: fanout.clone(),
        worker: worker_tx,
        limits: limits.clone(),
        shutdown: shutdown_rx,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(limits.max_refusing.max(1)));

    let bind = |addr: SocketAddr, kind: Kind| {
        let (shared, slots, refusing) = (shared.clone(), slots.clone(), refusing.clone());
        async move {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen on {addr}"))?;
            let local = listener.local_addr()?;
            let task = tokio::spawn(accept_loop(listener, kind, shared, slots, refusing));
            anyhow::Ok((local, task))
        }
    };

    let (mqtt_addr, task) = bind(listeners.tcp, Kind::Tcp).await?;
    tasks.push(task);
    tracing::info!(addr = %mqtt_addr, "mqtt listening");
    let ws_addr = match listeners.ws {
        Some(addr) => {
            let (local, task) = bind(addr, Kind::WebSocket).await?;
            tasks.push(task);
            tracing::info!(addr = %local, "mqtt websocket listening");
            Some(local)
        }
        None => None,
    };
    let v5_addr = match listeners.v5 {
        Some(addr) => {
            let (local, task) = bind(addr, Kind::Tcp).await?;
            tasks.push(task);
            tracing::info!(addr = %local, "mqtt5 listening");
            Some(local)
        }
        None => None,
    };

    Ok(Realtime {
        fanout,
        hub,
        mqtt_addr: Some(mqtt_addr),
        external: None,
        ws_addr,
        v5_addr,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// External-broker mode: the worker and the bridge to the broker, no listeners (see
/// `external.rs`). The hub has no local connections; it hands everything it routes to
/// the broker.
pub async fn start_external(
    config: crate::external::BrokerConfig,
    limits: MqttLimits,
    store: Arc<dyn Store>,
    sends: Arc<tidings_store::ratelimit::Budget>,
) -> anyhow::Result<Realtime> {
    let hub = Arc::new(Hub::new(store.membership()));
    let fanout = Arc::new(Fanout::new(hub.clone()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (link, tasks) = crate::external::start(
        config,
        limits.worker_queue,
        store,
        hub.clone(),
        fanout.clone(),
        sends,
        shutdown_rx,
    )
    .await?;
    Ok(Realtime {
        fanout,
        hub,
        mqtt_addr: None,
        external: Some(link),
        ws_addr: None,
        v5_addr: None,
        shutdown: shutdown_tx,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                metrics::counter!("tidings_mqtt_accept_errors_total").increment(1);
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = match slots.clone().try_acquire_owned() {
            Ok(slot) => Admission::Admitted(slot),
            Err(_) => match refusing.clone().try_acquire_owned() {
                Ok(slot) => Admission::Full(slot),
                Err(_) => {
                    metrics::counter!("tidings_mqtt_connect_refused_total", "reason" => "flood")
                        .increment(1);
                    drop(stream);
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let connect_by = tokio::time::Instant::now() + shared.limits.connect_timeout();
        tokio::spawn(async move {
            let (reader, writer) = match kind {
                Kind::Tcp => crate::transport::tcp(stream),
                Kind::WebSocket => {
                    match crate::transport::websocket(
                        stream,
                        connect_by,
                        shared.limits.max_packet_bytes + 16,
                    )
                    .await
                    {
                        Ok(halves) => halves,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "websocket handshake failed");
                            return;
                        }
                    }
                }
            };
            session::serve(shared, reader, writer, peer, admission, connect_by).await;
        });
    }
}
