//! Firebase Cloud Messaging, HTTP v1 (the legacy server-key API is gone). The access
//! token comes from the service account's own `token_uri` with a signed RS256 assertion
//! (RFC 7523), made with ring, and is reused until shortly before it expires. Base URL
//! and token endpoint are settings, so the provider is tested against local servers.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature;
use serde::Deserialize;
use serde_json::{json, Value};
use tidings_store::PushTarget;
use tokio::sync::Mutex;

use crate::notification::Notification;
use crate::provider::{retry_after, send, Outcome, Provider};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before Google says it expires.
const RENEW_EARLY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("push.fcm_service_account_file {0}: {1}")]
    Account(String, String),
    #[error("building the FCM HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key: String,
    client_email: String,
    token_uri: String,
}

pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    key: signature::RsaKeyPair,
    email: String,
    token_uri: String,
    /// The access token and when to stop using it. A tokio mutex: held across the
    /// token request, so a burst of pushes makes one token request, not one each.
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

impl Fcm {
    pub fn new(account_file: &Path, base_url: &str, timeout: Duration) -> Result<Fcm, FcmError> {
        let err = |e: String| FcmError::Account(account_file.display().to_string(), e);
        let text = std::fs::read_to_string(account_file).map_err(|e| err(e.to_string()))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| err(format!("not a service account JSON: {e}")))?;
        let der: String = account
            .private_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD
            .decode(der)
            .map_err(|e| err(format!("private_key is not PEM: {e}")))?;
        let key = signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| err(format!("private_key is not an RSA PKCS#8 key: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Fcm {
            client,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                base_url.trim_end_matches('/'),
                account.project_id
            ),
            key,
            email: account.client_email,
            token_uri: account.token_uri,
            token: Mutex::new(None),
        })
    }

    fn assertion(&self) -> Result<String, String> {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let header = B64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = B64.encode(
            json!({
                "iss": self.email, "scope": SCOPE, "aud": self.token_uri,
                "iat": iat, "exp": iat + 3600,
            })
            .to_string(),
        );
        let input = format!("{header}.{claims}");
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|e| format!("signing the OAuth assertion: {e}"))?;
        Ok(format!("{input}.{}", B64.encode(sig)))
    }

    /// The current access token, fetched anew when it is about to expire.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut slot = self.token.lock().await;
        if let Some((token, until)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let assertion = self.assertion().map_err(|e| {
            tracing::warn!(error = %e, "cannot make the FCM OAuth assertion");
            Outcome::Failed {
                reason: "oauth_assertion".into(),
            }
        })?;
        let retry = |reason: &str| Outcome::Retry {
            reason: reason.into(),
            after: None,
        };
        let response = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "FCM token endpoint unreachable");
                retry("oauth_network")
            })?;
        if !response.status().is_success() {
            tracing::warn!(status = %response.status(), "FCM token endpoint refused the service account");
            return Err(retry("oauth_refused"));
        }
        let answer: TokenAnswer = response.json().await.map_err(|_| retry("oauth_answer"))?;
        let until =
            Instant::now() + Duration::from_secs(answer.expires_in).saturating_sub(RENEW_EARLY);
        *slot = Some((answer.access_token.clone(), until));
        Ok(answer.access_token)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// A data message (all values strings, as FCM requires) the app turns into a
    /// notification itself; with text opted in, a notification block too. One collapse
    /// key per conversation: FCM keeps at most four per device, and a newer push for the
    /// same conversation should replace the older one anyway.
    fn message(token: &str, n: &Notification) -> Value {
        let mut data = json!({
            "conversation": n.conversation,
            "event_id": n.event_id,
            "iseq": n.iseq.to_string(),
            "reason": n.reason,
            "unread": n.unread.to_string(),
        });
        if let (Some(seq), Some(obj)) = (n.seq, data.as_object_mut()) {
            obj.insert("seq".into(), json!(seq.to_string()));
        }
        let android = if n.is_badge() {
            // A badge update need not wake the device at once; one collapse key for
            // all of them keeps only the newest.
            json!({ "priority": "NORMAL", "collapse_key": "badge" })
        } else {
            json!({ "priority": "HIGH", "collapse_key": n.conversation })
        };
        let mut message = json!({
            "token": token,
            "data": data,
            "android": android,
        });
        if let (Some(body), Some(obj)) = (&n.body, message.as_object_mut()) {
            obj.insert("notification".into(), json!({ "body": body }));
        }
        json!({ "message": message })
    }
}

/// The `errorCode` of an FCM v1 error body (`error.details[].errorCode`).
fn error_code(body: &Value) -> Option<String> {
    body.pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("errorCode").and_then(Value::as_str))
        .map(str::to_owned)
}

#[async_trait]
impl Provider for Fcm {
    fn name(&self) -> &'static str {
        "fcm"
    }

    async fn send(&self, target: &PushTarget, n: &Notification) -> Outcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let request = self
            .client
            .post(&self.send_url)
            .bearer_auth(token)
            .json(&Fcm::message(&target.token, n));
        let response = match send(request, self.name()).await {
            Ok(r) => r,
            Err(retry) => return retry,
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Sent;
        }
        let after = retry_after(response.headers());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = error_code(&body).unwrap_or_else(|| format!("http_{}", status.as_u16()));
        match (status, code.as_str()) {
            // The app was uninstalled, or the token belongs to another sender: it will
            // never work for us again.
            (StatusCode::NOT_FOUND, _) | (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") => {
                Outcome::Gone { reason: code }
            }
            (StatusCode::UNAUTHORIZED, _) => {
                self.forget_token().await;
                Outcome::Retry {
                    reason: code,
                    after: None,
                }
            }
            (s, _) if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => Outcome::Retry {
                reason: code,
                after,
            },
            _ => Outcome::Failed { reason: code },
        }
    }
}
