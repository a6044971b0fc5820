//! Framing, and nothing else: bytes from a transport become [`Incoming`] packets, and
//! [`Outgoing`] packets become bytes, in MQTT 3.1.1 or MQTT 5 as the client's CONNECT
//! chose.
//!
//! The codecs are rumqttc's `mqttbytes` (the same lineage as rumqttd's protocol module,
//! but with public fields: the front door must read a PUBLISH's packet id to answer it
//! with a PUBACK once the command is stored, which rumqttd's `Publish` keeps private).
//! Everything above this module sees one small, version-free packet model, so the
//! session logic is written once for both protocol versions.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use crate::transport::{ReadHalf, WriteHalf};

/// The MQTT protocol level a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// A client's last will, as given at CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Debug, Clone)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
}

/// What a client may send.
#[derive(Debug, Clone)]
pub enum Incoming {
    Connect(Connect),
    Publish(Publish),
    /// The client acknowledges a QoS 1 delivery (we deliver at QoS 0, so it is ignored).
    PubAck,
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// `with_will`: an MQTT 5 client asked for its will to be published anyway.
    Disconnect {
        with_will: bool,
    },
    /// A packet type a client must not send, or QoS 2 flow (not supported).
    Unexpected(&'static str),
}

/// Why a CONNECT is refused, in terms both protocol versions can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 3.1.1: 0x01 / 5: 0x84.
    ProtocolVersion,
    /// 3.1.1: 0x02 / 5: 0x85.
    ClientId,
    /// 3.1.1: 0x04 / 5: 0x86.
    BadCredentials,
    /// 3.1.1: 0x05 / 5: 0x87.
    NotAuthorized,
    /// 3.1.1: 0x03 / 5: 0x89 (server busy: the broker is full).
    ServerBusy,
    /// 3.1.1: 0x03 / 5: 0x88 (e.g. the database is unreachable).
    ServerUnavailable,
    /// 3.1.1: 0x05 / 5: 0x97 (the user's connection cap).
    QuotaExceeded,
}

/// Why the server closes a connection. MQTT 5 clients get a DISCONNECT with the reason;
/// 3.1.1 has no server DISCONNECT, so those connections are just closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection with the same client id took over (0x8E).
    TakenOver,
    /// The session was logged out or revoked, or the account disabled (0x87).
    Revoked,
    /// The connection did not keep up with what it is sent (0x97 quota exceeded).
    SlowConsumer,
    /// The server is shutting down (0x8B).
    ShuttingDown,
    /// A forbidden packet (0x87 not authorized).
    NotAuthorized,
    /// A malformed or unexpected packet (0x82 protocol error).
    ProtocolError,
    /// Larger than the configured maximum packet size (0x95).
    PacketTooLarge,
    /// Nothing received for 1.5 x keep-alive (0x8D).
    KeepAliveTimeout,
}

/// Result code of a QoS 1 command, for MQTT 5 PUBACKs (3.1.1 PUBACKs carry none; the
/// `error` event on the inbox says the same to both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    Success,
    /// The command was refused (invalid, not a member, …): 0x80.
    Refused,
    /// Not authorized: 0x87.
    NotAuthorized,
    /// Rate limited or overloaded: 0x97.
    QuotaExceeded,
    /// Not decodable: 0x99.
    PayloadFormatInvalid,
}

/// What the server sends.
#[derive(Debug, Clone)]
pub enum Outgoing {
    ConnAck(Result<(), Refusal>, Option<u16>),
    /// QoS 0 delivery.
    Publish {
        topic: Bytes,
        payload: Bytes,
    },
    PubAck {
        pkid: u16,
        code: AckCode,
    },
    /// One entry per filter: `Some(granted QoS)` or `None` (refused).
    SubAck {
        pkid: u16,
        granted: Vec<Option<u8>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    Disconnect(CloseReason),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection reset by peer")]
    Reset,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("packet larger than {0} bytes")]
    TooLarge(usize),
    #[error("not MQTT 3.1.1 or 5 (protocol {0})")]
    UnsupportedProtocol(String),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("write timed out")]
    WriteTimeout,
}

