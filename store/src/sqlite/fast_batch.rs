//! `write_batch` on SQLite: one transaction on a rusqlite connection of its own.
//!
//! The generic sqlx path costs a hop to sqlx's connection thread and back for every
//! statement, and passing a batch's rows as JSON arrays (`json_each`, `value->>N`) made
//! SQLite parse every row's JSON once per column. Here the batch runs from the calling
//! thread on a rusqlite [`BatchWriter`] whose statements are prepared once for the life
//! of the store: preparing them per batch was 15% of the writer (the `INSERT` into
//! `inbox_events` compiles the push triggers), and most of a batch of one. Values are
//! bound per row; nothing is serialized but the event payloads. The persistence worker
//! calls this from a thread of its own, so blocking it is the point; a REST send is a
//! batch of one.
//!
//! SQLite has one writer: the batch holds the sqlx writer pool's only connection for
//! its whole transaction without using it, so no other write (REST) interleaves and
//! neither connection ever waits on the other's lock ([`super::write_slot`] keeps that
//! connection for the next batch until a REST write asks for it). The search indexer
//! ([`super::search_index`]) runs its transactions on this connection too: a commit
//! from any other connection makes SQLite drop this one's whole page cache at its next
//! `BEGIN` (`pager_reset`, and with the memory map we had then a 256 MB `munmap`: 6% of
//! the writer in `perf` while the indexer committed on the sqlx connection every
//! 100 ms).
//!
//! The decisions are [`batch::plan`]'s, as on every backend. Atomicity: `BEGIN
//! IMMEDIATE … COMMIT`, rolled back on any error ([`BatchWriter::in_transaction`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tidings_core::protocol::event::AttachmentView;

use super::checkpointer::{passive_checkpoint, CheckpointHandoff};
use super::write_slot::WriteSlot;
use crate::batch::{self, AttachmentRow, ConvState, MemberMarkers, Plan, Snapshot};
use crate::error::{StoreError, StoreResult};
use crate::model::*;
use crate::sql_store::{to_i64, to_u64, MESSAGE_COLUMNS, MESSAGE_SELECT};

/// One conversation, its current members with markers, and each member's inbox counter
/// (the newest `inbox_events.seq`, one index seek each).
const CONVERSATION_AND_MEMBERS: &str = "SELECT c.kind, c.last_seq, c.message_block, \
     m.user_id, m.read_seq, m.delivered_seq, \
     COALESCE((SELECT e.seq FROM inbox_events e WHERE e.user_id = m.user_id \
               ORDER BY e.seq DESC LIMIT 1), 0) AS inbox_seq \
     FROM conversations c \
     LEFT JOIN members m ON m.conversation_id = c.id AND m.left_at IS NULL \
     WHERE c.id = ?1 \
     ORDER BY m.joined_at, m.user_id";

const UPDATE_CONVERSATION: &str =
    "UPDATE conversations SET last_seq = ?2, last_activity_at = ?3 WHERE id = ?1";

const INSERT_MESSAGES: &str = "INSERT INTO messages (rowid, id, conversation_id, seq, \
     sender_id, client_msg_id, kind, body, reply_to, mentions, attachment_id, created_at, \
     edited_at, deleted_at) VALUES ";
const MESSAGE_VALUES: usize = 14;

/// Where a message's row goes in the `messages` table: its conversation's block, then
/// its seq (migration 0011), so that a conversation's history is stored in one run of
/// neighbouring pages rather than interleaved with every other conversation's.
fn message_rowid(block: Option<i64>, seq: u64) -> StoreResult<i64> {
    let seq = u32::try_from(seq).map_err(|_| {
        StoreError::Corrupt(format!(
            "message seq {seq} does not fit its conversation's block"
        ))
    })?;
    block
        .filter(|block| *block > 0)
        .and_then(|block| block.checked_mul(1 << 32))
        .and_then(|base| base.checked_add(i64::from(seq)))
        .ok_or_else(|| StoreError::Corrupt(format!("conversation message block {block:?}")))
}

/// Each snapshotted conversation's `message_block`, read with its row.
type MessageBlocks = HashMap<String, Option<i64>>;

const UPDATE_MESSAGE: &str = "UPDATE messages SET body = ?2, edited_at = ?3, deleted_at = ?4, \
     mentions = CASE WHEN ?4 IS NULL THEN mentions ELSE '[]' END, \
     attachment_id = CASE WHEN ?4 IS NULL THEN attachment_id ELSE NULL END \
     WHERE id = ?1";

