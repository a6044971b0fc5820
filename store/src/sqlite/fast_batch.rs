//! `write_batch` on SQLite in three round trips to sqlx's SQLite thread instead of ten.
//!
//! Every sqlx statement is a hop to the connection's own thread and back. On a small
//! machine under load each hop waits for a core, so the generic path's ten hops (BEGIN,
//! four snapshot reads, four writes, COMMIT) made a batch of four messages take ~1.3 ms,
//! mostly waiting, while the SQLite thread was busy for half of it (`perf`, issue 9).
//! Here the same decisions ([`batch::plan`]) are read and written with fixed statements
//! whose rows arrive as one JSON array each (`json_each`): the reads are one statement
//! for conversations, members and inbox counters (plus one for retried sends, and only
//! when needed for referenced messages, attachments and reactions), and every write and
//! the COMMIT are one multi-statement string. Fixed SQL text also means every statement
//! is prepared once and cached, whatever the batch size.
//!
//! Atomicity: the batch runs on the writer pool's only connection inside
//! `BEGIN IMMEDIATE … COMMIT`, rolled back on any error, exactly like the generic path.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use tidings_core::protocol::event::AttachmentView;

use crate::batch::{self, AttachmentRow, ConvState, MemberMarkers, Plan, Snapshot};
use crate::error::{StoreError, StoreResult};
use crate::model::*;
use crate::sql_store::{to_i64, to_u64, MESSAGE_COLUMNS, MESSAGE_SELECT};

/// Conversations, their current members with markers, and each member's inbox counter
/// (the newest `inbox_events.seq`, one index seek each), for the conversations in `$1`.
const CONVERSATIONS_AND_MEMBERS: &str = "SELECT c.id AS conv, c.kind, c.last_seq, \
     m.user_id, m.read_seq, m.delivered_seq, \
     COALESCE((SELECT e.seq FROM inbox_events e WHERE e.user_id = m.user_id \
               ORDER BY e.seq DESC LIMIT 1), 0) AS inbox_seq \
     FROM conversations c \
     LEFT JOIN members m ON m.conversation_id = c.id AND m.left_at IS NULL \
     WHERE c.id IN (SELECT value FROM json_each($1)) \
     ORDER BY c.id, m.joined_at, m.user_id";

/// Every write of a plan, then COMMIT: one round trip. Each `$N` is a JSON array of
/// rows (arrays), in the order the generic path writes them.
const WRITE_PLAN_AND_COMMIT: &str = "\
UPDATE conversations SET last_seq = j.value->>1, last_activity_at = j.value->>2 \
    FROM json_each($1) AS j WHERE conversations.id = j.value->>0; \
INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, kind, body, \
    reply_to, mentions, attachment_id, created_at, edited_at, deleted_at) \
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, \
    value->>7, value->>8, value->>9, value->>10, value->>11, value->>12 \
    FROM json_each($2) ORDER BY key; \
UPDATE messages SET body = j.value->>1, edited_at = j.value->>2, deleted_at = j.value->>3, \
    mentions = CASE WHEN j.value->>3 IS NULL THEN mentions ELSE '[]' END, \
    attachment_id = CASE WHEN j.value->>3 IS NULL THEN attachment_id ELSE NULL END \
    FROM json_each($3) AS j WHERE messages.id = j.value->>0; \
INSERT INTO reactions (message_id, user_id, emoji, created_at) \
    SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each($4) WHERE true \
    ON CONFLICT DO NOTHING; \
DELETE FROM reactions WHERE (message_id, user_id, emoji) IN \
    (SELECT value->>0, value->>1, value->>2 FROM json_each($5)); \
UPDATE members SET read_seq = j.value->>2, delivered_seq = j.value->>3 \
    FROM json_each($6) AS j \
    WHERE members.conversation_id = j.value->>0 AND members.user_id = j.value->>1; \
INSERT INTO inbox_events (user_id, seq, payload, created_at) \
    SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each($7) ORDER BY key; \
COMMIT";

