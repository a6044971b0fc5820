//! `[push]` settings. Every limit has a default that suits one node; the tests shorten
//! the intervals.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PushConfig {
    /// Milliseconds between looks at the queue when it was empty. The queue is in the
    /// database (so it survives restarts and several nodes share it), so an idle server
    /// pays one indexed query per interval.
    pub poll_ms: u64,
    /// Queue rows claimed per look.
    pub batch: u32,
    /// Seconds a claimed row stays invisible to other workers. Longer than a request
    /// can take (`request_timeout_secs`), so a slow send is never claimed twice; after
    /// a crash, the row is retried when the lease runs out.
    pub lease_secs: u64,
    /// Attempts per (event, device) before the push is given up on.
    pub max_attempts: u32,
    /// The first retry waits this long; each later one twice as long (with jitter),
    /// up to `backoff_max_secs`.
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
    /// A provider's `Retry-After` is honoured up to this many seconds.
    pub retry_after_max_secs: u64,
    /// Seconds one request to a provider may take.
    pub request_timeout_secs: u64,
    /// Longest token (or Web Push endpoint URL) a device may register.
    pub max_token_len: usize,
    /// Largest provider data (a JSON object) a device may register, in bytes.
    pub max_data_bytes: usize,
    /// Longest app id a device may register.
    pub max_app_id_len: usize,
    /// Longest message text put in a push for a device that opted in to text; the rest
    /// is cut (providers limit payloads to 4 KB).
    pub max_body_chars: usize,
    /// Seconds between two badge-only pushes to one device (sent when reading on
    /// another device changed the unread count). APNs and FCM throttle background
    /// pushes anyway; this keeps a fast reader from spending the device's budget.
    pub badge_min_interval_secs: u64,
    /// A Matrix push gateway (`…/_matrix/push/v1/notify`) for targets of platform
    /// `gateway`; unset, that platform cannot be registered.
    pub gateway_url: Option<String>,
    /// The server's VAPID key pair for Web Push, base64url as `web-push
    /// generate-vapid-keys` prints it (65-byte public, 32-byte private); both unset,
    /// the `webpush` platform cannot be registered. Apps subscribe with the public one.
    pub vapid_public_key: Option<String>,
    pub vapid_private_key: Option<String>,
    /// A contact for push services (`mailto:` or `https:`), sent in every VAPID token.
    pub vapid_subject: Option<String>,
    /// Seconds a push service keeps a Web Push message for an offline device.
    pub webpush_ttl_secs: u64,
    /// Allow push endpoints on private, loopback and link-local addresses (and plain
    /// http). Off by default: a device chooses its Web Push endpoint, and the server
    /// must not be made to call into its own network.
    pub allow_private_endpoints: bool,
    /// APNs: the team's `.p8` key file, its key id and the team id; all three set
    /// enable the `apns` platform (a target's `app_id` is the bundle id, the topic).
    pub apns_key_file: Option<std::path::PathBuf>,
    pub apns_key_id: Option<String>,
    pub apns_team_id: Option<String>,
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for
    /// development builds.
    pub apns_url: String,
    /// An extra root CA (PEM) to trust for `apns_url`, besides the system's.
    pub apns_ca_file: Option<std::path::PathBuf>,
    /// Seconds one provider token is reused (Apple: 20 to 60 minutes).
    pub apns_token_refresh_secs: u64,
    /// Seconds APNs keeps trying to deliver a push to an offline device.
    pub apns_expiration_secs: u64,
    /// FCM HTTP v1: the Firebase service account JSON (its `project_id`, key and
    /// `token_uri` are used); set, it enables the `fcm` platform.
    pub fcm_service_account_file: Option<std::path::PathBuf>,
    /// `https://fcm.googleapis.com`.
    pub fcm_url: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            poll_ms: 500,
            batch: 100,
            lease_secs: 60,
            max_attempts: 8,
            backoff_base_ms: 2_000,
            backoff_max_secs: 3_600,
            retry_after_max_secs: 3_600,
            request_timeout_secs: 10,
            max_token_len: 4_096,
            max_data_bytes: 4_096,
            max_app_id_len: 256,
            max_body_chars: 1_000,
            badge_min_interval_secs: 60,
            gateway_url: None,
            vapid_public_key: None,
            vapid_private_key: None,
            vapid_subject: None,
            webpush_ttl_secs: 86_400,
            allow_private_endpoints: false,
            apns_key_file: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_url: "https://api.push.apple.com".into(),
            apns_ca_file: None,
            apns_token_refresh_secs: 40 * 60,
            apns_expiration_secs: 86_400,
            fcm_service_account_file: None,
            fcm_url: "https://fcm.googleapis.com".into(),
        }
    }
}

impl PushConfig {
    /// Refuses settings that would claim rows twice or never send them.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_secs <= self.request_timeout_secs {
            return Err(format!(
                "push.lease_secs ({}) must exceed push.request_timeout_secs ({}), or a slow send is claimed twice",
                self.lease_secs, self.request_timeout_secs
            ));
        }
        if self.max_attempts == 0 || self.batch == 0 || self.poll_ms == 0 {
            return Err("push.max_attempts, push.batch and push.poll_ms must be at least 1".into());
        }
        if let Some(url) = &self.gateway_url {
            reqwest::Url::parse(url)
                .map_err(|e| format!("push.gateway_url {url:?} is not a URL: {e}"))?;
        }
        if self.vapid_public_key.is_some() != self.vapid_private_key.is_some() {
            return Err(
                "set both push.vapid_public_key and push.vapid_private_key, or neither".into(),
            );
        }
        let apns = [
            self.apns_key_file.is_some(),
            self.apns_key_id.is_some(),
            self.apns_team_id.is_some(),
        ];
        if apns.iter().any(|set| *set) && !apns.iter().all(|set| *set) {
            return Err(
                "set all of push.apns_key_file, push.apns_key_id and push.apns_team_id, or none"
                    .into(),
            );
        }
        if !(1_200..=3_600).contains(&self.apns_token_refresh_secs) {
            return Err("push.apns_token_refresh_secs must be 1200-3600: Apple refuses tokens refreshed more often or older".into());
        }
        Ok(())
    }
}
