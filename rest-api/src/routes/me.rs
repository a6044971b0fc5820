//! The caller's own account.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(me))
}

#[derive(Debug, Serialize)]
pub struct MeResponse {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub created_at: i64,
}

async fn me(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<MeResponse>> {
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
