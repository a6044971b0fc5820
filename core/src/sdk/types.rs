//! Records and events the SDK hands to apps (Rust and, through uniffi, Swift, Kotlin
//! and Python). Converted from the wire types in [`crate::protocol`].

use serde::{Deserialize, Serialize};

use crate::protocol::event::{
    AttachmentView, ConversationView, MemberView, MessageView, ReactionView, ReceiptView,
};

/// The logged-in user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct SessionInfo {
    pub user_id: String,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Attachment {
    pub id: String,
    pub mime: String,
    pub size: u64,
    pub name: Option<String>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender: String,
    /// The sender's client id (the outbox id for messages this device sent).
    pub client_msg_id: String,
    /// `text`, `image`, `file`, `voice` or `system`.
    pub kind: String,
    pub body: String,
    pub reply_to: Option<String>,
    pub mentions: Vec<String>,
    pub attachment: Option<Attachment>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// Reactions by emoji, as of the last history page, updated by live reactions.
    #[serde(default)]
    pub reactions: Vec<ReactionCount>,
    /// What the replied-to message says, when it is known (history pages carry it;
    /// a live reply gets it from the cache).
    #[serde(default)]
    pub reply_preview: Option<ReplyPreview>,
}

/// How many people reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u64,
    /// This user is one of them.
    pub me: bool,
}

/// The replied-to message, as a chat screen quotes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct ReplyPreview {
    /// The replied-to message's id.
    pub id: String,
    pub sender: String,
    /// `text`, `image`, `file`, `voice` or `system`.
    pub kind: String,
    /// The first 140 characters (empty when deleted).
    pub body: String,
    pub deleted: bool,
}

impl Message {
    /// Folds a live reaction into the counts. The user's own reactions are exact (a
    /// repeated event changes nothing); other people's move the count by one, and the
    /// next history page replaces the counts with the server's.
    pub(crate) fn apply_reaction(&mut self, emoji: &str, mine: bool, added: bool) {
        let pos = self.reactions.iter().position(|r| r.emoji == emoji);
        match (pos, added) {
            (None, false) => {}
            (None, true) => self.reactions.push(ReactionCount {
                emoji: emoji.to_owned(),
                count: 1,
                me: mine,
            }),
            (Some(i), _) => {
                let r = &mut self.reactions[i];
                if mine {
                    if r.me == added {
                        return;
                    }
                    r.me = added;
                }
                r.count = if added {
                    r.count + 1
                } else {
                    r.count.saturating_sub(1)
                };
                if r.count == 0 {
                    self.reactions.remove(i);
                }
            }
        }
    }
}

impl ReplyPreview {
    /// The preview the server would give of `m` (its first 140 characters).
    pub(crate) fn of(m: &Message) -> ReplyPreview {
        ReplyPreview {
            id: m.id.clone(),
            sender: m.sender.clone(),
            kind: m.kind.clone(),
            body: if m.deleted {
                String::new()
            } else {
                m.body.chars().take(140).collect()
            },
            deleted: m.deleted,
        }
    }
}

/// One page of a conversation's history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    /// Older messages exist before this page (ask with `before` = the first seq).
    pub has_more: bool,
    /// The server could not be reached and the page came from the local cache.
    pub from_cache: bool,
    /// From the cache only: the page stops at messages the cache has never seen (a gap
    /// marker), so paging further needs the network. Never set on a server page.
    pub gap: bool,
}

impl From<MessageView> for Message {
    fn from(m: MessageView) -> Self {
        Message {
            id: m.id,
            conversation_id: m.conv,
            seq: m.seq,
            sender: m.sender,
            client_msg_id: m.client_msg_id,
            kind: m.kind.as_str().to_owned(),
            body: m.body,
            reply_to: m.reply_to,
            mentions: m.mentions,
            attachment: m.attachment.map(Attachment::from),
            created_at: m.created_at,
            edited_at: m.edited_at,
            deleted: m.deleted,
            reactions: vec![],
            reply_preview: None,
        }
    }
}

