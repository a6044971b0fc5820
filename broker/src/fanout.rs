//! Getting events to subscribers: inbox deliveries, command replies, the conversation
//! mirror. Everything goes through the [`Hub`], which routes it in the caller's thread
//! (a hash lookup and a queue push per subscriber, no thread hop), and nothing is even
//! encoded for a topic nobody follows: an offline user's inbox costs one lookup.
//!
//! A message to a 1,000-member group is 1,000 inbox payloads that differ only in
//! `iseq`. The JSON body is serialized once and each payload is the same bytes with a
//! different prefix, exactly what serde would produce for the whole event.

use std::sync::Arc;

use bytes::Bytes;
use tidings_core::protocol::compact::{Context, Handles};
use tidings_core::protocol::event::{Event, EventBody};
use tidings_core::protocol::{topics, CborCodec, Codec, CodecError, Command, WireFormat};
use tidings_store::{Delivery, EventSink, MembershipIndex};

use crate::hub::{ConnHandle, Hub, Outbound};

/// Decodes a command from `user`: the compact profile (on `o`) with the user's handles,
/// or JSON/CBOR by its first byte (on `u/{me}/out`, `None` = compact in the answer).
/// The front door and the worker both decode with this, so they can never disagree.
pub fn decode_command(
    index: &MembershipIndex,
    user: &str,
    payload: &[u8],
    compact: bool,
) -> (Option<WireFormat>, Result<Command, CodecError>) {
    if compact {
        let handles = UserHandles::new(index, user);
        let ctx = Context {
            user,
            handles: &handles,
        };
        (None, ctx.decode_command(payload))
    } else {
        let format = WireFormat::sniff(payload);
        (Some(format), format.codec().decode_command(payload))
    }
}

/// One user's conversation handles, read from the membership index.
pub struct UserHandles<'a> {
    index: &'a MembershipIndex,
    user: &'a str,
}

impl<'a> UserHandles<'a> {
    pub fn new(index: &'a MembershipIndex, user: &'a str) -> Self {
        UserHandles { index, user }
    }
}

impl Handles for UserHandles<'_> {
    fn handle(&self, conv: &str) -> Option<u32> {
        self.index.handle(self.user, conv)
    }
    fn conv(&self, handle: u32) -> Option<String> {
        self.index.conv_of_handle(self.user, handle)
    }
}

