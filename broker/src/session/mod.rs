//! One client connection, from accept to close.
//!
//! [`serve`] reads the CONNECT (with a deadline), authenticates it and answers with a
//! CONNACK code either way ([`connect`]); then one loop serves the connection: packets
//! from the client ([`publish`], [`subscribe`]), packets queued for it by the hub and
//! the worker, its keep-alive deadline, a close request (takeover, logout, slow
//! consumer) and server shutdown. Whatever ends the loop, [`Registration`]'s `Drop`
//! takes the connection out of the hub, so no code path, a panic included, can leave
//! a registry entry or a subscription behind; the will is fired by [`will`] only for
//! the endings that call for it.

mod connect;
pub use connect::PROBE_CLIENT_ID;
mod publish;
mod subscribe;
mod will;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidings_auth::TokenKeys;
use tidings_core::ratelimit::RateLimiter;
use tidings_store::Store;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::config::MqttLimits;
use crate::connection::{CloseReason, FrameError, FrameReader, FrameWriter, Incoming, Outgoing};
use crate::fanout::Fanout;
use crate::hub::{ConnHandle, Hub, Outbound};
use crate::outbox;
use crate::presence::PresenceTracker;
use crate::transport::{ReadHalf, WriteHalf};
use crate::worker::Inbound;

/// What every connection shares.
pub struct Shared {
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    pub keys: Arc<TokenKeys>,
    pub presence: Arc<PresenceTracker>,
    pub fanout: Arc<Fanout>,
    pub worker: mpsc::Sender<Inbound>,
    pub limits: MqttLimits,
    pub shutdown: watch::Receiver<bool>,
}

/// Whether the broker had room for this connection when it was accepted.
pub enum Admission {
    /// Holds a connection slot until the connection ends.
    Admitted(OwnedSemaphorePermit),
    /// Full: the CONNECT is read only to answer it with "server busy".
    Full(OwnedSemaphorePermit),
}

/// Serves one connection until it ends.
/// `connect_by` is the deadline for a complete CONNECT, counted from the accept (so a
/// WebSocket upgrade and the CONNECT after it share one deadline).
pub async fn serve(
    shared: Arc<Shared>,
    reader: ReadHalf,
    writer: WriteHalf,
    peer: SocketAddr,
    admission: Admission,
    connect_by: Instant,
) {
    let mut reader = FrameReader::new(reader, shared.limits.max_packet_bytes);
    let Some(accepted) =
        connect::handshake(&shared, &mut reader, writer, peer, admission, connect_by).await
    else {
        return;
    };
    run(&shared, reader, accepted).await;
}

/// How a connection ended, which decides whether its will fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// DISCONNECT from the client; MQTT 5 may ask for the will anyway.
    Disconnect { with_will: bool },
    /// The socket dropped, timed out, or the client broke the protocol.
    Lost,
    /// The server closed it.
    Closed(CloseReason),
}

impl Ending {
    fn fires_will(self) -> bool {
        match self {
            Ending::Disconnect { with_will } => with_will,
            Ending::Lost => true,
            // A slow or misbehaving client ended abnormally; a taken-over, revoked or
            // shut-down one did not: its user is either still here or no longer trusted.
            Ending::Closed(reason) => matches!(
                reason,
                CloseReason::SlowConsumer
                    | CloseReason::KeepAliveTimeout
                    | CloseReason::ProtocolError
                    | CloseReason::NotAuthorized
                    | CloseReason::PacketTooLarge
            ),
        }
    }
}

/// Takes the connection out of the hub and presence however the task ends.
struct Registration {
    shared: Arc<Shared>,
    conn: Arc<ConnHandle>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.hub.unregister(self.conn.id);
        self.shared
            .presence
            .disconnected(&self.conn.user, &self.conn.device);
    }
}

/// A connection that passed CONNECT.
pub(crate) struct Accepted {
    registration: Registration,
    writer: FrameWriter,
    outbound: outbox::Receiver<Outbound>,
    close: watch::Receiver<Option<CloseReason>>,
    keep_alive: Duration,
    will: Option<crate::connection::Will>,
}

/// Per-connection state the packet handlers use.
pub(crate) struct Session<'a> {
    shared: &'a Shared,
    conn: &'a Arc<ConnHandle>,
    writer: &'a mut FrameWriter,
    typing: RateLimiter,
}

