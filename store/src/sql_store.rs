//! The SQL both dialects share, written once and expanded per backend by
//! [`impl_sql_store!`]. Placeholders are `$N`, which PostgreSQL and sqlx's SQLite driver
//! both accept; multi-row writes use `UPDATE … FROM (VALUES …)`, which both support
//! (SQLite since 3.33; sqlx bundles a newer one). Each backend passes:
//! - `$store`: its type, with `fn reader(&self)` and `fn writer(&self)` pools, an
//!   `async fn before_search(&self)` (SQLite indexes queued messages there), an
//!   `async fn write_ops(&self, ops)` behind `write_batch` (PostgreSQL:
//!   `generic_write_batch`; SQLite: its own, fewer round trips) and an
//!   `index: Arc<MembershipIndex>` field it keeps current after membership commits;
//! - `$db`: the sqlx database type;
//! - `$lock`: the row-lock suffix for read-then-write selects (`FOR UPDATE` on
//!   PostgreSQL, where several nodes may write at once; empty on SQLite, whose single
//!   writer connection already serializes writes);
//! - `$counter_row`: whether each user's inbox counter lives in `users.inbox_seq`
//!   (PostgreSQL: that row is also the lock that serializes numbering across nodes) or
//!   is derived as `MAX(seq)` of the user's `inbox_events` (SQLite: one writer, so no
//!   lock is needed, and not rewriting a wide `users` row per recipient saves a random
//!   page write per recipient per batch — a quarter of the WAL bytes of a message).

/// Rows per multi-row statement: keeps every statement under both dialects' bind
/// limits (SQLite: 32766, PostgreSQL: 65535) whatever the batch size.
pub(crate) const CHUNK_ROWS: usize = 1000;

/// The columns a `MessageView` is read from (messages `m`, attachments `a`).
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.seq, m.sender_id, \
     m.client_msg_id, m.kind, m.body, m.reply_to, m.mentions, m.created_at, m.edited_at, \
     m.deleted_at, a.id AS att_id, a.mime AS att_mime, a.size AS att_size, \
     a.filename AS att_name";

/// `SELECT` of a `MessageView`, ready for a `WHERE`.
pub(crate) const MESSAGE_SELECT: &str = concat!(
    "SELECT m.id, m.conversation_id, m.seq, m.sender_id, ",
    "m.client_msg_id, m.kind, m.body, m.reply_to, m.mentions, m.created_at, m.edited_at, ",
    "m.deleted_at, a.id AS att_id, a.mime AS att_mime, a.size AS att_size, ",
    "a.filename AS att_name ",
    "FROM messages m LEFT JOIN attachments a ON a.id = m.attachment_id"
);

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

