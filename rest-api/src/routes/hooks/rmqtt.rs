//! rmqtt's `rmqtt-auth-http` plugin, which speaks EMQX 4's HTTP auth/ACL form (so
//! these routes serve EMQX 4 as well).
//!
//! Parameters arrive as a form, a query string or JSON, under EMQX 4's names:
//! `clientid`, `username`, `password` for authentication; `access` (1 = subscribe,
//! 2 = publish), `clientid`, `username`, `topic` and, when the broker can send them,
//! `qos` and `retain` for the ACL (otherwise a publish is judged as QoS 1, not
//! retained). rmqtt strips `$share/<group>/` from a filter before asking.
//! The reply is always JSON (`{"result":"allow"|"deny"}`, plus `superuser` for
//! authentication): rmqtt reads an empty or non-JSON 2xx body as "allow".

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    decide, malformed, parse_params, record, Action, ConnectionEvent, Decision, Loose, Question,
};
use crate::state::AppState;

const DIALECT: &str = "rmqtt";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rmqtt_auth, rmqtt_auth_get))
        .routes(routes!(rmqtt_acl, rmqtt_acl_get))
        .routes(routes!(rmqtt_events))
}

/// An event from rmqtt's `rmqtt-web-hook` plugin. Only `client_connected` and
/// `client_disconnected` mean something here; other actions are acknowledged and
/// ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RmqttEvent {
    pub action: String,
    pub clientid: String,
    /// Milliseconds since the epoch, on `client_connected`.
    pub connected_at: Option<i64>,
    /// Milliseconds since the epoch, on `client_disconnected`.
    pub disconnected_at: Option<i64>,
}

/// rmqtt web-hook: a client connected to or disconnected from a broker node (presence).
#[utoipa::path(post, path = "/v1/hooks/rmqtt/events", tag = "hooks",
    request_body(content = RmqttEvent, content_type = "application/json"),
    responses((status = 200, description = "Recorded, ignored or malformed (counted): always `{}`, since a retry would repeat the same event")))]
pub async fn rmqtt_events(State(state): State<AppState>, body: Bytes) -> Json<serde_json::Value> {
    let parsed = serde_json::from_slice::<RmqttEvent>(&body).map_err(|e| e.to_string());
    let event = parsed
        .as_ref()
        .map_err(Clone::clone)
        .map(|e| ConnectionEvent {
            kind: &e.action,
            clientid: &e.clientid,
            connected_at: e.connected_at,
            disconnected_at: e.disconnected_at,
        });
    super::connection_webhook(
        &state,
        DIALECT,
        event,
        ["client_connected", "client_disconnected"],
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AuthRequest {
    #[serde(alias = "client_id")]
    pub clientid: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AclRequest {
    /// `1` subscribe, `2` publish.
    #[schema(value_type = String)]
    pub access: Loose,
    #[serde(alias = "client_id")]
    pub clientid: String,
    pub username: String,
    pub topic: String,
    #[schema(value_type = Option<String>)]
    pub qos: Option<Loose>,
    #[schema(value_type = Option<String>)]
    pub retain: Option<Loose>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RmqttReply {
    /// `allow` or `deny`.
    pub result: &'static str,
    /// Authentication only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superuser: Option<bool>,
}

fn reply(decision: Decision, authn: bool) -> Json<RmqttReply> {
    Json(RmqttReply {
        result: if decision.allowed() { "allow" } else { "deny" },
        superuser: authn.then_some(decision.superuser()),
    })
}

/// rmqtt / EMQX 4 authentication: may this CONNECT proceed?
#[utoipa::path(post, path = "/v1/hooks/rmqtt/auth", tag = "hooks",
    request_body(content = AuthRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "JSON allow (with superuser) or deny; malformed requests are denied", body = RmqttReply)))]
pub async fn rmqtt_auth(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<RmqttReply> {
    let decision = match parse_params::<AuthRequest>(&headers, query.as_deref(), &body) {
        Ok(r) => {
            let question = Question::Connect {
                client_id: &r.clientid,
                username: &r.username,
                password: &r.password,
            };
            record(DIALECT, "connect", decide(&state, &question).await)
        }
        Err(why) => malformed(DIALECT, "connect", &why),
    };
    reply(decision, true)
}

/// The same question asked with GET and a query string (the broker's default method).
#[utoipa::path(get, path = "/v1/hooks/rmqtt/auth", operation_id = "rmqtt_auth_get", tag = "hooks",
    responses((status = 200, description = "JSON allow (with superuser) or deny; malformed requests are denied", body = RmqttReply)))]
pub async fn rmqtt_auth_get(
    state: State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> Json<RmqttReply> {
    rmqtt_auth(state, headers, query, Bytes::new()).await
}

/// rmqtt / EMQX 4 ACL: may this client subscribe (access=1) or publish (access=2)?
#[utoipa::path(post, path = "/v1/hooks/rmqtt/acl", tag = "hooks",
    request_body(content = AclRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "JSON allow or deny; malformed requests are denied", body = RmqttReply)))]
pub async fn rmqtt_acl(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<RmqttReply> {
    let decision = match parse_params::<AclRequest>(&headers, query.as_deref(), &body) {
        Ok(r) => match action(&r) {
            Some(action) => {
                let question = Question::Access {
                    client_id: &r.clientid,
                    username: &r.username,
                    action,
                    topic: &r.topic,
                };
                record(DIALECT, "access", decide(&state, &question).await)
            }
            None => malformed(DIALECT, "access", "access, qos or retain"),
        },
        Err(why) => malformed(DIALECT, "access", &why),
    };
    reply(decision, false)
}

/// The same question asked with GET and a query string (the broker's default method).
#[utoipa::path(get, path = "/v1/hooks/rmqtt/acl", operation_id = "rmqtt_acl_get", tag = "hooks",
    responses((status = 200, description = "JSON allow or deny; malformed requests are denied", body = RmqttReply)))]
pub async fn rmqtt_acl_get(
    state: State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> Json<RmqttReply> {
    rmqtt_acl(state, headers, query, Bytes::new()).await
}

fn action(r: &AclRequest) -> Option<Action> {
    match r.access.as_qos()? {
        1 => Some(Action::Subscribe),
        2 => Some(Action::Publish {
            qos: match &r.qos {
                Some(q) => q.as_qos()?,
                None => 1,
            },
            retain: match &r.retain {
                Some(f) => f.as_flag()?,
                None => false,
            },
        }),
        _ => None,
    }
}
