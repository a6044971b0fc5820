//! Auth and ACL hooks for an external MQTT broker (multi-node mode, issue 12).
//!
//! A clustered broker (EMQX, VerneMQ, RabbitMQ, rmqtt) asks Tidings over HTTP whether a
//! CONNECT may proceed and whether a client may subscribe to or publish on a topic.
//! Every dialect here is a thin translation over ONE decision function, [`decide`]: the
//! same pure ACL the embedded front door applies ([`tidings_store::acl`]), the same
//! credential check as an MQTT CONNECT to the embedded broker (an access JWT of a live
//! session, or a live device credential's `tdk_` secret), and the device credential's
//! grant (which conversations, which direction).
//!
//! The broker's ACL questions carry the username and client id but not the password,
//! so the authentication hook records which session each client id connected with
//! (`Store::bind_mqtt_client`), and every ACL decision looks it up: a logout or a
//! revoked credential ends the client's rights at the next decision on every node.
//!
//! Fail closed: an unreadable question, an unknown client, a store error and anything
//! the ACL does not grant are all "deny", in the dialect's own words and with status
//! 200 (several brokers read a 4xx/5xx as "ignore" and fall through to the next
//! authorizer, which may allow). Replies are JSON wherever the dialect allows it
//! (rmqtt reads an empty or non-JSON 2xx body as "allow").
//!
//! The routes are mounted only when `hooks.enabled`, and on `hooks.listen` alone when
//! that is set: they answer membership questions about anyone, so they belong on a
//! network only the broker reaches.

pub mod emqx;
pub mod rabbitmq;
pub mod rmqtt;
pub mod vernemq;

use serde::{Deserialize, Serialize};
use tidings_auth::device;
use tidings_store::acl::{
    device_may_publish, device_may_subscribe, may_publish, may_subscribe, parse_client_id,
};
use tidings_store::{now_ms, BrokerPresence, PresenceSettled};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Where and whether the hooks are served, and who the Tidings nodes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HooksConfig {
    /// Serve `/v1/hooks/...` at all (off by default: the single-node setup needs none).
    pub enabled: bool,
    /// Serve the hooks on this address only (an internal listener the broker reaches)
    /// instead of on the public HTTP listener.
    pub listen: Option<std::net::SocketAddr>,
    /// The MQTT username Tidings nodes' workers connect to the broker with. They are
    /// superusers: they read every user's outbox and publish to every inbox.
    pub node_username: String,
    /// The node identity's password (at least [`MIN_NODE_SECRET_LEN`] bytes); unset, no
    /// node identity can authenticate.
    pub node_secret: Option<String>,
    /// The RabbitMQ virtual host MQTT clients use (`mqtt.vhost`).
    pub rabbitmq_vhost: String,
    /// How long a user's last client must stay gone before "offline" is published
    /// (presence from the broker's events): the events of different broker nodes
    /// arrive out of order, so a device that connected just before another dropped
    /// may be reported after it. At most [`MAX_PRESENCE_GRACE_MS`].
    pub presence_offline_grace_ms: u64,
    /// How often each node looks for offline graces nobody ended (their node stopped
    /// during one), and ends them.
    pub presence_sweep_secs: u64,
}

/// Longest offline grace accepted: past it a user who left looks online too long.
pub const MAX_PRESENCE_GRACE_MS: u64 = 600_000;

/// Shortest node secret accepted: the node identity can read everything.
pub const MIN_NODE_SECRET_LEN: usize = 32;

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            enabled: false,
            listen: None,
            node_username: "tidings-node".into(),
            node_secret: None,
            rabbitmq_vhost: "/".into(),
            presence_offline_grace_ms: 2_000,
            presence_sweep_secs: 30,
        }
    }
}

