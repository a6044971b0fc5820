//! RabbitMQ `rabbitmq_auth_backend_http` (the MQTT plugin authenticating through it).
//!
//! RabbitMQ asks four questions, by GET query string (its default) or by a form POST
//! (`auth_http.http_method = post`), and reads a plain-text body: `allow` or `deny`,
//! always with status 200 (this dialect has no JSON). The topic ACL arrives as
//! `topic_path` with the MQTT topic turned into an AMQP routing key (`/` -> `.`,
//! `+` -> `*`); it is turned back before the decision. RabbitMQ does not tell the hook a
//! publish's QoS or retain flag, so publishes are judged as QoS 1, not retained: turn
//! off the retained-message store (docs/DEPLOY.md). Before 3.13 RabbitMQ speaks no MQTT 5
//! and has no `$share`, so Tidings' workers cannot take their share of ingress through
//! it; these hooks still guard the clients.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use serde::Deserialize;
use tidings_store::acl::parse_client_id;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{decide, malformed, parse_params, record, Action, Decision, DenyReason, Question};
use crate::state::AppState;

const DIALECT: &str = "rabbitmq";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(rabbitmq_user, rabbitmq_user_get))
        .routes(routes!(rabbitmq_vhost, rabbitmq_vhost_get))
        .routes(routes!(rabbitmq_resource, rabbitmq_resource_get))
        .routes(routes!(rabbitmq_topic, rabbitmq_topic_get))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    pub username: String,
    pub password: String,
    /// Sent by the MQTT plugin (3.10+); required for users.
    pub client_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VhostQuery {
    pub username: String,
    pub vhost: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResourceQuery {
    pub username: String,
    pub vhost: String,
    /// `queue`, `exchange` or `topic`.
    pub resource: String,
    pub name: String,
    /// `configure`, `write` or `read`.
    pub permission: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopicQuery {
    pub username: String,
    pub vhost: String,
    pub name: String,
    /// `read` (subscribe) or `write` (publish).
    pub permission: String,
    /// The MQTT topic as an AMQP routing key (`u.<id>.out`).
    pub routing_key: String,
    #[serde(rename = "variable_map.client_id", alias = "client_id")]
    pub client_id: Option<String>,
}

fn text(decision: Decision) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        if decision.allowed() { "allow" } else { "deny" },
    )
}

/// RabbitMQ `user_path`: may this user log in (CONNECT)?
#[utoipa::path(post, path = "/v1/hooks/rabbitmq/user", tag = "hooks", params(UserQuery),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the same fields as a form (auth_http.http_method = post), or none with GET"),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> impl IntoResponse {
    let decision = match parse_params::<UserQuery>(&headers, query.as_deref(), &body) {
        Ok(r) => {
            // The node identity may connect under any client id; a user needs theirs.
            let client_id = r.client_id.as_deref().unwrap_or_default();
            let question = Question::Connect {
                client_id,
                username: &r.username,
                password: &r.password,
            };
            record(DIALECT, "connect", decide(&state, &question).await)
        }
        Err(why) => malformed(DIALECT, "connect", &why),
    };
    text(decision)
}

/// The same question asked with GET and a query string (the broker's default method).
#[utoipa::path(get, path = "/v1/hooks/rabbitmq/user", operation_id = "rabbitmq_user_get", tag = "hooks", params(UserQuery),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_user_get(
    state: State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> impl IntoResponse {
    rabbitmq_user(state, headers, query, Bytes::new()).await
}

/// RabbitMQ `vhost_path`: may this user use the virtual host? Only the configured one.
#[utoipa::path(post, path = "/v1/hooks/rabbitmq/vhost", tag = "hooks", params(VhostQuery),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the same fields as a form (auth_http.http_method = post), or none with GET"),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_vhost(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> impl IntoResponse {
    let decision = match parse_params::<VhostQuery>(&headers, query.as_deref(), &body) {
        Ok(r) => record(
            DIALECT,
            "vhost",
            vhost_decision(&state, &r.username, &r.vhost),
        ),
        Err(why) => malformed(DIALECT, "vhost", &why),
    };
    text(decision)
}

/// The same question asked with GET and a query string (the broker's default method).
#[utoipa::path(get, path = "/v1/hooks/rabbitmq/vhost", operation_id = "rabbitmq_vhost_get", tag = "hooks", params(VhostQuery),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_vhost_get(
    state: State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> impl IntoResponse {
    rabbitmq_vhost(state, headers, query, Bytes::new()).await
}

fn vhost_decision(state: &AppState, username: &str, vhost: &str) -> Decision {
    if vhost != state.hooks.rabbitmq_vhost {
        return Decision::Deny(DenyReason::Acl);
    }
    if username == state.hooks.node_username {
        return Decision::Allow { superuser: true };
    }
    if tidings_core::protocol::ids::is_server_id(username) {
        Decision::Allow { superuser: false }
    } else {
        Decision::Deny(DenyReason::OtherUser)
    }
}

