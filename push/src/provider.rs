//! The one interface every push service is sent through.

use std::time::Duration;

use async_trait::async_trait;
use tidings_store::PushTarget;

use crate::notification::Notification;

/// What became of one send, as far as the queue is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider has it: the queue row is deleted.
    Sent,
    /// The token is dead (uninstalled app, expired subscription, rejected pushkey):
    /// the target is deleted with everything queued for it.
    Gone { reason: String },
    /// Try again later (rate limited, provider down, network error), no sooner than
    /// `after` when the provider said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// This push can never succeed (malformed, refused): dropped, the target kept.
    Failed { reason: String },
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The label used in metrics and logs (`gateway`, `apns`, …).
    fn name(&self) -> &'static str;
    /// Checks a registration before it is stored (an endpoint a device chose, a
    /// subscription's keys); `Err` says what is wrong, for a 422.
    fn check(&self, _token: &str, _data: &serde_json::Value) -> Result<(), String> {
        Ok(())
    }
    async fn send(&self, target: &PushTarget, notification: &Notification) -> Outcome;
}

/// Sends one push request. One that got no answer (connection, TLS, timeout) is tried
/// again later: `Err` is that outcome. The reason is a metric label, so it is a fixed
/// word and the error itself goes to the log only.
pub async fn send(
    request: reqwest::RequestBuilder,
    provider: &'static str,
) -> Result<reqwest::Response, Outcome> {
    request.send().await.map_err(|e| {
        tracing::debug!(error = %e, provider, "push request failed");
        Outcome::Retry {
            reason: "network".into(),
            after: None,
        }
    })
}

/// Reads a `Retry-After` given in seconds (the HTTP-date form is treated as absent:
/// the worker's own backoff then applies).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The outcome for an HTTP status no provider-specific rule claimed: 429 and 5xx are
/// retried (honouring `Retry-After`), anything else is a permanent failure.
pub fn by_status(status: reqwest::StatusCode, headers: &reqwest::header::HeaderMap) -> Outcome {
    let reason = format!("http_{}", status.as_u16());
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry {
            reason,
            after: retry_after(headers),
        }
    } else {
        Outcome::Failed { reason }
    }
}
