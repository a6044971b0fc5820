//! Rows and write requests. Message-shaped data is returned as the protocol's own
//! views (`MessageView`, `EventBody`), so what the store returns is what clients see.

use std::sync::Arc;

pub use tidings_core::protocol::event::{
    AckView, ConversationKind, ConversationView, EventBody, MessageKind, MessageView, ReceiptKind,
    Role,
};
use tidings_core::protocol::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub created_at: i64,
}

/// What login needs: the user and their argon2id hash.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// An operator disabled the account: the password may be right, but no session opens.
    pub disabled: bool,
}

/// An account as an operator sees it (`tidings user list|show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub user: User,
    pub disabled_at: Option<i64>,
    /// Deleted accounts keep their row (their messages still name them) with the
    /// profile erased: username `deleted-{id}`, no display name, no credentials.
    pub deleted_at: Option<i64>,
    /// Sessions not revoked.
    pub active_sessions: u64,
}

impl AccountRecord {
    pub fn status(&self) -> &'static str {
        match (self.deleted_at, self.disabled_at) {
            (Some(_), _) => "deleted",
            (None, Some(_)) => "disabled",
            (None, None) => "active",
        }
    }
}

/// A login on one device; refresh tokens rotate within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub device_id: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What a device credential lets its holder do. The default is everything its user may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGrant {
    /// Limited to these conversations; `None` = all of the user's.
    pub conversations: Option<Vec<String>>,
    pub can_send: bool,
    pub can_receive: bool,
    /// Send `ack` events for its commands (the PUBACK already means "stored").
    pub acks: bool,
    /// Deliver its user's own messages back to it.
    pub echo: bool,
}

impl Default for DeviceGrant {
    fn default() -> Self {
        DeviceGrant {
            conversations: None,
            can_send: true,
            can_receive: true,
            acks: true,
            echo: true,
        }
    }
}

impl DeviceGrant {
    /// Whether events and commands of `conv` are within the credential's reach.
    pub fn covers(&self, conv: &str) -> bool {
        self.conversations
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == conv))
    }

    /// Everything its user may do: no conversation list, both directions.
    pub fn is_full(&self) -> bool {
        self.conversations.is_none() && self.can_send && self.can_receive
    }
}

/// A long-lived credential for a device or bot: a session with a secret instead of
/// refresh tokens. Only the secret's SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCredential {
    /// Also the id of its session: ending that session revokes the credential.
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub grant: DeviceGrant,
    pub created_at: i64,
}

/// A refresh token to store: only its hash, never the token.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was valid; it is now used and the new one replaces it.
    Rotated(Session),
    /// Unknown, expired, or its session was revoked.
    Invalid,
    /// The token had already been used: someone replayed it, so its whole session
    /// was revoked (refresh-token reuse detection).
    Reused(Session),
    /// The token was used moments ago (within the grace window) and the successor it
    /// was rotated to is stored and still unused: most likely the same client retrying
    /// after losing the reply. Nothing changed; the caller answers with that successor
    /// again.
    Replayed(Session),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub kind: ConversationKind,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub last_seq: u64,
    pub last_activity_at: i64,
}

