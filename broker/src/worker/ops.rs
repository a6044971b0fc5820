//! The dispatch table: each command op becomes one store write. The rules (who may
//! edit what, markers only move forward, idempotent sends) live in the store's batch
//! planner, so MQTT and REST writes obey exactly the same ones.

use tidings_core::protocol::event::ReceiptKind;
use tidings_core::protocol::ids::id_at;
use tidings_core::protocol::{Command, ErrorCode, Op};
use tidings_store::{DeviceGrant, NewMessage, WriteOp};

/// Does this op count against the sender's rate limit? Receipts do not: they are
/// bounded by the number of messages, and a client must always be able to send them.
pub fn is_rate_limited(op: &Op) -> bool {
    !matches!(op, Op::Delivered { .. } | Op::Read { .. })
}

/// The store write a command asks for; `None` for the queries (`sync`,
/// `conversations`), which read instead.
pub fn write_op(user: &str, cmd: Command, now: i64) -> Option<WriteOp> {
    let user = user.to_owned();
    Some(match cmd.op {
        Op::Send {
            conv,
            body,
            reply_to,
            mentions,
            attachment,
        } => WriteOp::Send(NewMessage {
            id: id_at(now),
            conv,
            sender: user,
            client_msg_id: cmd.id,
            body,
            reply_to,
            mentions,
            attachment,
            created_at: now,
        }),
        Op::Edit { msg, body } => WriteOp::Edit {
            user,
            msg,
            body,
            at: now,
        },
        Op::Delete { msg } => WriteOp::Delete { user, msg, at: now },
        Op::React { msg, emoji } => WriteOp::React {
            user,
            msg,
            emoji,
            add: true,
            at: now,
        },
        Op::Unreact { msg, emoji } => WriteOp::React {
            user,
            msg,
            emoji,
            add: false,
            at: now,
        },
        Op::Delivered { conv, seq } => WriteOp::Marker {
            user,
            conv,
            kind: ReceiptKind::Delivered,
            seq,
            at: now,
        },
        Op::Read { conv, seq } => WriteOp::Marker {
            user,
            conv,
            kind: ReceiptKind::Read,
            seq,
            at: now,
        },
        Op::Sync { .. } | Op::Conversations {} => return None,
    })
}

/// Why a device credential may not run `op`, if it may not. A credential limited to
/// some conversations may only use the ops that name a conversation (send, delivered,
/// read): the others name a message, whose conversation the front door does not know.
pub fn grant_refusal(grant: &DeviceGrant, op: &Op) -> Option<(ErrorCode, &'static str)> {
    if op.is_query() {
        return (!grant.can_receive).then_some((
            ErrorCode::Forbidden,
            "this credential is send-only; it cannot read",
        ));
    }
    if !grant.can_send {
        return Some((ErrorCode::Forbidden, "this credential is receive-only"));
    }
    // An unscoped credential may do anything else its send right allows.
    grant.conversations.as_ref()?;
    match op {
        Op::Send { conv, .. } | Op::Delivered { conv, .. } | Op::Read { conv, .. } => {
            (!grant.covers(conv)).then_some((ErrorCode::NotFound, "no such conversation"))
        }
        _ => Some((
            ErrorCode::Forbidden,
            "a credential limited to some conversations may only send and mark messages",
        )),
    }
}
