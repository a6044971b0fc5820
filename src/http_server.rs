//! The HTTP serving loop, in the shape of tokio's mini-redis `server.rs`: a listener, a
//! semaphore that caps open connections, and a shutdown signal every connection task
//! watches. It replaces `axum::serve`, which has no timeouts: a client that sent half a
//! request held its socket (and its file descriptor, shared with the MQTT listeners)
//! forever, and graceful shutdown waited for it forever too.
//!
//! - **Headers**: hyper's `header_read_timeout`. The clock starts when the server
//!   begins waiting for a request's head (on a new connection and after each response),
//!   so it is also the idle keep-alive timeout. A connection that runs out of it is
//!   closed without a response, as hyper does.
//! - **Bodies**: every request body is wrapped in tower-http's `TimeoutBody`, an *idle*
//!   timeout that restarts with each chunk received. A total deadline would cut off a
//!   large upload on a slow but healthy link; an idle one only ends bodies that stopped
//!   moving. The handler's read then fails, the API answers 408 `timeout` with
//!   `Connection: close` (`tidings_rest::error::is_body_timeout`), and hyper closes the
//!   connection since the body was not read to its end.
//! - **Connections**: at most `max_connections` are served at once. When all slots are
//!   taken the loop stops calling `accept`, so new connections wait in the kernel's
//!   backlog and are served, in order, as slots free up; the timeouts above bound how
//!   long a silent client keeps a slot. Waiting beats refusing: a burst costs latency,
//!   not errors, and clients that give up just close. Past the backlog (1024 with
//!   tokio's `bind`) the kernel drops new SYNs and clients retry them.
//! - **Shutdown**: when `shutdown` resolves the listener is closed, every connection is
//!   told to finish its in-flight request and not take another (idle ones close at
//!   once), and after `shutdown_grace` whatever is still open is dropped, so `serve`
//!   returns within the grace period whatever clients do.
//!
//! It speaks HTTP/1.1 only. `axum::serve` also took cleartext HTTP/2 with prior
//! knowledge (its auto-detecting builder got hyper's `http2` through the S3 client's
//! features); nothing used that, and HTTP/2 would need its own timeouts and stream
//! limits before it could be offered safely.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::config::HttpConfig;

/// The serving limits, checked: every timeout is positive and the connection cap fits
/// a semaphore.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Limits {
    pub fn from_config(config: &HttpConfig) -> anyhow::Result<Limits> {
        // A zero timeout would close every connection before its first byte.
        anyhow::ensure!(
            config.header_timeout_secs > 0,
            "http.header_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            config.body_timeout_secs > 0,
            "http.body_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            (1..=Semaphore::MAX_PERMITS).contains(&config.max_connections),
            "http.max_connections must be between 1 and {}",
            Semaphore::MAX_PERMITS
        );
        Ok(Limits {
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            body_timeout: Duration::from_secs(config.body_timeout_secs),
            max_connections: config.max_connections,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains as described
/// in the module documentation. Handlers see the peer as `ConnectInfo<SocketAddr>`,
/// as with `into_make_service_with_connect_info::<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = Limits::from_config(config)?;
    let server = Server::new(router, limits);
    server.run(listener, shutdown).await;
    Ok(())
}

struct Server {
    router: Router,
    limits: Limits,
    http: http1::Builder,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
    /// Cancelled when shutdown starts: finish the request in flight, take no more.
    draining: CancellationToken,
    /// Cancelled when the grace period is over: close now.
    closing: CancellationToken,
    connections: TaskTracker,
}

impl Server {
    fn new(router: Router, limits: Limits) -> Server {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        Server {
            router,
            limits,
            http,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
            connections: TaskTracker::new(),
        }
    }

    async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut full = false;
        loop {
            // A slot first, then accept: while every slot is taken, new connections
            // queue in the kernel's backlog instead of being accepted and refused.
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !full {
                        tracing::warn!(
                            max = self.limits.max_connections,
                            "http connection limit reached; new connections wait"
                        );
                        full = true;
                    }
                    tokio::select! {
                        permit = self.slots.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            // The semaphore is never closed.
                            Err(_) => break,
                        },
                        () = &mut shutdown => break,
                    }
                }
            };
            if full && self.slots.available_permits() > 0 {
                tracing::info!("http connections below the limit again");
                full = false;
            }
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_connection(stream, peer, permit),
                // The client gave up between connecting and our accept: nothing to do.
                Err(e) if is_connection_error(&e) => {}
                // Out of file descriptors or memory. Retrying at once would spin; a
                // pause lets connections close and free some.
                Err(e) => {
                    tracing::error!(error = %e, "http accept failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = &mut shutdown => break,
                    }
                }
            }
        }
        self.drain(listener).await;
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let router = self.router.clone();
        let body_timeout = self.limits.body_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let connection = self
            .http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let (draining, closing) = (self.draining.clone(), self.closing.clone());
        self.connections.spawn(async move {
            // Held until the connection is gone, whichever way it ends.
            let _permit = permit;
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => Some(ended),
                () = draining.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = connection.as_mut() => Some(ended),
                        () = closing.cancelled() => None,
                    }
                }
            };
            match ended {
                Some(Ok(())) => {}
                // Header timeouts (including idle keep-alive connections), resets and
                // malformed requests: the client's business, not an operator's.
                Some(Err(e)) => tracing::debug!(%peer, error = %e, "http connection ended"),
                None => tracing::debug!(%peer, "http connection closed at the shutdown deadline"),
            }
        });
    }

    async fn drain(self, listener: TcpListener) {
        // Closing the listener makes new connections fail fast instead of queueing.
        drop(listener);
        self.draining.cancel();
        self.connections.close();
        let grace = self.limits.shutdown_grace;
        tracing::info!(
            open = self.connections.len(),
            grace_secs = grace.as_secs(),
            "http stopped accepting; finishing in-flight requests"
        );
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(
            open = self.connections.len(),
            "http shutdown grace period over; closing the remaining connections"
        );
        self.closing.cancel();
        // Each task returns as soon as it sees `closing`; the bound only matters if a
        // handler blocks its thread, which must not hold up the exit either.
        if tokio::time::timeout(Duration::from_secs(1), self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "http connections still open after the deadline; exiting anyway"
            );
        }
    }
}

/// Errors about one connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}
