//! The one storage API. Handlers and the worker hold an `Arc<dyn Store>`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{StoreError, StoreResult};
use crate::model::*;
use crate::{MembershipIndex, PgStore, SqliteStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Opens (creating if needed) and migrates the database named by `url`:
/// `sqlite://path/to/file.db` or `postgres://user@host/db`.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// The live membership index, kept current by this store after every commit.
    fn membership(&self) -> Arc<MembershipIndex>;
    /// A trivial query, for readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    // --- accounts -------------------------------------------------------------------
    /// Fails with `Conflict` when the username is taken.
    async fn create_user(&self, new: NewUser) -> StoreResult<User>;
    async fn user(&self, id: &str) -> StoreResult<Option<User>>;
    async fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>>;
    /// Users whose username or display name starts with `prefix` (case-insensitive).
    async fn search_users(&self, prefix: &str, limit: u32) -> StoreResult<Vec<User>>;
    async fn set_last_seen(&self, user: &str, at: i64) -> StoreResult<()>;
    /// Records that `device` of `user` connected now (creating the device row).
    async fn touch_device(&self, user: &str, device: &str, at: i64) -> StoreResult<()>;

    // --- sessions and refresh tokens ------------------------------------------------
    async fn create_session(&self, session: &Session, token: &NewRefreshToken) -> StoreResult<()>;
    /// Uses `old_hash` once and stores `new` in its place, all or nothing.
    ///
    /// `new` must be derived from the old token alone (the same on every call), because
    /// a token used less than `grace_ms` ago whose successor `new` is stored and unused
    /// is a retry, answered [`Rotation::Replayed`] without ending the session. Any other
    /// second use ends it ([`Rotation::Reused`]); `grace_ms` 0 makes every one do so.
    async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new: &NewRefreshToken,
        now: i64,
        grace_ms: i64,
    ) -> StoreResult<Rotation>;
    /// Revokes the session `old_hash` belongs to; returns it if there was one.
    async fn revoke_session_by_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> StoreResult<Option<Session>>;
    async fn revoke_session(&self, session_id: &str, now: i64) -> StoreResult<bool>;
    /// Stores a device credential (a session row carrying the secret's hash).
    async fn create_device_credential(
        &self,
        credential: &DeviceCredential,
        secret_hash: &str,
    ) -> StoreResult<()>;
    /// The user's live (not revoked) device credentials, newest first.
    async fn device_credentials(&self, user: &str) -> StoreResult<Vec<DeviceCredential>>;
    /// The live credential whose secret hashes to `secret_hash`, if its user is active.
    async fn device_credential_by_secret(
        &self,
        secret_hash: &str,
    ) -> StoreResult<Option<DeviceCredential>>;
    /// The live credential `id`, or `None`; used for the grant of a session.
    async fn device_credential(&self, id: &str) -> StoreResult<Option<DeviceCredential>>;
    /// True when the session exists and is not revoked.
    async fn session_active(&self, session_id: &str) -> StoreResult<bool>;
    /// Records that MQTT client `client_id` authenticated (at an external broker's auth
    /// hook) with `session_id`, replacing what an earlier CONNECT recorded.
    async fn bind_mqtt_client(&self, client_id: &str, session_id: &str, at: i64)
        -> StoreResult<()>;
    /// The live session MQTT client `client_id` last authenticated with, and its grant
    /// (the full one for a login session); `None` when there is none or it ended.
    async fn mqtt_client_session(&self, client_id: &str) -> StoreResult<Option<DeviceCredential>>;
    /// The MQTT client ids that last authenticated (at the hook) with a session of
    /// `user`, or with `session`: whom to disconnect at an external broker when a
    /// right ends.
    async fn mqtt_clients_of_user(&self, user: &str) -> StoreResult<Vec<String>>;
    async fn mqtt_clients_of_session(&self, session: &str) -> StoreResult<Vec<String>>;

    // --- state several nodes share (PostgreSQL only; migration 0008) ----------------
    /// Charges token buckets shared by every node: for each `(key, wanted)`, grants up
    /// to `wanted` tokens from a bucket of `burst` refilled at `per_ms` per millisecond,
    /// all in one statement. Answers `(key, granted, tokens left)` per distinct key (in
    /// no particular order). Keys must be distinct. SQLite: `Unsupported` (one node; the
    /// in-memory limiter is exact there).
    async fn take_rate_tokens(
        &self,
        burst: f64,
        per_ms: f64,
        wants: &[(String, u32)],
    ) -> StoreResult<Vec<(String, u32, f64)>>;
    /// Deletes buckets untouched for `idle_ms` (full ones, when that is at least the
    /// longest refill time): forgetting them changes no decision.
    async fn sweep_rate_buckets(&self, idle_ms: i64) -> StoreResult<u64>;
    /// An external broker reported `client_id` connected (`up`) or gone at `at` (the
    /// broker's time when it says, else the node's). Events may arrive out of order:
    /// a client is live while its latest connect is later than its latest disconnect.
    /// Decided under the user's presence lock against what watchers were last told:
    /// a user shown offline with a live client is published "online" through `sink`
    /// before the lock is released (so no other node's change can be published between
    /// the decision and it); a user shown online with no live client is answered
    /// [`BrokerPresence::OfflinePending`], for [`Store::settle_broker_presence`] after
    /// the grace. PostgreSQL only (SQLite: `Unsupported`).
    async fn broker_client_event(
        &self,
        client_id: &str,
        up: bool,
        at: i64,
        sink: &dyn crate::EventSink,
    ) -> StoreResult<BrokerPresence>;
    /// Publishes `user`'s "offline" through `sink`, under their presence lock, if they
    /// are still shown online, still have no live client, and have had none for
    /// `grace_ms` (by the database's clock). Records the last-seen time (the latest
    /// disconnect) and publishes it unless the user hides it.
    async fn settle_broker_presence(
        &self,
        user: &str,
        grace_ms: i64,
        sink: &dyn crate::EventSink,
    ) -> StoreResult<PresenceSettled>;
    /// Users whose offline grace ended more than `grace_ms` ago and who are still shown
    /// online: graces a stopped node never settled. At most `limit`.
    async fn unsettled_broker_presence(
        &self,
        grace_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<String>>;

    // --- conversations and members --------------------------------------------------
    /// Creates a conversation and its members, and stores a `conversation` event in each
    /// member's inbox. A direct conversation that exists for the pair is returned instead.
    async fn create_conversation(&self, new: NewConversation) -> StoreResult<Created>;
    async fn conversation(&self, id: &str) -> StoreResult<Option<Conversation>>;
    /// Current (not departed) members.
    async fn members(&self, conversation: &str) -> StoreResult<Vec<Member>>;
    async fn member(&self, conversation: &str, user: &str) -> StoreResult<Option<Member>>;
    /// Every current (conversation, user) pair: the seed of the broker's ACL index.
    async fn all_memberships(&self) -> StoreResult<Vec<(String, String)>>;
    /// The user's conversations with last message and unread count, by activity.
    async fn list_conversations(
        &self,
        user: &str,
        page: &ActivityPage,
    ) -> StoreResult<Vec<ConversationSummary>>;
    /// Public rooms, by name then id, after `after` (an id) when paging.
    async fn list_rooms(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<RoomListing>>;
    async fn unread_total(&self, user: &str) -> StoreResult<UnreadTotal>;
    /// Sets name and topic; every member hears of it.
    async fn update_conversation(
        &self,
        id: &str,
        name: Option<String>,
        topic: Option<String>,
        at: i64,
    ) -> StoreResult<(Conversation, Vec<Delivery>)>;
    /// Adds (or re-adds) members. New members start with everything before them read,
    /// get a `conversation` event, and everyone gets a `member` event. Users already
    /// in are left as they are.
    async fn add_members(
        &self,
        conversation: &str,
        users: &[(String, Role)],
        by: &str,
        at: i64,
    ) -> StoreResult<Vec<Delivery>>;
    /// Ends a membership; the remaining members and the one who left hear of it.
    /// `NotFound` when the user is not a current member.
    async fn remove_member(
        &self,
        conversation: &str,
        user: &str,
        why: Departure,
        by: &str,
        at: i64,
    ) -> StoreResult<Vec<Delivery>>;
    async fn set_role(
        &self,
        conversation: &str,
        user: &str,
        role: Role,
        by: &str,
        at: i64,
    ) -> StoreResult<Vec<Delivery>>;
    /// Per-member archive and mute flags (None leaves a flag as it is).
    async fn set_member_flags(
        &self,
        conversation: &str,
        user: &str,
        archived: Option<bool>,
        muted: Option<bool>,
    ) -> StoreResult<Option<Member>>;
    /// Which of `ids` are existing users.
    async fn existing_users(&self, ids: &[String]) -> StoreResult<Vec<String>>;

    // --- messages ----------------------------------------------------------------------
    /// Applies a batch of writes in one transaction, in order; one outcome per op.
    /// Refusals are per op (the others still apply); an `Err` means nothing was written.
    async fn write_batch(&self, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>>;
    async fn message(&self, id: &str) -> StoreResult<Option<MessageView>>;
    async fn history(&self, conversation: &str, page: SeqPage) -> StoreResult<Vec<MessageView>>;
    /// (user, emoji) pairs on a message, oldest first.
    async fn reactions(&self, message: &str) -> StoreResult<Vec<(String, String)>>;
    /// Per-emoji counts for several messages at once (for history pages).
    async fn reaction_summaries(
        &self,
        messages: &[String],
        viewer: &str,
    ) -> StoreResult<Vec<ReactionSummary>>;
    async fn messages_by_ids(&self, ids: &[String]) -> StoreResult<Vec<MessageView>>;
    /// Full-text search over messages of conversations `user` belongs to, best first.
    async fn search_messages(
        &self,
        user: &str,
        query: &str,
        conversation: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<MessageView>>;

    // --- inbox ---------------------------------------------------------------------------
    /// The user's newest inbox `iseq` (0 for none): where a new device starts reading.
    async fn inbox_head(&self, user: &str) -> StoreResult<u64>;
    /// The user's inbox events with seq > `since`, oldest first, at most `limit`.
    async fn inbox_since(&self, user: &str, since: u64, limit: u32)
        -> StoreResult<Vec<InboxEvent>>;

    // --- attachments ---------------------------------------------------------------------
    async fn insert_attachment(&self, attachment: &Attachment) -> StoreResult<()>;
    async fn attachment(&self, id: &str) -> StoreResult<Option<Attachment>>;
    /// May `user` download the attachment? Its uploader may, and so may every current
    /// member of a conversation in which a (not deleted) message carries it.
    async fn attachment_readable_by(&self, attachment: &str, user: &str) -> StoreResult<bool>;

    // --- administration (issue 10) ---------------------------------------------------
    /// An account by id or by username (deleted ones included, by id).
    async fn find_account(&self, id_or_username: &str) -> StoreResult<Option<AccountRecord>>;
    /// Accounts by id, after `after` when paging.
    async fn list_accounts(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<AccountRecord>>;
    /// Disables (revoking every session, announced like a logout) or re-enables an
    /// account. `false` when there is no such live (not deleted) account.
    async fn set_disabled(&self, user: &str, disabled: bool, at: i64) -> StoreResult<bool>;
    /// Replaces the password hash and revokes every session. `false` when there is no
    /// such live account.
    async fn set_password_hash(&self, user: &str, hash: &str, at: i64) -> StoreResult<bool>;
    /// The user's sessions, newest first.
    async fn user_sessions(&self, user: &str) -> StoreResult<Vec<Session>>;
    /// Revokes every live session of the user; returns their ids (each announced).
    async fn revoke_user_sessions(&self, user: &str, at: i64) -> StoreResult<Vec<String>>;
    /// Sessions revoked at or after `since` (ms), by any process: how a server hears of
    /// revocations the admin CLI or another node made.
    async fn sessions_revoked_since(&self, since: i64) -> StoreResult<Vec<(String, i64)>>;
    /// Deletes an account: sessions revoked (announced), profile and credentials
    /// erased, devices dropped, every membership ended (the others hear a `left`
    /// event, returned for live delivery). Messages stay, from a deleted user.
    /// `NotFound` when there is no such live account.
    async fn delete_account(&self, user: &str, at: i64) -> StoreResult<Vec<Delivery>>;

    // --- upload quotas and the sweeper (issue 10) ------------------------------------
    /// `user`'s uploads: bytes since `bytes_since`, files since `files_since` (ms).
    async fn upload_usage(
        &self,
        user: &str,
        bytes_since: i64,
        files_since: i64,
    ) -> StoreResult<UploadUsage>;
    /// Deletes up to `limit` attachment rows created before `created_before` that no
    /// message carries (never sent, or their message was deleted), and returns them so
    /// their bytes can be removed. The "no message carries it" check is part of each
    /// DELETE, so an attachment a send takes meanwhile is never removed.
    async fn sweep_unattached(
        &self,
        created_before: i64,
        limit: u32,
    ) -> StoreResult<Vec<Attachment>>;

    // --- privacy settings (issue 10) --------------------------------------------------
    /// Whether the user hides when they were last seen (presence shows online/offline
    /// only).
    async fn hides_last_seen(&self, user: &str) -> StoreResult<bool>;
    /// Changes the user's own profile and privacy settings (`None` leaves one as it
    /// is); `false` when there is no such live account.
    async fn update_profile(
        &self,
        user: &str,
        display_name: Option<Option<String>>,
        hide_last_seen: Option<bool>,
    ) -> StoreResult<bool>;

    // --- blocking (issue 10) ------------------------------------------------------------
    /// Blocks (`on`) or unblocks `blocked` for `blocker`; the membership index hears of
    /// it after the commit. `false` when nothing changed.
    async fn set_block(&self, blocker: &str, blocked: &str, on: bool, at: i64)
        -> StoreResult<bool>;
    /// Whom `blocker` blocked, oldest first.
    async fn blocked_users(&self, blocker: &str) -> StoreResult<Vec<String>>;

    // --- invitations (issue 10) ---------------------------------------------------------
    /// The "who may add me" setting of each of `users` that exists.
    async fn group_adds(&self, users: &[String]) -> StoreResult<Vec<(String, GroupAdds)>>;
    async fn set_group_adds(&self, user: &str, policy: GroupAdds) -> StoreResult<bool>;
    /// Invites `users` (each with the role they would get) to `conversation`: one
    /// `invitation` inbox event each, returned for live delivery. Users already invited
    /// there are left as they are.
    async fn invite(
        &self,
        conversation: &str,
        users: &[(String, Role)],
        by: &str,
        at: i64,
    ) -> StoreResult<Vec<Delivery>>;
    /// The user's pending invitations, oldest first.
    async fn invitations(&self, user: &str) -> StoreResult<Vec<Invitation>>;
    /// Removes and returns the user's invitation `id` (to accept or decline it).
    async fn take_invitation(&self, id: &str, user: &str) -> StoreResult<Option<Invitation>>;
    // --- push (issue 13) ---------------------------------------------------------------
    /// Registers `target` as its session's push target, replacing the session's previous
    /// one and any row with the same (platform, token), whoever's it was (their queued
    /// pushes go with it). `NotFound` when the session is not a live session of the user.
    async fn register_push_target(&self, target: &PushTarget) -> StoreResult<()>;
    /// The user's push targets, oldest first.
    async fn push_targets(&self, user: &str) -> StoreResult<Vec<PushTarget>>;
    /// Removes the session's push target; `false` when it had none.
    async fn remove_push_target(&self, session: &str) -> StoreResult<bool>;
    /// Whether mentions and replies push from muted or archived conversations.
    async fn push_breakthrough(&self, user: &str) -> StoreResult<bool>;
    async fn set_push_breakthrough(&self, user: &str, on: bool) -> StoreResult<bool>;
    /// Claims up to `limit` queue rows due at `now` by moving them to `lease_until` and
    /// counting the attempt, so no other worker (or node) takes them meanwhile and a
    /// crash mid-send leaves them to be retried when the lease runs out. Rows of targets
    /// whose session ended are not returned (their trigger removes them anyway).
    async fn claim_pushes(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<PushJob>>;
    /// Removes a queue row: sent, or given up on.
    async fn finish_push(&self, target: &str, iseq: u64) -> StoreResult<()>;
    /// Moves a queue row's next attempt to `at`.
    async fn defer_push(&self, target: &str, iseq: u64, at: i64) -> StoreResult<()>;
    /// Records the badge last pushed to a target, and (`at`) when a badge-only push went.
    async fn set_push_badge(&self, target: &str, badge: u64, at: Option<i64>) -> StoreResult<()>;
    /// The provider credential every node shares under `name` (token, created ms).
    async fn shared_push_token(&self, name: &str) -> StoreResult<Option<(String, i64)>>;
    /// Stores `token` (made at `created_at`) under `name` unless the stored one was
    /// made at or after `stale_before`; returns the token that stands, ours or the one
    /// another node made meanwhile.
    async fn offer_push_token(
        &self,
        name: &str,
        token: &str,
        created_at: i64,
        stale_before: i64,
    ) -> StoreResult<(String, i64)>;
    /// Deletes a push target the provider says is gone (and its queued pushes).
    async fn prune_push_target(&self, target: &str) -> StoreResult<bool>;
}
