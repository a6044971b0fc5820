//! The caller's own account.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(unread))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub created_at: i64,
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/me", tag = "account", responses((status = 200, body = MeResponse)), security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<MeResponse>> {
    let user =
        state.store.user(&auth.user_id).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_token", "this account no longer exists")
        })?;
    Ok(Json(MeResponse {
        id: user.id,
        username: user.username,
        display_name: user.display_name,
        created_at: user.created_at,
    }))
}

/// Unread counts for an app badge; muted conversations do not count.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnreadResponse {
    pub messages: u64,
    pub conversations: u64,
}

#[utoipa::path(get, path = "/v1/me/unread", tag = "account", responses((status = 200, body = UnreadResponse)), security(("bearer" = [])))]
pub async fn unread(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<Json<UnreadResponse>> {
    let total = state.store.unread_total(&auth.user_id).await?;
    Ok(Json(UnreadResponse {
        messages: total.messages,
        conversations: total.conversations,
    }))
}
