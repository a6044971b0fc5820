//! The REST side: login, refresh (inside, transparently), and every HTTP call the SDK
//! makes. The access token is refreshed when it is near expiry or when the server says
//! it expired; refresh tokens rotate, so refreshes are serialized.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::sdk::config::ClientConfig;
use crate::sdk::error::{Result, SdkError};
use crate::sdk::local::{LocalStore, StoredSession};
use crate::sdk::types::SessionInfo;

/// Refresh when the access token has less than this left.
const REFRESH_MARGIN_SECS: i64 = 60;

pub struct Api {
    http: reqwest::Client,
    base: String,
    device_id: String,
    local: Arc<LocalStore>,
    session: tokio::sync::Mutex<Option<StoredSession>>,
    /// Held across a token refresh (and only that), so refreshes do not race.
    refreshing: tokio::sync::Mutex<()>,
}

fn now_secs() -> i64 {
    crate::sdk::local::now_ms() / 1000
}

/// Reads `{"error":{"code","message"}}` from a failed response.
async fn error_of(res: reqwest::Response) -> SdkError {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let detail = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"))
        .to_owned();
    if status == StatusCode::UNAUTHORIZED {
        SdkError::Auth { code, detail }
    } else {
        SdkError::Server {
            status: status.as_u16(),
            code,
            detail,
        }
    }
}

