//! Device credentials: long-lived secrets for devices and bots that speak only MQTT (or
//! call REST as a bot), so they never log in or refresh. The secret is shown once, at
//! creation; the server keeps its SHA-256. Revoking one closes its live connections at
//! once (it is a session, and ending a session is announced to the broker).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_auth::device;
use tidings_core::protocol::ids::{is_server_id, new_id};
use tidings_store::{now_ms, DeviceCredential, DeviceGrant};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices, create_device))
        .routes(routes!(revoke_device))
}

/// Longest credential name, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Most conversations one credential may be limited to.
const MAX_SCOPE: usize = 100;
/// Most live credentials per user: each is a password into the account.
const MAX_CREDENTIALS: usize = 50;

/// What a credential may do, as clients see and ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceMode {
    /// Send and receive (the default).
    #[default]
    SendReceive,
    /// Commands only; it cannot subscribe or read.
    SendOnly,
    /// Reading and `sync` only; it cannot send or type.
    ReceiveOnly,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeviceBody {
    /// What the owner calls it ("kitchen sensor"), 1-64 characters.
    pub name: String,
    /// Limit it to these conversations (the caller must be a member of each); absent
    /// means all of the caller's conversations, now and later.
    #[serde(default)]
    pub conversations: Option<Vec<String>>,
    #[serde(default)]
    pub mode: DeviceMode,
    /// Send `ack` events for its commands (default true; the PUBACK already means stored).
    #[serde(default = "yes")]
    pub acks: bool,
    /// Deliver its user's own messages back to it (default true).
    #[serde(default = "yes")]
    pub echo: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceBody {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversations: Option<Vec<String>>,
    pub mode: DeviceMode,
    pub acks: bool,
    pub echo: bool,
    pub created_at: i64,
}

/// A new credential: the only time its secret is ever shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedDevice {
    #[serde(flatten)]
    pub device: DeviceBody,
    /// The MQTT password (username: the user id) and REST bearer token.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceBody>,
}

impl From<DeviceCredential> for DeviceBody {
    fn from(c: DeviceCredential) -> Self {
        let mode = match (c.grant.can_send, c.grant.can_receive) {
            (true, false) => DeviceMode::SendOnly,
            (false, true) => DeviceMode::ReceiveOnly,
            _ => DeviceMode::SendReceive,
        };
        DeviceBody {
            id: c.id,
            name: c.name,
            conversations: c.grant.conversations,
            mode,
            acks: c.grant.acks,
            echo: c.grant.echo,
            created_at: c.created_at,
        }
    }
}

/// The caller's live device credentials, newest first (never their secrets).
#[utoipa::path(get, path = "/v1/me/devices", tag = "devices", responses((status = 200, body = DeviceList)), security(("bearer" = [])))]
pub async fn list_devices(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<Json<DeviceList>> {
    let devices = state.store.device_credentials(&auth.user_id).await?;
    Ok(Json(DeviceList {
        devices: devices.into_iter().map(DeviceBody::from).collect(),
    }))
}

/// Create a device credential. Use the returned `secret` as the MQTT password (with the
/// user id as username and `{user id}:{any device name}` as client id), or as a REST
/// bearer token.
#[utoipa::path(post, path = "/v1/me/devices", tag = "devices", request_body = NewDeviceBody,
    responses((status = 201, body = CreatedDevice), (status = 404, description = "a listed conversation is not the caller's"),
        (status = 409, description = "too many credentials"), (status = 422, description = "invalid")),
    security(("bearer" = [])))]
pub async fn create_device(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<NewDeviceBody>,
) -> ApiResult<(StatusCode, Json<CreatedDevice>)> {
    let name = body.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "name must be 1-{MAX_NAME_CHARS} characters with no control characters"
        )));
    }
    if let Some(convs) = &body.conversations {
        if convs.is_empty() || convs.len() > MAX_SCOPE {
            return Err(ApiError::invalid(format!(
                "conversations must list 1-{MAX_SCOPE} ids, or be left out for all"
            )));
        }
        let index = state.store.membership();
        for conv in convs {
            if !is_server_id(conv) || !index.is_member(conv, &auth.user_id) {
                return Err(ApiError::not_found("no such conversation"));
            }
        }
    }
    if state.store.device_credentials(&auth.user_id).await?.len() >= MAX_CREDENTIALS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_devices",
            format!("at most {MAX_CREDENTIALS} device credentials; revoke one first"),
        ));
    }
    let mut conversations = body.conversations;
    if let Some(c) = &mut conversations {
        c.sort();
        c.dedup();
    }
    let credential = DeviceCredential {
        id: new_id(),
        user_id: auth.user_id.clone(),
        name: name.to_owned(),
        grant: DeviceGrant {
            conversations,
            can_send: body.mode != DeviceMode::ReceiveOnly,
            can_receive: body.mode != DeviceMode::SendOnly,
            acks: body.acks,
            echo: body.echo,
        },
        created_at: now_ms(),
    };
    let secret = device::new_secret();
    state
        .store
        .create_device_credential(&credential, &device::secret_hash(&secret))
        .await?;
    tracing::info!(user = %auth.user_id, credential = %credential.id, "device credential created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedDevice {
            device: credential.into(),
            secret,
        }),
    ))
}

/// Revoke a device credential: it stops working at once and its live MQTT connections
/// are closed.
#[utoipa::path(delete, path = "/v1/me/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 404, description = "no such credential")),
    security(("bearer" = [])))]
pub async fn revoke_device(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let owned = state
        .store
        .device_credential(&id)
        .await?
        .is_some_and(|c| c.user_id == auth.user_id);
    if !owned || !state.store.revoke_session(&id, now_ms()).await? {
        return Err(ApiError::not_found("no such device credential"));
    }
    tracing::info!(user = %auth.user_id, credential = %id, "device credential revoked");
    Ok(StatusCode::NO_CONTENT)
}
