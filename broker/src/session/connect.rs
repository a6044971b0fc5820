//! CONNECT: read it within the deadline, authenticate, check the will, register with
//! the hub (taking over an older connection of the same client id), and answer with a
//! CONNACK code, success or refusal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidings_core::protocol::limits::{MAX_COMMAND_BYTES, MAX_TYPING_BYTES};

use super::{Accepted, Admission, Registration, Shared};
use crate::acl::may_publish;
use crate::connection::{
    Connect, FrameError, FrameReader, FrameWriter, Incoming, Outgoing, Refusal, Version, Will,
};
use crate::hub::{ConnHandle, RegisterError};
use crate::transport::WriteHalf;

/// The client id the readiness probe uses: its refusals are expected, so they are quiet.
pub const PROBE_CLIENT_ID: &str = "tidings-readyz";

pub(super) async fn handshake(
    shared: &Arc<Shared>,
    reader: &mut FrameReader,
    writer: WriteHalf,
    peer: SocketAddr,
    admission: Admission,
    connect_by: tokio::time::Instant,
) -> Option<Accepted> {
    let limits = &shared.limits;
    let first = tokio::time::timeout_at(connect_by, reader.next()).await;
    let connect = match first {
        Ok(Ok(Some(Incoming::Connect(c)))) => c,
        Ok(Err(FrameError::UnsupportedProtocol(what))) => {
            // Answer in 3.1.1 form, which every client version can read.
            tracing::info!(%peer, protocol = %what, "CONNECT refused: unsupported protocol");
            refuse(writer, Version::V4, Refusal::ProtocolVersion, "protocol").await;
            return None;
        }
        Ok(Ok(Some(_))) => {
            tracing::info!(%peer, "first packet was not CONNECT; closing");
            return None;
        }
        Ok(Ok(None)) | Ok(Err(_)) => {
            tracing::debug!(%peer, "connection ended before CONNECT");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "no CONNECT within the deadline; closing");
            metrics::counter!("tidings_mqtt_connect_timeouts_total").increment(1);
            return None;
        }
    };
    let version = connect.version;
    let slot = match admission {
        Admission::Admitted(slot) => slot,
        Admission::Full(_refusing) => {
            tracing::info!(%peer, client_id = %connect.client_id, "CONNECT refused: the broker is full");
            refuse(writer, version, Refusal::ServerBusy, "full").await;
            return None;
        }
    };

    let quiet = connect.client_id == PROBE_CLIENT_ID;
    let identity = match crate::auth::check(
        shared.store.as_ref(),
        &shared.keys,
        &connect.client_id,
        connect.username.as_deref(),
        connect.password.as_deref(),
    )
    .await
    {
        Ok(identity) => identity,
        Err(why) => {
            if quiet {
                tracing::debug!(%peer, "readiness probe answered");
            } else {
                tracing::info!(%peer, client_id = %connect.client_id, reason = ?why, "CONNECT refused");
            }
            refuse(writer, version, why.connack(), why.label()).await;
            return None;
        }
    };

    if let Some(w) = &connect.will {
        if let Err(why) = will_allowed(shared, &identity.user, w) {
            tracing::info!(%peer, client_id = %connect.client_id, why, topic = %w.topic, "CONNECT refused: will");
            refuse(writer, version, Refusal::NotAuthorized, "will").await;
            return None;
        }
    }

    let (conn, outbound, close) = ConnHandle::new(
        shared.hub.next_conn_id(),
        identity.user.clone(),
        identity.device.clone(),
        connect.client_id.clone(),
        identity.session.clone(),
        identity.grant.clone(),
        limits.outbound_queue,
    );
    if let Err(RegisterError::UserCap) = shared
        .hub
        .register(conn.clone(), limits.max_connections_per_user)
    {
        tracing::info!(%peer, client_id = %connect.client_id, "CONNECT refused: too many connections for this user");
        refuse(writer, version, Refusal::QuotaExceeded, "user_cap").await;
        return None;
    }
    // From here on, the registration's Drop unregisters, whatever happens.
    shared.presence.connected(&identity.user, &identity.device);
    let registration = Registration {
        shared: shared.clone(),
        conn,
        _slot: slot,
    };

    let (keep_alive, server_keep_alive) = keep_alive(&connect, limits.max_keep_alive_secs);
    let mut writer = FrameWriter::new(writer, version, limits.write_timeout());
    let acked = match writer.encode(Outgoing::ConnAck(Ok(()), server_keep_alive)) {
        Ok(()) => writer.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = acked {
        tracing::debug!(%peer, error = %e, "CONNACK could not be written");
        return None; // registration drops here: nothing is left behind
    }
    tracing::info!(%peer, client_id = %connect.client_id, ?version, "connected");
    metrics::counter!("tidings_mqtt_connects_total").increment(1);
    Some(Accepted {
        registration,
        writer,
        outbound,
        close,
        keep_alive,
        will: connect.will,
    })
}

/// The keep-alive the server enforces, and the value to tell an MQTT 5 client when it
/// differs from what it asked. 0 ("none") or more than the maximum becomes the maximum,
/// so an idle dead peer is always found.
fn keep_alive(connect: &Connect, max_secs: u16) -> (Duration, Option<u16>) {
    let max_secs = max_secs.max(1);
    let asked = connect.keep_alive;
    let held = if asked == 0 || asked > max_secs {
        max_secs
    } else {
        asked
    };
    let tell = (connect.version == Version::V5 && held != asked).then_some(held);
    (Duration::from_secs(u64::from(held)), tell)
}

/// Whether a will may be stored: the same rights and size bounds as the publish it will
/// become. Checked again when it fires.
pub(super) fn will_allowed(shared: &Shared, user: &str, w: &Will) -> Result<(), &'static str> {
    if w.topic.is_empty() || !rumqttc::mqttbytes::valid_topic(&w.topic) {
        return Err("invalid topic");
    }
    if !may_publish(user, &w.topic, w.qos, w.retain, shared.hub.index()) {
        return Err("forbidden topic");
    }
    let limit = if w.topic.starts_with("c/") {
        MAX_TYPING_BYTES
    } else {
        MAX_COMMAND_BYTES
    };
    if w.payload.len() > limit {
        return Err("oversized payload");
    }
    Ok(())
}

async fn refuse(writer: WriteHalf, version: Version, refusal: Refusal, label: &'static str) {
    metrics::counter!("tidings_mqtt_connect_refused_total", "reason" => label).increment(1);
    let mut writer = FrameWriter::new(writer, version, Duration::from_secs(5));
    if writer.encode(Outgoing::ConnAck(Err(refusal), None)).is_ok() {
        let _ = writer.flush().await;
    }
    writer.shutdown().await;
}