macro_rules! impl_sql_store {
    ($store:ty, $db:ty, backend = $backend:expr, lock = $lock:literal, counter_row = $counter_row:literal) => {
        use std::collections::{HashMap, HashSet};
        use std::sync::Arc;

        use sqlx::{QueryBuilder, Row};
        use tidings_core::protocol::event::AttachmentView;

        use crate::batch::{self, AttachmentRow, ConvState, MemberMarkers, Plan, Snapshot};
        use crate::error::{StoreError, StoreResult};
        use crate::model::*;
        use crate::sql_store::{to_i64, to_u64, CHUNK_ROWS, MESSAGE_COLUMNS, MESSAGE_SELECT};
        use crate::store::{Backend, Store};

        type DbRow = <$db as sqlx::Database>::Row;
        type Tx<'c> = sqlx::Transaction<'c, $db>;

        /// Every current (conversation, user) pair, to seed the membership index.
        async fn load_memberships(pool: &sqlx::Pool<$db>) -> StoreResult<Vec<(String, String)>> {
            let rows = sqlx::query("SELECT conversation_id, user_id FROM members WHERE left_at IS NULL")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("conversation_id")?, r.try_get("user_id")?)))
                .collect()
        }

        /// Seeds the membership index with what it knows besides memberships: which
        /// conversations are rooms and direct ones, and who blocked whom.
        async fn load_index_extras(pool: &sqlx::Pool<$db>, index: &crate::MembershipIndex) -> StoreResult<()> {
            let rows = sqlx::query("SELECT id, kind FROM conversations WHERE kind <> 'group'")
                .fetch_all(pool)
                .await?;
            for r in &rows {
                let (id, kind): (String, String) = (r.try_get("id")?, r.try_get("kind")?);
                match kind.as_str() {
                    "room" => index.mark_room(&id),
                    _ => index.mark_direct(&id),
                }
            }
            let rows = sqlx::query("SELECT user_id, conversation_id, handle FROM members WHERE handle IS NOT NULL")
                .fetch_all(pool)
                .await?;
            for r in &rows {
                let (user, handle) = handle_from_row(r)?;
                index.set_handle(&user, &r.try_get::<String, _>("conversation_id")?, handle);
            }
            let rows = sqlx::query("SELECT blocker_id, blocked_id FROM blocks").fetch_all(pool).await?;
            for r in &rows {
                let (blocker, blocked): (String, String) = (r.try_get("blocker_id")?, r.try_get("blocked_id")?);
                index.block(&blocker, &blocked);
            }
            Ok(())
        }

        /// `(user_id, handle)` of a membership row.
        fn handle_from_row(row: &DbRow) -> StoreResult<(String, u32)> {
            let handle: i64 = row.try_get("handle")?;
            let handle = u32::try_from(handle).map_err(|_| StoreError::Corrupt(format!("handle {handle}")))?;
            Ok((row.try_get("user_id")?, handle))
        }

        /// The next handle of the user bound right after it (closed by the caller).
        const NEXT_HANDLE: &str = "(SELECT COALESCE(MAX(handle), 0) + 1 FROM members WHERE user_id = ";

        const DEVICE_CREDENTIAL_COLUMNS: &str =
            "s.id, s.user_id, s.name, s.created_at, s.conversations, s.can_send, s.can_receive, s.acks, s.echo";

        fn device_credential_from_row(row: &DbRow) -> StoreResult<DeviceCredential> {
            let conversations: Option<String> = row.try_get("conversations")?;
            let conversations = match conversations {
                Some(json) => Some(serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("credential conversations: {e}")))?),
                None => None,
            };
            Ok(DeviceCredential {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                name: row.try_get::<Option<String>, _>("name")?.unwrap_or_default(),
                created_at: row.try_get("created_at")?,
                grant: DeviceGrant {
                    conversations,
                    can_send: row.try_get("can_send")?,
                    can_receive: row.try_get("can_receive")?,
                    acks: row.try_get("acks")?,
                    echo: row.try_get("echo")?,
                },
            })
        }

        fn user_from_row(row: &DbRow) -> StoreResult<User> {
            Ok(User {
                id: row.try_get("id")?,
                username: row.try_get("username")?,
                display_name: row.try_get("display_name")?,
                created_at: row.try_get("created_at")?,
                last_seen_at: row.try_get("last_seen_at")?,
            })
        }

        fn session_from_row(row: &DbRow) -> StoreResult<Session> {
            Ok(Session {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                device_id: row.try_get("device_id")?,
                created_at: row.try_get("created_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        fn conversation_from_row(row: &DbRow) -> StoreResult<Conversation> {
            let kind: String = row.try_get("kind")?;
            Ok(Conversation {
                id: row.try_get("id")?,
                kind: ConversationKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("conversation kind {kind:?}")))?,
                name: row.try_get("name")?,
                topic: row.try_get("topic")?,
                created_by: row.try_get("created_by")?,
                created_at: row.try_get("created_at")?,
                last_seq: to_u64(row.try_get("last_seq")?),
                last_activity_at: row.try_get("last_activity_at")?,
            })
        }

        fn member_from_row(row: &DbRow) -> StoreResult<Member> {
            let role: String = row.try_get("role")?;
            Ok(Member {
                conversation_id: row.try_get("conversation_id")?,
                user_id: row.try_get("user_id")?,
                role: Role::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("member role {role:?}")))?,
                read_seq: to_u64(row.try_get("read_seq")?),
                delivered_seq: to_u64(row.try_get("delivered_seq")?),
                archived: row.try_get("archived")?,
                muted: row.try_get("muted")?,
                joined_at: row.try_get("joined_at")?,
            })
        }

        fn message_from_row(row: &DbRow) -> StoreResult<MessageView> {
            let kind: String = row.try_get("kind")?;
            let mentions: String = row.try_get("mentions")?;
            let deleted_at: Option<i64> = row.try_get("deleted_at")?;
            let att_id: Option<String> = row.try_get("att_id")?;
            let attachment = match att_id {
                Some(id) => Some(AttachmentView {
                    id,
                    mime: row.try_get("att_mime")?,
                    size: to_u64(row.try_get("att_size")?),
                    name: row.try_get("att_name")?,
                }),
                None => None,
            };
            Ok(MessageView {
                id: row.try_get("id")?,
                conv: row.try_get("conversation_id")?,
                seq: to_u64(row.try_get("seq")?),
                sender: row.try_get("sender_id")?,
                client_msg_id: row.try_get("client_msg_id")?,
                kind: MessageKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("message kind {kind:?}")))?,
                body: row.try_get("body")?,
                reply_to: row.try_get("reply_to")?,
                mentions: serde_json::from_str(&mentions)?,
                attachment,
                created_at: row.try_get("created_at")?,
                edited_at: row.try_get("edited_at")?,
                deleted: deleted_at.is_some(),
            })
        }

        /// Appends ` IN ($a, $b, …)` for `items` (which must not be empty).
        fn push_in<'a>(qb: &mut QueryBuilder<'a, $db>, items: impl IntoIterator<Item = String>) {
            qb.push(" IN (");
            let mut sep = qb.separated(", ");
            for item in items {
                sep.push_bind(item);
            }
            qb.push(")");
        }

        async fn load_messages_where(
            tx: &mut Tx<'_>,
            column: &str,
            ids: impl IntoIterator<Item = String>,
        ) -> StoreResult<Vec<MessageView>> {
            let mut qb = QueryBuilder::<$db>::new(MESSAGE_SELECT);
            qb.push(" WHERE m.").push(column);
            push_in(&mut qb, ids);
            let rows = qb.build().fetch_all(&mut **tx).await?;
            rows.iter().map(message_from_row).collect()
        }

        /// Reads, and on PostgreSQL locks in id order, the inbox counters of `users`.
        async fn load_inbox_seqs(
            tx: &mut Tx<'_>,
            users: &HashSet<String>,
        ) -> StoreResult<HashMap<String, u64>> {
            let mut sorted: Vec<&String> = users.iter().collect();
            sorted.sort();
            let mut seqs = HashMap::with_capacity(users.len());
            for chunk in sorted.chunks(CHUNK_ROWS) {
                let mut qb = if $counter_row {
                    QueryBuilder::<$db>::new("SELECT id, inbox_seq FROM users WHERE id")
                } else {
                    // One index seek per user (not `MAX … GROUP BY`, which reads every
                    // event of each user).
                    QueryBuilder::<$db>::new(
                        "SELECT id, COALESCE((SELECT e.seq FROM inbox_events e WHERE e.user_id = users.id \
                         ORDER BY e.seq DESC LIMIT 1), 0) AS inbox_seq FROM users WHERE id",
                    )
                };
                push_in(&mut qb, chunk.iter().map(|s| (*s).clone()));
                qb.push(concat!(" ORDER BY id ", $lock));
                for row in qb.build().fetch_all(&mut **tx).await? {
                    seqs.insert(row.try_get("id")?, to_u64(row.try_get("inbox_seq")?));
                }
            }
            Ok(seqs)
        }

        /// Writes final inbox counters and the events they numbered.
        async fn store_events(
            tx: &mut Tx<'_>,
            counters: &[(String, u64)],
            events: &[(String, u64, Arc<EventBody>, i64)],
        ) -> StoreResult<()> {
            for chunk in counters.chunks(CHUNK_ROWS).filter(|_| $counter_row) {
                let mut qb = QueryBuilder::<$db>::new("UPDATE users SET inbox_seq = v.column2 FROM (");
                qb.push_values(chunk, |mut b, (user, seq)| {
                    b.push_bind(user.clone()).push_bind(to_i64(*seq));
                });
                qb.push(") AS v WHERE users.id = v.column1");
                qb.build().execute(&mut **tx).await?;
            }
            // One event body is shared by all its recipients: serialize it once (keyed by
            // the Arc's address, as a plain integer so the future stays Send).
            let mut encoded: HashMap<usize, String> = HashMap::new();
            for (_, _, body, _) in events {
                if let std::collections::hash_map::Entry::Vacant(e) = encoded.entry(Arc::as_ptr(body) as usize) {
                    e.insert(serde_json::to_string(&**body)?);
                }
            }
            for chunk in events.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO inbox_events (user_id, seq, payload, created_at) ",
                );
                qb.push_values(chunk, |mut b, (user, seq, body, at)| {
                    let payload = encoded.get(&(Arc::as_ptr(body) as usize)).cloned().unwrap_or_default();
                    b.push_bind(user.clone())
                        .push_bind(to_i64(*seq))
                        .push_bind(payload)
                        .push_bind(*at);
                });
                qb.build().execute(&mut **tx).await?;
            }
            Ok(())
        }

        /// Numbers and stores one event per recipient; used outside write batches.
        async fn append_events(
            tx: &mut Tx<'_>,
            recipients: &[String],
            body: EventBody,
            at: i64,
        ) -> StoreResult<Vec<Delivery>> {
            let users: HashSet<String> = recipients.iter().cloned().collect();
            let mut seqs = load_inbox_seqs(tx, &users).await?;
            let body = Arc::new(body);
            let mut events = Vec::with_capacity(recipients.len());
            let mut deliveries = Vec::with_capacity(recipients.len());
            for user in recipients {
                let seq = seqs.entry(user.clone()).or_insert(0);
                *seq += 1;
                events.push((user.clone(), *seq, body.clone(), at));
                deliveries.push(Delivery { user: user.clone(), seq: *seq, body: body.clone() });
            }
            let mut counters: Vec<(String, u64)> = seqs.into_iter().collect();
            counters.sort();
            store_events(tx, &counters, &events).await?;
            Ok(deliveries)
        }

        /// Reads everything `ops` may touch, locking conversations and inbox counters
        /// (PostgreSQL) in a fixed order: conversations first, then users, each by id.
        /// `write_batch` as statements both dialects run: snapshot, plan, execute, in
        /// one transaction. (SQLite has a faster path of its own: `sqlite/fast_batch.rs`.)
        #[allow(dead_code)]
        async fn generic_write_batch(pool: &sqlx::Pool<$db>, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>> {
            if ops.is_empty() {
                return Ok(vec![]);
            }
            let mut tx = pool.begin().await?;
            let snap = snapshot(&mut tx, ops).await?;
            let plan = batch::plan(ops, snap);
            execute(&mut tx, &plan).await?;
            tx.commit().await?;
            Ok(plan.outcomes)
        }

        async fn snapshot(tx: &mut Tx<'_>, ops: &[WriteOp]) -> StoreResult<Snapshot> {
            let mut wanted = Snapshot::wanted(ops);
            let mut snap = Snapshot::default();
            if !wanted.messages.is_empty() {
                for m in load_messages_where(tx, "id", wanted.messages.drain()).await? {
                    wanted.convs.insert(m.conv.clone());
                    snap.messages.insert(m.id.clone(), m);
                }
            }
            if !wanted.convs.is_empty() {
                let mut sorted: Vec<String> = wanted.convs.iter().cloned().collect();
                sorted.sort();
                let mut qb = QueryBuilder::<$db>::new("SELECT id, kind, last_seq FROM conversations WHERE id");
                push_in(&mut qb, sorted.iter().cloned());
                qb.push(concat!(" ORDER BY id ", $lock));
                for row in qb.build().fetch_all(&mut **tx).await? {
                    let kind: String = row.try_get("kind")?;
                    let kind = ConversationKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("conversation kind {kind:?}")))?;
                    snap.convs.insert(
                        row.try_get("id")?,
                        ConvState { kind, last_seq: to_u64(row.try_get("last_seq")?) },
                    );
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT conversation_id, user_id, read_seq, delivered_seq FROM members \
                     WHERE left_at IS NULL AND conversation_id",
                );
                push_in(&mut qb, sorted);
                qb.push(" ORDER BY joined_at, user_id");
                for row in qb.build().fetch_all(&mut **tx).await? {
                    let conv: String = row.try_get("conversation_id")?;
                    let markers = MemberMarkers {
                        read_seq: to_u64(row.try_get("read_seq")?),
                        delivered_seq: to_u64(row.try_get("delivered_seq")?),
                    };
                    snap.members.entry(conv).or_default().push((row.try_get("user_id")?, markers));
                }
            }
            // After the conversation locks, so two racing retries of one send see each other.
            if !wanted.senders.is_empty() {
                let mut qb = QueryBuilder::<$db>::new(MESSAGE_SELECT);
                qb.push(" WHERE m.sender_id");
                push_in(&mut qb, wanted.senders.drain());
                qb.push(" AND m.client_msg_id");
                push_in(&mut qb, wanted.client_ids.drain());
                for row in qb.build().fetch_all(&mut **tx).await? {
                    let m = message_from_row(&row)?;
                    snap.sent.insert((m.sender.clone(), m.client_msg_id.clone()), m);
                }
            }
            if !wanted.attachments.is_empty() {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT id, uploader_id, mime, size, filename FROM attachments WHERE id",
                );
                push_in(&mut qb, wanted.attachments.drain());
                for row in qb.build().fetch_all(&mut **tx).await? {
                    let id: String = row.try_get("id")?;
                    let view = AttachmentView {
                        id: id.clone(),
                        mime: row.try_get("mime")?,
                        size: to_u64(row.try_get("size")?),
                        name: row.try_get("filename")?,
                    };
                    snap.attachments.insert(id, AttachmentRow { uploader: row.try_get("uploader_id")?, view });
                }
            }
            if !wanted.reactors.is_empty() && !snap.messages.is_empty() {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT message_id, user_id, emoji FROM reactions WHERE message_id",
                );
                push_in(&mut qb, snap.messages.keys().cloned());
                qb.push(" AND user_id");
                push_in(&mut qb, wanted.reactors.drain());
                for row in qb.build().fetch_all(&mut **tx).await? {
                    snap.reactions.insert((
                        row.try_get("message_id")?,
                        row.try_get("user_id")?,
                        row.try_get("emoji")?,
                    ));
                }
            }
            let users: HashSet<String> =
                snap.members.values().flatten().map(|(u, _)| u.clone()).collect();
            if !users.is_empty() {
                snap.inbox_seqs = load_inbox_seqs(tx, &users).await?;
            }
            Ok(snap)
        }

        async fn execute(tx: &mut Tx<'_>, plan: &Plan) -> StoreResult<()> {
            for chunk in plan.conv_seqs.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "UPDATE conversations SET last_seq = v.column2, last_activity_at = v.column3 FROM (",
                );
                qb.push_values(chunk, |mut b, (conv, seq, at)| {
                    b.push_bind(conv.clone()).push_bind(to_i64(*seq)).push_bind(*at);
                });
                qb.push(") AS v WHERE conversations.id = v.column1");
                qb.build().execute(&mut **tx).await?;
            }
            for chunk in plan.inserts.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, kind, \
                     body, reply_to, mentions, attachment_id, created_at, edited_at, deleted_at) ",
                );
                let mut failed = None;
                qb.push_values(chunk, |mut b, row| {
                    let v = &row.view;
                    let mentions = serde_json::to_string(&v.mentions).unwrap_or_else(|e| {
                        failed = Some(e);
                        "[]".into()
                    });
                    b.push_bind(v.id.clone())
                        .push_bind(v.conv.clone())
                        .push_bind(to_i64(v.seq))
                        .push_bind(v.sender.clone())
                        .push_bind(v.client_msg_id.clone())
                        .push_bind(v.kind.as_str())
                        .push_bind(v.body.clone())
                        .push_bind(v.reply_to.clone())
                        .push_bind(mentions)
                        .push_bind(row.attachment_id.clone())
                        .push_bind(v.created_at)
                        .push_bind(v.edited_at)
                        .push_bind(row.deleted_at);
                });
                if let Some(e) = failed {
                    return Err(e.into());
                }
                qb.build().execute(&mut **tx).await?;
            }
            for (id, body, edited_at, deleted_at) in &plan.updates {
                sqlx::query(
                    "UPDATE messages SET body = $2, edited_at = $3, deleted_at = $4, \
                     mentions = CASE WHEN $4 IS NULL THEN mentions ELSE '[]' END, \
                     attachment_id = CASE WHEN $4 IS NULL THEN attachment_id ELSE NULL END \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(body)
                .bind(edited_at)
                .bind(deleted_at)
                .execute(&mut **tx)
                .await?;
            }
            for chunk in plan.reactions_added.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO reactions (message_id, user_id, emoji, created_at) ",
                );
                qb.push_values(chunk, |mut b, (msg, user, emoji, at)| {
                    b.push_bind(msg.clone()).push_bind(user.clone()).push_bind(emoji.clone()).push_bind(*at);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                qb.build().execute(&mut **tx).await?;
            }
            for (msg, user, emoji) in &plan.reactions_removed {
                sqlx::query("DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3")
                    .bind(msg)
                    .bind(user)
                    .bind(emoji)
                    .execute(&mut **tx)
                    .await?;
            }
            for chunk in plan.markers.chunks(CHUNK_ROWS) {
                let mut qb = QueryBuilder::<$db>::new(
                    "UPDATE members SET read_seq = v.column3, delivered_seq = v.column4 FROM (",
                );
                qb.push_values(chunk, |mut b, (conv, user, read, delivered)| {
                    b.push_bind(conv.clone())
                        .push_bind(user.clone())
                        .push_bind(to_i64(*read))
                        .push_bind(to_i64(*delivered));
                });
                qb.push(") AS v WHERE members.conversation_id = v.column1 AND members.user_id = v.column2");
                qb.build().execute(&mut **tx).await?;
            }
            store_events(tx, &plan.inbox_seqs, &plan.events).await
        }

        async fn session_by_token(tx: &mut Tx<'_>, token_hash: &str) -> StoreResult<Option<(Session, i64, Option<i64>)>> {
            let row = sqlx::query(concat!(
                "SELECT s.id, s.user_id, s.device_id, s.created_at, s.revoked_at, \
                 r.expires_at, r.used_at FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
                 WHERE r.token_hash = $1 ",
                $lock
            ))
            .bind(token_hash)
            .fetch_optional(&mut **tx)
            .await?;
            match row {
                None => Ok(None),
                Some(row) => Ok(Some((session_from_row(&row)?, row.try_get("expires_at")?, row.try_get("used_at")?))),
            }
        }

        /// Whether `token_hash` is stored for `session` and not used yet.
        async fn unused_successor(tx: &mut Tx<'_>, session: &str, token_hash: &str) -> StoreResult<bool> {
            let row = sqlx::query("SELECT used_at FROM refresh_tokens WHERE token_hash = $1 AND session_id = $2")
                .bind(token_hash)
                .bind(session)
                .fetch_optional(&mut **tx)
                .await?;
            match row {
                None => Ok(false),
                Some(row) => Ok(row.try_get::<Option<i64>, _>("used_at")?.is_none()),
            }
        }

        async fn insert_refresh_token(tx: &mut Tx<'_>, session: &str, token: &NewRefreshToken) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&token.token_hash)
            .bind(session)
            .bind(token.created_at)
            .bind(token.expires_at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// Current members of a conversation, in join order.
        async fn current_members(tx: &mut Tx<'_>, conversation: &str) -> StoreResult<Vec<String>> {
            let rows = sqlx::query(
                "SELECT user_id FROM members WHERE conversation_id = $1 AND left_at IS NULL ORDER BY joined_at, user_id",
            )
            .bind(conversation)
            .fetch_all(&mut **tx)
            .await?;
            rows.iter().map(|r| Ok(r.try_get("user_id")?)).collect()
        }

        fn member_event(conv: &str, user: &str, action: tidings_core::protocol::event::MemberAction, role: Role, by: &str) -> EventBody {
            EventBody::Member(tidings_core::protocol::event::MemberView {
                conv: conv.to_owned(),
                user: user.to_owned(),
                action,
                role,
                by: Some(by.to_owned()),
            })
        }

        const USER_COLUMNS: &str = "id, username, display_name, created_at, last_seen_at";
        const ACCOUNT_SELECT: &str = "SELECT u.id, u.username, u.display_name, u.created_at, u.last_seen_at, \
             u.disabled_at, u.deleted_at, (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id \
             AND s.revoked_at IS NULL) AS active_sessions FROM users u";

        fn dimension(v: Option<i64>) -> Option<u32> {
            v.and_then(|v| u32::try_from(v).ok())
        }

        fn invitation_from_row(row: &DbRow) -> StoreResult<Invitation> {
            let role: String = row.try_get("role")?;
            Ok(Invitation {
                id: row.try_get("id")?,
                conversation_id: row.try_get("conversation_id")?,
                user_id: row.try_get("user_id")?,
                invited_by: row.try_get("invited_by")?,
                role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("invitation role {role:?}")))?,
                created_at: row.try_get("created_at")?,
            })
        }

        fn account_from_row(row: &DbRow) -> StoreResult<AccountRecord> {
            Ok(AccountRecord {
                user: user_from_row(row)?,
                disabled_at: row.try_get("disabled_at")?,
                deleted_at: row.try_get("deleted_at")?,
                active_sessions: to_u64(row.try_get("active_sessions")?),
            })
        }

        /// Revokes every live session of `user` in `tx`; the caller announces the ids
        /// after the commit.
        async fn revoke_sessions_of(tx: &mut Tx<'_>, user: &str, at: i64) -> StoreResult<Vec<String>> {
            let rows = sqlx::query(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
            )
            .bind(user)
            .bind(at)
            .fetch_all(&mut **tx)
            .await?;
            rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
        }
        const CONVERSATION_COLUMNS: &str =
            "id, kind, name, topic, created_by, created_at, last_seq, last_activity_at";
        const MEMBER_COLUMNS: &str =
            "conversation_id, user_id, role, read_seq, delivered_seq, archived, muted, joined_at";

        /// A push target from a row whose id and creation time columns are named
        /// `id_col` and `created_col` (they differ when joined with the queue).
        fn push_target_from_row(row: &DbRow, id_col: &str, created_col: &str) -> StoreResult<PushTarget> {
            let platform: String = row.try_get("platform")?;
            Ok(PushTarget {
                id: row.try_get(id_col)?,
                session_id: row.try_get("session_id")?,
                user_id: row.try_get("user_id")?,
                platform: PushPlatform::parse(&platform)
                    .ok_or_else(|| StoreError::Corrupt(format!("push platform {platform:?}")))?,
                token: row.try_get("token")?,
                app_id: row.try_get("app_id")?,
                data: row.try_get("data")?,
                lang: row.try_get("lang")?,
                full_text: row.try_get("full_text")?,
                created_at: row.try_get(created_col)?,
                badge_sent: row.try_get::<Option<i64>, _>("badge_sent")?.map(to_u64),
                badge_at: row.try_get("badge_at")?,
            })
        }

        #[async_trait::async_trait]
        impl Store for $store {
            fn backend(&self) -> Backend {
                $backend
            }

            fn membership(&self) -> Arc<crate::MembershipIndex> {
                self.index.clone()
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn create_user(&self, new: NewUser) -> StoreResult<User> {
                let result = sqlx::query(
                    "INSERT INTO users (id, username, display_name, password_hash, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&new.id)
                .bind(&new.username)
                .bind(&new.display_name)
                .bind(&new.password_hash)
                .bind(new.created_at)
                .execute(self.writer())
                .await;
                match result {
                    Err(e) => match StoreError::from(e) {
                        StoreError::Conflict(_) => Err(StoreError::Conflict(format!("username {:?} is taken", new.username))),
                        other => Err(other),
                    },
                    Ok(_) => Ok(User {
                        id: new.id,
                        username: new.username,
                        display_name: new.display_name,
                        created_at: new.created_at,
                        last_seen_at: None,
                    }),
                }
            }

            async fn user(&self, id: &str) -> StoreResult<Option<User>> {
                let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn credentials(&self, username: &str) -> StoreResult<Option<Credentials>> {
                let sql = format!(
                    "SELECT {USER_COLUMNS}, password_hash, disabled_at FROM users WHERE username = $1 AND deleted_at IS NULL"
                );
                let row = sqlx::query(&sql).bind(username).fetch_optional(self.reader()).await?;
                match row {
                    None => Ok(None),
                    Some(row) => Ok(Some(Credentials {
                        user: user_from_row(&row)?,
                        password_hash: row.try_get("password_hash")?,
                        disabled: row.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
                    })),
                }
            }

            async fn search_users(&self, prefix: &str, limit: u32) -> StoreResult<Vec<User>> {
                let escaped: String = prefix
                    .to_lowercase()
                    .chars()
                    .flat_map(|c| match c {
                        '%' | '_' | '\\' => vec!['\\', c],
                        c => vec![c],
                    })
                    .collect();
                let pattern = format!("{escaped}%");
                let sql = format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE deleted_at IS NULL AND (username LIKE $1 ESCAPE '\\' \
                     OR lower(display_name) LIKE $1 ESCAPE '\\') ORDER BY username LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(pattern)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(user_from_row).collect()
            }

            async fn set_last_seen(&self, user: &str, at: i64) -> StoreResult<()> {
                sqlx::query("UPDATE users SET last_seen_at = $2 WHERE id = $1")
                    .bind(user)
                    .bind(at)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn touch_device(&self, user: &str, device: &str, at: i64) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO devices (user_id, id, created_at, last_seen_at) VALUES ($1, $2, $3, $3) \
                     ON CONFLICT (user_id, id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
                )
                .bind(user)
                .bind(device)
                .bind(at)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn create_session(&self, session: &Session, token: &NewRefreshToken) -> StoreResult<()> {
                let mut tx = self.writer().begin().await?;
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, device_id, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&session.id)
                .bind(&session.user_id)
                .bind(&session.device_id)
                .bind(session.created_at)
                .execute(&mut *tx)
                .await?;
                insert_refresh_token(&mut tx, &session.id, token).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_refresh_token(&self, old_hash: &str, new: &NewRefreshToken, now: i64, grace_ms: i64) -> StoreResult<Rotation> {
                let mut tx = self.writer().begin().await?;
                // Locks the old token's row and its session's (PostgreSQL), so a racing
                // retry waits here and then sees this rotation as committed.
                let Some((session, expires_at, used_at)) = session_by_token(&mut tx, old_hash).await? else {
                    return Ok(Rotation::Invalid);
                };
                if session.revoked_at.is_some() || expires_at <= now {
                    return Ok(Rotation::Invalid);
                }
                if let Some(used_at) = used_at {
                    // A retry after a lost reply comes soon, and before the client ever
                    // held the successor; a thief's replay after the client moved on
                    // finds the successor used. No lock on the successor: rotating it
                    // also locks the session row we hold, so its state cannot change
                    // under us.
                    if now.saturating_sub(used_at) < grace_ms
                        && unused_successor(&mut tx, &session.id, &new.token_hash).await?
                    {
                        return Ok(Rotation::Replayed(session));
                    }
                    sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1")
                        .bind(&session.id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    self.index.session_ended(&session.id);
                    return Ok(Rotation::Reused(Session { revoked_at: Some(now), ..session }));
                }
                sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1")
                    .bind(old_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                insert_refresh_token(&mut tx, &session.id, new).await?;
                tx.commit().await?;
                Ok(Rotation::Rotated(session))
            }

            async fn revoke_session_by_token(&self, token_hash: &str, now: i64) -> StoreResult<Option<Session>> {
                let mut tx = self.writer().begin().await?;
                let Some((session, _, _)) = session_by_token(&mut tx, token_hash).await? else {
                    return Ok(None);
                };
                if session.revoked_at.is_some() {
                    return Ok(None);
                }
                sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1")
                    .bind(&session.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.index.session_ended(&session.id);
                Ok(Some(Session { revoked_at: Some(now), ..session }))
            }

            async fn revoke_session(&self, session_id: &str, now: i64) -> StoreResult<bool> {
                let done = sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(session_id)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                let ended = done.rows_affected() > 0;
                if ended {
                    self.index.session_ended(session_id);
                }
                Ok(ended)
            }

            async fn create_device_credential(&self, credential: &DeviceCredential, secret_hash: &str) -> StoreResult<()> {
                let g = &credential.grant;
                let conversations = match &g.conversations {
                    Some(cs) => Some(serde_json::to_string(cs).map_err(|e| StoreError::Corrupt(e.to_string()))?),
                    None => None,
                };
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, device_id, created_at, name, secret_hash, conversations, can_send, can_receive, acks, echo) \
                     VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&credential.id)
                .bind(&credential.user_id)
                .bind(credential.created_at)
                .bind(&credential.name)
                .bind(secret_hash)
                .bind(conversations)
                .bind(g.can_send)
                .bind(g.can_receive)
                .bind(g.acks)
                .bind(g.echo)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn device_credentials(&self, user: &str) -> StoreResult<Vec<DeviceCredential>> {
                let sql = format!(
                    "SELECT {DEVICE_CREDENTIAL_COLUMNS} FROM sessions s WHERE s.user_id = $1 \
                     AND s.secret_hash IS NOT NULL AND s.revoked_at IS NULL ORDER BY s.created_at DESC, s.id DESC"
                );
                let rows = sqlx::query(&sql).bind(user).fetch_all(self.reader()).await?;
                rows.iter().map(device_credential_from_row).collect()
            }

            async fn device_credential_by_secret(&self, secret_hash: &str) -> StoreResult<Option<DeviceCredential>> {
                let sql = format!(
                    "SELECT {DEVICE_CREDENTIAL_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
                     WHERE s.secret_hash = $1 AND s.revoked_at IS NULL AND u.disabled_at IS NULL AND u.deleted_at IS NULL"
                );
                let row = sqlx::query(&sql).bind(secret_hash).fetch_optional(self.reader()).await?;
                row.as_ref().map(device_credential_from_row).transpose()
            }

            async fn device_credential(&self, id: &str) -> StoreResult<Option<DeviceCredential>> {
                let sql = format!(
                    "SELECT {DEVICE_CREDENTIAL_COLUMNS} FROM sessions s \
                     WHERE s.id = $1 AND s.secret_hash IS NOT NULL AND s.revoked_at IS NULL"
                );
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(device_credential_from_row).transpose()
            }

            async fn session_active(&self, session_id: &str) -> StoreResult<bool> {
                // A disabled or deleted account's sessions are all revoked when it is
                // disabled, but a login racing the disable could open one after that.
                let row = sqlx::query(
                    "SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1 \
                     AND s.revoked_at IS NULL AND u.disabled_at IS NULL AND u.deleted_at IS NULL",
                )
                    .bind(session_id)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.is_some())
            }

            async fn bind_mqtt_client(&self, client_id: &str, session_id: &str, at: i64) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO mqtt_clients (client_id, session_id, connected_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (client_id) DO UPDATE SET session_id = excluded.session_id, connected_at = excluded.connected_at",
                )
                .bind(client_id)
                .bind(session_id)
                .bind(at)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn mqtt_client_session(&self, client_id: &str) -> StoreResult<Option<DeviceCredential>> {
                // A login session's grant columns hold their defaults (everything), so
                // one query answers for both kinds of session.
                let sql = format!(
                    "SELECT {DEVICE_CREDENTIAL_COLUMNS} FROM mqtt_clients m JOIN sessions s ON s.id = m.session_id \
                     JOIN users u ON u.id = s.user_id WHERE m.client_id = $1 \
                     AND s.revoked_at IS NULL AND u.disabled_at IS NULL AND u.deleted_at IS NULL"
                );
                let row = sqlx::query(&sql).bind(client_id).fetch_optional(self.reader()).await?;
                row.as_ref().map(device_credential_from_row).transpose()
            }

            async fn mqtt_clients_of_user(&self, user: &str) -> StoreResult<Vec<String>> {
                let rows = sqlx::query(
                    "SELECT m.client_id FROM mqtt_clients m JOIN sessions s ON s.id = m.session_id \
                     WHERE s.user_id = $1 ORDER BY m.client_id",
                )
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(|r| Ok(r.try_get("client_id")?)).collect()
            }

            async fn take_rate_tokens(
                &self,
                burst: f64,
                per_ms: f64,
                wants: &[(String, u32)],
            ) -> StoreResult<Vec<(String, u32, f64)>> {
                self.take_rate_tokens_here(burst, per_ms, wants).await
            }

            async fn sweep_rate_buckets(&self, idle_ms: i64) -> StoreResult<u64> {
                self.sweep_rate_buckets_here(idle_ms).await
            }

            async fn broker_client_event(&self, client_id: &str, up: bool, at: i64, sink: &dyn crate::EventSink) -> StoreResult<BrokerPresence> {
                crate::postgres::presence::SharedPresence::client_event(self, client_id, up, at, sink).await
            }

            async fn settle_broker_presence(&self, user: &str, grace_ms: i64, sink: &dyn crate::EventSink) -> StoreResult<PresenceSettled> {
                crate::postgres::presence::SharedPresence::settle(self, user, grace_ms, sink).await
            }

            async fn unsettled_broker_presence(&self, grace_ms: i64, limit: i64) -> StoreResult<Vec<String>> {
                crate::postgres::presence::SharedPresence::unsettled(self, grace_ms, limit).await
            }

            async fn mqtt_clients_of_session(&self, session: &str) -> StoreResult<Vec<String>> {
                let rows = sqlx::query("SELECT client_id FROM mqtt_clients WHERE session_id = $1 ORDER BY client_id")
                    .bind(session)
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(|r| Ok(r.try_get("client_id")?)).collect()
            }

            async fn create_conversation(&self, new: NewConversation) -> StoreResult<Created> {
                let direct_key = new.direct_key();
                let find_direct = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE direct_key = $1");
                let mut tx = self.writer().begin().await?;
                if let Some(key) = &direct_key {
                    if let Some(row) = sqlx::query(&find_direct).bind(key).fetch_optional(&mut *tx).await? {
                        return Ok(Created { conversation: conversation_from_row(&row)?, created: false, deliveries: vec![] });
                    }
                }
                let inserted = sqlx::query(
                    "INSERT INTO conversations (id, kind, name, topic, direct_key, created_by, created_at, last_activity_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                )
                .bind(&new.id)
                .bind(new.kind.as_str())
                .bind(&new.name)
                .bind(&new.topic)
                .bind(&direct_key)
                .bind(&new.created_by)
                .bind(new.created_at)
                .execute(&mut *tx)
                .await;
                if let Err(e) = inserted {
                    let e = StoreError::from(e);
                    // Another request created the same direct conversation first: return it.
                    if let (StoreError::Conflict(_), Some(key)) = (&e, &direct_key) {
                        drop(tx);
                        let row = sqlx::query(&find_direct).bind(key).fetch_one(self.writer()).await?;
                        return Ok(Created { conversation: conversation_from_row(&row)?, created: false, deliveries: vec![] });
                    }
                    return Err(e);
                }
                let mut members: Vec<(String, Role)> = Vec::with_capacity(new.members.len());
                for (user, role) in &new.members {
                    if !members.iter().any(|(u, _)| u == user) {
                        members.push((user.clone(), *role));
                    }
                }
                // In user-id order: on PostgreSQL each insert takes that user's handle
                // lock (migration 0005), and one order everywhere cannot deadlock.
                members.sort_by(|a, b| a.0.cmp(&b.0));
                let mut handles: Vec<(String, u32)> = Vec::with_capacity(members.len());
                for chunk in members.chunks(CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new("INSERT INTO members (conversation_id, user_id, role, joined_at, handle) ");
                    qb.push_values(chunk, |mut b, (user, role)| {
                        b.push_bind(new.id.clone()).push_bind(user.clone()).push_bind(role.as_str()).push_bind(new.created_at);
                        b.push(NEXT_HANDLE).push_bind_unseparated(user.clone()).push_unseparated(")");
                    });
                    qb.push(" RETURNING user_id, handle");
                    for row in qb.build().fetch_all(&mut *tx).await? {
                        handles.push(handle_from_row(&row)?);
                    }
                }
                let conversation = Conversation {
                    id: new.id.clone(),
                    kind: new.kind,
                    name: new.name.clone(),
                    topic: new.topic.clone(),
                    created_by: new.created_by.clone(),
                    created_at: new.created_at,
                    last_seq: 0,
                    last_activity_at: new.created_at,
                };
                let recipients: Vec<String> = members.into_iter().map(|(u, _)| u).collect();
                let deliveries = append_events(
                    &mut tx,
                    &recipients,
                    EventBody::Conversation(conversation.view()),
                    new.created_at,
                )
                .await?;
                tx.commit().await?;
                match conversation.kind {
                    ConversationKind::Room => self.index.mark_room(&conversation.id),
                    ConversationKind::Direct => self.index.mark_direct(&conversation.id),
                    ConversationKind::Group => {}
                }
                for user in &recipients {
                    self.index.add(&conversation.id, user);
                }
                for (user, handle) in &handles {
                    self.index.set_handle(user, &conversation.id, *handle);
                }
                Ok(Created { conversation, created: true, deliveries })
            }

            async fn conversation(&self, id: &str) -> StoreResult<Option<Conversation>> {
                let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(conversation_from_row).transpose()
            }

            async fn members(&self, conversation: &str) -> StoreResult<Vec<Member>> {
                let sql = format!(
                    "SELECT {MEMBER_COLUMNS} FROM members WHERE conversation_id = $1 AND left_at IS NULL \
                     ORDER BY joined_at, user_id"
                );
                let rows = sqlx::query(&sql).bind(conversation).fetch_all(self.reader()).await?;
                rows.iter().map(member_from_row).collect()
            }

            async fn member(&self, conversation: &str, user: &str) -> StoreResult<Option<Member>> {
                let sql = format!(
                    "SELECT {MEMBER_COLUMNS} FROM members WHERE conversation_id = $1 AND user_id = $2 \
                     AND left_at IS NULL"
                );
                let row = sqlx::query(&sql).bind(conversation).bind(user).fetch_optional(self.reader()).await?;
                row.as_ref().map(member_from_row).transpose()
            }

            async fn all_memberships(&self) -> StoreResult<Vec<(String, String)>> {
                load_memberships(self.reader()).await
            }

            async fn list_conversations(&self, user: &str, page: &ActivityPage) -> StoreResult<Vec<ConversationSummary>> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT c.id, c.kind, c.name, c.topic, c.created_by, c.created_at, c.last_seq, c.last_activity_at, \
                     mb.conversation_id, mb.user_id, mb.role, mb.read_seq, mb.delivered_seq, mb.archived, mb.muted, mb.joined_at \
                     FROM members mb JOIN conversations c ON c.id = mb.conversation_id \
                     WHERE mb.left_at IS NULL AND mb.user_id = ",
                );
                qb.push_bind(user.to_owned());
                if let Some(archived) = page.archived {
                    qb.push(" AND mb.archived = ").push_bind(archived);
                }
                if let Some((at, id)) = &page.before {
                    qb.push(" AND (c.last_activity_at < ").push_bind(*at);
                    qb.push(" OR (c.last_activity_at = ").push_bind(*at);
                    qb.push(" AND c.id < ").push_bind(id.clone()).push("))");
                }
                qb.push(" ORDER BY c.last_activity_at DESC, c.id DESC LIMIT ").push_bind(i64::from(page.limit));
                let rows = qb.build().fetch_all(self.reader()).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let conversation = conversation_from_row(row)?;
                    let member = member_from_row(row)?;
                    let unread = conversation.last_seq.saturating_sub(member.read_seq);
                    out.push(ConversationSummary { conversation, member, last_message: None, unread });
                }
                let with_messages: Vec<String> =
                    out.iter().filter(|s| s.conversation.last_seq > 0).map(|s| s.conversation.id.clone()).collect();
                if !with_messages.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new("SELECT ");
                    qb.push(MESSAGE_COLUMNS).push(
                        " FROM messages m JOIN conversations c ON c.id = m.conversation_id AND c.last_seq = m.seq \
                         LEFT JOIN attachments a ON a.id = m.attachment_id WHERE m.conversation_id",
                    );
                    push_in(&mut qb, with_messages);
                    let mut last: HashMap<String, MessageView> = HashMap::new();
                    for row in qb.build().fetch_all(self.reader()).await? {
                        let m = message_from_row(&row)?;
                        last.insert(m.conv.clone(), m);
                    }
                    for s in &mut out {
                        s.last_message = last.remove(&s.conversation.id);
                    }
                }
                Ok(out)
            }

            async fn list_rooms(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<RoomListing>> {
                let rows = sqlx::query(
                    "SELECT c.id, c.kind, c.name, c.topic, c.created_by, c.created_at, c.last_seq, c.last_activity_at, \
                     (SELECT COUNT(*) FROM members mb WHERE mb.conversation_id = c.id AND mb.left_at IS NULL) AS member_count \
                     FROM conversations c WHERE c.kind = 'room' AND c.id > $1 ORDER BY c.id LIMIT $2",
                )
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| Ok(RoomListing { conversation: conversation_from_row(r)?, members: to_u64(r.try_get("member_count")?) }))
                    .collect()
            }

            async fn unread_total(&self, user: &str) -> StoreResult<UnreadTotal> {
                let rows = sqlx::query(
                    "SELECT c.last_seq, mb.read_seq FROM members mb JOIN conversations c ON c.id = mb.conversation_id \
                     WHERE mb.user_id = $1 AND mb.left_at IS NULL AND mb.muted = FALSE AND c.last_seq > mb.read_seq",
                )
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                let mut total = UnreadTotal::default();
                for r in &rows {
                    let (last, read): (i64, i64) = (r.try_get("last_seq")?, r.try_get("read_seq")?);
                    total.messages += to_u64(last - read);
                    total.conversations += 1;
                }
                Ok(total)
            }

            async fn update_conversation(&self, id: &str, name: Option<String>, topic: Option<String>, at: i64)
                -> StoreResult<(Conversation, Vec<Delivery>)> {
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query("UPDATE conversations SET name = $2, topic = $3 WHERE id = $1")
                    .bind(id)
                    .bind(&name)
                    .bind(&topic)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("conversation".into()));
                }
                let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_one(&mut *tx).await?;
                let conversation = conversation_from_row(&row)?;
                let members = current_members(&mut tx, id).await?;
                let deliveries = append_events(&mut tx, &members, EventBody::Conversation(conversation.view()), at).await?;
                tx.commit().await?;
                Ok((conversation, deliveries))
            }

            async fn add_members(&self, conversation: &str, users: &[(String, Role)], by: &str, at: i64) -> StoreResult<Vec<Delivery>> {
                use tidings_core::protocol::event::MemberAction;
                if users.is_empty() {
                    return Ok(vec![]);
                }
                let mut tx = self.writer().begin().await?;
                let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1");
                let Some(row) = sqlx::query(&sql).bind(conversation).fetch_optional(&mut *tx).await? else {
                    return Err(StoreError::NotFound("conversation".into()));
                };
                let conv = conversation_from_row(&row)?;
                let mut added: Vec<(String, Role)> = Vec::new();
                let mut handles: Vec<(String, u32)> = Vec::new();
                // User-id order, for the handle locks (see create_conversation).
                let mut users = users.to_vec();
                users.sort_by(|a, b| a.0.cmp(&b.0));
                for (user, role) in &users {
                    // New members start with the existing history read; a departed member
                    // coming back is re-admitted (keeping their handle), a current one is
                    // left alone.
                    let row = sqlx::query(
                        "INSERT INTO members (conversation_id, user_id, role, read_seq, delivered_seq, joined_at, handle) \
                         VALUES ($1, $2, $3, $4, $4, $5, (SELECT COALESCE(MAX(handle), 0) + 1 FROM members WHERE user_id = $2)) \
                         ON CONFLICT (conversation_id, user_id) DO UPDATE SET left_at = NULL, role = excluded.role, \
                           read_seq = excluded.read_seq, delivered_seq = excluded.delivered_seq, joined_at = excluded.joined_at \
                         WHERE members.left_at IS NOT NULL RETURNING user_id, handle",
                    )
                    .bind(conversation)
                    .bind(user)
                    .bind(role.as_str())
                    .bind(to_i64(conv.last_seq))
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = row {
                        handles.push(handle_from_row(&row)?);
                        added.push((user.clone(), *role));
                    }
                }
                let mut deliveries = Vec::new();
                if !added.is_empty() {
                    let newcomers: Vec<String> = added.iter().map(|(u, _)| u.clone()).collect();
                    deliveries.extend(append_events(&mut tx, &newcomers, EventBody::Conversation(conv.view()), at).await?);
                    let members = current_members(&mut tx, conversation).await?;
                    for (user, role) in &added {
                        let body = member_event(conversation, user, MemberAction::Joined, *role, by);
                        deliveries.extend(append_events(&mut tx, &members, body, at).await?);
                    }
                }
                tx.commit().await?;
                for (user, _) in &added {
                    self.index.add(conversation, user);
                }
                for (user, handle) in &handles {
                    self.index.set_handle(user, conversation, *handle);
                }
                Ok(deliveries)
            }

            async fn remove_member(&self, conversation: &str, user: &str, why: Departure, by: &str, at: i64) -> StoreResult<Vec<Delivery>> {
                use tidings_core::protocol::event::MemberAction;
                let mut tx = self.writer().begin().await?;
                let row = sqlx::query(
                    "UPDATE members SET left_at = $3 WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL RETURNING role",
                )
                .bind(conversation)
                .bind(user)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Err(StoreError::NotFound("member".into()));
                };
                let role: String = row.try_get("role")?;
                let role = Role::parse(&role).unwrap_or(Role::Member);
                let mut recipients = current_members(&mut tx, conversation).await?;
                recipients.push(user.to_owned());
                let action = match why {
                    Departure::Left => MemberAction::Left,
                    Departure::Removed => MemberAction::Removed,
                };
                let deliveries = append_events(&mut tx, &recipients, member_event(conversation, user, action, role, by), at).await?;
                tx.commit().await?;
                self.index.remove(conversation, user);
                Ok(deliveries)
            }

            async fn set_role(&self, conversation: &str, user: &str, role: Role, by: &str, at: i64) -> StoreResult<Vec<Delivery>> {
                use tidings_core::protocol::event::MemberAction;
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query(
                    "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL",
                )
                .bind(conversation)
                .bind(user)
                .bind(role.as_str())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("member".into()));
                }
                let members = current_members(&mut tx, conversation).await?;
                let body = member_event(conversation, user, MemberAction::RoleChanged, role, by);
                let deliveries = append_events(&mut tx, &members, body, at).await?;
                tx.commit().await?;
                Ok(deliveries)
            }

            async fn set_member_flags(&self, conversation: &str, user: &str, archived: Option<bool>, muted: Option<bool>)
                -> StoreResult<Option<Member>> {
                sqlx::query(
                    "UPDATE members SET archived = COALESCE($3, archived), muted = COALESCE($4, muted) \
                     WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL",
                )
                .bind(conversation)
                .bind(user)
                .bind(archived)
                .bind(muted)
                .execute(self.writer())
                .await?;
                let sql = format!(
                    "SELECT {MEMBER_COLUMNS} FROM members WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL"
                );
                let row = sqlx::query(&sql).bind(conversation).bind(user).fetch_optional(self.writer()).await?;
                row.as_ref().map(member_from_row).transpose()
            }

            async fn existing_users(&self, ids: &[String]) -> StoreResult<Vec<String>> {
                let mut found = Vec::new();
                for chunk in ids.chunks(CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new("SELECT id FROM users WHERE deleted_at IS NULL AND id");
                    push_in(&mut qb, chunk.iter().cloned());
                    for row in qb.build().fetch_all(self.reader()).await? {
                        found.push(row.try_get("id")?);
                    }
                }
                Ok(found)
            }

            async fn write_batch(&self, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>> {
                self.write_ops(ops).await
            }

            async fn message(&self, id: &str) -> StoreResult<Option<MessageView>> {
                let sql = format!("{MESSAGE_SELECT} WHERE m.id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(self.reader()).await?;
                row.as_ref().map(message_from_row).transpose()
            }

            async fn history(&self, conversation: &str, page: SeqPage) -> StoreResult<Vec<MessageView>> {
                let (sql, bound, limit) = match page {
                    SeqPage::Before { before, limit } => (
                        format!("{MESSAGE_SELECT} WHERE m.conversation_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"),
                        before.map_or(i64::MAX, to_i64),
                        limit,
                    ),
                    SeqPage::After { after, limit } => (
                        format!("{MESSAGE_SELECT} WHERE m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3"),
                        to_i64(after),
                        limit,
                    ),
                };
                let rows = sqlx::query(&sql)
                    .bind(conversation)
                    .bind(bound)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(message_from_row).collect()
            }

            async fn reactions(&self, message: &str) -> StoreResult<Vec<(String, String)>> {
                let rows = sqlx::query(
                    "SELECT user_id, emoji FROM reactions WHERE message_id = $1 ORDER BY created_at, user_id, emoji",
                )
                .bind(message)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(|r| Ok((r.try_get("user_id")?, r.try_get("emoji")?))).collect()
            }

            async fn reaction_summaries(&self, messages: &[String], viewer: &str) -> StoreResult<Vec<ReactionSummary>> {
                if messages.is_empty() {
                    return Ok(vec![]);
                }
                let mut qb = QueryBuilder::<$db>::new("SELECT message_id, emoji, COUNT(*) AS n, SUM(CASE WHEN user_id = ");
                qb.push_bind(viewer.to_owned());
                qb.push(" THEN 1 ELSE 0 END) AS mine, MIN(created_at) AS first FROM reactions WHERE message_id");
                push_in(&mut qb, messages.iter().cloned());
                qb.push(" GROUP BY message_id, emoji ORDER BY message_id, first, emoji");
                let rows = qb.build().fetch_all(self.reader()).await?;
                rows.iter()
                    .map(|r| {
                        let mine: i64 = r.try_get("mine")?;
                        Ok(ReactionSummary {
                            message: r.try_get("message_id")?,
                            emoji: r.try_get("emoji")?,
                            count: to_u64(r.try_get("n")?),
                            me: mine > 0,
                        })
                    })
                    .collect()
            }

            async fn messages_by_ids(&self, ids: &[String]) -> StoreResult<Vec<MessageView>> {
                if ids.is_empty() {
                    return Ok(vec![]);
                }
                let mut qb = QueryBuilder::<$db>::new(MESSAGE_SELECT);
                qb.push(" WHERE m.id");
                push_in(&mut qb, ids.iter().cloned());
                let rows = qb.build().fetch_all(self.reader()).await?;
                rows.iter().map(message_from_row).collect()
            }

            async fn search_messages(&self, user: &str, query: &str, conversation: Option<&str>, limit: u32, offset: u32)
                -> StoreResult<Vec<MessageView>> {
                let Some(mut qb) = search_query(query) else { return Ok(vec![]) };
                self.before_search().await?;
                qb.push(" AND m.deleted_at IS NULL AND EXISTS (SELECT 1 FROM members mb WHERE mb.conversation_id = m.conversation_id \
                          AND mb.left_at IS NULL AND mb.user_id = ");
                qb.push_bind(user.to_owned()).push(")");
                if let Some(conv) = conversation {
                    qb.push(" AND m.conversation_id = ").push_bind(conv.to_owned());
                }
                qb.push(" ORDER BY rank, m.created_at DESC LIMIT ").push_bind(i64::from(limit));
                qb.push(" OFFSET ").push_bind(i64::from(offset));
                let rows = qb.build().fetch_all(self.reader()).await?;
                rows.iter().map(message_from_row).collect()
            }

            async fn inbox_head(&self, user: &str) -> StoreResult<u64> {
                // One seek on the (user_id, seq) primary key.
                let row = sqlx::query("SELECT MAX(seq) AS head FROM inbox_events WHERE user_id = $1")
                    .bind(user)
                    .fetch_one(self.reader())
                    .await?;
                Ok(row.try_get::<Option<i64>, _>("head")?.map_or(0, to_u64))
            }

            async fn inbox_since(&self, user: &str, since: u64, limit: u32) -> StoreResult<Vec<InboxEvent>> {
                let rows = sqlx::query(
                    "SELECT seq, payload, created_at FROM inbox_events WHERE user_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                )
                .bind(user)
                .bind(to_i64(since))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| {
                        let payload: String = r.try_get("payload")?;
                        Ok(InboxEvent {
                            seq: to_u64(r.try_get("seq")?),
                            body: serde_json::from_str(&payload)?,
                            created_at: r.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn attachment(&self, id: &str) -> StoreResult<Option<Attachment>> {
                let row = sqlx::query(
                    "SELECT id, uploader_id, storage_key, mime, size, sha256, filename, created_at, width, height \
                     FROM attachments WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(self.reader())
                .await?;
                match row {
                    None => Ok(None),
                    Some(r) => Ok(Some(Attachment {
                        id: r.try_get("id")?,
                        uploader_id: r.try_get("uploader_id")?,
                        storage_key: r.try_get("storage_key")?,
                        mime: r.try_get("mime")?,
                        size: to_u64(r.try_get("size")?),
                        sha256: r.try_get("sha256")?,
                        filename: r.try_get("filename")?,
                        created_at: r.try_get("created_at")?,
                        width: dimension(r.try_get("width")?),
                        height: dimension(r.try_get("height")?),
                    })),
                }
            }

            async fn attachment_readable_by(&self, attachment: &str, user: &str) -> StoreResult<bool> {
                let row = sqlx::query(
                    "SELECT 1 FROM attachments a WHERE a.id = $1 AND (a.uploader_id = $2 OR EXISTS ( \
                       SELECT 1 FROM messages m JOIN members mb ON mb.conversation_id = m.conversation_id \
                       WHERE m.attachment_id = a.id AND m.deleted_at IS NULL \
                         AND mb.user_id = $2 AND mb.left_at IS NULL))",
                )
                .bind(attachment)
                .bind(user)
                .fetch_optional(self.reader())
                .await?;
                Ok(row.is_some())
            }

            async fn insert_attachment(&self, a: &Attachment) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO attachments (id, uploader_id, storage_key, mime, size, sha256, filename, created_at, width, height) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&a.id)
                .bind(&a.uploader_id)
                .bind(&a.storage_key)
                .bind(&a.mime)
                .bind(to_i64(a.size))
                .bind(&a.sha256)
                .bind(&a.filename)
                .bind(a.created_at)
                .bind(a.width.map(i64::from))
                .bind(a.height.map(i64::from))
                .execute(self.writer())
                .await?;
                Ok(())
            }

            // --- administration (issue 10) -------------------------------------------

            async fn find_account(&self, key: &str) -> StoreResult<Option<AccountRecord>> {
                let sql = format!("{ACCOUNT_SELECT} WHERE u.id = $1 OR (u.username = $2 AND u.deleted_at IS NULL)");
                let row = sqlx::query(&sql)
                    .bind(key)
                    .bind(key.trim().to_lowercase())
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(account_from_row).transpose()
            }

            async fn list_accounts(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<AccountRecord>> {
                let sql = format!("{ACCOUNT_SELECT} WHERE u.id > $1 ORDER BY u.id LIMIT $2");
                let rows = sqlx::query(&sql)
                    .bind(after.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(account_from_row).collect()
            }

            async fn set_disabled(&self, user: &str, disabled: bool, at: i64) -> StoreResult<bool> {
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query(
                    "UPDATE users SET disabled_at = CASE WHEN $2 THEN COALESCE(disabled_at, $3) ELSE NULL END \
                     WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(user)
                .bind(disabled)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                let ended = if disabled { revoke_sessions_of(&mut tx, user, at).await? } else { vec![] };
                tx.commit().await?;
                for session in &ended {
                    self.index.session_ended(session);
                }
                Ok(true)
            }

            async fn set_password_hash(&self, user: &str, hash: &str, at: i64) -> StoreResult<bool> {
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1 AND deleted_at IS NULL")
                    .bind(user)
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                let ended = revoke_sessions_of(&mut tx, user, at).await?;
                tx.commit().await?;
                for session in &ended {
                    self.index.session_ended(session);
                }
                Ok(true)
            }

            async fn user_sessions(&self, user: &str) -> StoreResult<Vec<Session>> {
                let rows = sqlx::query(
                    "SELECT id, user_id, device_id, created_at, revoked_at FROM sessions \
                     WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
                )
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(session_from_row).collect()
            }

            async fn revoke_user_sessions(&self, user: &str, at: i64) -> StoreResult<Vec<String>> {
                let mut tx = self.writer().begin().await?;
                let ended = revoke_sessions_of(&mut tx, user, at).await?;
                tx.commit().await?;
                for session in &ended {
                    self.index.session_ended(session);
                }
                Ok(ended)
            }

            async fn sessions_revoked_since(&self, since: i64) -> StoreResult<Vec<(String, i64)>> {
                let rows = sqlx::query("SELECT id, revoked_at FROM sessions WHERE revoked_at >= $1 ORDER BY revoked_at")
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("revoked_at")?))).collect()
            }

            async fn delete_account(&self, user: &str, at: i64) -> StoreResult<Vec<Delivery>> {
                let mut tx = self.writer().begin().await?;
                // The tombstone username is 34 characters with capitals (ids are upper-case
                // ULIDs): never one a person can register, so nobody inherits the name.
                let done = sqlx::query(
                    "UPDATE users SET username = 'deleted-' || id, display_name = NULL, password_hash = '', \
                     last_seen_at = NULL, disabled_at = NULL, deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(user)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("user".into()));
                }
                let ended = revoke_sessions_of(&mut tx, user, at).await?;
                sqlx::query("DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions WHERE user_id = $1)")
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM devices WHERE user_id = $1").bind(user).execute(&mut *tx).await?;
                let rows = sqlx::query("SELECT conversation_id FROM members WHERE user_id = $1 AND left_at IS NULL ORDER BY conversation_id")
                    .bind(user)
                    .fetch_all(&mut *tx)
                    .await?;
                let convs: Vec<String> = rows.iter().map(|r| r.try_get("conversation_id")).collect::<Result<_, _>>()?;
                tx.commit().await?;
                for session in &ended {
                    self.index.session_ended(session);
                }
                // Each departure is its own transaction, as when the user leaves by hand;
                // a crash half-way leaves an account that is gone but still listed in some
                // conversations, which running the deletion again cannot finish (the
                // account is already deleted), so a failure here is logged, not returned.
                let mut deliveries = Vec::new();
                for conv in convs {
                    match self.remove_member(&conv, user, Departure::Left, user, at).await {
                        Ok(d) => deliveries.extend(d),
                        Err(StoreError::NotFound(_)) => {}
                        Err(e) => tracing::error!(error = %e, conv, user, "a deleted account did not leave a conversation"),
                    }
                }
                Ok(deliveries)
            }

            // --- upload quotas and the sweeper (issue 10) ----------------------------

            async fn upload_usage(&self, user: &str, bytes_since: i64, files_since: i64) -> StoreResult<UploadUsage> {
                let row = sqlx::query(
                    "SELECT CAST(COALESCE(SUM(CASE WHEN created_at >= $2 THEN size ELSE 0 END), 0) AS BIGINT) AS bytes, \
                            CAST(COALESCE(SUM(CASE WHEN created_at >= $3 THEN 1 ELSE 0 END), 0) AS BIGINT) AS files, \
                            MIN(CASE WHEN created_at >= $3 THEN created_at END) AS oldest_file, \
                            MIN(CASE WHEN created_at >= $2 THEN created_at END) AS oldest_byte \
                     FROM attachments WHERE uploader_id = $1 AND created_at >= $4",
                )
                .bind(user)
                .bind(bytes_since)
                .bind(files_since)
                .bind(bytes_since.min(files_since))
                .fetch_one(self.reader())
                .await?;
                Ok(UploadUsage {
                    bytes: to_u64(row.try_get("bytes")?),
                    files: to_u64(row.try_get("files")?),
                    oldest_file_at: row.try_get("oldest_file")?,
                    oldest_byte_at: row.try_get("oldest_byte")?,
                })
            }

            async fn sweep_unattached(&self, created_before: i64, limit: u32) -> StoreResult<Vec<Attachment>> {
                const UNCARRIED: &str = "NOT EXISTS (SELECT 1 FROM messages m WHERE m.attachment_id = a.id)";
                let sql = format!(
                    "SELECT a.id, a.uploader_id, a.storage_key, a.mime, a.size, a.sha256, a.filename, a.created_at \
                     FROM attachments a WHERE a.created_at < $1 AND {UNCARRIED} ORDER BY a.created_at LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(created_before)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                let delete = format!("DELETE FROM attachments AS a WHERE a.id = $1 AND {UNCARRIED}");
                let mut swept = Vec::with_capacity(rows.len());
                for r in &rows {
                    let a = Attachment {
                        id: r.try_get("id")?,
                        uploader_id: r.try_get("uploader_id")?,
                        storage_key: r.try_get("storage_key")?,
                        mime: r.try_get("mime")?,
                        size: to_u64(r.try_get("size")?),
                        sha256: r.try_get("sha256")?,
                        filename: r.try_get("filename")?,
                        created_at: r.try_get("created_at")?,
                        width: None,
                        height: None,
                    };
                    let done = sqlx::query(&delete).bind(&a.id).execute(self.writer()).await?;
                    if done.rows_affected() > 0 {
                        swept.push(a);
                    }
                }
                Ok(swept)
            }

            // --- privacy settings (issue 10) ------------------------------------------

            async fn hides_last_seen(&self, user: &str) -> StoreResult<bool> {
                let row = sqlx::query("SELECT hide_last_seen FROM users WHERE id = $1")
                    .bind(user)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(match row {
                    Some(r) => r.try_get("hide_last_seen")?,
                    None => false,
                })
            }

            async fn update_profile(
                &self,
                user: &str,
                display_name: Option<Option<String>>,
                hide_last_seen: Option<bool>,
            ) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE users SET display_name = CASE WHEN $2 THEN $3 ELSE display_name END, \
                     hide_last_seen = COALESCE($4, hide_last_seen) WHERE id = $1 AND deleted_at IS NULL",
                )
                .bind(user)
                .bind(display_name.is_some())
                .bind(display_name.flatten())
                .bind(hide_last_seen)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            // --- blocking (issue 10) --------------------------------------------------

            async fn set_block(&self, blocker: &str, blocked: &str, on: bool, at: i64) -> StoreResult<bool> {
                let done = if on {
                    sqlx::query(
                        "INSERT INTO blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (blocker_id, blocked_id) DO NOTHING",
                    )
                    .bind(blocker)
                    .bind(blocked)
                    .bind(at)
                    .execute(self.writer())
                    .await?
                } else {
                    sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
                        .bind(blocker)
                        .bind(blocked)
                        .execute(self.writer())
                        .await?
                };
                if on {
                    self.index.block(blocker, blocked);
                } else {
                    self.index.unblock(blocker, blocked);
                }
                Ok(done.rows_affected() > 0)
            }

            async fn blocked_users(&self, blocker: &str) -> StoreResult<Vec<String>> {
                let rows = sqlx::query(
                    "SELECT blocked_id FROM blocks WHERE blocker_id = $1 ORDER BY created_at, blocked_id",
                )
                .bind(blocker)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(|r| Ok(r.try_get("blocked_id")?)).collect()
            }

            // --- invitations (issue 10) -----------------------------------------------

            async fn group_adds(&self, users: &[String]) -> StoreResult<Vec<(String, GroupAdds)>> {
                let mut out = Vec::with_capacity(users.len());
                for chunk in users.chunks(CHUNK_ROWS) {
                    let mut qb = QueryBuilder::<$db>::new("SELECT id, group_adds FROM users WHERE id");
                    push_in(&mut qb, chunk.iter().cloned());
                    for row in qb.build().fetch_all(self.reader()).await? {
                        let policy: String = row.try_get("group_adds")?;
                        let policy = GroupAdds::parse(&policy)
                            .ok_or_else(|| StoreError::Corrupt(format!("group_adds {policy:?}")))?;
                        out.push((row.try_get("id")?, policy));
                    }
                }
                Ok(out)
            }

            async fn set_group_adds(&self, user: &str, policy: GroupAdds) -> StoreResult<bool> {
                let done = sqlx::query("UPDATE users SET group_adds = $2 WHERE id = $1 AND deleted_at IS NULL")
                    .bind(user)
                    .bind(policy.as_str())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn invite(&self, conversation: &str, users: &[(String, Role)], by: &str, at: i64) -> StoreResult<Vec<Delivery>> {
                let mut tx = self.writer().begin().await?;
                let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1");
                let Some(row) = sqlx::query(&sql).bind(conversation).fetch_optional(&mut *tx).await? else {
                    return Err(StoreError::NotFound("conversation".into()));
                };
                let conv = conversation_from_row(&row)?;
                let mut deliveries = Vec::new();
                for (user, role) in users {
                    let id = tidings_core::protocol::ids::new_id();
                    let row = sqlx::query(
                        "INSERT INTO invitations (id, conversation_id, user_id, invited_by, role, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING id",
                    )
                    .bind(&id)
                    .bind(conversation)
                    .bind(user)
                    .bind(by)
                    .bind(role.as_str())
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if row.is_none() {
                        continue;
                    }
                    let body = EventBody::Invitation(tidings_core::protocol::event::InvitationView {
                        id,
                        conv: conversation.to_owned(),
                        name: conv.name.clone(),
                        by: by.to_owned(),
                        created_at: at,
                    });
                    deliveries.extend(append_events(&mut tx, std::slice::from_ref(user), body, at).await?);
                }
                tx.commit().await?;
                Ok(deliveries)
            }

            async fn invitations(&self, user: &str) -> StoreResult<Vec<Invitation>> {
                let rows = sqlx::query(
                    "SELECT id, conversation_id, user_id, invited_by, role, created_at FROM invitations \
                     WHERE user_id = $1 ORDER BY created_at, id",
                )
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(invitation_from_row).collect()
            }

            async fn take_invitation(&self, id: &str, user: &str) -> StoreResult<Option<Invitation>> {
                let row = sqlx::query(
                    "DELETE FROM invitations WHERE id = $1 AND user_id = $2 \
                     RETURNING id, conversation_id, user_id, invited_by, role, created_at",
                )
                .bind(id)
                .bind(user)
                .fetch_optional(self.writer())
                .await?;
                row.as_ref().map(invitation_from_row).transpose()
            }

            async fn register_push_target(&self, t: &PushTarget) -> StoreResult<()> {
                let mut tx = self.writer().begin().await?;
                // Deleting first (not ON CONFLICT … DO UPDATE) gives the moved token a new
                // row id, so the cascade drops every push still queued for its old owner.
                sqlx::query("DELETE FROM push_targets WHERE (platform = $1 AND token = $2) OR session_id = $3")
                    .bind(t.platform.as_str())
                    .bind(&t.token)
                    .bind(&t.session_id)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query(
                    "INSERT INTO push_targets (id, session_id, user_id, platform, token, app_id, data, lang, full_text, created_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
                     WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL)",
                )
                .bind(&t.id)
                .bind(&t.session_id)
                .bind(&t.user_id)
                .bind(t.platform.as_str())
                .bind(&t.token)
                .bind(&t.app_id)
                .bind(&t.data)
                .bind(&t.lang)
                .bind(t.full_text)
                .bind(t.created_at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound("session".into()));
                }
                tx.commit().await?;
                Ok(())
            }

            async fn push_targets(&self, user: &str) -> StoreResult<Vec<PushTarget>> {
                let rows = sqlx::query(
                    "SELECT id, session_id, user_id, platform, token, app_id, data, lang, full_text, created_at, \
                     badge_sent, badge_at FROM push_targets WHERE user_id = $1 ORDER BY created_at, id",
                )
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(|r| push_target_from_row(r, "id", "created_at")).collect()
            }

            async fn remove_push_target(&self, session: &str) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM push_targets WHERE session_id = $1")
                    .bind(session)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn push_breakthrough(&self, user: &str) -> StoreResult<bool> {
                let row = sqlx::query("SELECT push_breakthrough FROM users WHERE id = $1 AND deleted_at IS NULL")
                    .bind(user)
                    .fetch_optional(self.reader())
                    .await?;
                match row {
                    Some(r) => Ok(r.try_get("push_breakthrough")?),
                    None => Err(StoreError::NotFound("user".into())),
                }
            }

            async fn set_push_breakthrough(&self, user: &str, on: bool) -> StoreResult<bool> {
                let done = sqlx::query("UPDATE users SET push_breakthrough = $2 WHERE id = $1 AND deleted_at IS NULL")
                    .bind(user)
                    .bind(on)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn claim_pushes(&self, now: i64, lease_until: i64, limit: u32) -> StoreResult<Vec<PushJob>> {
                let limit = i64::from(limit.clamp(1, CHUNK_ROWS as u32));
                // Most polls find nothing due. Asking a reader first keeps those polls off
                // the writer: on SQLite a claim takes the one write slot (and the write
                // batch's next transaction then waits for it to come back from the pool).
                // A row that falls due just after this look is claimed at the next poll.
                let due = sqlx::query("SELECT 1 FROM push_queue WHERE next_attempt_at <= $1 LIMIT 1")
                    .bind(now)
                    .fetch_optional(self.reader())
                    .await?;
                if due.is_none() {
                    return Ok(vec![]);
                }
                // SKIP LOCKED lets several nodes claim side by side on PostgreSQL; SQLite's
                // single writer serializes claims by itself.
                let skip = match $backend {
                    Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                    Backend::Sqlite => "",
                };
                let sql = format!(
                    "UPDATE push_queue SET attempts = attempts + 1, next_attempt_at = $2 \
                     WHERE (target_id, iseq) IN (SELECT target_id, iseq FROM push_queue \
                     WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $3{skip}) \
                     RETURNING target_id, iseq"
                );
                let claimed = sqlx::query(&sql)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await?;
                if claimed.is_empty() {
                    return Ok(vec![]);
                }
                let keys: Vec<(String, i64)> = claimed
                    .iter()
                    .map(|r| Ok((r.try_get("target_id")?, r.try_get("iseq")?)))
                    .collect::<StoreResult<_>>()?;
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT q.target_id, q.iseq, q.reason, q.conversation_id, q.attempts, q.created_at, \
                     t.session_id, t.user_id, t.platform, t.token, t.app_id, t.data, t.lang, t.full_text, \
                     t.created_at AS target_created_at, t.badge_sent, t.badge_at, e.payload \
                     FROM push_queue q JOIN push_targets t ON t.id = q.target_id \
                     JOIN sessions s ON s.id = t.session_id AND s.revoked_at IS NULL \
                     LEFT JOIN inbox_events e ON e.user_id = q.user_id AND e.seq = q.iseq \
                     WHERE (q.target_id, q.iseq) IN (",
                );
                qb.push_values(&keys, |mut b, (target, iseq)| {
                    b.push_bind(target.clone()).push_bind(*iseq);
                });
                qb.push(") ORDER BY q.created_at, q.iseq");
                let rows = qb.build().fetch_all(self.reader()).await?;
                rows.iter()
                    .map(|r| {
                        let reason: String = r.try_get("reason")?;
                        let payload: Option<String> = r.try_get("payload")?;
                        Ok(PushJob {
                            target: push_target_from_row(r, "target_id", "target_created_at")?,
                            iseq: to_u64(r.try_get("iseq")?),
                            reason: PushReason::parse(&reason)
                                .ok_or_else(|| StoreError::Corrupt(format!("push reason {reason:?}")))?,
                            conversation: r.try_get("conversation_id")?,
                            attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                            // An unreadable event still deserves a push (ids only), so it
                            // is not an error for the whole claim.
                            event: payload.and_then(|p| serde_json::from_str(&p).ok()),
                            created_at: r.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn finish_push(&self, target: &str, iseq: u64) -> StoreResult<()> {
                sqlx::query("DELETE FROM push_queue WHERE target_id = $1 AND iseq = $2")
                    .bind(target)
                    .bind(to_i64(iseq))
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn defer_push(&self, target: &str, iseq: u64, at: i64) -> StoreResult<()> {
                sqlx::query("UPDATE push_queue SET next_attempt_at = $3 WHERE target_id = $1 AND iseq = $2")
                    .bind(target)
                    .bind(to_i64(iseq))
                    .bind(at)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn set_push_badge(&self, target: &str, badge: u64, at: Option<i64>) -> StoreResult<()> {
                sqlx::query("UPDATE push_targets SET badge_sent = $2, badge_at = COALESCE($3, badge_at) WHERE id = $1")
                    .bind(target)
                    .bind(to_i64(badge))
                    .bind(at)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn shared_push_token(&self, name: &str) -> StoreResult<Option<(String, i64)>> {
                let row = sqlx::query("SELECT token, created_at FROM push_provider_tokens WHERE name = $1")
                    .bind(name)
                    .fetch_optional(self.writer())
                    .await?;
                row.map(|r| Ok((r.try_get("token")?, r.try_get("created_at")?))).transpose()
            }

            async fn offer_push_token(&self, name: &str, token: &str, created_at: i64, stale_before: i64)
                -> StoreResult<(String, i64)> {
                // One statement decides, so two nodes refreshing at once keep one token.
                let row = sqlx::query(
                    "INSERT INTO push_provider_tokens (name, token, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET token = excluded.token, created_at = excluded.created_at \
                     WHERE push_provider_tokens.created_at < $4 \
                     RETURNING token, created_at",
                )
                .bind(name)
                .bind(token)
                .bind(created_at)
                .bind(stale_before)
                .fetch_optional(self.writer())
                .await?;
                if let Some(r) = row {
                    return Ok((r.try_get("token")?, r.try_get("created_at")?));
                }
                self.shared_push_token(name)
                    .await?
                    .ok_or_else(|| StoreError::NotFound("push provider token".into()))
            }

            async fn prune_push_target(&self, target: &str) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM push_targets WHERE id = $1")
                    .bind(target)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

pub(crate) use impl_sql_store;