const INSERT_REACTION: &str = "INSERT INTO reactions (message_id, user_id, emoji, created_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

const DELETE_REACTION: &str =
    "DELETE FROM reactions WHERE message_id = ?1 AND user_id = ?2 AND emoji = ?3";

const UPDATE_MARKERS: &str = "UPDATE members SET read_seq = ?3, delivered_seq = ?4 \
     WHERE conversation_id = ?1 AND user_id = ?2";

const INSERT_INBOX_EVENTS: &str =
    "INSERT INTO inbox_events (user_id, seq, payload, created_at) VALUES ";
const INBOX_EVENT_VALUES: usize = 4;

/// Most rows in one multi-row `INSERT`. Both tables have triggers and foreign keys, so
/// SQLite runs each `INSERT` in a statement journal: a single-row statement copied
/// every page it touched into that journal and tore down its cursors and trigger
/// frames, 30% of the statements' time in `perf` (batches of 256). A multi-row one
/// journals each page once and sets up once: with runs of 256 the journal fell from
/// 8.6% to 5.1% of samples (runs of 32: unchanged). Batches are split into
/// power-of-two runs (256, 128, …, 1 rows), so at most nine statements per table stay
/// prepared.
const ROWS_PER_INSERT: usize = 256;

/// `insert` followed by `rows` groups of `values` placeholders.
fn multi_row_insert(insert: &str, values: usize, rows: usize) -> String {
    let group = format!("({})", vec!["?"; values].join(", "));
    format!("{insert}{}", vec![group; rows].join(", "))
}

/// Inserts `rows` in power-of-two runs of at most [`ROWS_PER_INSERT`], in order;
/// `bind` binds one row's values starting at the given (1-based) parameter index.
fn insert_rows<R>(
    db: &Connection,
    insert: &str,
    values: usize,
    rows: &[R],
    mut bind: impl FnMut(&mut rusqlite::CachedStatement<'_>, usize, &R) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        let run = if rest.len() >= ROWS_PER_INSERT {
            ROWS_PER_INSERT
        } else {
            1 << rest.len().ilog2()
        };
        let (now, later) = rest.split_at(run);
        let mut statement = db.prepare_cached(&multi_row_insert(insert, values, run))?;
        for (i, row) in now.iter().enumerate() {
            bind(&mut statement, i * values + 1, row)?;
        }
        statement.raw_execute()?;
        rest = later;
    }
    Ok(())
}

/// Pages in the WAL (12 MiB of 4 KiB pages) at which this connection checkpoints inside
/// a commit anyway: the WAL's bound when the background thread falls behind (a loaded
/// machine starves it), whatever its timing. The background thread hands over at 8 MiB,
/// so under steady load this rarely fires.
const WAL_AUTOCHECKPOINT_FALLBACK: i64 = 3072;
// At or below the hand-over size the fallback would fire in every steady round and put
// the whole copy back inside the writer's commit.
const _: () = assert!(WAL_AUTOCHECKPOINT_FALLBACK > super::checkpointer::WAL_FRAMES_HAND_OVER);

/// The write batch's own connection to the database file, with its prepared statements.
pub(crate) struct BatchWriter {
    db: Mutex<Connection>,
    checkpoints: Arc<CheckpointHandoff>,
}

