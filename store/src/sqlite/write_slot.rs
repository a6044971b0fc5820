//! The write slot: the sqlx writer pool's only connection, held by whoever writes on
//! the write batch's own connection ([`super::fast_batch`], [`super::search_index`]),
//! and kept out of the pool between batches until someone else needs it.
//!
//! REST writes run on that pool connection; the batch and the search indexer run on a
//! rusqlite connection of their own and keep REST writes out by holding the pool's
//! connection without using it (the module comment of `fast_batch` says why). Handing
//! it back to the pool is not free: sqlx 0.8 pings every connection it takes back
//! (`return_to_pool`), a round trip to its connection thread, and the next `acquire`
//! waits for it. Two thread wake-ups per batch, and on a loaded machine a wait for that
//! thread to be scheduled: in the pairs bench at 5,000 msg/s, 12-102 batches in 10 s
//! waited over 1 ms (up to 17 ms) to acquire the slot they had just returned; kept
//! here, 6-13 (up to 7 ms, behind the search indexer's chunks; measured 2026-12-08).
//!
//! So the slot is a fair async mutex over the pool connection, kept out of the pool:
//! batches and the search indexer's chunks queue on it and hand it to each other
//! without a round trip. It goes back to the pool when a REST write wants it: the
//! store's `writer()` calls [`WriteSlot::make_way`] first, and that write waits for at
//! most the batch in progress. Two nets for a pool user that did not announce itself:
//! an unused slot is returned after [`IDLE_RELEASE`], and one out of the pool for
//! [`MAX_HOLD`] at the next batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use crate::error::StoreResult;

/// Longest the slot stays out of the pool while batches keep coming, for a pool user
/// that did not call [`WriteSlot::make_way`].
const MAX_HOLD: Duration = Duration::from_secs(1);

/// An unused slot goes back to the pool after this long.
const IDLE_RELEASE: Duration = Duration::from_millis(20);

/// The slot: whoever holds `gate` may write on the batch's connection.
pub(crate) struct WriteSlot {
    pool: SqlitePool,
    /// The pool connection while it is kept out of the pool.
    gate: Arc<Mutex<Option<KeptConn>>>,
    /// A REST write called [`WriteSlot::make_way`] while the slot was held.
    wanted: AtomicBool,
    /// A holder let go and left the connection kept: time to watch it for idleness.
    /// (Also fired when the store is dropped, to end the watching task.)
    kept: Arc<Notify>,
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        self.kept.notify_one();
    }
}

struct KeptConn {
    /// Held, never used: while it is out of the pool, no REST write runs.
    _conn: PoolConnection<Sqlite>,
    /// When it was taken from the pool.
    out_since: Instant,
    /// When its last holder let go of it.
    idle_since: Instant,
}

/// The write slot, held: nobody else writes until it is dropped.
pub(crate) struct Held {
    slot: Arc<WriteSlot>,
    /// Always `Some` with a connection until dropped.
    guard: Option<OwnedMutexGuard<Option<KeptConn>>>,
}

impl WriteSlot {
    /// Needs a tokio runtime: it starts the task that returns an idle slot.
    pub(crate) fn new(pool: SqlitePool) -> Arc<Self> {
        let slot = Arc::new(WriteSlot {
            pool,
            gate: Arc::new(Mutex::new(None)),
            wanted: AtomicBool::new(false),
            kept: Arc::new(Notify::new()),
        });
        tokio::spawn(release_when_idle(Arc::downgrade(&slot), slot.kept.clone()));
        slot
    }

    /// Called before using the pool's connection: returns the slot to the pool now if
    /// nobody holds it, or when its holder lets go.
    pub(crate) fn make_way(&self) {
        // Set first: a holder letting go meanwhile sees it.
        self.wanted.store(true, Ordering::Release);
        if let Ok(mut kept) = self.gate.try_lock() {
            let kept = kept.take();
            // Nobody holds the slot: the connection is in the pool now (or with a
            // REST write already).
            self.wanted.store(false, Ordering::Release);
            drop(kept);
        }
    }