impl HooksConfig {
    /// Refuses settings that would make the node identity weak or ambiguous.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.node_secret {
            if secret.len() < MIN_NODE_SECRET_LEN {
                return Err(format!(
                    "hooks.node_secret must be at least {MIN_NODE_SECRET_LEN} bytes"
                ));
            }
        }
        if self.node_username.is_empty()
            || tidings_core::protocol::ids::is_server_id(&self.node_username)
        {
            return Err("hooks.node_username must be set and must not look like a user id".into());
        }
        if self.presence_offline_grace_ms > MAX_PRESENCE_GRACE_MS {
            return Err(format!(
                "hooks.presence_offline_grace_ms must be at most {MAX_PRESENCE_GRACE_MS}"
            ));
        }
        if self.presence_sweep_secs == 0 {
            return Err("hooks.presence_sweep_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// Every dialect's routes; `lib.rs` mounts them where the configuration says and always
/// lists them in the OpenAPI document.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(emqx::router())
        .merge(vernemq::router())
        .merge(rabbitmq::router())
        .merge(rmqtt::router())
}

/// A connect or disconnect webhook as rmqtt and EMQX post it: the event's name, the
/// client id, and the broker's time of the change.
pub struct ConnectionEvent<'a> {
    pub kind: &'a str,
    pub clientid: &'a str,
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
}

/// Answers a connect/disconnect webhook: `names` are the dialect's names for connected
/// and disconnected (other events are acknowledged and ignored); a body that did not
/// parse is counted as malformed. Always `{}`: a retry would only repeat the event.
pub async fn connection_webhook(
    state: &AppState,
    dialect: &'static str,
    event: Result<ConnectionEvent<'_>, String>,
    names: [&str; 2],
) -> axum::Json<serde_json::Value> {
    match event {
        Ok(e) => {
            let up = if e.kind == names[0] {
                Some(true)
            } else if e.kind == names[1] {
                Some(false)
            } else {
                None
            };
            if let Some(up) = up {
                let at = if up {
                    e.connected_at
                } else {
                    e.disconnected_at
                };
                client_event(state, dialect, e.clientid, up, at).await;
            }
        }
        Err(why) => {
            malformed(dialect, "event", &why);
        }
    }
    axum::Json(serde_json::json!({}))
}

/// A client connected (`up`) or went away at the broker, as one of its event hooks
/// says (rmqtt's web-hook, EMQX's webhook, VerneMQ's `on_register`/`on_client_offline`):
/// recorded in the store, which decides under the user's lock, against what watchers
/// were last told, whether their presence (`u/{uid}/p`) changes, and publishes it through
/// this node's sink (so through the broker) before the lock is released. "online" goes
/// out at once; "offline" only after `hooks.presence_offline_grace_ms` with no live
/// client (see [`settle_after_grace`]), since the broker nodes' events arrive out of
/// order. `at` is the broker's time when the event carries it.
/// Best effort, like presence in embedded mode: a failure is logged and counted, and
/// the broker is told all is well (a retry would only repeat the same event).
pub async fn client_event(
    state: &AppState,
    dialect: &'static str,
    client_id: &str,
    up: bool,
    at: Option<i64>,
) {
    let at = at.filter(|t| *t > 0).unwrap_or_else(now_ms);
    // On its own task, so a broker that gives up on the request cannot stop the
    // decision halfway.
    let task = {
        let state = state.clone();
        let client_id = client_id.to_owned();
        tokio::spawn(async move {
            state
                .store
                .broker_client_event(&client_id, up, at, state.sink.as_ref())
                .await
        })
    };
    let outcome = match task.await {
        Ok(Ok(BrokerPresence::Online { .. })) => "online",
        Ok(Ok(BrokerPresence::OfflinePending { user })) => {
            tokio::spawn(settle_after_grace(state.clone(), user));
            "offline_pending"
        }
        Ok(Ok(BrokerPresence::Unchanged { .. })) => "unchanged",
        // The nodes' own connections and clients no auth hook admitted.
        Ok(Ok(BrokerPresence::UnknownClient)) => "unknown_client",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, dialect, "could not record a broker client event");
            "error"
        }
        Err(e) => {
            tracing::error!(error = %e, dialect, "the broker client event task failed");
            "error"
        }
    };
    metrics::counter!("tidings_hook_client_events_total", "dialect" => dialect, "outcome" => outcome)
        .increment(1);
}

