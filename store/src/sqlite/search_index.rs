//! The search index (FTS5, migration 0004): messages are queued in `fts_pending` by a
//! trigger as they are stored and moved into `messages_fts` here, in chunks, every
//! [`INDEX_EVERY`] and before each search. Indexing in the write batch itself would
//! make FTS5 write a segment per batch; chunks keep segments few and the batch lean.
//!
//! The chunks run on the write batch's own connection, holding the write slot like a
//! batch does (see [`super::fast_batch`] for why no other connection should commit).

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::fast_batch::BatchWriter;
use super::write_slot::WriteSlot;
use crate::error::{StoreError, StoreResult};

/// How often queued messages are added to the search index.
const INDEX_EVERY: Duration = Duration::from_millis(100);

/// Messages indexed per transaction. Each transaction holds the only writer, so it is
/// kept short: with 4,096 per transaction the worker's batches waited behind it and
/// the pairs bench's p99 rose from 30 to 80 ms. The worker's batches run between the
/// indexer's transactions.
const INDEX_CHUNK: i64 = 128;

/// Indexes what is queued every [`INDEX_EVERY`], until `stop` fires or is dropped.
pub(super) async fn index_until(
    slot: Arc<WriteSlot>,
    batch_writer: Arc<BatchWriter>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(INDEX_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                if let Err(e) = index_pending(&slot, &batch_writer).await {
                    tracing::warn!(error = %e, "could not update the search index; will retry");
                }
            }
        }
    }
}

/// Moves every queued message into `messages_fts`, in transactions of [`INDEX_CHUNK`].
pub(super) async fn index_pending(
    slot: &Arc<WriteSlot>,
    batch_writer: &Arc<BatchWriter>,
) -> StoreResult<()> {
    loop {
        let held = slot.hold().await?;
        let batch_writer = batch_writer.clone();
        // SQLite blocks; a chunk is a few milliseconds, kept off the async workers.
        let (indexed, took) = tokio::task::spawn_blocking(move || {
            let _held = held;
            let started = std::time::Instant::now();
            let indexed = batch_writer.in_transaction(index_chunk);
            indexed.map(|n| (n, started.elapsed()))
        })
        .await
        .map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))??;
        if indexed > 0 {
            // The write slot was held this long: a batch arriving meanwhile waited.
            metrics::histogram!("tidings_search_index_chunk_seconds").record(took.as_secs_f64());
        }
        if indexed < INDEX_CHUNK as usize {
            return Ok(());
        }
    }
}

/// Indexes the oldest [`INDEX_CHUNK`] queued messages; returns how many.
fn index_chunk(db: &Connection) -> StoreResult<usize> {
    let bound: Option<i64> = db
        .prepare_cached(
            "SELECT MAX(message_rowid) FROM \
             (SELECT message_rowid FROM fts_pending ORDER BY message_rowid LIMIT ?1)",
        )?
        .query_row([INDEX_CHUNK], |row| row.get(0))
        .optional()?
        .flatten();
    let Some(bound) = bound else {
        return Ok(0);
    };
    db.prepare_cached(
        // CROSS JOIN fixes the order: from the queue into messages. With a plain JOIN
        // SQLite walked every message below the bound, each time.
        "INSERT INTO messages_fts(rowid, body) SELECT m.rowid, m.body FROM fts_pending p \
         CROSS JOIN messages m ON m.rowid = p.message_rowid WHERE p.message_rowid <= ?1",
    )?
    .execute([bound])?;
    Ok(db
        .prepare_cached("DELETE FROM fts_pending WHERE message_rowid <= ?1")?
        .execute([bound])?)
}