/// Reads packets. Cancel-safe: the only await is the transport read, which appends to
/// the buffer only when it completes, so `next` can sit in a `select!`.
pub struct FrameReader {
    inner: ReadHalf,
    buf: BytesMut,
    max_packet: usize,
    version: Option<Version>,
}

impl FrameReader {
    pub fn new(inner: ReadHalf, max_packet: usize) -> Self {
        FrameReader {
            inner,
            // Grows on demand: an idle connection should cost almost nothing.
            buf: BytesMut::new(),
            max_packet,
            version: None,
        }
    }

    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The next packet; `Ok(None)` when the peer closed cleanly between packets.
    pub async fn next(&mut self) -> Result<Option<Incoming>, FrameError> {
        loop {
            if let Some(packet) = self.parse()? {
                return Ok(Some(packet));
            }
            let n = self.inner.read(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Reset)
                };
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Incoming>, FrameError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let version = match self.version {
            Some(v) => v,
            None => match sniff_connect(&self.buf)? {
                Some(v) => {
                    self.version = Some(v);
                    v
                }
                None => return Ok(None),
            },
        };
        match version {
            Version::V4 => match v4::Packet::read(&mut self.buf, self.max_packet) {
                Ok(p) => Ok(Some(from_v4(p))),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                    Err(FrameError::TooLarge(self.max_packet))
                }
                Err(e) => Err(FrameError::Malformed(e.to_string())),
            },
            Version::V5 => {
                // A DISCONNECT with no reason code (normal disconnection) has remaining
                // length 0, which rumqttc's v5 reader refuses as "payload required".
                if self.buf.starts_with(&[0xE0, 0x00]) {
                    self.buf.advance(2);
                    return Ok(Some(Incoming::Disconnect { with_will: false }));
                }
                let max = u32::try_from(self.max_packet).unwrap_or(u32::MAX);
                match v5::Packet::read(&mut self.buf, Some(max)) {
                    Ok(p) => Ok(Some(from_v5(p))),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                    Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                        Err(FrameError::TooLarge(self.max_packet))
                    }
                    Err(e) => Err(FrameError::Malformed(e.to_string())),
                }
            }
        }
    }
}

/// Decides the protocol version from the first packet, which must be a CONNECT:
/// fixed header, remaining length, protocol name, protocol level. `Ok(None)` until
/// enough bytes are there.
fn sniff_connect(buf: &[u8]) -> Result<Option<Version>, FrameError> {
    if buf[0] != 0x10 {
        return Err(FrameError::Malformed(format!(
            "the first packet must be CONNECT, not type {}",
            buf[0] >> 4
        )));
    }
    // Remaining length: 1 to 4 bytes of 7-bit groups.
    let mut at = 1;
    loop {
        let Some(b) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(FrameError::Malformed("remaining length".into()));
        }
    }
    let Some(name_len) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    let Some(name) = buf.get(at + 2..at + 2 + name_len) else {
        return Ok(None);
    };
    let Some(level) = buf.get(at + 2 + name_len) else {
        return Ok(None);
    };
    match (name, level) {
        (b"MQTT", 4) => Ok(Some(Version::V4)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (name, level) => Err(FrameError::UnsupportedProtocol(format!(
            "{} level {level}",
            String::from_utf8_lossy(name)
        ))),
    }
}