impl Conversation {
    pub fn view(&self) -> ConversationView {
        ConversationView {
            id: self.id.clone(),
            kind: self.kind,
            name: self.name.clone(),
            topic: self.topic.clone(),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewConversation {
    pub id: String,
    pub kind: ConversationKind,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub created_by: String,
    /// Everyone who starts in it, creator included, with their roles.
    pub members: Vec<(String, Role)>,
    pub created_at: i64,
}

impl NewConversation {
    /// The key that makes a direct conversation unique per pair of users.
    pub fn direct_key(&self) -> Option<String> {
        if self.kind != ConversationKind::Direct {
            return None;
        }
        let mut ids: Vec<&str> = self.members.iter().map(|(u, _)| u.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids.join(":"))
    }
}

/// Result of creating a conversation: a direct one that already existed is returned
/// as it is, with `created = false` and no events.
#[derive(Debug, Clone)]
pub struct Created {
    pub conversation: Conversation,
    pub created: bool,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub conversation_id: String,
    pub user_id: String,
    pub role: Role,
    pub read_seq: u64,
    pub delivered_seq: u64,
    pub archived: bool,
    pub muted: bool,
    pub joined_at: i64,
}

/// An uploaded file's metadata; the bytes live in the blob store under `storage_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub id: String,
    pub uploader_id: String,
    pub storage_key: String,
    pub mime: String,
    pub size: u64,
    pub sha256: String,
    pub filename: Option<String>,
    pub created_at: i64,
    /// Pixel dimensions, for images whose header could be read at upload.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// A message to store. `id` is assigned by the caller (a fresh ULID); if the
/// (sender, client_msg_id) pair was stored before, the earlier message wins.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: String,
    pub conv: String,
    pub sender: String,
    pub client_msg_id: String,
    pub body: String,
    pub reply_to: Option<String>,
    pub mentions: Vec<String>,
    pub attachment: Option<String>,
    pub created_at: i64,
}

/// One write of a batch. `user` is always the acting user (the sender of the command).
#[derive(Debug, Clone)]
pub enum WriteOp {
    Send(NewMessage),
    Edit {
        user: String,
        msg: String,
        body: String,
        at: i64,
    },
    Delete {
        user: String,
        msg: String,
        at: i64,
    },
    React {
        user: String,
        msg: String,
        emoji: String,
        add: bool,
        at: i64,
    },
    Marker {
        user: String,
        conv: String,
        kind: ReceiptKind,
        seq: u64,
        at: i64,
    },
}

/// One durable event for one user, stamped with that user's inbox sequence number.
/// The body is shared between the recipients of the same event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub user: String,
    pub seq: u64,
    pub body: Arc<EventBody>,
}

/// What became of one [`WriteOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored; `deliveries` are the inbox events it produced, to fan out.
    Applied {
        ack: AckView,
        deliveries: Vec<Delivery>,
    },
    /// Nothing changed and nothing is fanned out: a retried send (the ack names the
    /// message stored the first time), a reaction already there, a marker that would
    /// move backwards.
    Unchanged { ack: AckView },
    /// Refused; nothing was written for this op.
    Rejected { code: ErrorCode, message: String },
}

impl WriteOutcome {
    pub(crate) fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        WriteOutcome::Rejected {
            code,
            message: message.into(),
        }
    }
}

/// A stored inbox event, as sync replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    pub seq: u64,
    pub body: EventBody,
    pub created_at: i64,
}

/// One row of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    /// The caller's own membership (role, markers, archived, muted).
    pub member: Member,
    pub last_message: Option<MessageView>,
    /// Messages after the caller's read marker.
    pub unread: u64,
}

/// A page of the conversation list, newest activity first. The cursor is the
/// (last_activity_at, id) of the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityPage {
    pub before: Option<(i64, String)>,
    pub limit: u32,
    /// Some(true): only archived; Some(false): only not archived; None: all.
    pub archived: Option<bool>,
}

/// Badge numbers: unread messages across conversations that are not muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnreadTotal {
    pub messages: u64,
    pub conversations: u64,
}

/// How many people reacted to a message with one emoji, and whether the viewer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionSummary {
    pub message: String,
    pub emoji: String,
    pub count: u64,
    pub me: bool,
}

/// Why a member stopped being one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    Left,
    Removed,
}

/// A public room as listed to everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomListing {
    pub conversation: Conversation,
    pub members: u64,
}

/// Which side of a sequence number a history page is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqPage {
    /// The newest `limit` messages with seq < `before` (or the newest overall), newest first.
    Before { before: Option<u64>, limit: u32 },
    /// The oldest `limit` messages with seq > `after`, oldest first.
    After { after: u64, limit: u32 },
}

