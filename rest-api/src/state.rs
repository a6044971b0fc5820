use std::sync::Arc;

use tidings_core::protocol::limits::{
    AUTH_BURST, AUTH_PER_MINUTE, REFRESH_GRACE_SECS, SEND_BURST, SEND_PER_SECOND,
};
use tidings_store::ratelimit::Budget;

use tidings_auth::TokenKeys;
use tidings_store::{EventSink, Store};

use crate::client_addr::TrustedProxies;
use crate::uploads::{BlobStore, UploadsConfig};

/// Shared handles every handler may use. Cheap to clone (all `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keys: Arc<TokenKeys>,
    /// Milliseconds after a refresh token's rotation during which presenting it again
    /// returns the same successor rather than ending the session; 0: never.
    pub refresh_grace_ms: i64,
    /// Publishes events the API stores (e.g. a new conversation) to the members'
    /// inboxes live; the broker provides it.
    pub sink: Arc<dyn EventSink>,
    /// Where attachment bytes live.
    pub blobs: Arc<dyn BlobStore>,
    pub uploads: Arc<UploadsConfig>,
    pub limits: Arc<Limits>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`ClientAddr`).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Where argon2 runs: a fixed pool, so concurrent logins queue instead of
    /// multiplying memory.
    pub hashing: Arc<crate::hashing::HashPool>,
    /// Further readiness checks beyond the database (the MQTT front door's own probe).
    pub probes: Vec<Arc<dyn ReadinessProbe>>,
    /// The external broker's auth/ACL hooks: whether and where they are served, and the
    /// Tidings nodes' own MQTT identity.
    pub hooks: Arc<crate::routes::hooks::HooksConfig>,
    /// Which push platforms this server sends to, and registration limits.
    pub push: Arc<PushRegistration>,
}

/// What push registration accepts: the platforms a provider is configured for (a
/// target for any other would never be sent, so it is refused up front) and the
/// `push.*` size limits.
#[derive(Clone)]
pub struct PushRegistration {
    pub platforms: Vec<tidings_store::PushPlatform>,
    pub max_token_len: usize,
    pub max_data_bytes: usize,
    pub max_app_id_len: usize,
    /// The platform's own check of a token and its data (a Web Push endpoint against
    /// server-side request forgery, a subscription's keys); `Err` is the 422's message.
    pub check: Option<Arc<TargetCheck>>,
}

pub type TargetCheck = dyn Fn(tidings_store::PushPlatform, &str, &serde_json::Value) -> Result<(), String>
    + Send
    + Sync;

impl Default for PushRegistration {
    /// No platform: a server with no push provider configured refuses registrations.
    fn default() -> Self {
        PushRegistration {
            platforms: Vec::new(),
            max_token_len: 4096,
            max_data_bytes: 4096,
            max_app_id_len: 256,
            check: None,
        }
    }
}

/// A check `/readyz` runs; `Err` names what is not ready.
#[async_trait::async_trait]
pub trait ReadinessProbe: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), String>;
}

/// Request-rate limits: in memory on one node, or shared by every node through
/// PostgreSQL when the binary asks for it (`with_shared_limits`; see DEPLOY.md).
pub struct Limits {
    /// Password and token attempts, per client address.
    pub auth: Budget,
    /// Messages sent, per user: shared with the MQTT worker when the binary wires them
    /// together, so one budget covers both ways of sending.
    pub sends: Arc<Budget>,
    /// Conversations created, per user.
    pub conversations: Budget,
    /// Renames and topic changes, per conversation: each one is an event in every
    /// member's inbox, so the budget protects the members, whoever the admin is.
    pub renames: Budget,
    /// Calls adding members, per user.
    pub member_adds: Budget,
}

/// Budgets the HTTP API enforces besides sends (see [`Limits`]), each a burst refilled
/// per minute: password and token attempts per client address, and group operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiLimits {
    pub auth_burst: u32,
    pub auth_per_minute: u32,
    pub conversations_burst: u32,
    pub conversations_per_minute: u32,
    pub renames_burst: u32,
    pub renames_per_minute: u32,
    pub member_adds_burst: u32,
    pub member_adds_per_minute: u32,
}

impl Default for ApiLimits {
    /// Generous for people (twenty new conversations at once, then one every 30 s), far
    /// below what a script does: the issue that set them saw 100 groups in 0.2 s and
    /// 300 renames in 0.5 s.
    fn default() -> Self {
        ApiLimits {
            auth_burst: AUTH_BURST,
            auth_per_minute: AUTH_PER_MINUTE,
            conversations_burst: 20,
            conversations_per_minute: 2,
            renames_burst: 5,
            renames_per_minute: 2,
            member_adds_burst: 20,
            member_adds_per_minute: 10,
        }
    }
}

