//! The caller's own account.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_auth::password;
use tidings_core::protocol::ids::is_server_id;
use tidings_core::protocol::limits::PASSWORD_MAX;
use tidings_store::{now_ms, GroupAdds};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, delete_me, update_me))
        .routes(routes!(unread))
        .routes(routes!(blocks))
        .routes(routes!(block, unblock))
}

/// The users the caller blocked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BlockList {
    pub user_ids: Vec<String>,
}

/// Whom the caller blocked, oldest first.
#[utoipa::path(get, path = "/v1/me/blocks", tag = "account", responses((status = 200, body = BlockList)), security(("bearer" = [])))]
pub async fn blocks(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<BlockList>> {
    Ok(Json(BlockList {
        user_ids: state.store.blocked_users(&auth.user_id).await?,
    }))
}

/// Block a user: they can no longer open a direct conversation with the caller or send
/// into an existing one, and the caller stops seeing their typing and presence.
#[utoipa::path(put, path = "/v1/me/blocks/{user_id}", tag = "account", params(("user_id" = String, Path)),
    responses((status = 204, description = "blocked (or already)"), (status = 404, description = "no such user"), (status = 422, description = "invalid")),
    security(("bearer" = [])))]
pub async fn block(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    if user_id == auth.user_id {
        return Err(ApiError::invalid("you cannot block yourself"));
    }
    if !is_server_id(&user_id)
        || state
            .store
            .existing_users(std::slice::from_ref(&user_id))
            .await?
            .is_empty()
    {
        return Err(ApiError::not_found("no such user"));
    }
    state
        .store
        .set_block(&auth.user_id, &user_id, true, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unblock a user.
#[utoipa::path(delete, path = "/v1/me/blocks/{user_id}", tag = "account", params(("user_id" = String, Path)),
    responses((status = 204, description = "not blocked any more (or never was)")), security(("bearer" = [])))]
pub async fn unblock(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(user_id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .set_block(&auth.user_id, &user_id, false, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeleteAccountRequest {
    /// The account's password again: a stolen access token alone cannot delete it.
    pub password: String,
}

/// Delete the caller's account. Every session ends and every live connection closes;
/// the username, display name, password and devices are erased and the account leaves
/// every conversation (the members see it leave). Messages it sent stay, shown as from
/// a deleted user: see docs/ACCOUNTS.md for why.
#[utoipa::path(delete, path = "/v1/me", tag = "account", request_body = DeleteAccountRequest,
    responses((status = 204, description = "the account is deleted"), (status = 403, description = "wrong_password")),
    security(("bearer" = [])))]
pub async fn delete_me(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(req): ApiJson<DeleteAccountRequest>,
) -> ApiResult<StatusCode> {
    crate::state::rate_limit(&state.limits.auth, &auth.user_id).await?;
    let account = state
        .store
        .find_account(&auth.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "this account no longer exists"))?;
    let wrong = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_password",
            "the password is not this account's",
        )
    };
    if req.password.len() > PASSWORD_MAX {
        return Err(wrong());
    }
    let hash = state
        .store
        .credentials(&account.user.username)
        .await?
        .map(|c| c.password_hash)
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "this account no longer exists"))?;
    let given = req.password;
    if !crate::routes::auth::hashing(&state, move || password::verify(&given, &hash)).await? {
        return Err(wrong());
    }
    let deliveries = state.store.delete_account(&auth.user_id, now_ms()).await?;
    state.sink.deliver(&deliveries);
    tracing::info!(user = %auth.user_id, "account deleted by its owner");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub created_at: i64,
    /// Presence shows online/offline only, never when this user was last seen.
    pub hide_last_seen: bool,
    /// Who may add this user to groups without an invitation.
    #[schema(value_type = String)]
    pub group_adds: GroupAdds,
    /// The newest inbox `iseq`: a new device starts reading here instead of replaying
    /// the whole inbox (it fetches recent history per conversation as needed).
    pub inbox_seq: u64,
}

/// Changes to the caller's own profile; absent fields are left as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateMe {
    /// A new display name (same rules as at registration); `""` removes it.
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub hide_last_seen: Option<bool>,
    /// Who may add you to groups and rooms without asking: `everyone`, `contacts`
    /// (people who share a direct or private group conversation with you) or `nobody`;
    /// anyone else sends an invitation.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub group_adds: Option<GroupAdds>,
}

/// Change the caller's display name or privacy settings.
#[utoipa::path(patch, path = "/v1/me", tag = "account", request_body = UpdateMe,
    responses((status = 200, body = MeResponse), (status = 422, description = "invalid_display_name")),
    security(("bearer" = [])))]
pub async fn update_me(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(req): ApiJson<UpdateMe>,
) -> ApiResult<Json<MeResponse>> {
    let display_name = match req.display_name.as_deref() {
        Some(raw) => Some(crate::display_name::check(Some(raw))?),
        None => None,
    };
    if let Some(policy) = req.group_adds {
        state.store.set_group_adds(&auth.user_id, policy).await?;
    }
    if !state
        .store
        .update_profile(&auth.user_id, display_name, req.hide_last_seen)
        .await?
    {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "this account no longer exists",
        ));
    }
    me(State(state), auth).await
}

/// The caller's account.
#[utoipa::path(get, path = "/v1/me", tag = "account", responses((status = 200, body = MeResponse)), security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<MeResponse>> {
    let user =
        state.store.user(&auth.user_id).await?.ok_or_else(|| {
            ApiError::unauthorized("invalid_token", "this account no longer exists")
        })?;
    let hide_last_seen = state.store.hides_last_seen(&user.id).await?;
    let group_adds = state
        .store
        .group_adds(std::slice::from_ref(&user.id))
        .await?
        .pop()
        .map_or(GroupAdds::Everyone, |(_, p)| p);
    Ok(Json(MeResponse {
        id: user.id,
        username: user.username,
        display_name: user.display_name,
        created_at: user.created_at,
        hide_last_seen,
        group_adds,
        inbox_seq: state.store.inbox_head(&auth.user_id).await?,
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