impl BatchWriter {
    /// Opens `path` (already migrated) as the sqlx pools do: WAL, `synchronous =
    /// NORMAL`, foreign keys, a 10 s busy timeout, and the store's `tuning` pragmas.
    /// Its WAL checkpoints are the background [`super::checkpointer`]'s, finished by
    /// this connection after a commit when `checkpoints` says so.
    pub(crate) fn open(
        path: &Path,
        tuning: &[(&str, &str)],
        checkpoints: Arc<CheckpointHandoff>,
    ) -> StoreResult<Self> {
        let db = Connection::open(path)?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )?;
        for (key, value) in tuning {
            db.pragma_update(None, key, value)?;
        }
        // Room for the snapshot's and the plan's statements, each multi-row `INSERT` in its
        // nine run lengths, and the search indexer's.
        db.set_prepared_statement_cache_capacity(64);
        // Checkpoints are the background thread's; this one is only a safety valve for
        // when that thread falls far behind.
        db.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_FALLBACK)?;
        Ok(BatchWriter {
            db: Mutex::new(db),
            checkpoints,
        })
    }

    /// Runs `work` in one `BEGIN IMMEDIATE … COMMIT` on this connection, rolled back on
    /// any error. The caller holds the write slot (see the module comment).
    pub(crate) fn in_transaction<T>(
        &self,
        work: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        // Never contended: only the holder of the slot gets here.
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if !db.is_autocommit() {
            // A panic inside an earlier `work` (the lock is poisoned then) skipped its
            // ROLLBACK: undo it here, or every later BEGIN would fail.
            db.execute_batch("ROLLBACK")?;
        }
        db.execute_batch("BEGIN IMMEDIATE")?;
        let result = work(&db).and_then(|done| {
            db.execute_batch("COMMIT")?;
            Ok(done)
        });
        if result.is_ok() && self.checkpoints.writer_should_finish() {
            // Committed already: a failed checkpoint loses nothing, the next one
            // copies the same frames.
            let started = std::time::Instant::now();
            if let Err(e) = passive_checkpoint(&db) {
                tracing::warn!(error = %e, "WAL checkpoint after a batch failed");
            }
            // Part of this batch's time, and every command queued behind it waits too:
            // with the search index's chunks, the store batch latency's tail.
            metrics::histogram!("tidings_store_writer_checkpoint_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if result.is_err() {
            // Whatever failed, leave no transaction open. (Fails harmlessly when the
            // failure was COMMIT and SQLite already rolled back.)
            let _ = db.execute_batch("ROLLBACK");
        }
        result
    }
}

/// Decides and stores `ops` in one transaction.
pub(crate) async fn write_batch(
    slot: &Arc<WriteSlot>,
    batch_writer: &BatchWriter,
    ops: &[WriteOp],
) -> StoreResult<Vec<WriteOutcome>> {
    if ops.is_empty() {
        return Ok(vec![]);
    }
    // The write slot: held, not used (see the module comment).
    let _held = slot.hold().await?;
    batch_writer.in_transaction(|db| decide_and_store(db, ops))
}

fn decide_and_store(db: &Connection, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>> {
    let (snap, blocks) = snapshot(db, ops)?;
    let plan = batch::plan(ops, snap);
    store_plan(db, &plan, &blocks)?;
    Ok(plan.outcomes)
}

/// Reads what `ops` may touch, and where the conversations' new messages go.
fn snapshot(db: &Connection, ops: &[WriteOp]) -> StoreResult<(Snapshot, MessageBlocks)> {
    let mut wanted = Snapshot::wanted(ops);
    let mut snap = Snapshot::default();
    let mut blocks = MessageBlocks::new();
    if !wanted.messages.is_empty() {
        let mut by_id = db.prepare_cached(&format!("{MESSAGE_SELECT} WHERE m.id = ?1"))?;
        for id in wanted.messages.drain() {
            if let Some(m) = by_id.query_row([&id], message_from_row).optional()? {
                let m = m?;
                wanted.convs.insert(m.conv.clone());
                snap.messages.insert(m.id.clone(), m);
            }
        }
    }
    let mut conversation = db.prepare_cached(CONVERSATION_AND_MEMBERS)?;
    for conv in &wanted.convs {
        let mut rows = conversation.query([conv])?;
        while let Some(row) = rows.next()? {
            if !snap.convs.contains_key(conv) {
                let kind: String = row.get("kind")?;
                let kind = ConversationKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("conversation kind {kind:?}")))?;
                snap.convs.insert(
                    conv.clone(),
                    ConvState {
                        kind,
                        last_seq: to_u64(row.get("last_seq")?),
                    },
                );
                blocks.insert(conv.clone(), row.get("message_block")?);
            }
            let Some(user) = row.get::<_, Option<String>>("user_id")? else {
                continue;
            };
            snap.inbox_seqs
                .insert(user.clone(), to_u64(row.get("inbox_seq")?));
            let markers = MemberMarkers {
                read_seq: to_u64(row.get("read_seq")?),
                delivered_seq: to_u64(row.get("delivered_seq")?),
            };
            snap.members
                .entry(conv.clone())
                .or_default()
                .push((user, markers));
        }
    }
    let mut sent = None;
    for op in ops {
        let WriteOp::Send(m) = op else { continue };
        let key = (m.sender.clone(), m.client_msg_id.clone());
        if snap.sent.contains_key(&key) {
            continue;
        }
        // One probe of the (sender, client id) index per send.
        let sent = match &mut sent {
            Some(s) => s,
            None => sent.insert(db.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m \
                 LEFT JOIN attachments a ON a.id = m.attachment_id \
                 WHERE m.sender_id = ?1 AND m.client_msg_id = ?2"
            ))?),
        };
        if let Some(found) = sent
            .query_row([&m.sender, &m.client_msg_id], message_from_row)
            .optional()?
        {
            snap.sent.insert(key, found?);
        }
    }
    if !wanted.attachments.is_empty() {
        let mut by_id = db.prepare_cached(
            "SELECT id, uploader_id, mime, size, filename FROM attachments WHERE id = ?1",
        )?;
        for id in wanted.attachments.drain() {
            let row = by_id
                .query_row([&id], |row| {
                    Ok(AttachmentRow {
                        uploader: row.get("uploader_id")?,
                        view: AttachmentView {
                            id: row.get("id")?,
                            mime: row.get("mime")?,
                            size: to_u64(row.get("size")?),
                            name: row.get("filename")?,
                        },
                    })
                })
                .optional()?;
            if let Some(row) = row {
                snap.attachments.insert(id, row);
            }
        }
    }
    if !wanted.reactors.is_empty() && !snap.messages.is_empty() {
        let mut theirs = db
            .prepare_cached("SELECT emoji FROM reactions WHERE message_id = ?1 AND user_id = ?2")?;
        for message in snap.messages.keys() {
            for user in &wanted.reactors {
                let mut rows = theirs.query([message, user])?;
                while let Some(row) = rows.next()? {
                    snap.reactions
                        .insert((message.clone(), user.clone(), row.get(0)?));
                }
            }
        }
    }
    Ok((snap, blocks))
}

