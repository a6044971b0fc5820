//! VerneMQ webhooks (`vmq_webhooks`): `auth_on_register`, `auth_on_subscribe` and
//! `auth_on_publish`, and their `_m5` variants on the same paths (the `vernemq-hook`
//! header tells them apart where the reply differs).
//!
//! VerneMQ wants status 200 and `{"result":"ok"}`, or `{"result":{"error":"not_allowed"}}`.
//! A subscription with some refused filters is answered per filter: `"ok"` with a
//! `topics` modifier giving each refused filter QoS 128 (MQTT 3.1.1's failure) or 135
//! (MQTT 5's "not authorized"), as the embedded broker's SUBACK does. Mountpoints
//! change the topic namespace the ACL knows, so a non-empty one is refused.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{decide, malformed, parse_params, record, Action, Decision, Loose, Question};
use crate::state::AppState;

const DIALECT: &str = "vernemq";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(vernemq_auth_on_register))
        .routes(routes!(vernemq_auth_on_subscribe))
        .routes(routes!(vernemq_auth_on_publish))
        .routes(routes!(vernemq_events))
}

/// VerneMQ's `on_register`/`on_register_m5` (connected) and `on_client_offline`/
/// `on_client_gone` (gone) webhooks; the `vernemq-hook` header says which. Their
/// bodies carry the client id (and no time: the node's clock is used).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClientEvent {
    pub client_id: String,
}

/// VerneMQ webhooks for presence: a client registered or went offline.
#[utoipa::path(post, path = "/v1/hooks/vernemq/events", tag = "hooks",
    request_body(content = ClientEvent, content_type = "application/json"),
    responses((status = 200, description = "Always `{\"result\":\"ok\"}` (notifications; a refusal would change nothing)")))]
pub async fn vernemq_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let hook = headers
        .get("vernemq-hook")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let up = match hook {
        "on_register" | "on_register_m5" => Some(true),
        "on_client_offline" | "on_client_gone" => Some(false),
        _ => None,
    };
    match (up, serde_json::from_slice::<ClientEvent>(&body)) {
        (Some(up), Ok(event)) => {
            super::client_event(&state, DIALECT, &event.client_id, up, None).await;
        }
        (None, _) => {
            malformed(DIALECT, "event", "vernemq-hook header");
        }
        (_, Err(e)) => {
            malformed(DIALECT, "event", &e.to_string());
        }
    }
    ok()
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    #[serde(default)]
    pub mountpoint: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscribeTopic {
    pub topic: String,
    pub qos: u8,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscribeRequest {
    pub client_id: String,
    pub username: Option<String>,
    #[serde(default)]
    pub mountpoint: String,
    pub topics: Vec<SubscribeTopic>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PublishRequest {
    pub client_id: String,
    pub username: Option<String>,
    #[serde(default)]
    pub mountpoint: String,
    pub topic: String,
    #[schema(value_type = u8)]
    pub qos: Loose,
    #[schema(value_type = bool)]
    pub retain: Loose,
}

fn ok() -> Json<Value> {
    Json(json!({ "result": "ok" }))
}

fn not_allowed() -> Json<Value> {
    Json(json!({ "result": { "error": "not_allowed" } }))
}

fn word(decision: Decision) -> Json<Value> {
    if decision.allowed() {
        ok()
    } else {
        not_allowed()
    }
}

/// VerneMQ `auth_on_register` / `auth_on_register_m5`: may this CONNECT proceed?
#[utoipa::path(post, path = "/v1/hooks/vernemq/auth_on_register", tag = "hooks",
    request_body(content = RegisterRequest, content_type = "application/json"),
    responses((status = 200, description = "{\"result\":\"ok\"} or {\"result\":{\"error\":\"not_allowed\"}}")))]
pub async fn vernemq_auth_on_register(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<Value> {
    let decision = match parse_params::<RegisterRequest>(&headers, query.as_deref(), &body) {
        Ok(r) if !r.mountpoint.is_empty() => malformed(DIALECT, "connect", "mountpoint"),
        Ok(RegisterRequest {
            client_id,
            username: Some(username),
            password: Some(password),
            ..
        }) => {
            let question = Question::Connect {
                client_id: &client_id,
                username: &username,
                password: &password,
            };
            record(DIALECT, "connect", decide(&state, &question).await)
        }
        Ok(_) => malformed(DIALECT, "connect", "no username or password"),
        Err(why) => malformed(DIALECT, "connect", &why),
    };
    word(decision)
}

/// VerneMQ `auth_on_subscribe` / `auth_on_subscribe_m5`: which of these filters may
/// this client follow?
#[utoipa::path(post, path = "/v1/hooks/vernemq/auth_on_subscribe", tag = "hooks",
    request_body(content = SubscribeRequest, content_type = "application/json"),
    responses((status = 200, description = "ok, ok with a topics modifier refusing some filters (QoS 128, or 135 for _m5), or not_allowed")))]
pub async fn vernemq_auth_on_subscribe(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<Value> {
    let r = match parse_params::<SubscribeRequest>(&headers, query.as_deref(), &body) {
        Ok(r) if r.mountpoint.is_empty() && !r.topics.is_empty() => r,
        Ok(_) => {
            malformed(DIALECT, "access", "mountpoint or no topics");
            return not_allowed();
        }
        Err(why) => {
            malformed(DIALECT, "access", &why);
            return not_allowed();
        }
    };
    let Some(username) = r.username.as_deref() else {
        malformed(DIALECT, "access", "no username");
        return not_allowed();
    };
    let m5 = headers
        .get("vernemq-hook")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| h.ends_with("_m5"));
    let refused_qos = if m5 { 135 } else { 128 };
    let mut topics = Vec::with_capacity(r.topics.len());
    let mut any_refused = false;
    for t in &r.topics {
        let question = Question::Access {
            client_id: &r.client_id,
            username,
            action: Action::Subscribe,
            topic: &t.topic,
        };
        let allowed = record(DIALECT, "access", decide(&state, &question).await).allowed();
        any_refused |= !allowed;
        let qos = if allowed { t.qos.min(1) } else { refused_qos };
        topics.push(json!({ "topic": t.topic, "qos": qos }));
    }
    if any_refused {
        Json(json!({ "result": "ok", "topics": topics }))
    } else {
        ok()
    }
}

/// VerneMQ `auth_on_publish` / `auth_on_publish_m5`: may this client publish here?
#[utoipa::path(post, path = "/v1/hooks/vernemq/auth_on_publish", tag = "hooks",
    request_body(content = PublishRequest, content_type = "application/json"),
    responses((status = 200, description = "{\"result\":\"ok\"} or {\"result\":{\"error\":\"not_allowed\"}}")))]
pub async fn vernemq_auth_on_publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<Value> {
    let decision = match parse_params::<PublishRequest>(&headers, query.as_deref(), &body) {
        Ok(r) if !r.mountpoint.is_empty() => malformed(DIALECT, "access", "mountpoint"),
        Ok(r) => match (r.username.as_deref(), r.qos.as_qos(), r.retain.as_flag()) {
            (Some(username), Some(qos), Some(retain)) => {
                let question = Question::Access {
                    client_id: &r.client_id,
                    username,
                    action: Action::Publish { qos, retain },
                    topic: &r.topic,
                };
                record(DIALECT, "access", decide(&state, &question).await)
            }
            _ => malformed(DIALECT, "access", "username, qos or retain"),
        },
        Err(why) => malformed(DIALECT, "access", &why),
    };
    word(decision)
}