/// Rounds of waiting one pending "offline" gets when later events restart its grace;
/// past them the event that restarted it last (or the sweeper) ends it.
const SETTLE_ROUNDS: usize = 4;

/// Ends `user`'s offline grace: after it, "offline" is published if they still have no
/// live client (the store decides, under their lock). Every event that starts or
/// restarts a grace spawns one of these; the sweeper ([`run_presence_sweeper`]) ends
/// the graces of a node that stopped.
pub async fn settle_after_grace(state: AppState, user: String) {
    let grace = state.hooks.presence_offline_grace_ms;
    let mut wait = grace;
    for _ in 0..SETTLE_ROUNDS {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        match settle(&state, &user).await {
            Some(PresenceSettled::Wait(left)) => {
                wait = u64::try_from(left).unwrap_or(1).clamp(1, grace.max(1));
            }
            _ => return,
        }
    }
}

async fn settle(state: &AppState, user: &str) -> Option<PresenceSettled> {
    let grace = i64::try_from(state.hooks.presence_offline_grace_ms).unwrap_or(i64::MAX);
    let settled = state
        .store
        .settle_broker_presence(user, grace, state.sink.as_ref())
        .await;
    let outcome = match &settled {
        Ok(PresenceSettled::Offline) => "offline",
        Ok(PresenceSettled::Unchanged) => "unchanged",
        Ok(PresenceSettled::Wait(_)) => "wait",
        Err(e) => {
            tracing::warn!(error = %e, %user, "could not settle a user's presence");
            "error"
        }
    };
    metrics::counter!("tidings_hook_presence_settled_total", "outcome" => outcome).increment(1);
    settled.ok()
}

/// Most graces one sweep ends.
const SWEEP_BATCH: i64 = 500;

/// Every `hooks.presence_sweep_secs`, ends the offline graces no node ended (the one
/// that started them stopped first), so nobody stays shown online. PostgreSQL only.
pub async fn run_presence_sweeper(state: AppState) {
    let every = std::time::Duration::from_secs(state.hooks.presence_sweep_secs.max(1));
    let grace = i64::try_from(state.hooks.presence_offline_grace_ms).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Only graces over by a whole sweep period: the nodes' own timers end the rest.
        let late = grace.saturating_add(i64::try_from(every.as_millis()).unwrap_or(i64::MAX));
        match state
            .store
            .unsettled_broker_presence(late, SWEEP_BATCH)
            .await
        {
            Ok(users) => {
                for user in users {
                    settle(&state, &user).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for unsettled presence"),
        }
    }
}

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish { qos: u8, retain: bool },
}

/// What the broker asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question<'a> {
    /// May this CONNECT proceed?
    Connect {
        client_id: &'a str,
        username: &'a str,
        password: &'a str,
    },
    /// May this (already connected) client do `action` on `topic`?
    Access {
        client_id: &'a str,
        username: &'a str,
        action: Action,
        topic: &'a str,
    },
}

/// The answer, before a dialect words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow { superuser: bool },
    Deny(DenyReason),
}

/// Why, for the log and the metrics (never told to the broker, which only needs "no").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Malformed,
    ClientId,
    OtherUser,
    BadCredentials,
    NoSession,
    Acl,
    Store,
}

impl DenyReason {
    fn label(self) -> &'static str {
        match self {
            DenyReason::Malformed => "malformed",
            DenyReason::ClientId => "client_id",
            DenyReason::OtherUser => "other_user",
            DenyReason::BadCredentials => "bad_credentials",
            DenyReason::NoSession => "no_session",
            DenyReason::Acl => "acl",
            DenyReason::Store => "store",
        }
    }
}

