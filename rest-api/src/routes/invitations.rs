//! Invitations: what someone gets instead of being added to a group or room when their
//! "who may add me" setting (`PATCH /v1/me`, `group_adds`) does not let the adder add
//! them directly. Each one arrives as an `invitation` inbox event; the invitee accepts
//! (and joins with the role offered) or declines.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use tidings_core::protocol::event::Role;
use tidings_core::protocol::limits::MAX_GROUP_MEMBERS;
use tidings_store::now_ms;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;
use crate::routes::conversations::{rank, ConversationBody};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_invitations))
        .routes(routes!(accept_invitation))
        .routes(routes!(decline_invitation))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationBody {
    pub id: String,
    pub conversation_id: String,
    pub invited_by: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationList {
    pub invitations: Vec<InvitationBody>,
}

/// The caller's pending invitations, oldest first.
#[utoipa::path(get, path = "/v1/invitations", tag = "conversations",
    responses((status = 200, body = InvitationList)), security(("bearer" = [])))]
pub async fn list_invitations(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<Json<InvitationList>> {
    let invitations = state
        .store
        .invitations(&auth.user_id)
        .await?
        .into_iter()
        .map(|i| InvitationBody {
            id: i.id,
            conversation_id: i.conversation_id,
            invited_by: i.invited_by,
            role: i.role,
            created_at: i.created_at,
        })
        .collect();
    Ok(Json(InvitationList { invitations }))
}

/// Accept an invitation: join the conversation with the role offered. It must still
/// be valid: the inviter still an owner or admin there, and room for one more.
#[utoipa::path(post, path = "/v1/invitations/{id}/accept", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, body = ConversationBody), (status = 404, description = "no such invitation, or no longer valid")),
    security(("bearer" = [])))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ConversationBody>> {
    let invitation = state
        .store
        .take_invitation(&id, &auth.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such invitation"))?;
    let conv = invitation.conversation_id.as_str();
    let stale = || ApiError::not_found("this invitation is no longer valid");
    let inviter = state
        .store
        .member(conv, &invitation.invited_by)
        .await?
        .ok_or_else(stale)?;
    if rank(inviter.role) < rank(Role::Admin) {
        return Err(stale());
    }
    if state.store.members(conv).await?.len() >= MAX_GROUP_MEMBERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_GROUP_MEMBERS} members"
        )));
    }
    let deliveries = state
        .store
        .add_members(
            conv,
            &[(auth.user_id.clone(), invitation.role)],
            &invitation.invited_by,
            now_ms(),
        )
        .await?;
    state.sink.deliver(&deliveries);
    let conversation = state.store.conversation(conv).await?.ok_or_else(stale)?;
    let members = state.store.members(conv).await?;
    Ok(Json(ConversationBody::of(
        conversation,
        members,
        &auth.user_id,
    )))
}

/// Decline an invitation; the inviter is not told.
#[utoipa::path(post, path = "/v1/invitations/{id}/decline", tag = "conversations", params(("id" = String, Path)),
    responses((status = 204, description = "declined"), (status = 404, description = "no such invitation")),
    security(("bearer" = [])))]
pub async fn decline_invitation(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .take_invitation(&id, &auth.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such invitation"))?;
    Ok(StatusCode::NO_CONTENT)
}
