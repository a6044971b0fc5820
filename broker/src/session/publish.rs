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
use crate::acl::may_publish;
use crate::connection::{AckCode, CloseReason, FrameError, Outgoing, Publish};
use crate::worker::{AckTarget, Inbound};

impl Session<'_> {
    pub(super) async fn publish(&mut self, p: Publish) -> Result<Option<Ending>, FrameError> {
        let user = self.conn.user.as_str();
        if p.topic.is_empty()
            || !rumqttc::mqttbytes::valid_topic(&p.topic)
            || !may_publish(user, &p.topic, p.qos, p.retain, self.shared.hub.index())
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
        self.command(p).await?;
        Ok(None)
    }

    /// A `send` into a direct conversation whose other member blocked the sender is
    /// refused here, before the worker: only users someone blocked pay for the decode.
    async fn blocked_send(&mut self, p: &Publish) -> Result<bool, FrameError> {
        let index = self.shared.hub.index();
        if !index.is_blocked_by_anyone(&self.conn.user) {
            return Ok(false);
        }
        let format = WireFormat::sniff(&p.payload);
        let Ok(cmd) = format.codec().decode_command(&p.payload) else {
            return Ok(false); // the worker answers what is wrong with it
        };
        let Op::Send { conv, .. } = &cmd.op else {
            return Ok(false);
        };
        if index.direct_blocker(conv, &self.conn.user).is_none() {
            return Ok(false);
        }
        let event = Event::error(Some(cmd.id.clone()), ErrorCode::Forbidden, BLOCKED_MESSAGE);
        self.shared.fanout.reply(&self.conn.user, format, &event);
        if p.qos == 1 {
            self.ack_in_order(p.pkid, AckCode::NotAuthorized).await?;
        }
        Ok(true)
    }

    async fn command(&mut self, p: Publish) -> Result<(), FrameError> {
        if self.blocked_send(&p).await? {
            return Ok(());
        }
        let ack = (p.qos == 1).then(|| AckTarget {
            conn: self.conn.clone(),
            pkid: p.pkid,
        });
        let inbound = Inbound::Command {
            user: self.conn.user.clone(),
            payload: p.payload,
            ack,
        };
        // A full queue pushes back on this one connection (it is not read meanwhile)
        // for a moment before the command is refused: bursts are absorbed, and a stuck
        // database turns into `unavailable` errors rather than unbounded memory.
        let Err(refused) = self.shared.worker.send_timeout(inbound, QUEUE_WAIT).await else {
            return Ok(());
        };
        let Inbound::Command { user, payload, ack } = refused.into_inner() else {
            return Ok(());
        };
        metrics::counter!("tidings_worker_overflow_total").increment(1);
        let event = Event::error(
            None,
            ErrorCode::Unavailable,
            "the server is overloaded; retry with the same id",
        );
        self.shared
            .fanout
            .reply(&user, WireFormat::sniff(&payload), &event);
        match ack {
            Some(a) => {
                self.send_now(Outgoing::PubAck {
                    pkid: a.pkid,
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
