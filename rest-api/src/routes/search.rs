//! Search: messages (full text, only in the caller's conversations) and users.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::event::MessageView;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, AuthUser};
use crate::routes::conversations::membership;
use crate::state::AppState;

/// Search results are ranked, so they page by position; deep paging is capped because
/// nobody reads page 50 of a search and it costs the database the same as all 50.
const MAX_SEARCH_PAGE: u32 = 50;
const MAX_SEARCH_OFFSET: u32 = 1000;
const MAX_QUERY_BYTES: usize = 256;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search_messages))
        .routes(routes!(search_users))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    pub q: String,
    pub conversation_id: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Best match first.
    pub results: Vec<MessageView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Prefix of a username or display name.
    pub q: String,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserResult {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

fn check_query(q: &str) -> ApiResult<&str> {
    let q = q.trim();
    if q.is_empty() || q.len() > MAX_QUERY_BYTES {
        return Err(ApiError::invalid(format!(
            "q must be 1-{MAX_QUERY_BYTES} bytes"
        )));
    }
    Ok(q)
}

/// Full-text search over messages in the caller's conversations.
#[utoipa::path(get, path = "/v1/search", tag = "search", params(SearchQuery),
    responses((status = 200, body = SearchResults), (status = 404, description = "conversation unknown or not yours")), security(("bearer" = [])))]
pub async fn search_messages(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<SearchResults>> {
    let text = check_query(&q.q)?;
    if let Some(conv) = &q.conversation_id {
        membership(&state, conv, &auth.user_id).await?;
    }
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_SEARCH_PAGE);
    let offset = q.offset.unwrap_or(0).min(MAX_SEARCH_OFFSET);
    let results = state
        .store
        .search_messages(
            &auth.user_id,
            text,
            q.conversation_id.as_deref(),
            limit,
            offset,
        )
        .await?;
    let next_offset = (results.len() == limit as usize && offset + limit <= MAX_SEARCH_OFFSET)
        .then_some(offset + limit);
    Ok(Json(SearchResults {
        results,
        next_offset,
    }))
}

/// Find people by username or display-name prefix.
#[utoipa::path(get, path = "/v1/users", tag = "search", params(UserQuery),
    responses((status = 200, body = [UserResult])), security(("bearer" = [])))]
pub async fn search_users(
    State(state): State<AppState>,
    _auth: AuthUser,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> ApiResult<Json<Vec<UserResult>>> {
    let text = check_query(&q.q)?;
    let users = state
        .store
        .search_users(text, q.limit.unwrap_or(20).clamp(1, MAX_SEARCH_PAGE))
        .await?;
    Ok(Json(
        users
            .into_iter()
            .map(|u| UserResult {
                id: u.id,
                username: u.username,
                display_name: u.display_name,
            })
            .collect(),
    ))
}