/// `{"v":1,"iseq":N,` + the body's JSON without its opening brace.
pub fn json_delivery(iseq: u64, body_json: &[u8]) -> Vec<u8> {
    let rest = body_json.strip_prefix(b"{").unwrap_or(body_json);
    let mut out = Vec::with_capacity(rest.len() + 32);
    out.extend_from_slice(b"{\"v\":1,\"iseq\":");
    out.extend_from_slice(iseq.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(rest);
    out
}

pub struct Fanout {
    hub: Arc<Hub>,
}

impl Fanout {
    pub fn new(hub: Arc<Hub>) -> Self {
        Fanout { hub }
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Publishes each delivery on its user's inbox, in JSON for `u/{uid}/in`, CBOR for
    /// `u/{uid}/in/c` and the compact profile for `u/{uid}/in/k` (the `i` of compact
    /// connections), for whichever of them someone follows. A device credential limited
    /// to some conversations gets only theirs, and one that asked for no echo does not
    /// get its user's own messages back.
    pub fn deliver_all(&self, deliveries: &[Delivery]) {
        let mut cached: Option<(*const EventBody, Vec<u8>)> = None;
        for d in deliveries {
            let conv = d.body.conv();
            let own = d.body.is_own_message(&d.user);
            let admit =
                |c: &ConnHandle| conv.is_none_or(|cv| c.grant.covers(cv)) && (c.grant.echo || !own);
            self.hub.route_where(
                &topics::inbox(&d.user),
                || {
                    let ptr = Arc::as_ptr(&d.body);
                    if cached.as_ref().is_none_or(|(p, _)| *p != ptr) {
                        cached =
                            encoded(serde_json::to_vec(&*d.body), "an event").map(|j| (ptr, j));
                    }
                    let (_, json) = cached.as_ref()?;
                    Some(Bytes::from(json_delivery(d.seq, json)))
                },
                admit,
            );
            let event = || Event {
                v: 1,
                seq: Some(d.seq),
                re: None,
                body: (*d.body).clone(),
            };
            self.hub.route_where(
                &cbor_inbox(&d.user),
                || encoded(CborCodec.encode_event(&event()), "an event as CBOR").map(Bytes::from),
                admit,
            );
            self.hub.route_where(
                &compact_inbox(&d.user),
                || {
                    let handles = UserHandles::new(self.hub.index(), &d.user);
                    let ctx = Context {
                        user: &d.user,
                        handles: &handles,
                    };
                    encoded(ctx.encode_event(&event()), "a compact event").map(Bytes::from)
                },
                admit,
            );
        }
    }

    /// Answers a device's command (`ack`/`error`) in the codec it spoke: JSON on
    /// `u/{me}/in`, CBOR on `u/{me}/in/c`.
    pub fn reply(&self, user: &str, format: WireFormat, event: &Event) {
        self.hub.route_with(&inbox_topic(user, format), || {
            encoded(format.codec().encode_event(event), "a reply").map(Bytes::from)
        });
    }

    /// Answers a compact connection's command on its own `i`, and nowhere else.
    pub fn reply_compact(&self, to: &ConnHandle, event: &Event) {
        let handles = UserHandles::new(self.hub.index(), &to.user);
        let ctx = Context {
            user: &to.user,
            handles: &handles,
        };
        if let Some(payload) = encoded(ctx.encode_event(event), "a compact reply") {
            to.send(Outbound::Publish {
                topic: compact_inbox_alias(),
                payload: payload.into(),
            });
        }
    }

    /// Copies message-shaped events to `c/{cid}/m` for clients following one
    /// conversation. No `iseq` there: it is not anyone's inbox.
    pub fn mirror(&self, body: &EventBody) {
        let conv = match body {
            EventBody::Message(m) | EventBody::MessageUpdated(m) => &m.conv,
            EventBody::Reaction(r) => &r.conv,
            _ => return,
        };
        self.hub.route_with(&topics::mirror(conv), || {
            encoded(
                serde_json::to_vec(&Event::durable(body.clone())),
                "a mirror event",
            )
            .map(Bytes::from)
        });
    }
}

/// The encoded bytes, or `None` after logging why not (an event we built ourselves that
/// does not encode is a bug, not a client's fault).
pub(crate) fn encoded<E: std::fmt::Display>(
    result: Result<Vec<u8>, E>,
    what: &str,
) -> Option<Vec<u8>> {
    result
        .map_err(|e| tracing::error!(error = %e, "could not encode {what}"))
        .ok()
}

/// What both planes call after a write: inbox deliveries plus, for message-shaped
/// events, the conversation mirror.
impl EventSink for Fanout {
    fn deliver(&self, deliveries: &[Delivery]) {
        self.deliver_all(deliveries);
        if let Some(first) = deliveries.first() {
            self.mirror(&first.body);
        }
    }

    fn presence(&self, user: &str, online: bool, last_seen: Option<i64>) {
        crate::presence::publish(
            self.hub(),
            user,
            tidings_core::protocol::ephemeral::Presence {
                v: 1,
                online,
                last_seen: if online { None } else { last_seen },
            },
        );
    }
}

/// `u/{uid}/in/c`: the inbox in CBOR (string keys, the same fields as JSON).
pub fn cbor_inbox(user: &str) -> String {
    format!("{}/c", topics::inbox(user))
}

/// `u/{uid}/in/k`: the inbox in the compact profile. Nobody subscribes to it by name
/// (the ACL refuses it): a connection subscribes to `i` and the front door files that
/// under this topic, delivering as `i`.
pub fn compact_inbox(user: &str) -> String {
    format!("{}/k", topics::inbox(user))
}

/// The compact profile's per-connection topics.
pub const COMPACT_INBOX: &str = "i";
pub const COMPACT_OUTBOX: &str = "o";

pub fn compact_inbox_alias() -> Bytes {
    Bytes::from_static(COMPACT_INBOX.as_bytes())
}

/// The inbox topic a device reading `format` follows.
pub fn inbox_topic(user: &str, format: WireFormat) -> String {
    match format {
        WireFormat::Json => topics::inbox(user),
        WireFormat::Cbor => cbor_inbox(user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::protocol::event::{AckView, ReceiptKind, ReceiptView};
    use tidings_core::protocol::JsonCodec;

    #[test]
    fn the_template_equals_serde_for_every_seq() {
        let body = EventBody::Receipt(ReceiptView {
            conv: "c".into(),
            user: "u".into(),
            kind: ReceiptKind::Read,
            seq: 7,
        });
        let json = serde_json::to_vec(&body).unwrap();
        for iseq in [0, 1, 42, u64::MAX] {
            let expected = JsonCodec
                .encode_event(&Event {
                    v: 1,
                    seq: Some(iseq),
                    re: None,
                    body: body.clone(),
                })
                .unwrap();
            assert_eq!(json_delivery(iseq, &json), expected);
        }
        let ack = EventBody::Ack(AckView::default());
        let json = serde_json::to_vec(&ack).unwrap();
        let decoded = JsonCodec.decode_event(&json_delivery(3, &json)).unwrap();
        assert_eq!((decoded.seq, decoded.body), (Some(3), ack));
    }
}
