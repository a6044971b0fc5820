//! EMQX 5 HTTP authentication and authorization.
//!
//! Configure the request templates as JSON POSTs (docs/DEPLOY.md has the exact config):
//! authn `{"clientid":"${clientid}","username":"${username}","password":"${password}"}`,
//! authz `{"clientid":"${clientid}","username":"${username}","action":"${action}",
//! "topic":"${topic}","qos":"${qos}","retain":"${retain}"}`.
//! Replies are 200 with `{"result":"allow"|"deny"}` (authn adds `is_superuser`). A 4xx
//! would mean "ignore" to EMQX and pass the question on, so a malformed request is
//! answered "deny" too.

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

const DIALECT: &str = "emqx";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(emqx_authn))
        .routes(routes!(emqx_authz))
        .routes(routes!(emqx_events))
}

/// An EMQX 5 webhook (a rule on `$events/client_connected` and
/// `$events/client_disconnected` whose action POSTs the event as JSON).
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmqxEvent {
    /// `client.connected` or `client.disconnected`; others are ignored.
    pub event: String,
    pub clientid: String,
    /// Milliseconds since the epoch.
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
}

/// EMQX webhook: a client connected or disconnected (presence).
#[utoipa::path(post, path = "/v1/hooks/emqx/events", tag = "hooks",
    request_body(content = EmqxEvent, content_type = "application/json"),
    responses((status = 200, description = "Recorded, ignored or malformed (counted): always `{}`")))]
pub async fn emqx_events(State(state): State<AppState>, body: Bytes) -> Json<serde_json::Value> {
    let parsed = serde_json::from_slice::<EmqxEvent>(&body).map_err(|e| e.to_string());
    let event = parsed
        .as_ref()
        .map_err(Clone::clone)
        .map(|e| ConnectionEvent {
            kind: &e.event,
            clientid: &e.clientid,
            connected_at: e.connected_at,
            disconnected_at: e.disconnected_at,
        });
    super::connection_webhook(
        &state,
        DIALECT,
        event,
        ["client.connected", "client.disconnected"],
    )
    .await
}

/// EMQX's authentication request (the template above).
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmqxAuthnRequest {
    pub clientid: String,
    pub username: String,
    pub password: String,
}

/// EMQX's authorization request (the template above).
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmqxAuthzRequest {
    pub clientid: String,
    pub username: String,
    /// `publish` or `subscribe`.
    pub action: String,
    pub topic: String,
    /// Required for `publish` (a number or a string).
    #[schema(value_type = Option<String>)]
    pub qos: Option<Loose>,
    /// Required for `publish` (a boolean or a string).
    #[schema(value_type = Option<String>)]
    pub retain: Option<Loose>,
}

/// EMQX's reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmqxReply {
    /// `allow` or `deny`.
    pub result: &'static str,
    /// Authentication only: the Tidings node identity is a superuser.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_superuser: Option<bool>,
}

fn reply(decision: Decision, authn: bool) -> Json<EmqxReply> {
    Json(EmqxReply {
        result: if decision.allowed() { "allow" } else { "deny" },
        is_superuser: authn.then_some(decision.superuser()),
    })
}

/// EMQX 5 HTTP authentication: may this CONNECT proceed?
#[utoipa::path(post, path = "/v1/hooks/emqx/authn", tag = "hooks",
    request_body(content = EmqxAuthnRequest, content_type = "application/json"),
    responses((status = 200, description = "allow (with is_superuser) or deny; malformed requests are denied", body = EmqxReply)))]
pub async fn emqx_authn(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<EmqxReply> {
    let decision = match parse_params::<EmqxAuthnRequest>(&headers, query.as_deref(), &body) {
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

/// EMQX 5 HTTP authorization: may this client publish or subscribe here?
#[utoipa::path(post, path = "/v1/hooks/emqx/authz", tag = "hooks",
    request_body(content = EmqxAuthzRequest, content_type = "application/json"),
    responses((status = 200, description = "allow or deny; malformed requests are denied", body = EmqxReply)))]
pub async fn emqx_authz(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Json<EmqxReply> {
    let decision = match parse_params::<EmqxAuthzRequest>(&headers, query.as_deref(), &body) {
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
            None => malformed(DIALECT, "access", "unknown action or missing qos/retain"),
        },
        Err(why) => malformed(DIALECT, "access", &why),
    };
    reply(decision, false)
}

/// EMQX always knows a publish's QoS and retain flag, so a template without them is a
/// configuration error, denied rather than guessed.
fn action(r: &EmqxAuthzRequest) -> Option<Action> {
    match r.action.as_str() {
        "subscribe" => Some(Action::Subscribe),
        "publish" => Some(Action::Publish {
            qos: r.qos.as_ref()?.as_qos()?,
            retain: r.retain.as_ref()?.as_flag()?,
        }),
        _ => None,
    }
}
