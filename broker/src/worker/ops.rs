//! The dispatch table: each command op becomes one store write. The rules (who may
//! edit what, markers only move forward, idempotent sends) live in the store's batch
//! planner, so MQTT and REST writes obey exactly the same ones.

use tidings_core::protocol::event::ReceiptKind;
use tidings_core::protocol::ids::new_id;
use tidings_core::protocol::{Command, Op};
use tidings_store::{NewMessage, WriteOp};

/// Does this op count against the sender's rate limit? Receipts do not: they are
/// bounded by the number of messages, and a client must always be able to send them.
pub fn is_rate_limited(op: &Op) -> bool {
    !matches!(op, Op::Delivered { .. } | Op::Read { .. })
}

pub fn write_op(user: &str, cmd: Command, now: i64) -> WriteOp {
    let user = user.to_owned();
    match cmd.op {
        Op::Send {
            conv,
            body,
            reply_to,
            mentions,
            attachment,
        } => WriteOp::Send(NewMessage {
            id: new_id(),
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
    }
}
