//! Opens a fresh, migrated store on each backend: a temporary SQLite file, or a new
//! database in the PostgreSQL cluster that scripts/test.sh started.

use std::sync::Arc;

use sqlx::{Connection, Executor};
use tidings_store::{connect, Store};

pub async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("tidings.db").display());
    let store = connect(&url).await.expect("open sqlite store");
    (store, dir)
}

/// The PostgreSQL server to test against. Missing is a failure, not a skip: run the
/// tests with scripts/test.sh, which starts a throwaway cluster and sets this.
pub fn pg_admin_url() -> String {
    std::env::var("TIDINGS_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "TIDINGS_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts \
             a throwaway PostgreSQL, or point it at a server you own"
        )
    })
}

pub async fn postgres() -> Arc<dyn Store> {
    let admin = pg_admin_url();
    let name = format!("t_{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to test PostgreSQL");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    connect(&format!("{base}/{name}"))
        .await
        .expect("open postgres store")
}

/// Declares each listed async test fn (taking `Arc<dyn Store>`) once per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = $crate::common::sqlite().await;
                    super::$name(store).await
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = $crate::common::postgres().await;
                    super::$name(store).await
                }
            )*
        }
    };
}
