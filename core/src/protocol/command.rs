//! Commands: what a user's device publishes on `u/{me}/out`.
//!
//! The sender is never in the payload: it is the `{me}` of the topic, which the
//! connection guard makes unforgeable. Every command carries a client-chosen `id`; the
//! server's reply (an `ack` or an `error` event on `u/{me}/in`) names it in `re`. For
//! `send`, the `id` is also the client message id that makes retries idempotent.

use serde::{Deserialize, Serialize};

use crate::protocol::event::ErrorCode;
use crate::protocol::ids::{is_client_id, is_server_id};
use crate::protocol::limits::{MAX_BODY_BYTES, MAX_MENTIONS, MAX_REACTION_BYTES};

/// One command, as decoded from either codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Protocol version; absent means 1.
    #[serde(default = "crate::protocol::default_version")]
    pub v: u8,
    /// Client-chosen command id (for `send`: the client message id).
    pub id: String,
    #[serde(flatten)]
    pub op: Op,
}

/// The operation a command asks for, tagged by `op` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Post a message. Its kind (text/image/file/voice) follows from the attachment.
    Send {
        conv: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attachment: Option<String>,
    },
    /// Replace the body of one's own message.
    Edit {
        msg: String,
        body: String,
    },
    /// Soft-delete one's own message (the row stays, the body is cleared).
    Delete {
        msg: String,
    },
    React {
        msg: String,
        emoji: String,
    },
    Unreact {
        msg: String,
        emoji: String,
    },
    /// Everything up to `seq` in `conv` reached one of my devices.
    Delivered {
        conv: String,
        seq: u64,
    },
    /// Everything up to `seq` in `conv` was shown to me.
    Read {
        conv: String,
        seq: u64,
    },
    /// Catch-up without HTTP: my inbox events after `since` (an `iseq`), answered with
    /// one `sync` event (a page, with `has_more`).
    Sync {
        #[serde(default)]
        since: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// My conversations and their short handles, answered with a `conversations` event.
    Conversations {},
}

impl Op {
    /// Reads answered by the front door from the database, never stored.
    pub fn is_query(&self) -> bool {
        matches!(self, Op::Sync { .. } | Op::Conversations {})
    }
}

/// The `op` names a device may use, for telling "unknown op" from "malformed".
pub const OP_NAMES: [&str; 9] = [
    "send",
    "edit",
    "delete",
    "react",
    "unreact",
    "delivered",
    "read",
    "sync",
    "conversations",
];

/// A reason a well-formed command is still not acceptable, checked without I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: ErrorCode,
    pub message: String,
}

impl Invalid {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

impl Command {
    /// Checks shapes and sizes: ids, body length, mention count, reaction length.
    /// Membership and authorship need the store and are checked by the worker.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !is_client_id(&self.id) {
            return Err(Invalid::new(
                ErrorCode::Invalid,
                "id must be 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        let server_id = |field: &str, value: &str| {
            if is_server_id(value) {
                Ok(())
            } else {
                Err(Invalid::new(
                    ErrorCode::Invalid,
                    format!("{field} must be a 26-character id"),
                ))
            }
        };
        let body_ok = |body: &str| {
            if body.len() > MAX_BODY_BYTES {
                Err(Invalid::new(
                    ErrorCode::TooLarge,
                    format!(
                        "body is {} bytes; the limit is {MAX_BODY_BYTES}",
                        body.len()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        match &self.op {
            Op::Send {
                conv,
                body,
                reply_to,
                mentions,
                attachment,
            } => {
                server_id("conv", conv)?;
                body_ok(body)?;
                if body.trim().is_empty() && attachment.is_none() {
                    return Err(Invalid::new(
                        ErrorCode::Invalid,
                        "a message needs a body or an attachment",
                    ));
                }
                if let Some(r) = reply_to {
                    server_id("reply_to", r)?;
                }
                if let Some(a) = attachment {
                    server_id("attachment", a)?;
                }
                if mentions.len() > MAX_MENTIONS {
                    return Err(Invalid::new(
                        ErrorCode::TooLarge,
                        format!("at most {MAX_MENTIONS} mentions"),
                    ));
                }
                mentions.iter().try_for_each(|m| server_id("mentions[]", m))
            }
            Op::Edit { msg, body } => {
                server_id("msg", msg)?;
                body_ok(body)?;
                if body.trim().is_empty() {
                    return Err(Invalid::new(
                        ErrorCode::Invalid,
                        "an edit needs a body; use delete to remove a message",
                    ));
                }
                Ok(())
            }
            Op::Delete { msg } => server_id("msg", msg),
            Op::React { msg, emoji } | Op::Unreact { msg, emoji } => {
                server_id("msg", msg)?;
                if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
                    return Err(Invalid::new(
                        ErrorCode::Invalid,
                        format!("emoji must be 1-{MAX_REACTION_BYTES} bytes"),
                    ));
                }
                Ok(())
            }
            Op::Delivered { conv, .. } | Op::Read { conv, .. } => server_id("conv", conv),
            Op::Sync { .. } | Op::Conversations {} => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ids::new_id;

    fn send(body: &str) -> Command {
        Command {
            v: 1,
            id: "c1".into(),
            op: Op::Send {
                conv: new_id(),
                body: body.into(),
                reply_to: None,
                mentions: vec![],
                attachment: None,
            },
        }
    }

    #[test]
    fn design_example_parses() {
        let conv = new_id();
        let json = format!(
            r#"{{"op":"send","id":"01J0000000000000000000000A","conv":"{conv}","body":"hello"}}"#
        );
        let cmd: Command = serde_json::from_str(&json).expect("parses");
        assert_eq!(cmd.v, 1);
        assert!(matches!(cmd.op, Op::Send { ref body, .. } if body == "hello"));
        assert_eq!(cmd.validate(), Ok(()));
    }

    #[test]
    fn validation_catches_sizes_and_ids() {
        assert_eq!(
            send(&"x".repeat(MAX_BODY_BYTES + 1))
                .validate()
                .map_err(|e| e.code),
            Err(ErrorCode::TooLarge)
        );
        assert_eq!(
            send("   ").validate().map_err(|e| e.code),
            Err(ErrorCode::Invalid)
        );
        let mut bad_id = send("hi");
        bad_id.id = "a/b".into();
        assert_eq!(
            bad_id.validate().map_err(|e| e.code),
            Err(ErrorCode::Invalid)
        );
        let react = Command {
            v: 1,
            id: "r".into(),
            op: Op::React {
                msg: new_id(),
                emoji: String::new(),
            },
        };
        assert!(react.validate().is_err());
    }
}