impl Decision {
    pub fn allowed(self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    pub fn superuser(self) -> bool {
        matches!(self, Decision::Allow { superuser: true })
    }
}

/// Counts a decision and passes it on; every dialect reports through here.
fn record(dialect: &'static str, question: &'static str, decision: Decision) -> Decision {
    let verdict = match decision {
        Decision::Allow { .. } => "allow",
        Decision::Deny(reason) => reason.label(),
    };
    metrics::counter!("tidings_hook_decisions_total", "dialect" => dialect, "question" => question, "verdict" => verdict)
        .increment(1);
    decision
}

/// A question the dialect could not read: denied, and counted as such.
fn malformed(dialect: &'static str, question: &'static str, why: &str) -> Decision {
    tracing::debug!(dialect, question, why, "unreadable hook request denied");
    record(dialect, question, Decision::Deny(DenyReason::Malformed))
}

/// The one decision every dialect asks.
pub async fn decide(state: &AppState, question: &Question<'_>) -> Decision {
    match *question {
        Question::Connect {
            client_id,
            username,
            password,
        } => connect(state, client_id, username, password).await,
        Question::Access {
            client_id,
            username,
            action,
            topic,
        } => access(state, client_id, username, action, topic).await,
    }
}

/// Compares secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

fn is_node(state: &AppState, username: &str) -> bool {
    username == state.hooks.node_username
}

async fn connect(state: &AppState, client_id: &str, username: &str, password: &str) -> Decision {
    if is_node(state, username) {
        return match &state.hooks.node_secret {
            Some(secret) if same_secret(password, secret) => Decision::Allow { superuser: true },
            _ => Decision::Deny(DenyReason::BadCredentials),
        };
    }
    let Some((user, _device)) = parse_client_id(client_id) else {
        return Decision::Deny(DenyReason::ClientId);
    };
    if user != username {
        return Decision::Deny(DenyReason::OtherUser);
    }
    let session = if device::is_secret(password) {
        match state
            .store
            .device_credential_by_secret(&device::secret_hash(password))
            .await
        {
            Ok(Some(c)) if c.user_id == user => c.id,
            Ok(Some(_)) => return Decision::Deny(DenyReason::OtherUser),
            Ok(None) => return Decision::Deny(DenyReason::NoSession),
            Err(e) => {
                tracing::error!(error = %e, "auth hook cannot check a device credential");
                return Decision::Deny(DenyReason::Store);
            }
        }
    } else {
        let Ok(claims) = state.keys.verify_access(password) else {
            return Decision::Deny(DenyReason::BadCredentials);
        };
        if claims.sub != user {
            return Decision::Deny(DenyReason::OtherUser);
        }
        match state.store.session_active(&claims.sid).await {
            Ok(true) => claims.sid,
            Ok(false) => return Decision::Deny(DenyReason::NoSession),
            Err(e) => {
                tracing::error!(error = %e, "auth hook cannot check a session");
                return Decision::Deny(DenyReason::Store);
            }
        }
    };
    match state
        .store
        .bind_mqtt_client(client_id, &session, now_ms())
        .await
    {
        Ok(()) => Decision::Allow { superuser: false },
        Err(e) => {
            // Without the binding no ACL question of this client could be answered.
            tracing::error!(error = %e, "auth hook cannot record the client's session");
            Decision::Deny(DenyReason::Store)
        }
    }
}

async fn access(
    state: &AppState,
    client_id: &str,
    username: &str,
    action: Action,
    topic: &str,
) -> Decision {
    if is_node(state, username) {
        // The broker authenticated this username with the node secret at CONNECT.
        return Decision::Allow { superuser: true };
    }
    let Some((user, _device)) = parse_client_id(client_id) else {
        return Decision::Deny(DenyReason::ClientId);
    };
    if user != username {
        return Decision::Deny(DenyReason::OtherUser);
    }
    let session = match state.store.mqtt_client_session(client_id).await {
        Ok(Some(s)) if s.user_id == user => s,
        Ok(_) => return Decision::Deny(DenyReason::NoSession),
        Err(e) => {
            tracing::error!(error = %e, "ACL hook cannot look up the client's session");
            return Decision::Deny(DenyReason::Store);
        }
    };
    let index = state.store.membership();
    let allowed = match action {
        Action::Subscribe => {
            may_subscribe(user, topic, &index)
                && device_may_subscribe(&session.grant, topic)
                && (session.grant.conversations.is_none() || !is_inbox(topic))
        }
        Action::Publish { qos, retain } => match tidings_store::acl::credential_outbox(topic) {
            // A session's own command topic: the worker reads the session id from it
            // and checks each command against that credential's grant, so any
            // credential may publish there, and only there.
            Some((owner, sid)) => owner == user && sid == session.id && qos <= 1 && !retain,
            None => {
                may_publish(user, topic, qos, retain, &index)
                    && device_may_publish(&session.grant, topic)
                    && (!is_outbox(topic)
                        || (session.grant.can_send && session.grant.conversations.is_none()))
            }
        },
    };
    if allowed {
        Decision::Allow { superuser: false }
    } else {
        Decision::Deny(DenyReason::Acl)
    }
}

/// `u/{uid}/in` and its codec variants. Through an external broker a user's inbox
/// reaches every subscriber unfiltered (the embedded hub filters it per credential), so
/// a credential limited to some conversations follows their `c/{cid}/...` topics only.
fn is_inbox(topic: &str) -> bool {
    matches!(
        topic.split('/').collect::<Vec<_>>().as_slice(),
        ["u", _, "in", ..]
    )
}

/// `u/{uid}/out`. The worker behind an external broker cannot tell which credential
/// published a command there (the embedded front door checks each against the grant),
/// so only credentials that may send into every conversation of theirs publish
/// commands there; the others publish on their own `u/{uid}/out/{credential id}`,
/// which names the credential to the worker.
fn is_outbox(topic: &str) -> bool {
    matches!(
        topic.split('/').collect::<Vec<_>>().as_slice(),
        ["u", _, "out"]
    )
}

/// Reads a hook's parameters the way brokers send them: a JSON body, a form body, or
/// (RabbitMQ's default GET, EMQX 4 / rmqtt GET) the query string.
fn parse_params<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<T, String> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if json {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else if !body.is_empty() {
        serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
    } else {
        serde_urlencoded::from_str(query.unwrap_or_default()).map_err(|e| e.to_string())
    }
}

/// A value brokers send as a number, a boolean or a string of either (templates make
/// `${qos}` a string or a number depending on quoting).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Loose {
    Number(u64),
    Bool(bool),
    Text(String),
}

