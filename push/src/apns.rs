//! Apple Push Notification service over HTTP/2, with a provider token (ES256 JWT signed
//! with the team's `.p8` key). Written on reqwest rather than the `a2` or `apns-h2`
//! crates because both hard-code Apple's hosts and trust roots: here the base URL and
//! an extra CA are settings, so the provider can be tested against a local server.
//!
//! The provider token is reused for `push.apns_token_refresh_secs` (Apple wants 20-60
//! minutes: more often is `429 TooManyProviderTokenUpdates`, older than an hour is
//! `403 ExpiredProviderToken`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature;
use serde_json::{json, Value};
use tidings_store::{now_ms, PushTarget, Store};

use crate::notification::Notification;
use crate::provider::{retry_after, send, Outcome, Provider};

/// APNs refuses `apns-collapse-id` values longer than this.
const MAX_COLLAPSE_ID: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("push.apns_key_file {0}: {1}")]
    Key(String, String),
    #[error("push.apns_ca_file {0}: {1}")]
    Ca(String, String),
    #[error("push.apns_url {0:?} is not an http(s) URL")]
    Url(String),
    #[error("building the APNs HTTP/2 client: {0}")]
    Client(#[from] reqwest::Error),
}

pub struct ApnsSettings<'a> {
    pub url: &'a str,
    pub key_file: &'a Path,
    pub key_id: &'a str,
    pub team_id: &'a str,
    pub ca_file: Option<&'a Path>,
    pub token_refresh: Duration,
    pub expiration_secs: u64,
    pub timeout: Duration,
}

pub struct Apns {
    client: reqwest::Client,
    base: String,
    key: signature::EcdsaKeyPair,
    key_id: String,
    team_id: String,
    token_refresh: Duration,
    expiration_secs: u64,
    /// The current provider token and when it was made.
    /// This node's copy of the shared provider token and when it was made (ms).
    token: Mutex<Option<(String, i64)>>,
    store: Arc<dyn Store>,
}

/// The DER inside a PEM file (the `.p8` Apple hands out is PKCS#8 in PEM).
fn pem_der(text: &str) -> Result<Vec<u8>, String> {
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(body).map_err(|e| format!("not PEM: {e}"))
}

