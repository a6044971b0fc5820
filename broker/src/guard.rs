//! The connection guard: rumqttd's codec, wrapped so that every packet a client sends
//! is checked against the ACL before rumqttd acts on it.
//!
//! rumqttd 0.20 has no topic authorization: any logged-in client could subscribe to
//! `#`. But its `Server<P: Protocol + Clone>` clones the protocol value once per
//! accepted connection and calls `read_mut(&mut self, …)` for every packet the client
//! sends, so a wrapper can remember who the connection is (from CONNECT) and refuse
//! anything outside that user's rights. Refusing means returning a protocol error,
//! which makes rumqttd log it and close the socket. No fork, no proxy hop.
//!
//! Besides the ACL, the guard closes holes found by reading rumqttd's source:
//! - client→server packets of server-only types (CONNACK, SUBACK, UNSUBACK, PINGRESP)
//!   are refused before the inner codec sees them (its v5 decoder hits `unreachable!`);
//! - `clean_session` is forced on, so nobody can inherit a stored session's
//!   subscriptions by reusing a client id (restored subscriptions skip the codec);
//! - MQTT 5 properties are dropped (topic aliases would rename a topic after the ACL
//!   check, and a v4 subscriber's encoder panics on forwarded properties);
//! - wills are ACL-checked like publishes.
//!
//! The wrapper's lifetime is the connection's: a successful CONNACK going out marks the
//! user online, and `Drop` marks the connection gone, which feeds presence.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use rumqttd::protocol::{
    valid_filter, valid_topic, ConnectReturnCode, Error as ProtocolError, Packet, Protocol,
};
use tidings_core::protocol::ids::{is_client_id, is_server_id};
use tidings_core::protocol::limits::MAX_TYPING_BYTES;
use tidings_store::MembershipIndex;

use crate::acl::{may_publish, may_subscribe};
use crate::presence::PresenceTracker;

/// What all connections share.
pub struct GuardShared {
    pub index: Arc<MembershipIndex>,
    pub presence: Arc<PresenceTracker>,
    /// Connections closed for an ACL or protocol violation.
    pub violations: AtomicU64,
}

/// Who a connection is, once its CONNECT was read.
#[derive(Debug, Clone)]
struct Identity {
    user: String,
    device: String,
}

pub struct Guard<P> {
    inner: P,
    shared: Arc<GuardShared>,
    identity: Option<Identity>,
    /// Set when the successful CONNACK is written; `write` takes `&self`.
    online: AtomicBool,
    /// This connection subscribed to its compact (CBOR) inbox.
    compact: AtomicBool,
}

impl<P> Guard<P> {
    pub fn new(inner: P, shared: Arc<GuardShared>) -> Self {
        Guard {
            inner,
            shared,
            identity: None,
            online: AtomicBool::new(false),
            compact: AtomicBool::new(false),
        }
    }

    fn refuse(&self, why: &str, detail: &str) -> ProtocolError {
        self.shared.violations.fetch_add(1, Ordering::Relaxed);
        let user = self.identity.as_ref().map_or("-", |i| i.user.as_str());
        tracing::warn!(user, why, detail, "connection refused by the guard");
        ProtocolError::InvalidProtocol
    }
}

/// Every clone is a new connection, with no identity yet.
impl<P: Clone> Clone for Guard<P> {
    fn clone(&self) -> Self {
        Guard::new(self.inner.clone(), self.shared.clone())
    }
}

/// Splits a client id `{user}:{device}`.
pub fn parse_client_id(client_id: &str) -> Option<(&str, &str)> {
    let (user, device) = client_id.split_once(':')?;
    (is_server_id(user) && is_client_id(device)).then_some((user, device))
}

/// Packet types only a server may send (MQTT fixed header, high nibble).
const SERVER_ONLY_TYPES: [u8; 4] = [2, 9, 11, 13];
const PUBLISH_TYPE: u8 = 3;