/// Executes the plan's writes, each table's rows through one prepared statement, in the
/// order the generic path writes them.
fn store_plan(db: &Connection, plan: &Plan, blocks: &MessageBlocks) -> StoreResult<()> {
    if !plan.conv_seqs.is_empty() {
        let mut update = db.prepare_cached(UPDATE_CONVERSATION)?;
        for (conv, seq, at) in &plan.conv_seqs {
            update.execute(params![conv, to_i64(*seq), at])?;
        }
    }
    if !plan.inserts.is_empty() {
        insert_rows(
            db,
            INSERT_MESSAGES,
            MESSAGE_VALUES,
            &plan.inserts,
            |st, at, row| {
                let v = &row.view;
                // The plan only stores into conversations the snapshot read.
                let block = blocks.get(&v.conv).copied().flatten();
                st.raw_bind_parameter(at, message_rowid(block, v.seq)?)?;
                st.raw_bind_parameter(at + 1, &v.id)?;
                st.raw_bind_parameter(at + 2, &v.conv)?;
                st.raw_bind_parameter(at + 3, to_i64(v.seq))?;
                st.raw_bind_parameter(at + 4, &v.sender)?;
                st.raw_bind_parameter(at + 5, &v.client_msg_id)?;
                st.raw_bind_parameter(at + 6, v.kind.as_str())?;
                st.raw_bind_parameter(at + 7, &v.body)?;
                st.raw_bind_parameter(at + 8, &v.reply_to)?;
                st.raw_bind_parameter(at + 9, serde_json::to_string(&v.mentions)?)?;
                st.raw_bind_parameter(at + 10, &row.attachment_id)?;
                st.raw_bind_parameter(at + 11, v.created_at)?;
                st.raw_bind_parameter(at + 12, v.edited_at)?;
                st.raw_bind_parameter(at + 13, row.deleted_at)?;
                Ok(())
            },
        )?;
    }
    if !plan.updates.is_empty() {
        let mut update = db.prepare_cached(UPDATE_MESSAGE)?;
        for (id, body, edited, deleted) in &plan.updates {
            update.execute(params![id, body, edited, deleted])?;
        }
    }
    if !plan.reactions_added.is_empty() {
        let mut insert = db.prepare_cached(INSERT_REACTION)?;
        for (message, user, emoji, at) in &plan.reactions_added {
            insert.execute(params![message, user, emoji, at])?;
        }
    }
    if !plan.reactions_removed.is_empty() {
        let mut delete = db.prepare_cached(DELETE_REACTION)?;
        for (message, user, emoji) in &plan.reactions_removed {
            delete.execute(params![message, user, emoji])?;
        }
    }
    if !plan.markers.is_empty() {
        let mut update = db.prepare_cached(UPDATE_MARKERS)?;
        for (conv, user, read, delivered) in &plan.markers {
            update.execute(params![conv, user, to_i64(*read), to_i64(*delivered)])?;
        }
    }
    if !plan.events.is_empty() {
        // One event body is shared by all its recipients: serialize it once.
        let mut encoded: HashMap<*const EventBody, String> = HashMap::new();
        for (_, _, body, _) in &plan.events {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                encoded.entry(Arc::as_ptr(body))
            {
                slot.insert(serde_json::to_string(&**body)?);
            }
        }
        insert_rows(
            db,
            INSERT_INBOX_EVENTS,
            INBOX_EVENT_VALUES,
            &plan.events,
            |st, at, (user, seq, body, created)| {
                st.raw_bind_parameter(at, user)?;
                st.raw_bind_parameter(at + 1, to_i64(*seq))?;
                st.raw_bind_parameter(at + 2, &encoded[&Arc::as_ptr(body)])?;
                st.raw_bind_parameter(at + 3, created)?;
                Ok(())
            },
        )?;
    }
    Ok(())
}