impl Loose {
    fn as_qos(&self) -> Option<u8> {
        match self {
            Loose::Number(n) => u8::try_from(*n).ok().filter(|q| *q <= 2),
            Loose::Text(s) => s.trim().parse::<u8>().ok().filter(|q| *q <= 2),
            Loose::Bool(_) => None,
        }
    }

    fn as_flag(&self) -> Option<bool> {
        match self {
            Loose::Bool(b) => Some(*b),
            Loose::Number(0) => Some(false),
            Loose::Number(1) => Some(true),
            Loose::Number(_) => None,
            Loose::Text(s) => match s.trim() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn loose_values_read_as_brokers_write_them() {
        let q = |v: serde_json::Value| {
            serde_json::from_value::<Loose>(v)
                .ok()
                .and_then(|l| l.as_qos())
        };
        assert_eq!(q(serde_json::json!(1)), Some(1));
        assert_eq!(q(serde_json::json!("0")), Some(0));
        assert_eq!(q(serde_json::json!(3)), None);
        assert_eq!(q(serde_json::json!("x")), None);
        let f = |v: serde_json::Value| {
            serde_json::from_value::<Loose>(v)
                .ok()
                .and_then(|l| l.as_flag())
        };
        assert_eq!(f(serde_json::json!("false")), Some(false));
        assert_eq!(f(serde_json::json!(true)), Some(true));
        assert_eq!(f(serde_json::json!(1)), Some(true));
        assert_eq!(f(serde_json::json!("yes")), None);
    }

    #[test]
    fn node_settings_are_checked() {
        let mut c = HooksConfig::default();
        assert!(c.validate().is_ok());
        c.node_secret = Some("short".into());
        assert!(c.validate().is_err());
        c.node_secret = Some("x".repeat(MIN_NODE_SECRET_LEN));
        assert!(c.validate().is_ok());
        c.node_username = tidings_core::protocol::ids::new_id();
        assert!(c.validate().is_err());
    }
}