impl From<AttachmentView> for Attachment {
    fn from(a: AttachmentView) -> Self {
        Attachment {
            id: a.id,
            mime: a.mime,
            size: a.size,
            name: a.name,
        }
    }
}

/// A conversation the user is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Conversation {
    pub id: String,
    /// `direct`, `group` or `room`.
    pub kind: String,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub last_seq: u64,
    /// Messages from others after this user's read marker (kept current from live
    /// messages and this user's own read receipts between list fetches).
    pub unread: u64,
    pub last_message: Option<Message>,
    /// This user muted it (no pushes except mentions/replies; not in the badge).
    #[serde(default)]
    pub muted: bool,
    /// This user archived it.
    #[serde(default)]
    pub archived: bool,
}

impl From<ConversationView> for Conversation {
    fn from(c: ConversationView) -> Self {
        Conversation {
            id: c.id,
            kind: c.kind.as_str().to_owned(),
            name: c.name,
            topic: c.topic,
            created_by: c.created_by,
            created_at: c.created_at,
            last_seq: 0,
            unread: 0,
            last_message: None,
            muted: false,
            archived: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Member {
    pub user_id: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    pub read_seq: u64,
    pub delivered_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Reaction {
    pub conversation_id: String,
    pub message_id: String,
    pub user_id: String,
    pub emoji: String,
    /// false when the reaction was removed.
    pub added: bool,
    /// The message's counts after this reaction, when the message is in the cache.
    pub counts: Option<Vec<ReactionCount>>,
}

impl From<ReactionView> for Reaction {
    fn from(r: ReactionView) -> Self {
        Reaction {
            conversation_id: r.conv,
            message_id: r.msg,
            user_id: r.user,
            emoji: r.emoji,
            added: r.added,
            counts: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Receipt {
    pub conversation_id: String,
    pub user_id: String,
    pub kind: ReceiptKind,
    /// Everything up to this conversation seq.
    pub seq: u64,
}

impl From<ReceiptView> for Receipt {
    fn from(r: ReceiptView) -> Self {
        Receipt {
            conversation_id: r.conv,
            user_id: r.user,
            kind: match r.kind {
                crate::protocol::event::ReceiptKind::Delivered => ReceiptKind::Delivered,
                crate::protocol::event::ReceiptKind::Read => ReceiptKind::Read,
            },
            seq: r.seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Membership {
    pub conversation_id: String,
    pub user_id: String,
    /// `joined`, `left`, `removed` or `role_changed`.
    pub action: String,
    pub role: String,
    pub by: Option<String>,
}

impl From<MemberView> for Membership {
    fn from(m: MemberView) -> Self {
        let action = serde_json::to_value(m.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Membership {
            conversation_id: m.conv,
            user_id: m.user,
            action,
            role: m.role.as_str().to_owned(),
            by: m.by,
        }
    }
}

/// The live connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Not connected and not trying (before `connect`, after `disconnect`).
    Disconnected,
    /// Trying to connect (first time or after a failure).
    Connecting,
    /// Connected and subscribed: live events arrive and the outbox is sent. Catching up
    /// on what was missed (and the conversation list) continues in the background.
    Connected,
    /// Waiting before the next attempt.
    WaitingToRetry,
    /// The session is over (refresh refused): log in again.
    LoggedOut,
    /// The last attempt failed the TLS handshake (the server's certificate is not
    /// trusted, or it does not speak TLS); a `tls` error event says why. Still retrying
    /// with backoff (a captive portal causes this too), but a wrong `pinned_ca_pem` or
    /// URL will not fix itself.
    TlsFailed,
}

/// Everything the SDK tells the app, through [`TidingsListener`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ClientEvent {
    Message {
        message: Message,
        /// Caught up on (sync after being offline), not live: an app would not ring
        /// for it.
        historical: bool,
    },
    MessageUpdated {
        message: Message,
    },
    MessageDeleted {
        conversation_id: String,
        message_id: String,
    },
    Reaction {
        reaction: Reaction,
    },
    Receipt {
        receipt: Receipt,
    },
    Typing {
        conversation_id: String,
        user_id: String,
        typing: bool,
    },
    Presence {
        user_id: String,
        online: bool,
        last_seen: Option<i64>,
    },
    Membership {
        membership: Membership,
    },
    Conversation {
        conversation: Conversation,
    },
    /// Someone invited this user into a group (answer with `answer_invitation`).
    Invitation {
        invitation: Invitation,
    },
    /// An outbox entry was accepted by the server (stored).
    Sent {
        client_id: String,
        conversation_id: Option<String>,
        message_id: Option<String>,
        seq: Option<u64>,
    },
    ConnectionState {
        state: ConnectionState,
    },
    /// A command failed for good (`client_id` set) or the connection hit a problem.
    Error {
        client_id: Option<String>,
        code: String,
        detail: String,
    },
}

/// Implemented by the app (Swift, Kotlin, Python or Rust) to receive events. Called on
/// one SDK thread, in order; return quickly.
#[uniffi::export(with_foreign)]
pub trait TidingsListener: Send + Sync {
    fn on_event(&self, event: ClientEvent);
}

/// How the server reaches this device when it is not connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PushPlatform {
    /// Apple: `token` is the hex device token, `app_id` the bundle id.
    Apns,
    /// Firebase Cloud Messaging: `token` is the registration token.
    Fcm,
    /// Web Push / UnifiedPush: `token` is the endpoint URL, with the subscription keys.
    Webpush,
    /// The operator's push gateway: `token` is the pushkey.
    Gateway,
}

impl PushPlatform {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::Fcm => "fcm",
            PushPlatform::Webpush => "webpush",
            PushPlatform::Gateway => "gateway",
        }
    }
}

/// What `Client::register_push` sends. Register again whenever the platform hands the
/// app a new token; logging out removes the registration on the server.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PushRegistration {
    pub platform: PushPlatform,
    pub token: String,
    pub app_id: String,
    /// Web Push only: the subscription's `p256dh` and `auth` keys (base64url).
    pub webpush_p256dh: Option<String>,
    pub webpush_auth: Option<String>,
    /// The device's language tag, for any text the server adds.
    pub lang: Option<String>,
    /// Put the sender and message text in pushes (otherwise ids only, and the app
    /// fetches the message itself, e.g. in a Notification Service Extension).
    pub full_text: bool,
}

/// Someone found by [`crate::sdk::Client::search_users`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct UserSummary {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
}

/// A public room, with how many people are in it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Room {
    pub conversation: Conversation,
    pub member_count: u64,
}

/// Unread totals for an app badge; muted conversations do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct UnreadTotal {
    pub messages: u64,
    pub conversations: u64,
}

/// An invitation into a group the user has not accepted yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, uniffi::Record)]
pub struct Invitation {
    pub id: String,
    pub conversation_id: String,
    /// The group's name (in the live event; the list has the conversation id only).
    #[serde(default)]
    pub name: Option<String>,
    pub invited_by: String,
    /// `owner`, `admin` or `member` (in the list; the live event does not say).
    #[serde(default)]
    pub role: Option<String>,
    pub created_at: i64,
}

/// What an app's own image loader needs to fetch an attachment (the bearer token
/// expires: ask again rather than keeping it).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentRequest {
    pub url: String,
    /// The value of the `Authorization` header.
    pub authorization: String,
}

/// A message this device queued and the server has not stored yet, for local echo.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PendingMessage {
    /// The outbox id (the message's `client_msg_id` once stored).
    pub client_id: String,
    pub conversation_id: String,
    pub body: String,
    pub reply_to: Option<String>,
    pub mentions: Vec<String>,
    /// The uploaded attachment's id.
    pub attachment_id: Option<String>,
    /// The attachment's local file while it waits for its upload (for a preview).
    pub attachment_file: Option<String>,
    /// Unix milliseconds when it was queued.
    pub queued_at: i64,
    /// Handed to the network at least once (it can no longer be edited, only aborted).
    pub sent: bool,
}
