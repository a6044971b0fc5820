//! Catch-up: `GET /v1/sync?since={iseq}&limit=` replays the caller's inbox events after
//! `since`, exactly as they were fanned out over MQTT (same bodies, same `iseq`).
//! A client calls it after reconnecting, or when it sees a gap in `iseq`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tidings_core::protocol::limits::MAX_PAGE;
use tidings_core::protocol::Event;

use crate::error::ApiResult;
use crate::extract::{ApiQuery, AuthUser};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(sync))
}

#[derive(Debug, Deserialize)]
pub struct SyncQuery {
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct SyncResponse {
    pub events: Vec<Event>,
    /// The `since` to ask with next: the last returned `iseq` (or the given one).
    pub next: u64,
    pub has_more: bool,
}

async fn sync(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> ApiResult<Json<SyncResponse>> {
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let mut rows = state
        .store
        .inbox_since(&auth.user_id, q.since, limit + 1)
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().map_or(q.since, |e| e.seq);
    let events = rows
        .into_iter()
        .map(|e| Event {
            v: 1,
            seq: Some(e.seq),
            re: None,
            body: e.body,
        })
        .collect();
    Ok(Json(SyncResponse {
        events,
        next,
        has_more,
    }))
}
