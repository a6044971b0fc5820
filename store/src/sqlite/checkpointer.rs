//! WAL checkpoints on a thread of their own, so the write batch rarely waits on fsync.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses
//! `wal_autocheckpoint` (1,000 pages): it copies the pages into the database file and
//! fsyncs both files, about 11 ms here for 1,000 random pages. Every message that
//! arrived meanwhile waited, and that wait was the pairs bench's p99 at 5,000 msg/s
//! (12–20 ms; the worker's batch p50 was 0.4 ms, its p99 10.6 ms: the checkpoints).
//!
//! Here a thread with its own connection runs `PASSIVE` checkpoints every
//! [`CHECKPOINT_EVERY`]. A passive checkpoint never blocks the writer, but alone it
//! never lets the WAL start over either: the writer restarts the WAL only when, at its
//! `BEGIN`, every frame has been copied, and under steady load it has always appended
//! more during the checkpoint's fsync (the WAL grew by 110 MB/s at 5,000 msg/s). So a
//! round repeats the checkpoint until the writer appended little meanwhile, and then
//! hands the rest to the writer: after its next commit the writer runs one `PASSIVE`
//! checkpoint of its own, which finds only those few frames (p50 1.1–1.6 ms at 5,000 msg/s,
//! see [`WRITER_FRAMES`]), and its next `BEGIN` restarts the WAL. The WAL stayed near 4 MB.
//!
//! Pairs at 5,000 msg/s (15 s, A/B, same hour): p99 8.4 and 7.0 ms against 14.1 and
//! 13.7 ms with checkpoints in the commit. Rounds every 50 ms: p99 10.9 ms. Tried
//! before without the handoff: a connection of its own `PASSIVE` every 500 ms (sqlx,
//! p99 30 → 80 ms) and a thread every 200 ms (p99 64 ms at 5,000 msg/s): each round
//! copied several thousand pages, and the WAL never restarted.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::StoreResult;

/// How often the background thread checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// Most back-to-back checkpoints per round of the background thread.
const CATCH_UP_PASSES: usize = 8;

/// Frames left for the writer's checkpoint that are few enough to end a round: a batch
/// or two at 5,000 msg/s.
///
/// Measured (issue 9, 2026-12-07), pairs at 5,000 msg/s, four alternated runs: with 8
/// passes and 16 frames the writer's checkpoints took p50 1.1–1.3 ms instead of 1.9–2.3
/// with 4 passes and 64 frames, and the end-to-end p99 was 7.3–9.2 ms instead of
/// 10.0–11.8. Handing over less often (every 250 ms) made fewer but longer stalls:
/// p99 9–17 ms.
const WRITER_FRAMES: i64 = 16;

/// A WAL this large ends a round whatever was appended: about 8 MiB of 4 KiB pages.
///
/// More passes per round mean more rounds in which the writer cannot restart the WAL
/// (only its `BEGIN` after a hand-over does). Under unbroken large batches every round
/// ran all 8 passes, each with its fsync, and the WAL doubled: the store test
/// `sqlite_wal_stays_bounded_under_unbroken_writes` saw 17.4 MB against its 16 MB bound.
/// Handing over at this size keeps the bound; steady 5,000 msg/s stays below it.
pub(crate) const WAL_FRAMES_HAND_OVER: i64 = 2048;

/// What the background thread and the write batch share.
#[derive(Default)]
pub(crate) struct CheckpointHandoff {
    /// Set by the background thread after a checkpoint; the writer's next commit takes
    /// it and copies what was committed meanwhile (see the module comment).
    writer_finishes: AtomicBool,
    stop: AtomicBool,
}

impl CheckpointHandoff {
    /// Called by the writer after a commit: whether to checkpoint now.
    pub(crate) fn writer_should_finish(&self) -> bool {
        self.writer_finishes.swap(false, Ordering::AcqRel)
    }
}

/// Stops the background thread when dropped (with the store).
pub(crate) struct Checkpointer {
    handoff: Arc<CheckpointHandoff>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.handoff.stop.store(true, Ordering::Relaxed);
    }
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`; the writer's connection must keep
    /// its own automatic checkpoints out of the way (a high `wal_autocheckpoint`) and
    /// call [`CheckpointHandoff::writer_should_finish`] after each commit.
    pub(crate) fn start(path: &Path, handoff: Arc<CheckpointHandoff>) -> StoreResult<Self> {
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(10))?;
        let shared = handoff.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    if shared.writer_finishes.load(Ordering::Acquire) {
                        // The writer has not taken the last one yet (it is idle): the
                        // WAL is not growing, nothing to do.
                        continue;
                    }
                    match catch_up(&db) {
                        Ok(()) => shared.writer_finishes.store(true, Ordering::Release),
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    }
                }
            })
            .map_err(|e| crate::StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(Checkpointer { handoff })
    }
}

/// Checkpoints until what the writer appended during the last pass is small, so the
/// writer's own checkpoint after it has little to copy, or until the WAL is large
/// enough that the writer must restart it soon (at most [`CATCH_UP_PASSES`]).
fn catch_up(db: &Connection) -> rusqlite::Result<()> {
    let mut wal_frames = passive_checkpoint(db)?;
    for _ in 1..CATCH_UP_PASSES {
        if wal_frames >= WAL_FRAMES_HAND_OVER {
            break;
        }
        let now = passive_checkpoint(db)?;
        // `now` is smaller when the writer restarted the WAL meanwhile.
        let appended = now - wal_frames;
        wal_frames = now;
        if appended < WRITER_FRAMES {
            break;
        }
    }
    Ok(())
}

/// One `PASSIVE` checkpoint on `db`; returns the frames in the WAL.
pub(crate) fn passive_checkpoint(db: &Connection) -> rusqlite::Result<i64> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}