fn from_v4(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::Connect(c) => Incoming::Connect(Connect {
            version: Version::V4,
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| l.password),
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
            }),
        }),
        v4::Packet::Publish(p) => Incoming::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            pkid: p.pkid,
            retain: p.retain,
        }),
        v4::Packet::PubAck(_) => Incoming::PubAck,
        v4::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect { with_will: false },
        v4::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Incoming::Unexpected("PINGRESP"),
        v4::Packet::PubRec(_) | v4::Packet::PubRel(_) | v4::Packet::PubComp(_) => {
            Incoming::Unexpected("QoS 2 flow")
        }
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    match p {
        v5::Packet::Connect(c, will, login) => Incoming::Connect(Connect {
            version: Version::V5,
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.map(|l| l.password),
            will: will.map(|w| Will {
                topic: String::from_utf8_lossy(&w.topic).into_owned(),
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
            }),
        }),
        v5::Packet::Publish(p) => {
            // A topic alias would rename the topic after the ACL check; we grant none
            // (topic_alias_max 0 in CONNACK), so an aliased publish is a protocol error.
            if p.properties
                .as_ref()
                .is_some_and(|pr| pr.topic_alias.is_some())
            {
                return Incoming::Unexpected("topic alias");
            }
            Incoming::Publish(Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                qos: p.qos as u8,
                pkid: p.pkid,
                retain: p.retain,
            })
        }
        v5::Packet::PubAck(_) => Incoming::PubAck,
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(d) => Incoming::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Incoming::Unexpected("PINGRESP"),
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::PubRec(_) | v5::Packet::PubRel(_) | v5::Packet::PubComp(_) => {
            Incoming::Unexpected("QoS 2 flow")
        }
    }
}

/// Writes packets: `encode` into a buffer, `flush` once for however many were encoded,
/// so a burst of deliveries is one write.
pub struct FrameWriter {
    inner: WriteHalf,
    buf: BytesMut,
    version: Version,
    write_timeout: Duration,
}

impl FrameWriter {
    pub fn new(inner: WriteHalf, version: Version, write_timeout: Duration) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::new(),
            version,
            write_timeout,
        }
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn encode(&mut self, packet: Outgoing) -> Result<(), FrameError> {
        let result = match self.version {
            Version::V4 => match to_v4(packet) {
                Some(p) => p
                    .write(&mut self.buf, usize::MAX)
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Version::V5 => to_v5(packet)
                .write(&mut self.buf, None)
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        result.map_err(FrameError::Malformed)
    }

    /// Writes what was encoded. A peer that does not read for `write_timeout` is cut
    /// off: its socket buffer is full and everything else waits behind it.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let bytes = self.buf.split().freeze();
        match tokio::time::timeout(self.write_timeout, self.inner.write_all(bytes)).await {
            Ok(result) => result.map_err(FrameError::Io),
            Err(_) => Err(FrameError::WriteTimeout),
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.shutdown()).await;
    }
}

fn to_v4(packet: Outgoing) -> Option<v4::Packet> {
    use v4::ConnectReturnCode as C;
    Some(match packet {
        Outgoing::ConnAck(result, _) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: false,
            code: match result {
                Ok(()) => C::Success,
                Err(Refusal::ProtocolVersion) => C::RefusedProtocolVersion,
                Err(Refusal::ClientId) => C::BadClientId,
                Err(Refusal::BadCredentials) => C::BadUserNamePassword,
                Err(Refusal::NotAuthorized | Refusal::QuotaExceeded) => C::NotAuthorized,
                Err(Refusal::ServerBusy | Refusal::ServerUnavailable) => C::ServiceUnavailable,
            },
        }),
        Outgoing::Publish { topic, payload } => v4::Packet::Publish(v4::Publish {
            dup: false,
            qos: rumqttc::mqttbytes::QoS::AtMostOnce,
            retain: false,
            // Topics we route were validated as UTF-8 when they were published.
            topic: String::from_utf8_lossy(&topic).into_owned(),
            pkid: 0,
            payload,
        }),
        Outgoing::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck { pkid }),
        Outgoing::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck {
            pkid,
            return_codes: granted
                .into_iter()
                .map(|g| match g.and_then(v4_qos) {
                    Some(q) => v4::SubscribeReasonCode::Success(q),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        Outgoing::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck { pkid }),
        Outgoing::PingResp => v4::Packet::PingResp,
        // MQTT 3.1.1 has no server-to-client DISCONNECT: the socket is just closed.
        Outgoing::Disconnect(_) => return None,
    })
}

fn v4_qos(q: u8) -> Option<rumqttc::mqttbytes::QoS> {
    rumqttc::mqttbytes::qos(q).ok()
}

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).unwrap_or(rumqttc::v5::mqttbytes::QoS::AtMostOnce)
}