/// RabbitMQ `resource_path`: the AMQP objects the MQTT plugin uses for a client. A user
/// may use the `amq.topic` exchange (topics are judged by `topic_path`) and the
/// subscription queues named after their own client ids; nothing else.
#[utoipa::path(post, path = "/v1/hooks/rabbitmq/resource", tag = "hooks", params(ResourceQuery),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the same fields as a form (auth_http.http_method = post), or none with GET"),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_resource(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> impl IntoResponse {
    let decision = match parse_params::<ResourceQuery>(&headers, query.as_deref(), &body) {
        Ok(r) => {
            let decision = match vhost_decision(&state, &r.username, &r.vhost) {
                Decision::Allow { superuser: true } => Decision::Allow { superuser: true },
                Decision::Allow { superuser: false } => resource_decision(&r),
                deny => deny,
            };
            record(DIALECT, "resource", decision)
        }
        Err(why) => malformed(DIALECT, "resource", &why),
    };
    text(decision)
}

/// The same question asked with GET and a query string (the broker's default method).
#[utoipa::path(get, path = "/v1/hooks/rabbitmq/resource", operation_id = "rabbitmq_resource_get", tag = "hooks", params(ResourceQuery),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_resource_get(
    state: State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> impl IntoResponse {
    rabbitmq_resource(state, headers, query, Bytes::new()).await
}

fn resource_decision(r: &ResourceQuery) -> Decision {
    let allowed = match r.resource.as_str() {
        "exchange" => r.name == "amq.topic" && matches!(r.permission.as_str(), "read" | "write"),
        "queue" => r
            .name
            .strip_prefix("mqtt-subscription-")
            .and_then(|rest| rest.rsplit_once("qos"))
            .and_then(|(client_id, _)| parse_client_id(client_id))
            .is_some_and(|(user, _)| user == r.username),
        _ => false,
    };
    if allowed {
        Decision::Allow { superuser: false }
    } else {
        Decision::Deny(DenyReason::Acl)
    }
}

/// RabbitMQ `topic_path`: may this client read (subscribe) or write (publish) the topic?
#[utoipa::path(post, path = "/v1/hooks/rabbitmq/topic", tag = "hooks", params(TopicQuery),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the same fields as a form (auth_http.http_method = post), or none with GET"),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_topic(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> impl IntoResponse {
    let decision = match parse_params::<TopicQuery>(&headers, query.as_deref(), &body) {
        Ok(r) if r.name != "amq.topic" || r.vhost != state.hooks.rabbitmq_vhost => {
            record(DIALECT, "access", Decision::Deny(DenyReason::Acl))
        }
        Ok(r) => {
            let action = match r.permission.as_str() {
                "read" => Some(Action::Subscribe),
                "write" => Some(Action::Publish {
                    qos: 1,
                    retain: false,
                }),
                _ => None,
            };
            match action {
                Some(action) => {
                    let topic = mqtt_topic(&r.routing_key);
                    let question = Question::Access {
                        client_id: r.client_id.as_deref().unwrap_or_default(),
                        username: &r.username,
                        action,
                        topic: &topic,
                    };
                    record(DIALECT, "access", decide(&state, &question).await)
                }
                None => malformed(DIALECT, "access", "permission"),
            }
        }
        Err(why) => malformed(DIALECT, "access", &why),
    };
    text(decision)
}

/// The same question asked with GET and a query string (the broker's default method).
#[utoipa::path(get, path = "/v1/hooks/rabbitmq/topic", operation_id = "rabbitmq_topic_get", tag = "hooks", params(TopicQuery),
    responses((status = 200, description = "text: allow or deny", content_type = "text/plain", body = String)))]
pub async fn rabbitmq_topic_get(
    state: State<AppState>,
    headers: HeaderMap,
    query: RawQuery,
) -> impl IntoResponse {
    rabbitmq_topic(state, headers, query, Bytes::new()).await
}

/// The MQTT topic of an AMQP routing key, as RabbitMQ's MQTT plugin maps them
/// (`/` <-> `.`, `+` -> `*`; `#` stays).
fn mqtt_topic(routing_key: &str) -> String {
    routing_key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            '*' => '+',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::mqtt_topic;

    #[test]
    fn routing_keys_become_mqtt_topics() {
        assert_eq!(mqtt_topic("u.01H.out"), "u/01H/out");
        assert_eq!(mqtt_topic("c.01H.t.*"), "c/01H/t/+");
        assert_eq!(mqtt_topic("u.#"), "u/#");
    }
}
