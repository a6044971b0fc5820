//! Push registration: a session says how to wake it when it is not connected.
//!
//! One target per session (registering again replaces it, which is how a rotated APNs
//! or FCM token is handed in), tied to the session so that logout, revocation and
//! account deletion end it. A token registered by another session, of any user, moves:
//! the previous owner's row (and every push still queued for it) is gone, so the next
//! user of a phone never sees the previous user's pushes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::ids::new_id;
use tidings_store::{now_ms, PushPlatform, PushTarget};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_push_targets, register_push, unregister_push))
        .routes(routes!(get_push_settings, set_push_settings))
}

/// Longest language tag (BCP 47 tags in practice stay far below).
const MAX_LANG_CHARS: usize = 35;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Apns,
    Fcm,
    Webpush,
    /// A Matrix push gateway the operator configured (`push.gateway_url`).
    Gateway,
}

impl From<Platform> for PushPlatform {
    fn from(p: Platform) -> Self {
        match p {
            Platform::Apns => PushPlatform::Apns,
            Platform::Fcm => PushPlatform::Fcm,
            Platform::Webpush => PushPlatform::Webpush,
            Platform::Gateway => PushPlatform::Gateway,
        }
    }
}

impl From<PushPlatform> for Platform {
    fn from(p: PushPlatform) -> Self {
        match p {
            PushPlatform::Apns => Platform::Apns,
            PushPlatform::Fcm => Platform::Fcm,
            PushPlatform::Webpush => Platform::Webpush,
            PushPlatform::Gateway => Platform::Gateway,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterPushBody {
    pub platform: Platform,
    /// The APNs device token, FCM registration token, Web Push endpoint URL, or the
    /// gateway pushkey.
    pub token: String,
    /// The app (bundle id, package name) the token belongs to.
    pub app_id: String,
    /// Provider-specific settings, a JSON object (a Web Push subscription's `keys`).
    #[serde(default)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// The device's language, for any text the server adds.
    #[serde(default)]
    pub lang: Option<String>,
    /// Put the sender and message text in pushes (default false: ids only, and the app
    /// fetches the message itself).
    #[serde(default)]
    pub full_text: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PushTargetBody {
    pub id: String,
    pub platform: Platform,
    pub app_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    pub full_text: bool,
    /// Whether it is the calling session's own target.
    pub this_session: bool,
    pub created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PushTargetList {
    pub targets: Vec<PushTargetBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// Mentions of the user and replies to them still push from muted and archived
    /// conversations (default true).
    pub breakthrough: bool,
}

fn body_of(t: PushTarget, session: &str) -> PushTargetBody {
    PushTargetBody {
        this_session: t.session_id == session,
        id: t.id,
        platform: t.platform.into(),
        app_id: t.app_id,
        lang: t.lang,
        full_text: t.full_text,
        created_at: t.created_at,
    }
}

/// The caller's push targets, one per session that registered (tokens are not shown).
#[utoipa::path(get, path = "/v1/me/push", tag = "push", responses((status = 200, body = PushTargetList)), security(("bearer" = [])))]
pub async fn list_push_targets(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<Json<PushTargetList>> {
    let targets = state.store.push_targets(&auth.user_id).await?;
    Ok(Json(PushTargetList {
        targets: targets
            .into_iter()
            .map(|t| body_of(t, &auth.session_id))
            .collect(),
    }))
}

/// Register (or replace) the calling session's push target. The same token registered
/// by another session is moved to this one.
#[utoipa::path(put, path = "/v1/me/push", tag = "push", request_body = RegisterPushBody,
    responses((status = 200, body = PushTargetBody),
        (status = 422, description = "invalid, or a platform this server does not push to")),
    security(("bearer" = [])))]
pub async fn register_push(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<RegisterPushBody>,
) -> ApiResult<Json<PushTargetBody>> {
    let limits = &state.push;
    let platform = PushPlatform::from(body.platform);
    if !limits.platforms.contains(&platform) {
        return Err(ApiError::invalid(format!(
            "this server does not push to platform {}; it pushes to: [{}]",
            platform.as_str(),
            limits
                .platforms
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let printable = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    if !printable(&body.token) || body.token.len() > limits.max_token_len {
        return Err(ApiError::invalid(format!(
            "token must be 1-{} bytes with no control characters",
            limits.max_token_len
        )));
    }
    if !printable(&body.app_id) || body.app_id.len() > limits.max_app_id_len {
        return Err(ApiError::invalid(format!(
            "app_id must be 1-{} bytes with no control characters",
            limits.max_app_id_len
        )));
    }
    if let Some(lang) = &body.lang {
        let ok = !lang.is_empty()
            && lang.chars().count() <= MAX_LANG_CHARS
            && lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(ApiError::invalid(format!(
                "lang must be a language tag (letters, digits, '-'), 1-{MAX_LANG_CHARS} characters"
            )));
        }
    }
    let data = serde_json::Value::Object(body.data.unwrap_or_default());
    let data_json = data.to_string();
    if data_json.len() > limits.max_data_bytes {
        return Err(ApiError::invalid(format!(
            "data must be at most {} bytes of JSON",
            limits.max_data_bytes
        )));
    }
    if let Some(check) = &limits.check {
        check(platform, &body.token, &data).map_err(ApiError::invalid)?;
    }
    let target = PushTarget {
        id: new_id(),
        session_id: auth.session_id.clone(),
        user_id: auth.user_id.clone(),
        platform,
        token: body.token,
        app_id: body.app_id,
        data: data_json,
        lang: body.lang,
        full_text: body.full_text,
        created_at: now_ms(),
        badge_sent: None,
        badge_at: None,
    };
    state.store.register_push_target(&target).await?;
    Ok(Json(body_of(target, &auth.session_id)))
}

/// Remove the calling session's push target (logging out does this too).
#[utoipa::path(delete, path = "/v1/me/push", tag = "push",
    responses((status = 204, description = "removed"), (status = 404, description = "this session has no push target")),
    security(("bearer" = [])))]
pub async fn unregister_push(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<StatusCode> {
    if state.store.remove_push_target(&auth.session_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("this session has no push target"))
    }
}

/// The caller's push settings.
#[utoipa::path(get, path = "/v1/me/push/settings", tag = "push", responses((status = 200, body = PushSettings)), security(("bearer" = [])))]
pub async fn get_push_settings(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<Json<PushSettings>> {
    Ok(Json(PushSettings {
        breakthrough: state.store.push_breakthrough(&auth.user_id).await?,
    }))
}

/// Change the caller's push settings.
#[utoipa::path(put, path = "/v1/me/push/settings", tag = "push", request_body = PushSettings,
    responses((status = 200, body = PushSettings)), security(("bearer" = [])))]
pub async fn set_push_settings(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(body): ApiJson<PushSettings>,
) -> ApiResult<Json<PushSettings>> {
    if !state
        .store
        .set_push_breakthrough(&auth.user_id, body.breakthrough)
        .await?
    {
        return Err(ApiError::not_found("user"));
    }
    Ok(Json(body))
}
