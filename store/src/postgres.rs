//! PostgreSQL, for production and for several Tidings nodes sharing one database.
//!
//! Several nodes may write the same conversation at once, so read-then-write selects
//! lock their rows (`FOR UPDATE`), always conversations before users and each in id
//! order, so that concurrent batches cannot deadlock.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub struct PgStore {
    pool: PgPool,
    index: std::sync::Arc<crate::MembershipIndex>,
}

impl PgStore {
    /// Connects to `url` and applies pending migrations.
    pub async fn open(url: &str) -> crate::StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let index = std::sync::Arc::new(crate::MembershipIndex::from_pairs(
            load_memberships(&pool).await?,
        ));
        load_index_extras(&pool, &index).await?;
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