/// What one user uploaded recently, for upload quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadUsage {
    /// Bytes uploaded since the day window's start.
    pub bytes: u64,
    /// Files uploaded since the hour window's start.
    pub files: u64,
    /// When the oldest upload in the hour window was made (when a file slot frees up).
    pub oldest_file_at: Option<i64>,
    /// When the oldest upload in the day window was made (when bytes free up).
    pub oldest_byte_at: Option<i64>,
}

/// Who may add a user to groups and rooms without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAdds {
    Everyone,
    /// People who share a direct or private group conversation with the user.
    Contacts,
    Nobody,
}

impl GroupAdds {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupAdds::Everyone => "everyone",
            GroupAdds::Contacts => "contacts",
            GroupAdds::Nobody => "nobody",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "everyone" => GroupAdds::Everyone,
            "contacts" => GroupAdds::Contacts,
            "nobody" => GroupAdds::Nobody,
            _ => return None,
        })
    }
}

/// A pending invitation to a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: String,
    pub conversation_id: String,
    pub user_id: String,
    pub invited_by: String,
    pub role: Role,
    pub created_at: i64,
}

// --- push (issue 13) ------------------------------------------------------------------

/// How a push target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushPlatform {
    Apns,
    Fcm,
    Webpush,
    /// A Matrix-style push gateway the operator runs (Sygnal or their own bouncer).
    Gateway,
}

impl PushPlatform {
    pub const ALL: [PushPlatform; 4] = [
        PushPlatform::Apns,
        PushPlatform::Fcm,
        PushPlatform::Webpush,
        PushPlatform::Gateway,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::Fcm => "fcm",
            PushPlatform::Webpush => "webpush",
            PushPlatform::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Option<PushPlatform> {
        PushPlatform::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// One session's push registration. `data` is a JSON object the platform's provider
/// reads (a Web Push subscription's keys, say); `full_text` is the device's opt-in to
/// message text in pushes (otherwise ids only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub id: String,
    pub session_id: String,
    pub user_id: String,
    pub platform: PushPlatform,
    pub token: String,
    pub app_id: String,
    pub data: String,
    pub lang: Option<String>,
    pub full_text: bool,
    pub created_at: i64,
    /// The badge this target was last pushed, and when its last badge-only push went.
    pub badge_sent: Option<u64>,
    pub badge_at: Option<i64>,
}

/// Why an event is pushed, decided where it is stored (migration 0006).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushReason {
    Message,
    Mention,
    Reply,
    Invitation,
    /// The user read on another device: the badge changed.
    Badge,
}

impl PushReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PushReason::Message => "message",
            PushReason::Mention => "mention",
            PushReason::Reply => "reply",
            PushReason::Invitation => "invitation",
            PushReason::Badge => "badge",
        }
    }

    pub fn parse(s: &str) -> Option<PushReason> {
        [
            PushReason::Message,
            PushReason::Mention,
            PushReason::Reply,
            PushReason::Invitation,
            PushReason::Badge,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A claimed row of the push queue, with what sending it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    pub target: PushTarget,
    /// The user's inbox sequence number of the event (the queue key with the target).
    pub iseq: u64,
    pub reason: PushReason,
    pub conversation: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    /// The inbox event as stored (JSON of `EventBody`); `None` if it is gone.
    pub event: Option<EventBody>,
    pub created_at: i64,
}

/// What an external broker's connect/disconnect event did to its user's presence
/// ([`crate::Store::broker_client_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerPresence {
    /// A client id no auth hook recorded (the nodes' own connections).
    UnknownClient,
    /// Nothing for watchers: what they were last told still holds.
    Unchanged { user: String },
    /// "online" was published (the user was shown offline).
    Online { user: String },
    /// The user is shown online with no live client: "offline" is due after the grace,
    /// from [`crate::Store::settle_broker_presence`].
    OfflinePending { user: String },
}

/// What [`crate::Store::settle_broker_presence`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceSettled {
    /// "offline" was published.
    Offline,
    /// Nothing to publish: a client is live again, or the user is shown offline.
    Unchanged,
    /// The grace has this many milliseconds left (a later event restarted it).
    Wait(i64),
}
