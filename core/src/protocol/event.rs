//! Events: what the server publishes to a user's inbox `u/{uid}/in` (and, for messages,
//! to the conversation mirror `c/{cid}/m`).
//!
//! Durable events carry `iseq`, the user's own inbox sequence number: gap-free per user,
//! so a client that sees a jump knows to call `GET /v1/sync?since=`. Replies to a
//! device's own command (`ack`, `error`) carry `re` (the command id) and no `seq`.

use serde::{Deserialize, Serialize};

/// One event, as carried by either codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    #[serde(default = "crate::protocol::default_version")]
    pub v: u8,
    /// The recipient's inbox sequence number (durable events only). On the wire it is
    /// `iseq`, because `seq` inside a message, receipt or ack is the conversation's
    /// sequence number and both share one flat object.
    #[serde(rename = "iseq", default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The id of the command this answers (`ack`, `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// A durable event as stored in an inbox, before it is stamped with a `seq`.
    pub fn durable(body: EventBody) -> Self {
        Event {
            v: crate::protocol::PROTOCOL_VERSION,
            seq: None,
            re: None,
            body,
        }
    }

    /// The `ack` of command `re`.
    pub fn ack(re: Option<String>, ack: AckView) -> Self {
        Event {
            v: crate::protocol::PROTOCOL_VERSION,
            seq: None,
            re,
            body: EventBody::Ack(ack),
        }
    }

    /// An `error` reply to command `re` (or to an undecodable payload, `re` = None).
    pub fn error(re: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Event {
            v: crate::protocol::PROTOCOL_VERSION,
            seq: None,
            re,
            body: EventBody::Error(ErrorView {
                code,
                message: message.into(),
            }),
        }
    }
}

/// The event's kind and content, tagged by `type` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    Message(MessageView),
    MessageUpdated(MessageView),
    Reaction(ReactionView),
    Receipt(ReceiptView),
    Member(MemberView),
    Conversation(ConversationView),
    Ack(AckView),
    Error(ErrorView),
    Invitation(InvitationView),
    /// The answer to a `sync` command: one page of the inbox.
    Sync(SyncView),
    /// The answer to a `conversations` command.
    Conversations(ConversationsView),
}

/// A page of inbox events after the asked `since`, oldest first, each with its `iseq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncView {
    #[cfg_attr(feature = "openapi", schema(no_recursion))]
    pub events: Vec<Event>,
    /// The `since` to ask with next.
    pub next: u64,
    pub has_more: bool,
}

/// The caller's current conversations with their per-user handles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationsView {
    pub conversations: Vec<ConversationEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationEntry {
    pub id: String,
    /// A small number naming this conversation for this user in the compact profile.
    pub handle: u32,
    pub kind: ConversationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl EventBody {
    /// The conversation the event is about, if it is about one.
    pub fn conv(&self) -> Option<&str> {
        match self {
            EventBody::Message(m) | EventBody::MessageUpdated(m) => Some(&m.conv),
            EventBody::Reaction(r) => Some(&r.conv),
            EventBody::Receipt(r) => Some(&r.conv),
            EventBody::Member(m) => Some(&m.conv),
            EventBody::Conversation(c) => Some(&c.id),
            EventBody::Invitation(i) => Some(&i.conv),
            EventBody::Ack(a) => a.conv.as_deref(),
            EventBody::Error(_) | EventBody::Sync(_) | EventBody::Conversations(_) => None,
        }
    }

    /// Whether this is `user`'s own message (new, edited or deleted) coming back to them.
    pub fn is_own_message(&self, user: &str) -> bool {
        matches!(self, EventBody::Message(m) | EventBody::MessageUpdated(m) if m.sender == user)
    }
}

/// Someone wanted to add you to a group or room, but your "who may add me" setting
/// asks first: accept with `POST /v1/invitations/{id}/accept`, or decline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvitationView {
    pub id: String,
    pub conv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub by: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    Image,
    File,
    Voice,
    System,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::File => "file",
            MessageKind::Voice => "voice",
            MessageKind::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => MessageKind::Text,
            "image" => MessageKind::Image,
            "file" => MessageKind::File,
            "voice" => MessageKind::Voice,
            "system" => MessageKind::System,
            _ => return None,
        })
    }

    /// The kind a message with an attachment of this MIME type has.
    pub fn for_mime(mime: &str) -> Self {
        if mime.starts_with("image/") {
            MessageKind::Image
        } else if mime.starts_with("audio/") {
            MessageKind::Voice
        } else {
            MessageKind::File
        }
    }
}

/// A stored message as clients see it. A deleted message keeps its place (id, seq)
/// but loses its body, mentions and attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageView {
    pub id: String,
    pub conv: String,
    pub seq: u64,
    pub sender: String,
    pub client_msg_id: String,
    pub kind: MessageKind,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentView>,
    /// Unix milliseconds.
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttachmentView {
    pub id: String,
    pub mime: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReactionView {
    pub conv: String,
    pub msg: String,
    pub user: String,
    pub emoji: String,
    /// true when added, false when removed.
    pub added: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// A member's delivered or read marker moved to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiptView {
    pub conv: String,
    pub user: String,
    pub kind: ReceiptKind,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    Joined,
    Left,
    Removed,
    RoleChanged,
}

/// Someone joined, left, was removed from, or changed role in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    pub conv: String,
    pub user: String,
    pub action: MemberAction,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly two members; one per pair of users.
    Direct,
    /// Invited members only, not listed.
    Group,
    /// Listed publicly; anyone may join.
    Room,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
            ConversationKind::Room => "room",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => ConversationKind::Direct,
            "group" => ConversationKind::Group,
            "room" => ConversationKind::Room,
            _ => return None,
        })
    }
}

/// A conversation was created or its name/topic changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationView {
    pub id: String,
    pub kind: ConversationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub created_by: String,
    pub created_at: i64,
}

/// The reply to a successful command. For `send`: the stored message's id and seq (a
/// retried send gets the same answer as the first).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorView {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable error codes, shared by MQTT `error` events and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload could not be decoded (bad JSON/CBOR, missing or mistyped field).
    Malformed,
    /// A well-formed command with an `op` this server does not know.
    UnknownOp,
    /// A newer protocol version than this server speaks.
    UnsupportedVersion,
    /// A field has a value outside its rules (bad id, empty body, ...).
    Invalid,
    /// A size or count limit was exceeded.
    TooLarge,
    /// Too many requests; slow down.
    RateLimited,
    /// The caller is not a member of the conversation.
    NotMember,
    /// The caller may not do this (e.g. edit someone else's message).
    Forbidden,
    NotFound,
    Conflict,
    Unauthorized,
    /// The server is overloaded or a dependency is down; retry later with the same id.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotMember => "not_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}