async fn run(shared: &Arc<Shared>, mut reader: FrameReader, accepted: Accepted) {
    let Accepted {
        registration,
        mut writer,
        mut outbound,
        mut close,
        keep_alive,
        will,
    } = accepted;
    let conn = registration.conn.clone();
    let mut shutdown = shared.shutdown.clone();
    let idle_limit = keep_alive + keep_alive / 2;
    let mut deadline = Instant::now() + idle_limit;
    let mut session = Session {
        shared,
        conn: &conn,
        writer: &mut writer,
        typing: RateLimiter::new(shared.limits.typing_burst, shared.limits.typing_per_second),
    };

    let ending = loop {
        tokio::select! {
            biased;
            _ = close.changed() => {
                let reason = (*close.borrow()).unwrap_or(CloseReason::ShuttingDown);
                break Ending::Closed(reason);
            }
            _ = shutdown.changed() => break Ending::Closed(CloseReason::ShuttingDown),
            Some(out) = outbound.recv() => {
                if let Err(e) = session.deliver(out, &mut outbound).await {
                    tracing::debug!(client_id = %conn.client_id, error = %e, "write failed");
                    break match e {
                        FrameError::WriteTimeout => Ending::Closed(CloseReason::SlowConsumer),
                        _ => Ending::Lost,
                    };
                }
            }
            packet = reader.next() => match packet {
                Ok(Some(packet)) => {
                    deadline = Instant::now() + idle_limit;
                    match session.handle(packet).await {
                        Ok(None) => {}
                        Ok(Some(ending)) => break ending,
                        Err(e) => {
                            tracing::debug!(client_id = %conn.client_id, error = %e, "write failed");
                            break Ending::Lost;
                        }
                    }
                }
                Ok(None) => break Ending::Lost,
                Err(FrameError::TooLarge(max)) => {
                    tracing::info!(client_id = %conn.client_id, max, "packet too large; closing");
                    break Ending::Closed(CloseReason::PacketTooLarge);
                }
                Err(FrameError::Malformed(why)) => {
                    tracing::info!(client_id = %conn.client_id, why, "malformed packet; closing");
                    break Ending::Closed(CloseReason::ProtocolError);
                }
                Err(e) => {
                    tracing::debug!(client_id = %conn.client_id, error = %e, "connection lost");
                    break Ending::Lost;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(client_id = %conn.client_id, "keep-alive timeout; closing");
                break Ending::Closed(CloseReason::KeepAliveTimeout);
            }
        }
    };

    // Nothing more is delivered to a connection on its way out.
    conn.close(match ending {
        Ending::Closed(reason) => reason,
        _ => CloseReason::ShuttingDown,
    });
    match ending {
        Ending::Closed(reason) => {
            tracing::info!(client_id = %conn.client_id, ?reason, "connection closed by the server");
            if writer.encode(Outgoing::Disconnect(reason)).is_ok() {
                let _ = writer.flush().await;
            }
        }
        Ending::Disconnect { .. } => {
            tracing::debug!(client_id = %conn.client_id, "client disconnected");
        }
        Ending::Lost => tracing::debug!(client_id = %conn.client_id, "connection lost"),
    }
    writer.shutdown().await;
    if ending.fires_will() {
        if let Some(w) = will {
            will::fire(shared, &conn, w).await;
        }
    }
    drop(registration);
}

impl Session<'_> {
    /// Writes a queued packet and whatever else is already queued, in one flush.
    async fn deliver(
        &mut self,
        first: Outbound,
        queue: &mut outbox::Receiver<Outbound>,
    ) -> Result<(), FrameError> {
        self.encode_outbound(first)?;
        // Batching bounded so one busy connection cannot starve its own reads.
        for _ in 0..256 {
            match queue.try_recv() {
                Ok(out) => self.encode_outbound(out)?,
                Err(_) => break,
            }
        }
        self.writer.flush().await
    }

    fn encode_outbound(&mut self, out: Outbound) -> Result<(), FrameError> {
        let packet = match out {
            Outbound::Publish { topic, payload } => Outgoing::Publish { topic, payload },
            Outbound::PubAck { pkid, code } => Outgoing::PubAck { pkid, code },
        };
        self.writer.encode(packet)
    }

    async fn send_now(&mut self, packet: Outgoing) -> Result<(), FrameError> {
        self.writer.encode(packet)?;
        self.writer.flush().await
    }

    /// Handles one packet from the client; `Some(ending)` closes the connection.
    async fn handle(&mut self, packet: Incoming) -> Result<Option<Ending>, FrameError> {
        match packet {
            Incoming::Publish(p) => self.publish(p).await,
            Incoming::Subscribe { pkid, filters } => {
                self.subscribe(pkid, filters).await?;
                Ok(None)
            }
            Incoming::Unsubscribe { pkid, filters } => {
                self.unsubscribe(pkid, filters).await?;
                Ok(None)
            }
            Incoming::PingReq => {
                self.send_now(Outgoing::PingResp).await?;
                Ok(None)
            }
            Incoming::PubAck => Ok(None),
            Incoming::Disconnect { with_will } => Ok(Some(Ending::Disconnect { with_will })),
            Incoming::Connect(_) => Ok(Some(self.violation(
                "a second CONNECT",
                "",
                CloseReason::ProtocolError,
            ))),
            Incoming::Unexpected(what) => Ok(Some(self.violation(
                "unexpected packet",
                what,
                CloseReason::ProtocolError,
            ))),
        }
    }

    /// A packet the client had no right to send: logged, counted, and the connection
    /// closed (MQTT 5 clients get the reason).
    fn violation(&self, why: &str, detail: &str, reason: CloseReason) -> Ending {
        tracing::warn!(user = %self.conn.user, client_id = %self.conn.client_id, why, detail, "connection refused by the front door");
        metrics::counter!("tidings_mqtt_violations_total").increment(1);
        Ending::Closed(reason)
    }
}