/// Decides and stores `ops` in one transaction on the writer's connection.
pub(crate) async fn write_batch(
    writer: &SqlitePool,
    ops: &[WriteOp],
) -> StoreResult<Vec<WriteOutcome>> {
    if ops.is_empty() {
        return Ok(vec![]);
    }
    let mut conn: PoolConnection<Sqlite> = writer.acquire().await?;
    let result = decide_and_store(&mut conn, ops).await;
    if result.is_err() {
        // Whatever failed, leave no transaction open on the pool's connection. (Fails
        // harmlessly when the failure was BEGIN itself.)
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    result
}

async fn decide_and_store(
    conn: &mut SqliteConnection,
    ops: &[WriteOp],
) -> StoreResult<Vec<WriteOutcome>> {
    let snap = snapshot(conn, ops).await?;
    let plan = batch::plan(ops, snap);
    let (p1, p2, p3, p4, p5, p6, p7) = plan_rows(&plan)?;
    sqlx::query(WRITE_PLAN_AND_COMMIT)
        .bind(p1)
        .bind(p2)
        .bind(p3)
        .bind(p4)
        .bind(p5)
        .bind(p6)
        .bind(p7)
        .execute(&mut *conn)
        .await?;
    Ok(plan.outcomes)
}

fn json_list<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> StoreResult<String> {
    Ok(serde_json::to_string(
        &items.into_iter().collect::<Vec<T>>(),
    )?)
}

/// The statement that opens the transaction goes in front of the first read.
struct Opener(bool);

impl Opener {
    fn sql(&mut self, query: &str) -> String {
        if std::mem::replace(&mut self.0, false) {
            format!("BEGIN IMMEDIATE; {query}")
        } else {
            query.to_owned()
        }
    }
}

/// Reads what `ops` may touch; the first statement also begins the transaction.
async fn snapshot(conn: &mut SqliteConnection, ops: &[WriteOp]) -> StoreResult<Snapshot> {
    let mut wanted = Snapshot::wanted(ops);
    let mut snap = Snapshot::default();
    let mut opener = Opener(true);
    if !wanted.messages.is_empty() {
        let sql = opener.sql(&format!(
            "{MESSAGE_SELECT} WHERE m.id IN (SELECT value FROM json_each($1))"
        ));
        let rows = sqlx::query(&sql)
            .bind(json_list(wanted.messages.drain())?)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let m = message_from_row(row)?;
            wanted.convs.insert(m.conv.clone());
            snap.messages.insert(m.id.clone(), m);
        }
    }
    // Always runs (a batch always names a conversation or a message), so the
    // transaction is open before anything else is read.
    let sql = opener.sql(CONVERSATIONS_AND_MEMBERS);
    let rows = sqlx::query(&sql)
        .bind(json_list(wanted.convs.iter())?)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        let conv: String = row.try_get("conv")?;
        if !snap.convs.contains_key(&conv) {
            let kind: String = row.try_get("kind")?;
            let kind = ConversationKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("conversation kind {kind:?}")))?;
            snap.convs.insert(
                conv.clone(),
                ConvState {
                    kind,
                    last_seq: to_u64(row.try_get("last_seq")?),
                },
            );
        }
        let Some(user) = row.try_get::<Option<String>, _>("user_id")? else {
            continue;
        };
        snap.inbox_seqs
            .insert(user.clone(), to_u64(row.try_get("inbox_seq")?));
        let markers = MemberMarkers {
            read_seq: to_u64(row.try_get("read_seq")?),
            delivered_seq: to_u64(row.try_get("delivered_seq")?),
        };
        snap.members.entry(conv).or_default().push((user, markers));
    }
    let sent_keys: Vec<(&str, &str)> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Send(m) => Some((m.sender.as_str(), m.client_msg_id.as_str())),
            _ => None,
        })
        .collect();
    if !sent_keys.is_empty() {
        // One index probe per (sender, client id) pair, driven from the pairs. Written
        // as `sender IN (…) AND client_msg_id IN (…)`, SQLite walked every message of
        // each sender: a cost per send that grew with history (memcmp and index
        // stepping were a fifth of the SQLite thread at 5k msg/s).
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM json_each($1) AS j \
             CROSS JOIN messages m ON m.sender_id = j.value->>0 AND m.client_msg_id = j.value->>1 \
             LEFT JOIN attachments a ON a.id = m.attachment_id"
        );
        let rows = sqlx::query(&sql)
            .bind(json_list(sent_keys)?)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let m = message_from_row(row)?;
            snap.sent
                .insert((m.sender.clone(), m.client_msg_id.clone()), m);
        }
    }
    if !wanted.attachments.is_empty() {
        let rows = sqlx::query(
            "SELECT id, uploader_id, mime, size, filename FROM attachments \
             WHERE id IN (SELECT value FROM json_each($1))",
        )
        .bind(json_list(wanted.attachments.drain())?)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let id: String = row.try_get("id")?;
            let view = AttachmentView {
                id: id.clone(),
                mime: row.try_get("mime")?,
                size: to_u64(row.try_get("size")?),
                name: row.try_get("filename")?,
            };
            snap.attachments.insert(
                id,
                AttachmentRow {
                    uploader: row.try_get("uploader_id")?,
                    view,
                },
            );
        }
    }
    if !wanted.reactors.is_empty() && !snap.messages.is_empty() {
        let rows = sqlx::query(
            "SELECT message_id, user_id, emoji FROM reactions \
             WHERE message_id IN (SELECT value FROM json_each($1)) \
             AND user_id IN (SELECT value FROM json_each($2))",
        )
        .bind(json_list(snap.messages.keys())?)
        .bind(json_list(wanted.reactors.drain())?)
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            snap.reactions.insert((
                row.try_get("message_id")?,
                row.try_get("user_id")?,
                row.try_get("emoji")?,
            ));
        }
    }
    Ok(snap)
}