    /// Waits for the slot (fairly, behind other holders): the kept connection if it has
    /// not been out too long and no REST write wants it, otherwise one from the pool
    /// (after the REST writes queued there).
    pub(crate) async fn hold(self: &Arc<Self>) -> StoreResult<Held> {
        let mut guard = self.gate.clone().lock_owned().await;
        let wanted = self.wanted.swap(false, Ordering::AcqRel);
        let fresh = matches!(&*guard, Some(kept) if kept.out_since.elapsed() < MAX_HOLD);
        if wanted || !fresh {
            // Back to the pool (if kept), then queue there like anyone else.
            *guard = None;
            let conn = self.pool.acquire().await?;
            let now = Instant::now();
            *guard = Some(KeptConn {
                _conn: conn,
                out_since: now,
                idle_since: now,
            });
        }
        Ok(Held {
            slot: self.clone(),
            guard: Some(guard),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if self.slot.wanted.swap(false, Ordering::AcqRel) {
            // A REST write is waiting on the pool.
            *guard = None;
            return;
        }
        if let Some(kept) = guard.as_mut() {
            kept.idle_since = Instant::now();
        }
        drop(guard);
        self.slot.kept.notify_one();
    }
}

/// Returns the kept connection to the pool once nobody has held it for
/// [`IDLE_RELEASE`]; ends with the store.
async fn release_when_idle(slot: Weak<WriteSlot>, kept: Arc<Notify>) {
    loop {
        kept.notified().await;
        // Only a weak reference across the waits: the store may be dropped meanwhile.
        let Some(gate) = slot.upgrade().map(|slot| slot.gate.clone()) else {
            return;
        };
        loop {
            tokio::time::sleep(IDLE_RELEASE).await;
            let Ok(mut guard) = gate.try_lock() else {
                // Held: its holder notifies again when it lets go.
                break;
            };
            match guard.as_ref().map(|kept| kept.idle_since.elapsed()) {
                Some(idle) if idle < IDLE_RELEASE => continue,
                Some(_) => {
                    let conn = guard.take();
                    drop(guard);
                    drop(conn);
                    break;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool(dir: &std::path::Path) -> SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("slot.db"))
            .create_if_missing(true);
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("pool")
    }

    fn out_since(held: &Held) -> Instant {
        held.guard
            .as_ref()
            .and_then(|guard| guard.as_ref())
            .map(|kept| kept.out_since)
            .expect("a held slot has its connection")
    }

    fn is_kept(slot: &WriteSlot) -> bool {
        slot.gate
            .try_lock()
            .map(|kept| kept.is_some())
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn a_slot_let_go_is_taken_again_without_the_pool_and_returned_when_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(dir.path()).await;
        let slot = WriteSlot::new(pool.clone());
        let held = slot.hold().await.expect("hold");
        let first_out = out_since(&held);
        drop(held);
        // Kept, not returned: the pool has nothing idle, and the next hold is the same
        // stretch out of the pool.
        assert_eq!(pool.num_idle(), 0);
        let again = slot.hold().await.expect("hold again");
        assert_eq!(out_since(&again), first_out);
        drop(again);
        // Idle: back in the pool, where anyone can acquire it.
        let acquired = tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await;
        assert!(
            matches!(acquired, Ok(Ok(_))),
            "the idle slot was never returned"
        );
    }

    #[tokio::test]
    async fn a_pool_user_that_makes_way_gets_the_slot_back_from_its_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(dir.path()).await;
        let slot = WriteSlot::new(pool.clone());
        // Kept between batches: a REST write makes way and finds it back in the pool.
        drop(slot.hold().await.expect("hold"));
        assert!(is_kept(&slot));
        slot.make_way();
        assert!(!is_kept(&slot));
        let rest = pool.acquire().await.expect("acquire after make_way");
        drop(rest);
        // Announced while a batch holds it: that batch's holder returns it to the pool
        // instead of keeping it.
        let held = slot.hold().await.expect("hold");
        slot.make_way();
        drop(held);
        assert!(!is_kept(&slot), "a wanted slot was kept");
        assert!(!slot.wanted.load(Ordering::Acquire));
        // Nobody asked: the next batch's slot is kept again.
        drop(slot.hold().await.expect("hold"));
        assert!(is_kept(&slot));
    }

    #[tokio::test]
    async fn a_writer_that_never_pauses_still_lets_a_waiting_pool_user_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(dir.path()).await;
        let slot = WriteSlot::new(pool.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let (slot, stop) = (slot.clone(), stop.clone());
            // Batches back to back, never idle for IDLE_RELEASE: only MAX_HOLD lets go.
            tokio::spawn(async move {
                let mut batches = 0u32;
                while !stop.load(Ordering::Relaxed) && batches < 100_000 {
                    let held = slot.hold().await.expect("hold");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    drop(held);
                    tokio::task::yield_now().await;
                    batches += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let acquired = tokio::time::timeout(Duration::from_secs(10), pool.acquire()).await;
        let waited = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        assert!(
            matches!(acquired, Ok(Ok(_))),
            "a pool user starved behind back-to-back batches"
        );
        drop(acquired);
        busy.await.expect("writer task");
        // MAX_HOLD plus a batch, with room for a slow machine.
        assert!(
            waited < MAX_HOLD + Duration::from_secs(2),
            "waited {waited:?}"
        );
    }
}
