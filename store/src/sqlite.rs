//! SQLite, the embedded default: one file under the data directory, WAL mode, foreign
//! keys on.
//!
//! SQLite allows one writer at a time. Rather than let several pooled connections race
//! for the write lock (and fail with SQLITE_BUSY when a deferred transaction tries to
//! upgrade), all writes go through a pool of exactly one connection, and reads through a
//! separate pool that WAL lets run beside it.
//!
//! WAL checkpoints run on a thread of their own, handing the last few frames of each
//! round to the write batch so the WAL can restart: see [`checkpointer`], which also
//! says why two earlier tries at moving checkpoints out of the commit were not kept.

mod checkpointer;
mod fast_batch;
mod search_index;
mod write_slot;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub struct SqliteStore {
    writer: SqlitePool,
    /// The writer pool's connection, held by the batch and the search indexer.
    write_slot: std::sync::Arc<write_slot::WriteSlot>,
    batch_writer: std::sync::Arc<fast_batch::BatchWriter>,
    reader: SqlitePool,
    index: std::sync::Arc<crate::MembershipIndex>,
    /// Stops the search indexer when the store is dropped.
    _indexer: tokio::sync::oneshot::Sender<()>,
    /// Stops the WAL checkpoint thread when the store is dropped.
    _checkpointer: checkpointer::Checkpointer,
}

/// Settings every connection gets, the write batch's own included.
const TUNING: [(&str, &str); 4] = [
    // The default 2 MB page cache makes every batch re-read the inbox and conversation
    // pages it touched a moment ago (pread showed in `perf`). Not much more than 16 MB:
    // SQLite scans the cache's hash table at the end of write transactions, a cost that
    // grows with the cache (5% of the writer at 64 MB), and each connection has its own.
    //
    // Why it scans (found with gdb, 2026-12-07): when `balance_nonroot` reorders new
    // sibling pages it parks one under the pending-byte page number (262,145 with 4 KiB
    // pages) for a moment. The cache remembers that as its largest key, so the
    // commit's truncate to the database size walks every hash bucket instead of the
    // few above the end. In the pairs bench at 5,000 msg/s that walk was the writer
    // thread's largest symbol (`pcache1TruncateUnsafe`, 8.7% of its samples, nearly all
    // cache misses on the page headers). A writer-only cache of 4 or 2 MB was not
    // measurably cheaper (two alternated runs each: 193 and 201-212 µs/msg against
    // 170-202) and its batches were slower (p50 0.64-0.78 ms against 0.52-0.65).
    ("cache_size", "-16384"),
    // No memory map. With 256 MB mapped, history pages over a 10M-message (3.7 GB)
    // table took p50 0.93 / p99 5.0 ms in the store bench, against 0.53 / 2.0 ms
    // reading through the page cache above, and the write batch was no faster with it.
    ("mmap_size", "0"),
    ("temp_store", "memory"),
    // After a checkpoint lets the WAL restart, truncate it to this size rather than
    // keep a large file around.
    ("journal_size_limit", "67108864"),
];

impl SqliteStore {
    /// Opens `url` (`sqlite://path`), creating the file and its directory if missing,
    /// and applies pending migrations.
    pub async fn open(url: &str) -> crate::StoreResult<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            // The write batch's own connection would open a second, empty database.
            return Err(crate::StoreError::UnsupportedUrl(format!(
                "{url} (an in-memory SQLite database; use a file)"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let options = TUNING.iter().fold(options, |options, (key, value)| {
            options.pragma(*key, *value)
        });
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::StoreError::Database(sqlx::Error::Io(e)))?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A ping per acquire would be one more round trip per batch; a broken
            // connection shows as an error of the batch, which the worker retries.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&writer).await?;
        let checkpoints = std::sync::Arc::new(checkpointer::CheckpointHandoff::default());
        let batch_writer = std::sync::Arc::new(fast_batch::BatchWriter::open(
            options.get_filename(),
            &TUNING,
            checkpoints.clone(),
        )?);
        let checkpointer = checkpointer::Checkpointer::start(options.get_filename(), checkpoints)?;
        let write_slot = write_slot::WriteSlot::new(writer.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(search_index::index_until(
            write_slot.clone(),
            batch_writer.clone(),
            stopped,
        ));
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let index = std::sync::Arc::new(crate::MembershipIndex::from_pairs(
            load_memberships(&reader).await?,
        ));
        load_index_extras(&reader, &index).await?;
        Ok(SqliteStore {
            writer,
            write_slot,
            batch_writer,
            reader,
            index,
            _indexer: stop,
            _checkpointer: checkpointer,
        })
    }

    fn writer(&self) -> &SqlitePool {
        // Every caller is about to use the pool's connection.
        self.write_slot.make_way();
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    async fn write_ops(&self, ops: &[WriteOp]) -> crate::StoreResult<Vec<WriteOutcome>> {
        fast_batch::write_batch(&self.write_slot, &self.batch_writer, ops).await
    }

    /// Search sees every stored message: index what is still queued first.
    async fn before_search(&self) -> crate::StoreResult<()> {
        search_index::index_pending(&self.write_slot, &self.batch_writer).await
    }

    // One node per SQLite database: its in-memory limiter and presence tracker are
    // exact, so the shared versions (PostgreSQL, migration 0008) are not kept here.
    async fn take_rate_tokens_here(
        &self,
        _: f64,
        _: f64,
        _: &[(String, u32)],
    ) -> crate::StoreResult<Vec<(String, u32, f64)>> {
        Err(crate::StoreError::Unsupported(
            "shared rate limits need PostgreSQL",
        ))
    }

    async fn sweep_rate_buckets_here(&self, _: i64) -> crate::StoreResult<u64> {
        Ok(0)
    }
}

crate::sql_store::impl_sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    backend = Backend::Sqlite,
    lock = "",
    counter_row = false
);

/// The FTS5 part of a search: messages matching every word of `query` (the last as a
/// prefix, so results appear while typing), with a `rank` column (bm25; lower is better).
/// Words are quoted, so FTS5 operators typed by users are searched for, not obeyed.
fn search_query(query: &str) -> Option<QueryBuilder<'static, sqlx::Sqlite>> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| w.replace('"', "\"\""))
        .filter(|w| !w.is_empty())
        .collect();
    let (last, rest) = words.split_last()?;
    let mut expr: Vec<String> = rest.iter().map(|w| format!("\"{w}\"")).collect();
    expr.push(format!("\"{last}\"*"));
    let mut qb = QueryBuilder::<sqlx::Sqlite>::new("SELECT ");
    qb.push(MESSAGE_COLUMNS).push(
        ", bm25(messages_fts) AS rank FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid \
         LEFT JOIN attachments a ON a.id = m.attachment_id WHERE messages_fts MATCH ",
    );
    qb.push_bind(expr.join(" "));
    Some(qb)
}
