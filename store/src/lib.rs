//! tidings-store: everything Tidings keeps, behind one [`Store`] trait.
//!
//! Like atuin's server, handlers and the worker only ever see `Arc<dyn Store>`; there is
//! one implementation per SQL backend ([`SqliteStore`], the embedded default, and
//! [`PgStore`] for production). Both run their migrations (migrations/sqlite and
//! migrations/postgres, same version numbers; SQLite's 0011, a table layout, has no
//! PostgreSQL counterpart) at start-up, so a data directory or a database is usable by
//! the next start with no separate step.
//!
//! The SQL the two dialects agree on is written once, in `sql_store.rs`, and expanded
//! per backend; what differs (row locking, connection pools, full-text search) lives in
//! each backend's own file.
//!
//! Writes the realtime worker makes under load go through [`Store::write_batch`]: a whole
//! batch of sends, edits, reactions and receipts in one transaction with multi-row
//! statements, rather than a round trip per message.

pub mod acl;
mod batch;
mod error;
pub mod membership;
pub mod model;
mod postgres;
pub mod ratelimit;
pub mod sink;
mod sql_store;
mod sqlite;
mod store;
pub mod sync;

pub use error::{StoreError, StoreResult};
pub use membership::{MembershipIndex, Revocation};
pub use model::*;
pub use postgres::PgStore;
pub use sink::{EventSink, NoSink};
pub use sqlite::SqliteStore;
pub use store::{connect, Backend, Store};

/// Current Unix time in milliseconds, the one time unit of the schema.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
