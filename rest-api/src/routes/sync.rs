//! Catch-up: `GET /v1/sync?since={iseq}&limit=` replays the caller's inbox events after
//! `since`, as they were fanned out over MQTT (same events, same `iseq`), except that
//! messages appear as they are now: edited text replaces the original, deleted text is
//! gone.
//! A client calls it after reconnecting, or when it sees a gap in `iseq`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tidings_core::protocol::limits::MAX_PAGE;
use utoipa_axum::{router::OpenApiRouter, routes};

use tidings_core::protocol::event::{EventBody, MessageView};
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
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let mut rows = state
        .store
        .inbox_since(&auth.user_id, q.since, limit + 1)
        .await?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().map_or(q.since, |e| e.seq);
    // Events are replayed with each message as it is now: an edit or a deletion meant
    // to remove text removes it from replays too (history already reads the rows).
    let message_ids: Vec<String> = rows
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Message(m) | EventBody::MessageUpdated(m) => Some(m.id.clone()),
            _ => None,
        })
        .collect();
    let current: HashMap<String, MessageView> = state
        .store
        .messages_by_ids(&message_ids)
        .await?
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let redact = |m: MessageView| match current.get(&m.id) {
        Some(now) => now.clone(),
        // The row is gone: replay nothing of what it said.
        None => MessageView {
            body: String::new(),
            mentions: Vec::new(),
            attachment: None,
            deleted: true,
            ..m
        },
    };
    let events = rows
        .into_iter()
        .map(|e| {
            let body = match e.body {
                EventBody::Message(m) => EventBody::Message(redact(m)),
                EventBody::MessageUpdated(m) => EventBody::MessageUpdated(redact(m)),
                other => other,
            };
            Event {
                v: 1,
                seq: Some(e.seq),
                re: None,
                body,
            }
        })
        .collect();
    Ok(Json(SyncResponse {
        events,
        next,
        has_more,
    }))
}
