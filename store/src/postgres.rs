//! PostgreSQL, for production and for several Tidings nodes sharing one database.
//!
//! Several nodes may write the same conversation at once, so read-then-write selects
//! lock their rows (`FOR UPDATE`), always conversations before users and each in id
//! order, so that concurrent batches cannot deadlock.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::Executor;

use crate::MembershipIndex;

pub(crate) mod presence;

/// The channel the migration's triggers NOTIFY on (migrations/postgres/0007).
const INDEX_CHANNEL: &str = "tidings_index";
/// Longest wait between attempts to get the listening connection back.
const MAX_RELISTEN_BACKOFF: Duration = Duration::from_secs(5);

pub struct PgStore {
    pool: PgPool,
    index: std::sync::Arc<crate::MembershipIndex>,
}

impl PgStore {
    /// Connects to `url`, applies pending migrations, loads the membership index and
    /// keeps it current with every other node's changes (see [`follow_index_changes`]).
    pub async fn open(url: &str) -> crate::StoreResult<Self> {
        // This process's name in the change notifications, so it can skip its own
        // (applied already, after each commit). A ULID: nothing to quote.
        let node = ulid::Ulid::new().to_string();
        let tag = format!("SET tidings.node = '{node}'");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                let tag = tag.clone();
                Box::pin(async move {
                    conn.execute(tag.as_str()).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        // Listen before loading: a change committed in between is then both in the
        // load and in a notification, and applying it twice is harmless.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(INDEX_CHANNEL).await?;
        let index = std::sync::Arc::new(load_index(&pool).await?);
        tokio::spawn(follow_index_changes(
            listener,
            pool.clone(),
            index.clone(),
            node,
        ));
        Ok(PgStore { pool, index })
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn write_ops(&self, ops: &[WriteOp]) -> crate::StoreResult<Vec<WriteOutcome>> {
        generic_write_batch(&self.pool, ops).await
    }

    /// PostgreSQL indexes in the writing transaction: nothing is ever pending.
    async fn before_search(&self) -> crate::StoreResult<()> {
        Ok(())
    }

    /// One multi-row upsert for a whole batch of charges. The bucket arithmetic is in
    /// `DO UPDATE`, which reads the row's latest committed version under its row lock,
    /// so two nodes charging one key at once serialize there and neither grants a token
    /// the other took. Keys are inserted in sorted order, so two batches locking the
    /// same keys cannot deadlock. The clock is the database's (`statement_timestamp`).
    async fn take_rate_tokens_here(
        &self,
        burst: f64,
        per_ms: f64,
        wants: &[(String, u32)],
    ) -> crate::StoreResult<Vec<(String, u32, f64)>> {
        if wants.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = wants.iter().map(|(k, _)| k.as_str()).collect();
        let counts: Vec<i32> = wants
            .iter()
            .map(|(_, n)| i32::try_from(*n).unwrap_or(i32::MAX))
            .collect();
        // The bucket after refilling since its last charge, capped at `burst`.
        const REFILLED: &str = "LEAST($1, b.tokens + GREATEST(0.0, \
            EXTRACT(EPOCH FROM (EXCLUDED.updated_at - b.updated_at))::float8 * 1000.0) * $2)";
        let sql = format!(
            "INSERT INTO rate_buckets AS b (key, tokens, taken, updated_at) \
             SELECT k, $1 - LEAST(n, FLOOR($1)::int), LEAST(n, FLOOR($1)::int), statement_timestamp() \
             FROM UNNEST($3::text[], $4::int[]) AS w(k, n) ORDER BY k \
             ON CONFLICT (key) DO UPDATE SET \
             taken = LEAST(EXCLUDED.taken, FLOOR({REFILLED})::int), \
             tokens = {REFILLED} - LEAST(EXCLUDED.taken, FLOOR({REFILLED})::int), \
             updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at) \
             RETURNING key, taken, tokens"
        );
        // A bucket's update lost in a crash costs at most one burst of extra tokens,
        // so its commit need not wait for the WAL flush the batch's write pays anyway.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(&sql)
            .bind(burst)
            .bind(per_ms)
            .bind(&keys)
            .bind(&counts)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let taken: i32 = r.try_get("taken")?;
                Ok((
                    r.try_get("key")?,
                    u32::try_from(taken).unwrap_or(0),
                    r.try_get("tokens")?,
                ))
            })
            .collect()
    }

    async fn sweep_rate_buckets_here(&self, idle_ms: i64) -> crate::StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM rate_buckets WHERE updated_at < statement_timestamp() - make_interval(secs => $1)",
        )
        .bind(idle_ms as f64 / 1000.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// The whole membership index as the database has it now.
async fn load_index(pool: &PgPool) -> crate::StoreResult<MembershipIndex> {
    let index = MembershipIndex::from_pairs(load_memberships(pool).await?);
    load_index_extras(pool, &index).await?;
    Ok(index)
}

/// Applies every other node's membership, block and session changes to this node's
/// index, as the database NOTIFYs them at commit: a member removed anywhere loses the
/// subscriptions here at once, and a session ended anywhere closes its connections
/// here. Notifications sent while the listening connection was down are lost, so after
/// it comes back (sqlx reconnects and LISTENs again) the index is reloaded whole,
/// announcing the removals it finds; sessions ended meanwhile are found by the
/// revocation poll (`auth.revocation_poll_ms`), which stays as that backstop.
async fn follow_index_changes(
    mut listener: PgListener,
    pool: PgPool,
    index: std::sync::Arc<MembershipIndex>,
    node: String,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                backoff = Duration::from_millis(100);
                apply_change(&index, &node, notification.payload());
            }
            Ok(None) => {
                tracing::warn!("lost the membership change listener; reconnecting");
                // `listen` reconnects and LISTENs on every channel again; only then is
                // a reload sure to miss nothing.
                loop {
                    match listener.listen(INDEX_CHANNEL).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen for membership changes yet");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_RELISTEN_BACKOFF);
                        }
                    }
                }
                loop {
                    match load_index(&pool).await {
                        Ok(fresh) => {
                            index.replace_with(fresh);
                            tracing::info!("membership index reloaded after reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reload the membership index yet");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_RELISTEN_BACKOFF);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "membership change listener failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RELISTEN_BACKOFF);
            }
        }
    }
}