type PlanRows = (String, String, String, String, String, String, String);

/// The plan's writes as the JSON arrays [`WRITE_PLAN_AND_COMMIT`] reads.
fn plan_rows(plan: &Plan) -> StoreResult<PlanRows> {
    let conv_seqs = json_list(
        plan.conv_seqs
            .iter()
            .map(|(conv, seq, at)| json!([conv, to_i64(*seq), at])),
    )?;
    let mut inserts = Vec::with_capacity(plan.inserts.len());
    for row in &plan.inserts {
        let v = &row.view;
        inserts.push(json!([
            v.id,
            v.conv,
            to_i64(v.seq),
            v.sender,
            v.client_msg_id,
            v.kind.as_str(),
            v.body,
            v.reply_to,
            serde_json::to_string(&v.mentions)?,
            row.attachment_id,
            v.created_at,
            v.edited_at,
            row.deleted_at,
        ]));
    }
    let updates = json_list(
        plan.updates
            .iter()
            .map(|(id, body, edited, deleted)| json!([id, body, edited, deleted])),
    )?;
    let added = json_list(
        plan.reactions_added
            .iter()
            .map(|(m, u, e, at)| json!([m, u, e, at])),
    )?;
    let removed = json_list(
        plan.reactions_removed
            .iter()
            .map(|(m, u, e)| json!([m, u, e])),
    )?;
    let markers = json_list(
        plan.markers
            .iter()
            .map(|(c, u, r, d)| json!([c, u, to_i64(*r), to_i64(*d)])),
    )?;
    // One event body is shared by all its recipients: serialize it once.
    let mut encoded: HashMap<*const EventBody, Value> = HashMap::new();
    let mut events = Vec::with_capacity(plan.events.len());
    for (user, seq, body, at) in &plan.events {
        let payload = match encoded.get(&Arc::as_ptr(body)) {
            Some(p) => p.clone(),
            None => {
                let p = Value::String(serde_json::to_string(&**body)?);
                encoded.insert(Arc::as_ptr(body), p.clone());
                p
            }
        };
        events.push(json!([user, to_i64(*seq), payload, at]));
    }
    Ok((
        conv_seqs,
        serde_json::to_string(&inserts)?,
        updates,
        added,
        removed,
        markers,
        serde_json::to_string(&events)?,
    ))
}

use super::message_from_row;