impl Api {
    pub fn new(config: &ClientConfig, local: Arc<LocalStore>) -> Result<Api> {
        let (base, device_id) = (config.base_url(), config.device_id.as_str());
        let https = base.starts_with("https://");
        let http = reqwest::Client::builder()
            // The SDK's one rustls configuration (pinned CA or Mozilla's roots); an
            // https:// API is never followed to http:// by a redirect.
            .use_preconfigured_tls(config.tls_config()?)
            .https_only(https)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SdkError::config(format!("http client: {e}")))?;
        let session = local.session()?;
        Ok(Api {
            http,
            base: base.to_owned(),
            device_id: device_id.to_owned(),
            local,
            session: tokio::sync::Mutex::new(session),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn session_info(&self) -> Option<SessionInfo> {
        self.session.lock().await.as_ref().map(|s| SessionInfo {
            user_id: s.user_id.clone(),
            username: s.username.clone(),
        })
    }

    pub async fn stored(&self) -> Option<StoredSession> {
        self.session.lock().await.clone()
    }

    fn session_from(body: &Value) -> Result<StoredSession> {
        let s = |v: &Value| v.as_str().map(str::to_owned);
        Ok(StoredSession {
            user_id: s(&body["user"]["id"]).ok_or_else(|| SdkError::network("no user.id"))?,
            username: s(&body["user"]["username"]).unwrap_or_default(),
            access_token: s(&body["access_token"])
                .ok_or_else(|| SdkError::network("no access_token"))?,
            refresh_token: s(&body["refresh_token"])
                .ok_or_else(|| SdkError::network("no refresh_token"))?,
            expires_at: now_secs() + body["expires_in"].as_i64().unwrap_or(900),
        })
    }

    async fn adopt(&self, session: StoredSession) -> Result<SessionInfo> {
        self.local.save_session(&session)?;
        let info = SessionInfo {
            user_id: session.user_id.clone(),
            username: session.username.clone(),
        };
        *self.session.lock().await = Some(session);
        Ok(info)
    }

    /// `POST /v1/auth/login` or `/register`.
    pub async fn authenticate(
        &self,
        register: bool,
        username: &str,
        password: &str,
    ) -> Result<SessionInfo> {
        let path = if register {
            "/v1/auth/register"
        } else {
            "/v1/auth/login"
        };
        let res = self
            .http
            .post(self.url(path))
            .json(&json!({"username": username, "password": password, "device_id": self.device_id}))
            .send()
            .await?;
        if !res.status().is_success() {
            return Err(error_of(res).await);
        }
        let body: Value = res.json().await.map_err(SdkError::network)?;
        self.adopt(Self::session_from(&body)?).await
    }

    /// Uses tokens obtained elsewhere. `expires_in` = 0 means "unknown": refreshed on
    /// first use.
    pub async fn use_tokens(
        &self,
        user_id: &str,
        username: &str,
        access_token: &str,
        refresh_token: &str,
        expires_in: i64,
    ) -> Result<SessionInfo> {
        if !crate::protocol::ids::is_server_id(user_id) {
            return Err(SdkError::invalid(
                "invalid",
                "user_id must be a 26-character id",
            ));
        }
        self.adopt(StoredSession {
            user_id: user_id.to_owned(),
            username: username.to_owned(),
            access_token: access_token.to_owned(),
            refresh_token: refresh_token.to_owned(),
            expires_at: now_secs() + expires_in,
        })
        .await
    }

    /// Drops the session from memory (the stores are the caller's business).
    pub async fn forget(&self) {
        self.session.lock().await.take();
    }

    pub async fn logout(&self) -> Result<()> {
        if let Some(s) = self.session.lock().await.take() {
            let _ = self
                .http
                .post(self.url("/v1/auth/logout"))
                .bearer_auth(&s.access_token)
                .send()
                .await;
        }
        self.local.wipe()
    }

    /// A usable access token: refreshed first if it is close to expiry (or `force`).
    ///
    /// The session lock is only held to read and to write the tokens, never across the
    /// refresh request: calls that just need the user (queueing a send offline, say)
    /// must not wait up to the HTTP timeout behind a refresh. One refresh runs at a
    /// time (`refreshing`); a caller that waited for it uses its result.
    pub async fn access_token(&self, force: bool) -> Result<String> {
        let current = self.current().await?;
        if !force && current.expires_at - REFRESH_MARGIN_SECS > now_secs() {
            return Ok(current.access_token);
        }
        let _one_at_a_time = self.refreshing.lock().await;
        let now = self.current().await?;
        if now.refresh_token != current.refresh_token {
            return Ok(now.access_token); // refreshed (or replaced) while we waited
        }
        let res = self
            .http
            .post(self.url("/v1/auth/refresh"))
            .json(&json!({"refresh_token": current.refresh_token}))
            .send()
            .await?;
        if !res.status().is_success() {
            let err = error_of(res).await;
            if matches!(err, SdkError::Auth { .. }) {
                let mut guard = self.session.lock().await;
                if guard
                    .as_ref()
                    .is_some_and(|s| s.refresh_token == current.refresh_token)
                {
                    *guard = None;
                    let _ = self.local.clear_session();
                }
            }
            return Err(err);
        }
        let body: Value = res.json().await.map_err(SdkError::network)?;
        let mut fresh = Self::session_from(&body)?;
        if fresh.username.is_empty() {
            fresh.username = current.username.clone();
        }
        let mut guard = self.session.lock().await;
        // A logout or another account's login during the request wins.
        if guard
            .as_ref()
            .is_none_or(|s| s.refresh_token != current.refresh_token)
        {
            return Err(SdkError::NotLoggedIn);
        }
        self.local.save_session(&fresh)?;
        let token = fresh.access_token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// The session as it is now (a copy: the lock is released at once).
    async fn current(&self) -> Result<StoredSession> {
        self.session
            .lock()
            .await
            .clone()
            .ok_or(SdkError::NotLoggedIn)
    }

    /// Sends an authenticated request, refreshing once on a 401.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<reqwest::Response> {
        let mut force = false;
        loop {
            let token = self.access_token(force).await?;
            let res = build().bearer_auth(token).send().await?;
            if res.status() == StatusCode::UNAUTHORIZED && !force {
                force = true;
                continue;
            }
            if !res.status().is_success() {
                return Err(error_of(res).await);
            }
            return Ok(res);
        }
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T> {
        let url = self.url(path);
        let res = self
            .send(|| {
                let rb = self.http.request(method.clone(), &url);
                match &body {
                    Some(b) => rb.json(b),
                    None => rb,
                }
            })
            .await?;
        if res.status() == StatusCode::NO_CONTENT {
            return serde_json::from_value(Value::Null).map_err(SdkError::network);
        }
        res.json().await.map_err(SdkError::network)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// Whether the current access token is accepted (`GET /v1/me`); used when MQTT
    /// connects keep failing, since a refused CONNECT looks like a network failure.
    pub async fn token_rejected(&self) -> bool {
        let Ok(token) = self.access_token(false).await else {
            return true;
        };
        match self
            .http
            .get(self.url("/v1/me"))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(res) => res.status() == StatusCode::UNAUTHORIZED,
            Err(_) => false,
        }
    }

    /// `POST /v1/uploads` with raw bytes.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        mime: &str,
        filename: Option<&str>,
    ) -> Result<Value> {
        let mut url = reqwest::Url::parse(&self.url("/v1/uploads"))
            .map_err(|e| SdkError::config(e.to_string()))?;
        if let Some(name) = filename {
            url.query_pairs_mut().append_pair("filename", name);
        }
        // The body is handed out in chunks while this call is alive. Dropping the call
        // (a cancelled task) makes the next chunk an error, which ends the request and
        // its connection: otherwise hyper's connection task would send the whole body
        // on its own after the caller gave up.
        let alive = CancelOnDrop::default();
        let bytes = bytes::Bytes::from(bytes);
        let res = self
            .send(|| {
                self.http
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, mime)
                    .header(reqwest::header::CONTENT_LENGTH, bytes.len())
                    .body(cancellable_body(bytes.clone(), alive.0.clone()))
            })
            .await?;
        res.json().await.map_err(SdkError::network)
    }
}

impl Api {
    /// The body of an authenticated GET, as bytes (attachments).
    pub async fn bytes(&self, path: &str) -> Result<Vec<u8>> {
        let url = self.url(path);
        let res = self.send(|| self.http.get(&url)).await?;
        Ok(res.bytes().await.map_err(SdkError::network)?.to_vec())
    }
}

/// Set when dropped: tells an upload's body that nobody waits for it any more.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `bytes` in 64 KiB chunks, failing the request at the first chunk after `cancelled`.
fn cancellable_body(bytes: bytes::Bytes, cancelled: Arc<AtomicBool>) -> reqwest::Body {
    const CHUNK: usize = 64 * 1024;
    let chunks = futures_util::stream::unfold(0usize, move |pos| {
        let (bytes, cancelled) = (bytes.clone(), cancelled.clone());
        async move {
            if pos >= bytes.len() {
                return None;
            }
            if cancelled.load(Ordering::SeqCst) {
                let err = std::io::Error::new(std::io::ErrorKind::Interrupted, "upload cancelled");
                return Some((Err(err), usize::MAX));
            }
            let end = (pos + CHUNK).min(bytes.len());
            Some((Ok(bytes.slice(pos..end)), end))
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

/// Percent-encodes a query value.
pub(crate) fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
