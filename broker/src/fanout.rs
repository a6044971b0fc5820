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
use tidings_core::protocol::event::{Event, EventBody};
use tidings_core::protocol::{topics, CborCodec, Codec, WireFormat};
use tidings_store::{Delivery, EventSink};

use crate::hub::Hub;

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

    /// Publishes each delivery on its user's inbox, in JSON for `u/{uid}/in` and CBOR
    /// for `u/{uid}/in/c`, for whichever of the two someone follows.
    pub fn deliver_all(&self, deliveries: &[Delivery]) {
        let mut cached: Option<(*const EventBody, Vec<u8>)> = None;
        for d in deliveries {
            self.hub.route_with(&topics::inbox(&d.user), || {
                let ptr = Arc::as_ptr(&d.body);
                if cached.as_ref().is_none_or(|(p, _)| *p != ptr) {
                    cached = encoded(serde_json::to_vec(&*d.body), "an event").map(|j| (ptr, j));
                }
                let (_, json) = cached.as_ref()?;
                Some(Bytes::from(json_delivery(d.seq, json)))
            });
            self.hub.route_with(&compact_inbox(&d.user), || {
                let event = Event {
                    v: 1,
                    seq: Some(d.seq),
                    re: None,
                    body: (*d.body).clone(),
                };
                encoded(CborCodec.encode_event(&event), "an event as CBOR").map(Bytes::from)
            });
        }
    }

    /// Answers a device's command (`ack`/`error`) in the codec it spoke: JSON on
    /// `u/{me}/in`, CBOR on `u/{me}/in/c`.
    pub fn reply(&self, user: &str, format: WireFormat, event: &Event) {
        let topic = match format {
            WireFormat::Json => topics::inbox(user),
            WireFormat::Cbor => compact_inbox(user),
        };
        self.hub.route_with(&topic, || {
            encoded(format.codec().encode_event(event), "a reply").map(Bytes::from)
        });
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
fn encoded<E: std::fmt::Display>(result: Result<Vec<u8>, E>, what: &str) -> Option<Vec<u8>> {
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
}

/// `u/{uid}/in/c`: the inbox in the compact codec.
pub fn compact_inbox(user: &str) -> String {
    format!("{}/c", topics::inbox(user))
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
