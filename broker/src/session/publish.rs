//! PUBLISH from a client. Two kinds are allowed (acl.rs): commands on the user's own
//! `u/{me}/out`, which go straight to the persistence worker and are PUBACKed only
//! once stored (or answered with an `error` event), and typing on
//! `c/{cid}/t/{me}`, which is relayed to the members who follow it and never stored.
//! Anything else closes the connection.

use tidings_core::protocol::limits::MAX_TYPING_BYTES;
use tidings_core::protocol::{ErrorCode, Event, Op, WireFormat};
use tidings_store::now_ms;

/// What a blocked user hears when sending into a direct conversation with the blocker.
pub const BLOCKED_MESSAGE: &str = "this user does not accept your messages";

/// How long a command waits for room in a full worker queue before it is refused.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

use super::{Ending, Session};
use crate::acl::{device_may_publish, may_publish};
use crate::connection::{AckCode, CloseReason, FrameError, Outgoing, Publish};
use crate::fanout::{decode_command, COMPACT_OUTBOX};
use crate::worker::{AckTarget, Inbound};

impl Session<'_> {
    pub(super) async fn publish(&mut self, p: Publish) -> Result<Option<Ending>, FrameError> {
        let user = self.conn.user.as_str();
        if p.topic == COMPACT_OUTBOX && p.qos <= 1 && !p.retain {
            self.command(p, true).await?;
            return Ok(None);
        }
        if p.topic.is_empty()
            || !rumqttc::mqttbytes::valid_topic(&p.topic)
            || !may_publish(user, &p.topic, p.qos, p.retain, self.shared.hub.index())
            || !device_may_publish(&self.conn.grant, &p.topic)
        {
            return Ok(Some(self.violation(
                "publish to a forbidden topic",
                &p.topic,
                CloseReason::NotAuthorized,
            )));
        }
        if p.topic.starts_with("c/") {
            return self.typing(p).await;
        }
        // The ACL admits one other topic: the user's own outbox.
        self.command(p, false).await?;
        Ok(None)
    }

    /// A `send` into a direct conversation whose other member blocked the sender is
    /// refused here, before the worker: only users someone blocked pay for the decode.
    async fn blocked_send(&mut self, p: &Publish, compact: bool) -> Result<bool, FrameError> {
        let index = self.shared.hub.index();
        if !index.is_blocked_by_anyone(&self.conn.user) {
            return Ok(false);
        }
        let (format, decoded) = decode_command(index, &self.conn.user, &p.payload, compact);
        let Ok(cmd) = decoded else {
            return Ok(false); // the worker answers what is wrong with it
        };
        let Op::Send { conv, .. } = &cmd.op else {
            return Ok(false);
        };
        if index.direct_blocker(conv, &self.conn.user).is_none() {
            return Ok(false);
        }
        let event = Event::error(Some(cmd.id.clone()), ErrorCode::Forbidden, BLOCKED_MESSAGE);
        self.reply(format, &event);
        if p.qos == 1 {
            self.ack_in_order(p.pkid, AckCode::NotAuthorized).await?;
        }
        Ok(true)
    }

    /// An answer to a command in the form the device reads: on the inbox of the codec
    /// it wrote in, or (`None`) on its compact `i`.
    fn reply(&self, format: Option<WireFormat>, event: &Event) {
        match format {
            Some(f) => self.shared.fanout.reply(&self.conn.user, f, event),
            None => self.shared.fanout.reply_compact(self.conn, event),
        }
    }

    async fn command(&mut self, p: Publish, compact: bool) -> Result<(), FrameError> {
        let received = std::time::Instant::now();
        if self.blocked_send(&p, compact).await? {
            return Ok(());
        }
        let inbound = Inbound::Command {
            from: self.conn.clone(),
            payload: p.payload,
            pkid: (p.qos == 1).then_some(p.pkid),
            compact,
            received,
        };
        // A full queue pushes back on this one connection (it is not read meanwhile)
        // for a moment before the command is refused: bursts are absorbed, and a stuck
        // database turns into `unavailable` errors rather than unbounded memory.
        let Err(refused) = self.shared.worker.send_timeout(inbound, QUEUE_WAIT).await else {
            return Ok(());
        };
        let Inbound::Command { payload, pkid, .. } = refused.into_inner() else {
            return Ok(());
        };
        metrics::counter!("tidings_worker_overflow_total").increment(1);
        let event = Event::error(
            None,
            ErrorCode::Unavailable,
            "the server is overloaded; retry with the same id",
        );
        self.reply((!compact).then(|| WireFormat::sniff(&payload)), &event);
        match pkid {
            Some(pkid) => {
                self.send_now(Outgoing::PubAck {
                    pkid,
                    code: AckCode::QuotaExceeded,
                })
                .await
            }
            None => Ok(()),
        }
    }

    /// Answers a QoS 1 publish that is not a command, behind the PUBACKs of earlier
    /// commands still being stored (MQTT orders PUBACKs like the PUBLISHes).
    async fn ack_in_order(&mut self, pkid: u16, code: AckCode) -> Result<(), FrameError> {
        let target = AckTarget {
            conn: self.conn.clone(),
            pkid,
        };
        match self.shared.worker.try_send(Inbound::AckOnly(target, code)) {
            Ok(()) => Ok(()),
            Err(_) => self.send_now(Outgoing::PubAck { pkid, code }).await,
        }
    }

    /// Typing is ephemeral: relayed, never stored; bounded in size (closing, since a
    /// well-behaved client never sends more) and in rate (an `error` event, since a
    /// chatty but honest client should learn why its typing went unseen).
    async fn typing(&mut self, p: Publish) -> Result<Option<Ending>, FrameError> {
        if p.payload.len() > MAX_TYPING_BYTES {
            return Ok(Some(self.violation(
                "oversized typing payload",
                &p.topic,
                CloseReason::NotAuthorized,
            )));
        }
        let code = if self.typing.allow(&self.conn.client_id, now_ms()) {
            self.shared.hub.route(&p.topic, p.payload);
            AckCode::Success
        } else {
            metrics::counter!("tidings_mqtt_typing_limited_total").increment(1);
            let event = Event::error(
                None,
                ErrorCode::RateLimited,
                "typing updates are rate limited; this one was not relayed",
            );
            self.shared
                .fanout
                .reply(&self.conn.user, WireFormat::Json, &event);
            AckCode::QuotaExceeded
        };
        if p.qos == 1 {
            self.ack_in_order(p.pkid, code).await?;
        }
        Ok(None)
    }
}
