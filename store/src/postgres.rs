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
        Ok(PgStore { pool, index })
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

crate::sql_store::impl_sql_store!(
    PgStore,
    sqlx::Postgres,
    backend = Backend::Postgres,
    lock = "FOR UPDATE"
);