impl<P: Protocol> Protocol for Guard<P> {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, ProtocolError> {
        let first = stream.first().copied();
        if let Some(kind) = first.map(|b| b >> 4) {
            if SERVER_ONLY_TYPES.contains(&kind) {
                return Err(self.refuse("server-only packet type", &kind.to_string()));
            }
        }
        let mut packet = self.inner.read_mut(stream, max_size)?;
        match &mut packet {
            Packet::Connect(connect, props, will, will_props, login) => {
                if self.identity.is_some() {
                    return Err(self.refuse("second CONNECT", ""));
                }
                let Some(login) = login else {
                    return Err(self.refuse("CONNECT without credentials", &connect.client_id));
                };
                let Some((user, device)) = parse_client_id(&connect.client_id) else {
                    return Err(self.refuse("client id is not {user}:{device}", &connect.client_id));
                };
                if user != login.username {
                    return Err(self.refuse("client id of another user", &connect.client_id));
                }
                let identity = Identity {
                    user: user.to_owned(),
                    device: device.to_owned(),
                };
                if let Some(w) = will {
                    let topic = std::str::from_utf8(&w.topic).unwrap_or("");
                    if !valid_topic(topic)
                        || !may_publish(
                            &identity.user,
                            topic,
                            w.qos as u8,
                            w.retain,
                            &self.shared.index,
                        )
                    {
                        return Err(self.refuse("will on a forbidden topic", topic));
                    }
                }
                connect.clean_session = true;
                *props = None;
                *will_props = None;
                self.identity = Some(identity);
            }
            Packet::Publish(publish, props) => {
                let Some(identity) = &self.identity else {
                    return Err(self.refuse("PUBLISH before CONNECT", ""));
                };
                // rumqttd keeps QoS private; it is bits 1-2 of the fixed header we peeked.
                let qos = first
                    .filter(|b| b >> 4 == PUBLISH_TYPE)
                    .map_or(0, |b| (b >> 1) & 3);
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if topic.is_empty()
                    || !valid_topic(topic)
                    || !may_publish(
                        &identity.user,
                        topic,
                        qos,
                        publish.retain,
                        &self.shared.index,
                    )
                {
                    return Err(self.refuse("publish to a forbidden topic", topic));
                }
                if topic.starts_with("c/") && publish.payload.len() > MAX_TYPING_BYTES {
                    return Err(self.refuse("oversized typing payload", topic));
                }
                *props = None;
            }
            Packet::Subscribe(subscribe, props) => {
                let Some(identity) = &self.identity else {
                    return Err(self.refuse("SUBSCRIBE before CONNECT", ""));
                };
                let compact_inbox = format!("u/{}/in/c", identity.user);
                for filter in &subscribe.filters {
                    let path = filter.path.as_str();
                    if !valid_filter(path)
                        || !may_subscribe(&identity.user, path, &self.shared.index)
                    {
                        return Err(self.refuse("subscribe to a forbidden filter", path));
                    }
                    if path == compact_inbox && !self.compact.swap(true, Ordering::Relaxed) {
                        self.shared.presence.compact_subscribed(&identity.user);
                    }
                }
                *props = None;
            }
            Packet::Unsubscribe(unsubscribe, props) => {
                if let Some(identity) = &self.identity {
                    let compact_inbox = format!("u/{}/in/c", identity.user);
                    if unsubscribe.filters.contains(&compact_inbox)
                        && self.compact.swap(false, Ordering::Relaxed)
                    {
                        self.shared.presence.compact_unsubscribed(&identity.user);
                    }
                }
                *props = None;
            }
            _ => {}
        }
        Ok(packet)
    }

    fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, ProtocolError> {
        let packet = match packet {
            Packet::ConnAck(ack, props) => {
                if ack.code == ConnectReturnCode::Success
                    && !self.online.swap(true, Ordering::AcqRel)
                {
                    if let Some(id) = &self.identity {
                        self.shared.presence.connected(&id.user, &id.device);
                    }
                }
                Packet::ConnAck(ack, props)
            }
            // Never forward MQTT 5 properties to a client: the v4 encoder cannot write them.
            Packet::Publish(publish, _) => Packet::Publish(publish, None),
            other => other,
        };
        self.inner.write(packet, out)
    }
}

impl<P> Drop for Guard<P> {
    fn drop(&mut self) {
        let Some(id) = &self.identity else { return };
        if *self.compact.get_mut() {
            self.shared.presence.compact_unsubscribed(&id.user);
        }
        if *self.online.get_mut() {
            self.shared.presence.disconnected(&id.user, &id.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_client_id;
    use tidings_core::protocol::ids::new_id;

    #[test]
    fn client_ids_name_a_user_and_a_device() {
        let u = new_id();
        assert_eq!(
            parse_client_id(&format!("{u}:phone")),
            Some((u.as_str(), "phone"))
        );
        for bad in [
            u.clone(),
            format!("{u}:"),
            format!("{u}:a/b"),
            format!("{u}:+"),
            "x:phone".into(),
            format!(":{u}"),
        ] {
            assert_eq!(parse_client_id(&bad), None, "{bad}");
        }
    }
}