fn to_v5(packet: Outgoing) -> v5::Packet {
    use v5::ConnectReturnCode as C;
    match packet {
        Outgoing::ConnAck(result, server_keep_alive) => v5::Packet::ConnAck(v5::ConnAck {
            session_present: false,
            code: match result {
                Ok(()) => C::Success,
                Err(Refusal::ProtocolVersion) => C::UnsupportedProtocolVersion,
                Err(Refusal::ClientId) => C::ClientIdentifierNotValid,
                Err(Refusal::BadCredentials) => C::BadUserNamePassword,
                Err(Refusal::NotAuthorized) => C::NotAuthorized,
                Err(Refusal::ServerBusy) => C::ServerBusy,
                Err(Refusal::ServerUnavailable) => C::ServerUnavailable,
                Err(Refusal::QuotaExceeded) => C::QuotaExceeded,
            },
            properties: result.is_ok().then(|| v5::ConnAckProperties {
                // What we support, said up front so clients do not try the rest.
                max_qos: Some(1),
                retain_available: Some(0),
                topic_alias_max: Some(0),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive,
                session_expiry_interval: None,
                receive_max: None,
                max_packet_size: None,
                assigned_client_identifier: None,
                reason_string: None,
                user_properties: Vec::new(),
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outgoing::Publish { topic, payload } => v5::Packet::Publish(v5::Publish {
            dup: false,
            qos: rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            retain: false,
            topic,
            pkid: 0,
            payload,
            properties: None,
        }),
        Outgoing::PubAck { pkid, code } => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: match code {
                AckCode::Success => v5::PubAckReason::Success,
                AckCode::Refused => v5::PubAckReason::UnspecifiedError,
                AckCode::NotAuthorized => v5::PubAckReason::NotAuthorized,
                AckCode::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
                AckCode::PayloadFormatInvalid => v5::PubAckReason::PayloadFormatInvalid,
            },
            properties: None,
        }),
        Outgoing::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: granted
                .into_iter()
                .map(|g| match g {
                    Some(q) => v5::SubscribeReasonCode::Success(v5_qos(q)),
                    None => v5::SubscribeReasonCode::NotAuthorized,
                })
                .collect(),
            properties: None,
        }),
        Outgoing::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: vec![v5::UnsubAckReason::Success; count],
            properties: None,
        }),
        Outgoing::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outgoing::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: match reason {
                CloseReason::TakenOver => v5::DisconnectReasonCode::SessionTakenOver,
                CloseReason::Revoked | CloseReason::NotAuthorized => {
                    v5::DisconnectReasonCode::NotAuthorized
                }
                CloseReason::SlowConsumer => v5::DisconnectReasonCode::QuotaExceeded,
                CloseReason::ShuttingDown => v5::DisconnectReasonCode::ServerShuttingDown,
                CloseReason::ProtocolError => v5::DisconnectReasonCode::ProtocolError,
                CloseReason::PacketTooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                CloseReason::KeepAliveTimeout => v5::DisconnectReasonCode::KeepAliveTimeout,
            },
            properties: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(level: u8) -> Vec<u8> {
        let mut c = v4::Connect::new("u:d");
        c.set_login("u", "p");
        let mut buf = BytesMut::new();
        c.write(&mut buf).unwrap();
        let mut bytes = buf.to_vec();
        // Byte 8 is the protocol level for a one-byte remaining length.
        bytes[8] = level;
        bytes
    }

    #[test]
    fn the_connect_packet_decides_the_version() {
        assert_eq!(sniff_connect(&connect_bytes(4)).unwrap(), Some(Version::V4));
        assert_eq!(sniff_connect(&connect_bytes(5)).unwrap(), Some(Version::V5));
        assert!(matches!(
            sniff_connect(&connect_bytes(3)),
            Err(FrameError::UnsupportedProtocol(_))
        ));
        // Partial input asks for more rather than failing.
        let full = connect_bytes(4);
        for cut in 1..9 {
            assert_eq!(sniff_connect(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(sniff_connect(&[0x30, 0x00]).is_err(), "PUBLISH first");
    }
}
