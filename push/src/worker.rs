//! The push worker: drains the durable queue (`push_queue`, migration 0006).
//!
//! Exactly-once, as far as it can be had: a row is claimed by moving its next attempt a
//! lease ahead (so neither this worker's next look nor another node takes it), sent,
//! and deleted only once the provider answered. A restart therefore loses nothing (the
//! row is still there; it is retried when its lease runs out) and sends nothing twice
//! unless the process dies in the one window between the provider's answer and the
//! DELETE — which no protocol without the provider's cooperation can close; the
//! collapse id (the conversation) makes such a duplicate replace the first on the
//! device rather than add to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tidings_store::{now_ms, PushJob, PushPlatform, PushReason, Store};
use tokio::task::JoinSet;

use crate::config::PushConfig;
use crate::notification::Notification;
use crate::provider::{Outcome, Provider};

/// Which sessions have a live connection right now: the broker's hub, passed in by
/// the binary so this crate does not know the broker.
pub trait Liveness: Send + Sync {
    fn session_connected(&self, user: &str, session: &str) -> bool;
}

struct Worker {
    store: Arc<dyn Store>,
    providers: HashMap<PushPlatform, Arc<dyn Provider>>,
    live: Arc<dyn Liveness>,
    config: PushConfig,
}

/// Starts the worker on the current runtime. `providers` holds one provider per
/// platform the server can send to; a queued push for any other platform is dropped
/// (registration refuses those platforms, so that happens only after a config change).
pub fn start(
    store: Arc<dyn Store>,
    config: PushConfig,
    providers: HashMap<PushPlatform, Arc<dyn Provider>>,
    live: Arc<dyn Liveness>,
) -> tokio::task::JoinHandle<()> {
    let worker = Arc::new(Worker {
        store,
        providers,
        live,
        config,
    });
    tokio::spawn(worker.run())
}

impl Worker {
    async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.config.poll_ms.max(1));
        let lease_ms =
            i64::try_from(self.config.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        loop {
            let now = now_ms();
            let jobs = match self
                .store
                .claim_pushes(now, now.saturating_add(lease_ms), self.config.batch)
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim queued pushes");
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            if jobs.is_empty() {
                tokio::time::sleep(poll).await;
                continue;
            }
            // One batch at a time, its sends side by side: a slow provider delays the
            // batch by at most one request timeout.
            let mut sends = JoinSet::new();
            for job in jobs {
                sends.spawn(self.clone().handle(job));
            }
            while sends.join_next().await.is_some() {}
        }
    }

    async fn handle(self: Arc<Self>, job: PushJob) {
        let t = &job.target;
        if self.live.session_connected(&t.user_id, &t.session_id) {
            // Connected: it has the event over MQTT already.
            metrics::counter!("tidings_push_skipped_total", "reason" => "connected").increment(1);
            self.finish(&job).await;
            return;
        }
        let Some(provider) = self.providers.get(&t.platform) else {
            metrics::counter!("tidings_push_failed_total", "provider" => t.platform.as_str(), "reason" => "not_configured")
                .increment(1);
            self.finish(&job).await;
            return;
        };
        let unread = match self.store.unread_total(&t.user_id).await {
            Ok(u) => u.messages,
            Err(e) => {
                // Left claimed: retried when the lease runs out.
                tracing::warn!(error = %e, "cannot count unread messages for a push");
                return;
            }
        };
        let badge_only = job.reason == PushReason::Badge;
        if badge_only {
            if t.badge_sent == Some(unread) {
                // Reading changed nothing the device shows (a muted conversation, or a
                // push since already carried this count).
                metrics::counter!("tidings_push_skipped_total", "reason" => "badge_unchanged")
                    .increment(1);
                self.finish(&job).await;
                return;
            }
            let interval = i64::try_from(self.config.badge_min_interval_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            if let Some(last) = t.badge_at {
                let due = last.saturating_add(interval);
                if now_ms() < due {
                    if let Err(e) = self.store.defer_push(&t.id, job.iseq, due).await {
                        tracing::warn!(error = %e, "cannot reschedule a badge push");
                    }
                    return;
                }
            }
        }
        let n = Notification::for_job(&job, unread, self.config.max_body_chars);
        let name = provider.name();
        match provider.send(t, &n).await {
            Outcome::Sent => {
                metrics::counter!("tidings_push_sent_total", "provider" => name).increment(1);
                // The queue row first: the window in which a crash resends is as short
                // as it can be.
                self.finish(&job).await;
                let at = badge_only.then(now_ms);
                if let Err(e) = self.store.set_push_badge(&t.id, unread, at).await {
                    tracing::warn!(error = %e, "cannot record the badge a device was pushed");
                }
            }
            Outcome::Gone { reason } => {
                tracing::info!(provider = name, %reason, "push token is gone: target removed");
                metrics::counter!("tidings_push_tokens_pruned_total", "provider" => name, "reason" => reason)
                    .increment(1);
                if let Err(e) = self.store.prune_push_target(&t.id).await {
                    tracing::warn!(error = %e, "cannot remove a dead push target");
                }
            }
            Outcome::Failed { reason } => {
                tracing::warn!(provider = name, %reason, "push refused: dropped");
                metrics::counter!("tidings_push_failed_total", "provider" => name, "reason" => reason)
                    .increment(1);
                self.finish(&job).await;
            }
            Outcome::Retry { reason, after } => {
                if job.attempts >= self.config.max_attempts {
                    tracing::warn!(provider = name, %reason, attempts = job.attempts, "push given up");
                    metrics::counter!("tidings_push_failed_total", "provider" => name, "reason" => "gave_up")
                        .increment(1);
                    self.finish(&job).await;
                    return;
                }
                metrics::counter!("tidings_push_retried_total", "provider" => name, "reason" => reason)
                    .increment(1);
                let wait = self.backoff(job.attempts, after);
                let at =
                    now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                if let Err(e) = self.store.defer_push(&t.id, job.iseq, at).await {
                    tracing::warn!(error = %e, "cannot reschedule a push");
                }
            }
        }
    }

    /// Exponential backoff with jitter (so retries after an outage do not all land at
    /// once), never sooner than the provider's `Retry-After` (capped by config).
    fn backoff(&self, attempts: u32, after: Option<Duration>) -> Duration {
        let base = self.config.backoff_base_ms.max(1);
        let cap = self.config.backoff_max_secs.saturating_mul(1000).max(base);
        let exp = base
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(32))
            .min(cap);
        let jittered = rand::thread_rng().gen_range(exp / 2..=exp);
        let floor = after
            .map(|a| a.min(Duration::from_secs(self.config.retry_after_max_secs)))
            .unwrap_or_default();
        Duration::from_millis(jittered).max(floor)
    }

    async fn finish(&self, job: &PushJob) {
        if let Err(e) = self.store.finish_push(&job.target.id, job.iseq).await {
            // Left claimed; retried (and, for a sent one, sent again) after the lease.
            tracing::warn!(error = %e, "cannot remove a handled push from the queue");
        }
    }
}