impl Limits {
    fn new() -> Self {
        Self::with_sends(Arc::new(Budget::local(
            "send",
            SEND_BURST,
            SEND_PER_SECOND * 60,
        )))
    }

    fn with_sends(sends: Arc<Budget>) -> Self {
        Self::with(sends, ApiLimits::default(), None)
    }

    /// `shared`: keep the budgets in this store for every node (PostgreSQL).
    fn with(sends: Arc<Budget>, group: ApiLimits, shared: Option<&Arc<dyn Store>>) -> Self {
        let bucket = |name, burst, per_minute| match shared {
            Some(store) => Budget::shared(store.clone(), name, burst, per_minute),
            None => Budget::local(name, burst, per_minute),
        };
        Limits {
            auth: bucket("auth", group.auth_burst, group.auth_per_minute),
            sends,
            conversations: bucket(
                "conversations",
                group.conversations_burst,
                group.conversations_per_minute,
            ),
            renames: bucket("renames", group.renames_burst, group.renames_per_minute),
            member_adds: bucket(
                "member_adds",
                group.member_adds_burst,
                group.member_adds_per_minute,
            ),
        }
    }

    /// The longest time any of these budgets takes to refill: shared buckets idle for
    /// longer are full, and the sweeper may delete them.
    pub fn longest_refill_ms(&self) -> i64 {
        [
            &self.auth,
            &*self.sends,
            &self.conversations,
            &self.renames,
            &self.member_adds,
        ]
        .iter()
        .map(|b| b.refill_ms())
        .max()
        .unwrap_or(0)
    }
}

/// Takes a token from `limiter` for `key`, or the 429 to return.
pub async fn rate_limit(limiter: &Budget, key: &str) -> Result<(), crate::error::ApiError> {
    limiter
        .check(key)
        .await
        .map_err(crate::error::ApiError::rate_limited)
}

/// Seconds to the milliseconds the store compares; a huge setting saturates rather than
/// wrapping into a negative (that is, disabled) window.
fn grace_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<TokenKeys>,
        sink: Arc<dyn EventSink>,
        blobs: Arc<dyn BlobStore>,
        uploads: UploadsConfig,
    ) -> Self {
        AppState {
            store,
            keys,
            refresh_grace_ms: grace_ms(REFRESH_GRACE_SECS),
            sink,
            blobs,
            uploads: Arc::new(uploads),
            limits: Arc::new(Limits::new()),
            trusted_proxies: Arc::new(TrustedProxies::default()),
            hashing: crate::hashing::HashPool::per_core(),
            probes: Vec::new(),
            hooks: Arc::default(),
            push: Arc::new(PushRegistration::default()),
        }
    }

    /// Uses `sends` as the per-user send budget (the one the MQTT worker also takes from).
    /// Called while building the state, before any request took an auth token.
    pub fn with_send_limiter(mut self, sends: Arc<Budget>) -> Self {
        self.limits = Arc::new(Limits::with_sends(sends));
        self
    }

    /// Uses these budgets for logins and group operations, kept in the store for every
    /// node when `shared` (several nodes on PostgreSQL). Called while building the
    /// state, before any request took a token.
    pub fn with_api_limits(mut self, group: ApiLimits, shared: bool) -> Self {
        let store = shared.then_some(&self.store);
        self.limits = Arc::new(Limits::with(self.limits.sends.clone(), group, store));
        self
    }

    /// Sets the refresh-token retry window (`auth.refresh_grace_secs`; 0 turns it off).
    pub fn with_refresh_grace(mut self, secs: u64) -> Self {
        self.refresh_grace_ms = grace_ms(secs);
        self
    }

    pub fn with_probe(mut self, probe: Arc<dyn ReadinessProbe>) -> Self {
        self.probes.push(probe);
        self
    }

    /// Serves the broker hooks as `hooks` says (off by default).
    pub fn with_hooks(mut self, hooks: crate::routes::hooks::HooksConfig) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Accept push registrations for these platforms, within these limits.
    pub fn with_push(mut self, push: PushRegistration) -> Self {
        self.push = Arc::new(push);
        self
    }

    /// Believe `X-Forwarded-For` from these peers (none by default).
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = Arc::new(proxies);
        self
    }
}
