//! SQLite, the embedded default: one file under the data directory, WAL mode, foreign
//! keys on.
//!
//! SQLite allows one writer at a time. Rather than let several pooled connections race
//! for the write lock (and fail with SQLITE_BUSY when a deferred transaction tries to
//! upgrade), all writes go through a pool of exactly one connection, and reads through a
//! separate pool that WAL lets run beside it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    index: std::sync::Arc<crate::MembershipIndex>,
}

impl SqliteStore {
    /// Opens `url` (`sqlite://path`), creating the file and its directory if missing,
    /// and applies pending migrations.
    pub async fn open(url: &str) -> crate::StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::StoreError::Database(sqlx::Error::Io(e)))?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&writer).await?;
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
            reader,
            index,
        })
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

crate::sql_store::impl_sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    backend = Backend::Sqlite,
    lock = ""
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