impl Apns {
    pub fn new(s: &ApnsSettings<'_>, store: Arc<dyn Store>) -> Result<Apns, ApnsError> {
        let key_err = |e: String| ApnsError::Key(s.key_file.display().to_string(), e);
        let pem = std::fs::read_to_string(s.key_file).map_err(|e| key_err(e.to_string()))?;
        let der = pem_der(&pem).map_err(key_err)?;
        let key = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .map_err(|e| key_err(format!("not a P-256 PKCS#8 key: {e}")))?;
        let base = s.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ApnsError::Url(s.url.to_owned()));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(s.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = s.ca_file {
            let ca_err = |e: String| ApnsError::Ca(ca.display().to_string(), e);
            let pem = std::fs::read(ca).map_err(|e| ca_err(e.to_string()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ca_err(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Apns {
            client: builder.build()?,
            base,
            key,
            key_id: s.key_id.to_owned(),
            team_id: s.team_id.to_owned(),
            token_refresh: s.token_refresh,
            expiration_secs: s.expiration_secs,
            token: Mutex::new(None),
            store,
        })
    }

    /// The provider token. Apple counts refreshes per team across every sender, so the
    /// token is shared through the store: a node takes the stored one while it is
    /// younger than the refresh interval, and only a stale one is replaced (by one
    /// statement, so two nodes refreshing at once keep the same token). `rejected` is a
    /// token APNs refused (403 ExpiredProviderToken): it is replaced, once, whoever
    /// notices first — not once per push that saw it refused. A local copy saves the
    /// query.
    async fn provider_token(&self, rejected: Option<&str>) -> Result<String, String> {
        let fresh = rejected.is_some();
        let now = now_ms();
        let refresh = i64::try_from(self.token_refresh.as_millis()).unwrap_or(i64::MAX);
        if !fresh {
            let cached = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some((token, made)) = cached {
                if now - made < refresh {
                    return Ok(token);
                }
            }
        }
        let name = format!("apns:{}:{}", self.team_id, self.key_id);
        let err = |e: tidings_store::StoreError| format!("shared provider token: {e}");
        let shared = self.store.shared_push_token(&name).await.map_err(err)?;
        let mut stale_before = now - refresh;
        if let Some((token, made)) = shared {
            let usable = match rejected {
                // Someone already replaced the refused token: take theirs.
                Some(refused) => token != refused,
                None => now - made < refresh,
            };
            if usable {
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some((token.clone(), made));
                return Ok(token);
            }
            if fresh {
                // Replace exactly the refused one (made at `made`), nothing newer.
                stale_before = made + 1;
            }
        }
        let header = B64.encode(json!({ "alg": "ES256", "kid": self.key_id }).to_string());
        let claims = B64.encode(json!({ "iss": self.team_id, "iat": now / 1000 }).to_string());
        let input = format!("{header}.{claims}");
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|e| format!("signing the provider token: {e}"))?;
        let ours = format!("{input}.{}", B64.encode(sig.as_ref()));
        let (token, made) = self
            .store
            .offer_push_token(&name, &ours, now, stale_before)
            .await
            .map_err(err)?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some((token.clone(), made));
        Ok(token)
    }

    /// The APNs payload. Ids only by default: a generic, app-localized alert
    /// (`loc-key`) with `mutable-content`, so a Notification Service Extension can fetch
    /// the message and show its text; the text itself only for devices that opted in.
    fn payload(n: &Notification) -> Value {
        let alert = match &n.body {
            Some(body) => json!({ "body": body }),
            None if n.is_invitation() => json!({ "loc-key": "TIDINGS_INVITATION" }),
            None => json!({ "loc-key": "TIDINGS_NEW_MESSAGE" }),
        };
        // The ids travel beside `aps` (the text, when there is any, only in the alert),
        // which keeps the payload under APNs' 4 KB with `max_body_chars` of text.
        let mut ids = n.clone();
        ids.body = None;
        if n.is_badge() {
            // Background: no alert, only the count (content-available lets the app
            // refresh too).
            return json!({
                "aps": { "badge": n.unread, "content-available": 1 },
                "tidings": ids,
            });
        }
        json!({
            "aps": {
                "alert": alert,
                "badge": n.unread,
                "sound": "default",
                "mutable-content": 1,
                "thread-id": n.conversation,
            },
            "tidings": ids,
        })
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The collapse id: the conversation, hashed down when longer than APNs allows.
fn collapse_id(conversation: &str) -> String {
    if conversation.len() <= MAX_COLLAPSE_ID {
        conversation.to_owned()
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, conversation.as_bytes());
        B64.encode(digest.as_ref())
    }
}

#[async_trait]
impl Provider for Apns {
    fn name(&self) -> &'static str {
        "apns"
    }

    fn check(&self, token: &str, _data: &Value) -> Result<(), String> {
        // Device tokens are hex (32 bytes today; Apple says not to assume the length).
        // (A bit test, not `is_multiple_of`: that needs Rust 1.87, past our 1.85.)
        if token.len() & 1 == 0
            && token.len() <= 200
            && token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(())
        } else {
            Err("an APNs device token is hexadecimal".into())
        }
    }

    async fn send(&self, target: &PushTarget, n: &Notification) -> Outcome {
        let jwt = match self.provider_token(None).await {
            Ok(t) => t,
            Err(e) => {
                // The shared token lives in the database: a hiccup there is retried.
                tracing::warn!(error = %e, "no APNs provider token");
                return Outcome::Retry {
                    reason: "provider_token".into(),
                    after: None,
                };
            }
        };
        let url = format!("{}/3/device/{}", self.base, target.token);
        let request = self
            .client
            .post(url)
            .bearer_auth(&jwt)
            .header("apns-topic", &target.app_id)
            .header(
                "apns-expiration",
                (unix_secs() + self.expiration_secs).to_string(),
            );
        // A background push must be priority 5 (10 is an error for it), and has no
        // collapse id: it would replace the conversation's alert on the device.
        let request = if n.is_badge() {
            request
                .header("apns-push-type", "background")
                .header("apns-priority", "5")
        } else {
            request
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                .header("apns-collapse-id", collapse_id(&n.conversation))
        };
        let response = match send(request.json(&Apns::payload(n)), self.name()).await {
            Ok(r) => r,
            Err(retry) => return retry,
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Sent;
        }
        let after = retry_after(response.headers());
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let reason = answer
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        match (status, reason.as_str()) {
            (StatusCode::GONE, _)
            | (
                StatusCode::BAD_REQUEST,
                "BadDeviceToken" | "DeviceTokenNotForTopic" | "TopicDisallowed",
            ) => Outcome::Gone { reason },
            (StatusCode::FORBIDDEN, "ExpiredProviderToken" | "InvalidProviderToken") => {
                // A new token for the next attempt; this push is retried.
                if let Err(e) = self.provider_token(Some(&jwt)).await {
                    tracing::warn!(error = %e, "cannot replace a refused APNs provider token");
                }
                Outcome::Retry {
                    reason,
                    after: None,
                }
            }
            (s, _) if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                Outcome::Retry { reason, after }
            }
            _ => Outcome::Failed { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_collapse_ids_are_hashed_under_apples_limit() {
        assert_eq!(collapse_id("01JCONV"), "01JCONV");
        assert!(collapse_id(&"c".repeat(100)).len() <= MAX_COLLAPSE_ID);
    }
}