/// A `MessageView` from a row of [`MESSAGE_COLUMNS`]; the outer `Result` is SQLite's,
/// the inner one says whether the stored values make sense.
fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoreResult<MessageView>> {
    let kind: String = row.get("kind")?;
    let mentions: String = row.get("mentions")?;
    let deleted_at: Option<i64> = row.get("deleted_at")?;
    let attachment = match row.get::<_, Option<String>>("att_id")? {
        Some(id) => Some(AttachmentView {
            id,
            mime: row.get("att_mime")?,
            size: to_u64(row.get("att_size")?),
            name: row.get("att_name")?,
        }),
        None => None,
    };
    let Some(kind) = MessageKind::parse(&kind) else {
        return Ok(Err(StoreError::Corrupt(format!("message kind {kind:?}"))));
    };
    let mentions = match serde_json::from_str(&mentions) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e.into())),
    };
    Ok(Ok(MessageView {
        id: row.get("id")?,
        conv: row.get("conversation_id")?,
        seq: to_u64(row.get("seq")?),
        sender: row.get("sender_id")?,
        client_msg_id: row.get("client_msg_id")?,
        kind,
        body: row.get("body")?,
        reply_to: row.get("reply_to")?,
        mentions,
        attachment,
        created_at: row.get("created_at")?,
        edited_at: row.get("edited_at")?,
        deleted: deleted_at.is_some(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write batch connection on a fresh file holding one table made by `create`.
    fn writer_with(create: &str) -> (tempfile::TempDir, BatchWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer =
            BatchWriter::open(&dir.path().join("t.db"), &[], Default::default()).expect("open");
        writer
            .in_transaction(|db| Ok(db.execute_batch(create)?))
            .expect("create");
        (dir, writer)
    }

    #[test]
    fn multi_row_inserts_store_every_row_in_order() {
        let (_dir, writer) = writer_with("CREATE TABLE t (n INTEGER, s TEXT)");
        // Around each run length, and past the largest.
        for count in [1usize, 2, 3, 31, 255, 256, 257, 600] {
            let rows: Vec<(i64, String)> =
                (0..count as i64).map(|n| (n, format!("r{n}"))).collect();
            let stored: Vec<(i64, String)> = writer
                .in_transaction(|db| {
                    db.execute_batch("DELETE FROM t")?;
                    insert_rows(db, "INSERT INTO t (n, s) VALUES ", 2, &rows, |st, at, r| {
                        st.raw_bind_parameter(at, r.0)?;
                        st.raw_bind_parameter(at + 1, &r.1)?;
                        Ok(())
                    })?;
                    let mut all = db.prepare("SELECT n, s FROM t ORDER BY rowid")?;
                    let got = all
                        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(got)
                })
                .expect("insert");
            assert_eq!(stored, rows, "{count} rows");
        }
    }

    #[test]
    fn a_panic_inside_a_transaction_does_not_wedge_the_connection() {
        let (_dir, writer) = writer_with("CREATE TABLE t (x INTEGER)");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer.in_transaction(|db| -> StoreResult<()> {
                db.execute_batch("INSERT INTO t VALUES (1)")?;
                panic!("a bug inside a batch");
            })
        }));
        assert!(panicked.is_err());
        // The next transaction runs, and the panicked one's row was rolled back.
        let rows: i64 = writer
            .in_transaction(|db| {
                db.execute_batch("INSERT INTO t VALUES (2)")?;
                Ok(db.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?)
            })
            .expect("a transaction after the panic");
        assert_eq!(rows, 1);
    }
}
