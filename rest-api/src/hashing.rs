//! A fixed pool of threads for argon2id, the only CPU- and memory-heavy work of the
//! HTTP API (19 MiB and tens of milliseconds per hash).
//!
//! On tokio's blocking pool, 500 concurrent logins meant up to 500 threads hashing at
//! once, 19 MiB each (~10 GB), and the allocator kept the memory afterwards in one arena
//! per thread. Here at most `threads` hashes run at once (default: one per core), so
//! logins queue instead of multiplying memory, and only that many allocator arenas ever
//! hold a hash's working memory.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct HashPool {
    jobs: mpsc::Sender<Job>,
}

impl HashPool {
    pub fn new(threads: usize) -> Arc<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tidings-argon2-{i}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        rx.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the pool was dropped
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Arc::new(HashPool { jobs })
    }

    /// One thread per core: argon2 is CPU-bound, more threads only add memory.
    pub fn per_core() -> Arc<Self> {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// Runs `f` on the pool; `None` if the pool is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::HashPool;

    #[tokio::test]
    async fn jobs_run_and_concurrency_is_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let pool = HashPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut waits = Vec::new();
        for i in 0..8 {
            let (running, peak, pool) = (running.clone(), peak.clone(), pool.clone());
            waits.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                })
                .await
            }));
        }
        let mut got = Vec::new();
        for w in waits {
            got.push(w.await.unwrap().unwrap());
        }
        assert_eq!(got, (0..8).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