/// One change as the triggers word it (`t` = what, `n` = the writing node or null).
#[derive(Debug, serde::Deserialize)]
struct IndexChange {
    t: String,
    n: Option<String>,
    c: Option<String>,
    u: Option<String>,
    h: Option<i64>,
    k: Option<String>,
    by: Option<String>,
    s: Option<String>,
}

fn apply_change(index: &MembershipIndex, node: &str, payload: &str) {
    let mut change: IndexChange = match serde_json::from_str(payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, payload, "unreadable membership change ignored");
            return;
        }
    };
    if change.n.as_deref() == Some(node) {
        return;
    }
    let kind = std::mem::take(&mut change.t);
    match (kind.as_str(), change) {
        (
            "add",
            IndexChange {
                c: Some(conv),
                u: Some(user),
                h,
                ..
            },
        ) => {
            index.add(&conv, &user);
            if let Some(handle) = h.and_then(|h| u32::try_from(h).ok()) {
                index.set_handle(&user, &conv, handle);
            }
        }
        (
            "del",
            IndexChange {
                c: Some(conv),
                u: Some(user),
                ..
            },
        ) => index.remove(&conv, &user),
        (
            "kind",
            IndexChange {
                c: Some(conv),
                k: Some(kind),
                ..
            },
        ) => match kind.as_str() {
            "room" => index.mark_room(&conv),
            "direct" => index.mark_direct(&conv),
            _ => {}
        },
        (
            "block",
            IndexChange {
                by: Some(blocker),
                u: Some(blocked),
                ..
            },
        ) => index.block(&blocker, &blocked),
        (
            "unblock",
            IndexChange {
                by: Some(blocker),
                u: Some(blocked),
                ..
            },
        ) => index.unblock(&blocker, &blocked),
        (
            "end",
            IndexChange {
                s: Some(session), ..
            },
        ) => index.session_ended(&session),
        (other, _) => tracing::warn!(kind = other, payload, "unknown membership change ignored"),
    }
}

crate::sql_store::impl_sql_store!(
    PgStore,
    sqlx::Postgres,
    backend = Backend::Postgres,
    lock = "FOR UPDATE",
    counter_row = true
);

/// The tsvector part of a search, with the same meaning as SQLite's: every word must
/// match, the last as a prefix (results appear while typing). Words are reduced to
/// letters and digits before they reach `to_tsquery`, so no input is a syntax error and
/// no operator typed by a user is obeyed. `rank` is negated ts_rank so that, as with
/// bm25, lower is better.
fn search_query(query: &str) -> Option<QueryBuilder<'static, sqlx::Postgres>> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let (last, rest) = words.split_last()?;
    let mut terms: Vec<String> = rest.to_vec();
    terms.push(format!("{last}:*"));
    let tsquery = terms.join(" & ");
    let mut qb = QueryBuilder::<sqlx::Postgres>::new("SELECT ");
    qb.push(MESSAGE_COLUMNS)
        .push(", -ts_rank(m.body_tsv, to_tsquery('simple', ");
    qb.push_bind(tsquery.clone());
    qb.push(
        ")) AS rank FROM messages m LEFT JOIN attachments a ON a.id = m.attachment_id \
             WHERE m.body_tsv @@ to_tsquery('simple', ",
    );
    qb.push_bind(tsquery);
    qb.push(")");
    Some(qb)
}
