//! A rate limit as the planes use it: in memory on one node, or shared by every node
//! through the database (issue 12).
//!
//! With several Tidings nodes the broker spreads one user's commands (and a client's
//! logins) over them, so per-node buckets would give a user N times the budget. The
//! shared form keeps the buckets in PostgreSQL (`rate_buckets`, migration 0008) and
//! charges a whole worker batch in one statement, so the cost is one round trip per
//! batch, not per message. SQLite has one node: it keeps the in-memory form, with no
//! database work at all.
//!
//! When the database cannot be asked, a shared budget falls back to its own node's
//! in-memory bucket: limits degrade to per-node (as before sharing) rather than
//! refusing everyone or admitting everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tidings_core::ratelimit::RateLimiter;

use crate::{now_ms, Store};

pub struct Budget {
    /// Prefix of this limit's keys in the shared table (`send`, `auth`, ...).
    name: &'static str,
    burst: u32,
    per_ms: f64,
    local: Mutex<RateLimiter>,
    shared: Option<Arc<dyn Store>>,
}

impl Budget {
    /// A node-local budget of `burst` tokens refilled at `per_minute`.
    pub fn local(name: &'static str, burst: u32, per_minute: u32) -> Self {
        Budget {
            name,
            burst,
            per_ms: f64::from(per_minute) / 60_000.0,
            local: Mutex::new(RateLimiter::per_minute(burst, per_minute)),
            shared: None,
        }
    }

    /// The same budget, kept in `store` for every node that shares it.
    pub fn shared(store: Arc<dyn Store>, name: &'static str, burst: u32, per_minute: u32) -> Self {
        Budget {
            shared: Some(store),
            ..Self::local(name, burst, per_minute)
        }
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Milliseconds an untouched bucket takes to be full again: after that its row
    /// carries no state.
    pub fn refill_ms(&self) -> i64 {
        if self.per_ms <= 0.0 {
            return i64::MAX;
        }
        (f64::from(self.burst) / self.per_ms).ceil() as i64
    }

    fn local_check(&self, key: &str, now: i64) -> Result<(), u64> {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(key, now)
    }

    /// Takes one token for `key`, or says how many milliseconds until one is available.
    pub async fn check(&self, key: &str) -> Result<(), u64> {
        let (granted, retry) = self.take(&[(key, 1)]).await.pop().unwrap_or((0, 1000));
        if granted >= 1 {
            Ok(())
        } else {
            Err(retry)
        }
    }

    /// Takes up to `n` tokens for each `(key, n)` (keys may repeat): answers, in the
    /// same order, how many were granted and, when fewer than asked, the milliseconds
    /// until the next one. Shared: one statement for the whole list.
    pub async fn take(&self, wants: &[(&str, u32)]) -> Vec<(u32, u64)> {
        let now = now_ms();
        if let Some(store) = &self.shared {
            let mut totals: HashMap<String, u32> = HashMap::new();
            for (key, n) in wants {
                let total = totals.entry(format!("{}:{key}", self.name)).or_insert(0);
                *total = total.saturating_add(*n);
            }
            let mut list: Vec<(String, u32)> = totals.into_iter().collect();
            list.sort_unstable();
            match store
                .take_rate_tokens(f64::from(self.burst), self.per_ms, &list)
                .await
            {
                Ok(rows) => {
                    let mut left: HashMap<String, (u32, f64)> = rows
                        .into_iter()
                        .map(|(key, granted, tokens)| (key, (granted, tokens)))
                        .collect();
                    // Hand the granted tokens out to the asks in order.
                    return wants
                        .iter()
                        .map(|(key, n)| {
                            let Some((granted, tokens)) =
                                left.get_mut(&format!("{}:{key}", self.name))
                            else {
                                return (0, 1000);
                            };
                            let give = (*granted).min(*n);
                            *granted -= give;
                            let retry = ((1.0 - *tokens).max(0.0) / self.per_ms.max(1e-9))
                                .ceil()
                                .max(1.0) as u64;
                            (give, retry)
                        })
                        .collect();
                }
                Err(e) => {
                    metrics::counter!("tidings_rate_limit_store_errors_total").increment(1);
                    tracing::warn!(error = %e, limit = self.name, "shared rate limit unavailable; using this node's");
                }
            }
        }
        wants
            .iter()
            .map(|(key, n)| {
                let mut given = 0;
                let mut retry = 0;
                while given < *n {
                    match self.local_check(key, now) {
                        Ok(()) => given += 1,
                        Err(ms) => {
                            retry = ms;
                            break;
                        }
                    }
                }
                (given, retry)
            })
            .collect()
    }
}

/// Deletes the shared buckets no charge touched for longer than `idle_ms` (at least
/// the longest refill time of the budgets sharing the table), every `every`, until the
/// process ends. Without it, a table keyed by client address would only grow.
pub async fn sweep(store: Arc<dyn Store>, idle_ms: i64, every: std::time::Duration) {
    // A budget that never refills (0 per minute) would make the idle time unbounded; a
    // month is past any refill time worth keeping and within PostgreSQL's intervals.
    let idle_ms = idle_ms.clamp(1000, 30 * 24 * 3_600_000);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.sweep_rate_buckets(idle_ms).await {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "swept full rate buckets"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not sweep rate buckets"),
        }
    }
}
