//! Catch-up: `GET /v1/sync?since={iseq}&limit=` replays the caller's inbox events after
//! `since`, as they were fanned out over MQTT (same events, same `iseq`), except that
//! messages appear as they are now: edited text replaces the original, deleted text is
//! gone.
//! A client calls it after reconnecting, or when it sees a gap in `iseq`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

use tidings_core::protocol::Event;

use crate::error::ApiResult;
use crate::extract::{ApiQuery, AuthUser};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SyncQuery {
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncResponse {
    pub events: Vec<Event>,
    /// The `since` to ask with next: the last returned `iseq` (or the given one).
    pub next: u64,
    pub has_more: bool,
}

/// The caller's inbox events after `since` (their `iseq`), oldest first.
#[utoipa::path(get, path = "/v1/sync", tag = "sync", params(SyncQuery), responses((status = 200, body = SyncResponse)), security(("bearer" = [])))]
pub async fn sync(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> ApiResult<Json<SyncResponse>> {
    let page =
        tidings_store::sync::sync_page(state.store.as_ref(), &auth.user_id, q.since, q.limit)
            .await?;
    Ok(Json(SyncResponse {
        events: page.events,
        next: page.next,
        has_more: page.has_more,
    }))
}
