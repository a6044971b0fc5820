//! Conversations: direct (one per pair), private groups and public rooms; the caller's
//! list with last message and unread count; names, topics, members and roles; leaving,
//! joining rooms; archive and mute per member.
//!
//! Roles rank owner > admin > member. Owners and admins rename, set the topic and add
//! members; a member may be removed by anyone who outranks them (so an admin can never
//! remove an owner); only owners change roles; the last owner cannot leave or step down
//! while others remain (hand ownership over first). Direct conversations have no roles
//! to manage and cannot be left (archive them instead).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::event::{ConversationKind, MessageView, Role};
use tidings_core::protocol::ids::{is_server_id, new_id};
use tidings_core::protocol::limits::{
    DEFAULT_PAGE, MAX_CONVERSATION_NAME_BYTES, MAX_CONVERSATION_TOPIC_BYTES, MAX_GROUP_MEMBERS,
    MAX_PAGE,
};
use tidings_store::{
    now_ms, ActivityPage, Conversation, ConversationSummary, Departure, GroupAdds, Member,
    NewConversation,
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, AuthUser};
use crate::state::{rate_limit, AppState};

/// What a blocked user hears when reaching for the blocker (the broker says the same).
pub const BLOCKED_MESSAGE: &str = "this user does not accept your messages";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update))
        .routes(routes!(members, add_members))
        .routes(routes!(remove_member))
        .routes(routes!(set_role))
        .routes(routes!(leave))
        .routes(routes!(join))
        .routes(routes!(set_flags))
        .routes(routes!(rooms))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateConversation {
    pub kind: ConversationKind,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    /// The other members (the caller is always added).
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberBody {
    pub user_id: String,
    pub role: Role,
    /// Read and delivery markers: absent for other members of public rooms, where
    /// anyone who joins would otherwise learn when each member reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_seq: Option<u64>,
    pub joined_at: i64,
}

impl MemberBody {
    /// `m` as `viewer` may see it in a conversation of `kind`.
    fn seen_by(m: Member, kind: ConversationKind, viewer: &str) -> Self {
        let markers = kind != ConversationKind::Room || m.user_id == viewer;
        MemberBody {
            read_seq: markers.then_some(m.read_seq),
            delivered_seq: markers.then_some(m.delivered_seq),
            user_id: m.user_id,
            role: m.role,
            joined_at: m.joined_at,
        }
    }

    fn list(members: Vec<Member>, kind: ConversationKind, viewer: &str) -> Vec<Self> {
        members
            .into_iter()
            .map(|m| Self::seen_by(m, kind, viewer))
            .collect()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationBody {
    pub id: String,
    pub kind: ConversationKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub last_seq: u64,
    pub last_activity_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberBody>>,
}

impl ConversationBody {
    /// For other modules (invitations): with members as `viewer` may see them.
    pub(crate) fn of(c: Conversation, members: Vec<Member>, viewer: &str) -> Self {
        Self::with_members(c, members, viewer)
    }

    /// With its members as `viewer` may see them.
    fn with_members(c: Conversation, members: Vec<Member>, viewer: &str) -> Self {
        let kind = c.kind;
        let mut body = Self::new(c, None);
        body.members = Some(MemberBody::list(members, kind, viewer));
        body
    }

    fn new(c: Conversation, members: Option<Vec<MemberBody>>) -> Self {
        ConversationBody {
            id: c.id,
            kind: c.kind,
            name: c.name,
            topic: c.topic,
            created_by: c.created_by,
            created_at: c.created_at,
            last_seq: c.last_seq,
            last_activity_at: c.last_activity_at,
            members,
        }
    }
}

/// One row of the caller's conversation list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationListItem {
    #[serde(flatten)]
    pub conversation: ConversationBody,
    pub role: Role,
    pub unread: u64,
    pub read_seq: u64,
    pub archived: bool,
    pub muted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageView>,
}

impl From<ConversationSummary> for ConversationListItem {
    fn from(s: ConversationSummary) -> Self {
        ConversationListItem {
            conversation: ConversationBody::new(s.conversation, None),
            role: s.member.role,
            unread: s.unread,
            read_seq: s.member.read_seq,
            archived: s.member.archived,
            muted: s.member.muted,
            last_message: s.last_message,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationListItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
    pub limit: Option<u32>,
    /// true: only archived; false: only not archived; absent: all.
    pub archived: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateConversation {
    /// New name; `""` clears it; absent leaves it.
    pub name: Option<String>,
    pub topic: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddMembers {
    pub user_ids: Vec<String>,
    /// Role for the new members (default member); only owners may grant admin or owner.
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SetRole {
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SetFlags {
    pub archived: Option<bool>,
    pub muted: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipBody {
    pub archived: bool,
    pub muted: bool,
    pub role: Role,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsQuery {
    /// The last room id of the previous page.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomItem {
    #[serde(flatten)]
    pub conversation: ConversationBody,
    pub member_count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<RoomItem>,
}

pub(crate) fn rank(role: Role) -> u8 {
    match role {
        Role::Owner => 3,
        Role::Admin => 2,
        Role::Member => 1,
    }
}

fn bounded(field: &str, value: Option<String>, max: usize) -> ApiResult<Option<String>> {
    let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if value.as_ref().is_some_and(|v| v.len() > max) {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {max} bytes"
        )));
    }
    Ok(value)
}

fn page_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// The conversation and the caller's membership; 404 for outsiders, so conversation ids
/// reveal nothing to them.
pub async fn membership(
    state: &AppState,
    conv: &str,
    user: &str,
) -> ApiResult<(Conversation, Member)> {
    let not_found = || ApiError::not_found("no such conversation");
    if !is_server_id(conv) {
        return Err(not_found());
    }
    let member = state
        .store
        .member(conv, user)
        .await?
        .ok_or_else(not_found)?;
    let conversation = state
        .store
        .conversation(conv)
        .await?
        .ok_or_else(not_found)?;
    Ok((conversation, member))
}

/// Splits `users` whom `adder` wants in a group or room by each one's "who may add me"
/// setting: those added at once, and those who get an invitation instead. Users who
/// blocked `adder` are in neither: they hear nothing from them.
async fn consent(
    state: &AppState,
    adder: &str,
    users: Vec<String>,
) -> ApiResult<(Vec<String>, Vec<String>)> {
    if users.is_empty() {
        return Ok((users, Vec::new()));
    }
    let policies: std::collections::HashMap<String, GroupAdds> =
        state.store.group_adds(&users).await?.into_iter().collect();
    let index = state.store.membership();
    let (mut added, mut invited) = (Vec::new(), Vec::new());
    for user in users {
        if index.has_blocked(&user, adder) {
            continue;
        }
        let allowed = match policies.get(&user).copied().unwrap_or(GroupAdds::Everyone) {
            GroupAdds::Everyone => true,
            GroupAdds::Contacts => index.share_conversation(adder, &user),
            GroupAdds::Nobody => false,
        };
        if allowed {
            added.push(user);
        } else {
            invited.push(user);
        }
    }
    Ok((added, invited))
}

/// Valid, existing user ids other than `me`, deduplicated.
async fn other_users(state: &AppState, me: &str, ids: Vec<String>) -> ApiResult<Vec<String>> {
    let mut others: Vec<String> = Vec::new();
    for id in ids {
        if !is_server_id(&id) {
            return Err(ApiError::invalid(format!("{id:?} is not a user id")));
        }
        if id != me && !others.contains(&id) {
            others.push(id);
        }
    }
    if others.len() + 1 > MAX_GROUP_MEMBERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_GROUP_MEMBERS} members"
        )));
    }
    let found = state.store.existing_users(&others).await?;
    if let Some(missing) = others.iter().find(|id| !found.contains(id)) {
        return Err(ApiError::invalid(format!("no user {missing}")));
    }
    Ok(others)
}

/// Create a conversation. A direct one that exists for the pair is returned (200).
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", request_body = CreateConversation,
    responses((status = 201, body = ConversationBody), (status = 200, description = "the existing direct conversation", body = ConversationBody), (status = 422, description = "invalid"), (status = 429, description = "rate_limited")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(req): ApiJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<ConversationBody>)> {
    let name = bounded("name", req.name, MAX_CONVERSATION_NAME_BYTES)?;
    let topic = bounded("topic", req.topic, MAX_CONVERSATION_TOPIC_BYTES)?;
    let others = other_users(&state, &auth.user_id, req.members).await?;
    if req.kind == ConversationKind::Direct && others.len() != 1 {
        return Err(ApiError::invalid(
            "a direct conversation has exactly one other member",
        ));
    }
    if req.kind == ConversationKind::Direct
        && others
            .iter()
            .any(|o| state.store.membership().has_blocked(o, &auth.user_id))
    {
        return Err(ApiError::forbidden(BLOCKED_MESSAGE));
    }
    let creator_role = if req.kind == ConversationKind::Direct {
        Role::Member
    } else {
        Role::Owner
    };
    let (others, invited) = if req.kind == ConversationKind::Direct {
        (others, Vec::new())
    } else {
        consent(&state, &auth.user_id, others).await?
    };
    let mut members = vec![(auth.user_id.clone(), creator_role)];
    members.extend(others.into_iter().map(|u| (u, Role::Member)));
    rate_limit(&state.limits.conversations, &auth.user_id).await?;
    let created = state
        .store
        .create_conversation(NewConversation {
            id: new_id(),
            kind: req.kind,
            name,
            topic,
            created_by: auth.user_id.clone(),
            members,
            created_at: now_ms(),
        })
        .await?;
    state.sink.deliver(&created.deliveries);
    let invited: Vec<(String, Role)> = invited.into_iter().map(|u| (u, Role::Member)).collect();
    if created.created && !invited.is_empty() {
        let deliveries = state
            .store
            .invite(&created.conversation.id, &invited, &auth.user_id, now_ms())
            .await?;
        state.sink.deliver(&deliveries);
    }
    let members = state.store.members(&created.conversation.id).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(ConversationBody::with_members(
            created.conversation,
            members,
            &auth.user_id,
        )),
    ))
}

fn parse_cursor(cursor: &str) -> ApiResult<(i64, String)> {
    cursor
        .split_once('_')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
        .filter(|(_, id)| is_server_id(id))
        .ok_or_else(|| ApiError::invalid("bad cursor"))
}

/// The caller's conversations, most recent activity first, with unread counts.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, body = ConversationList)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<ConversationList>> {
    let limit = page_limit(q.limit);
    let before = q.cursor.as_deref().map(parse_cursor).transpose()?;
    let rows = state
        .store
        .list_conversations(
            &auth.user_id,
            &ActivityPage {
                before,
                limit,
                archived: q.archived,
            },
        )
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| {
            rows.last()
                .map(|s| format!("{}_{}", s.conversation.last_activity_at, s.conversation.id))
        })
        .flatten();
    Ok(Json(ConversationList {
        conversations: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// One conversation with its members (members only; anyone may see a public room).
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, body = ConversationBody), (status = 404, description = "unknown, or not yours")), security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ConversationBody>> {
    let conversation = match membership(&state, &id, &auth.user_id).await {
        Ok((c, _)) => c,
        Err(e) => match state.store.conversation(&id).await? {
            Some(c) if c.kind == ConversationKind::Room => c,
            _ => return Err(e),
        },
    };
    let members = state.store.members(&id).await?;
    Ok(Json(ConversationBody::with_members(
        conversation,
        members,
        &auth.user_id,
    )))
}

/// Rename or set the topic (owners and admins of groups and rooms).
#[utoipa::path(patch, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = String, Path)), request_body = UpdateConversation,
    responses((status = 200, body = ConversationBody), (status = 403, description = "not an owner or admin"), (status = 429, description = "rate_limited")), security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateConversation>,
) -> ApiResult<Json<ConversationBody>> {
    let (conv, me) = membership(&state, &id, &auth.user_id).await?;
    if conv.kind == ConversationKind::Direct {
        return Err(ApiError::invalid(
            "direct conversations have no name or topic",
        ));
    }
    if rank(me.role) < rank(Role::Admin) {
        return Err(ApiError::forbidden(
            "only owners and admins may rename or set the topic",
        ));
    }
    let name = match req.name {
        Some(n) => bounded("name", Some(n), MAX_CONVERSATION_NAME_BYTES)?,
        None => conv.name,
    };
    let topic = match req.topic {
        Some(t) => bounded("topic", Some(t), MAX_CONVERSATION_TOPIC_BYTES)?,
        None => conv.topic,
    };
    rate_limit(&state.limits.renames, &id).await?;
    let (updated, deliveries) = state
        .store
        .update_conversation(&id, name, topic, now_ms())
        .await?;
    state.sink.deliver(&deliveries);
    Ok(Json(ConversationBody::new(updated, None)))
}

/// Current members (members only).
#[utoipa::path(get, path = "/v1/conversations/{id}/members", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, body = [MemberBody])), security(("bearer" = [])))]
pub async fn members(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<MemberBody>>> {
    let (conv, _) = membership(&state, &id, &auth.user_id).await?;
    Ok(Json(MemberBody::list(
        state.store.members(&id).await?,
        conv.kind,
        &auth.user_id,
    )))
}

/// Add members (owners and admins; owners alone may add admins or owners).
#[utoipa::path(post, path = "/v1/conversations/{id}/members", tag = "conversations", params(("id" = String, Path)), request_body = AddMembers,
    responses((status = 200, body = [MemberBody]), (status = 403, description = "not allowed"), (status = 429, description = "rate_limited")), security(("bearer" = [])))]
pub async fn add_members(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddMembers>,
) -> ApiResult<Json<Vec<MemberBody>>> {
    let (conv, me) = membership(&state, &id, &auth.user_id).await?;
    if conv.kind == ConversationKind::Direct {
        return Err(ApiError::invalid(
            "a direct conversation has exactly two members; start a group instead",
        ));
    }
    let role = req.role.unwrap_or(Role::Member);
    if rank(me.role) < rank(Role::Admin) || (role != Role::Member && me.role != Role::Owner) {
        return Err(ApiError::forbidden(
            "only owners and admins add members, and only owners grant roles",
        ));
    }
    let users = other_users(&state, &auth.user_id, req.user_ids).await?;
    rate_limit(&state.limits.member_adds, &auth.user_id).await?;
    let (users, invited) = consent(&state, &auth.user_id, users).await?;
    if !invited.is_empty() {
        let invited: Vec<(String, Role)> = invited.into_iter().map(|u| (u, role)).collect();
        let deliveries = state
            .store
            .invite(&id, &invited, &auth.user_id, now_ms())
            .await?;
        state.sink.deliver(&deliveries);
    }
    let current = state.store.members(&id).await?.len();
    if current + users.len() > MAX_GROUP_MEMBERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_GROUP_MEMBERS} members"
        )));
    }
    let users: Vec<(String, Role)> = users.into_iter().map(|u| (u, role)).collect();
    let deliveries = state
        .store
        .add_members(&id, &users, &auth.user_id, now_ms())
        .await?;
    state.sink.deliver(&deliveries);
    Ok(Json(MemberBody::list(
        state.store.members(&id).await?,
        conv.kind,
        &auth.user_id,
    )))
}

/// Remove a member: allowed to anyone who outranks them (owners may remove owners).
#[utoipa::path(delete, path = "/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 403, description = "not allowed"), (status = 404, description = "no such member")), security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    if user_id == auth.user_id {
        return leave(State(state), auth, Path(id)).await;
    }
    let (conv, me) = membership(&state, &id, &auth.user_id).await?;
    if conv.kind == ConversationKind::Direct {
        return Err(ApiError::invalid(
            "nobody can be removed from a direct conversation",
        ));
    }
    let target = state
        .store
        .member(&id, &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such member"))?;
    let allowed = rank(me.role) >= rank(Role::Admin)
        && (rank(me.role) > rank(target.role) || me.role == Role::Owner);
    if !allowed {
        return Err(ApiError::forbidden(
            "you may only remove members ranked below you",
        ));
    }
    let deliveries = state
        .store
        .remove_member(&id, &user_id, Departure::Removed, &auth.user_id, now_ms())
        .await?;
    state.sink.deliver(&deliveries);
    Ok(StatusCode::NO_CONTENT)
}

/// Change a member's role (owners only; the last owner cannot step down).
#[utoipa::path(put, path = "/v1/conversations/{id}/members/{user_id}/role", tag = "conversations",
    params(("id" = String, Path), ("user_id" = String, Path)), request_body = SetRole,
    responses((status = 200, body = MemberBody), (status = 403, description = "not an owner"), (status = 409, description = "last owner")), security(("bearer" = [])))]
pub async fn set_role(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((id, user_id)): Path<(String, String)>,
    ApiJson(req): ApiJson<SetRole>,
) -> ApiResult<Json<MemberBody>> {
    let (conv, me) = membership(&state, &id, &auth.user_id).await?;
    if conv.kind == ConversationKind::Direct {
        return Err(ApiError::invalid("direct conversations have no roles"));
    }
    if me.role != Role::Owner {
        return Err(ApiError::forbidden("only owners change roles"));
    }
    let target = state
        .store
        .member(&id, &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such member"))?;
    if target.role == Role::Owner && req.role != Role::Owner && owners(&state, &id).await? == 1 {
        return Err(ApiError::conflict(
            "last_owner",
            "make someone else an owner first",
        ));
    }
    let deliveries = state
        .store
        .set_role(&id, &user_id, req.role, &auth.user_id, now_ms())
        .await?;
    state.sink.deliver(&deliveries);
    let updated = state
        .store
        .member(&id, &user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such member"))?;
    Ok(Json(MemberBody::seen_by(updated, conv.kind, &auth.user_id)))
}

async fn owners(state: &AppState, conv: &str) -> ApiResult<usize> {
    Ok(state
        .store
        .members(conv)
        .await?
        .iter()
        .filter(|m| m.role == Role::Owner)
        .count())
}

/// Leave a group or room. The last owner must hand over first while others remain.
#[utoipa::path(post, path = "/v1/conversations/{id}/leave", tag = "conversations", params(("id" = String, Path)),
    responses((status = 204), (status = 409, description = "last owner"), (status = 422, description = "direct conversation")), security(("bearer" = [])))]
pub async fn leave(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (conv, me) = membership(&state, &id, &auth.user_id).await?;
    if conv.kind == ConversationKind::Direct {
        return Err(ApiError::invalid(
            "a direct conversation cannot be left; archive it instead",
        ));
    }
    if me.role == Role::Owner
        && owners(&state, &id).await? == 1
        && state.store.members(&id).await?.len() > 1
    {
        return Err(ApiError::conflict(
            "last_owner",
            "you are the last owner: make someone else an owner first",
        ));
    }
    let deliveries = state
        .store
        .remove_member(&id, &auth.user_id, Departure::Left, &auth.user_id, now_ms())
        .await?;
    state.sink.deliver(&deliveries);
    Ok(StatusCode::NO_CONTENT)
}

/// Join a public room.
#[utoipa::path(post, path = "/v1/conversations/{id}/join", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, body = ConversationBody), (status = 404, description = "no such room")), security(("bearer" = [])))]
pub async fn join(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ConversationBody>> {
    let conv = match state.store.conversation(&id).await? {
        Some(c) if c.kind == ConversationKind::Room => c,
        // Private groups are invisible to outsiders: same answer as an unknown id.
        _ => return Err(ApiError::not_found("no such room")),
    };
    let deliveries = state
        .store
        .add_members(
            &id,
            &[(auth.user_id.clone(), Role::Member)],
            &auth.user_id,
            now_ms(),
        )
        .await?;
    state.sink.deliver(&deliveries);
    Ok(Json(ConversationBody::new(conv, None)))
}

/// Archive or mute the conversation for the caller only.
#[utoipa::path(patch, path = "/v1/conversations/{id}/membership", tag = "conversations", params(("id" = String, Path)), request_body = SetFlags,
    responses((status = 200, body = MembershipBody)), security(("bearer" = [])))]
pub async fn set_flags(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SetFlags>,
) -> ApiResult<Json<MembershipBody>> {
    membership(&state, &id, &auth.user_id).await?;
    let m = state
        .store
        .set_member_flags(&id, &auth.user_id, req.archived, req.muted)
        .await?
        .ok_or_else(|| ApiError::not_found("no such conversation"))?;
    Ok(Json(MembershipBody {
        archived: m.archived,
        muted: m.muted,
        role: m.role,
    }))
}

/// The public room directory.
#[utoipa::path(get, path = "/v1/rooms", tag = "conversations", params(RoomsQuery),
    responses((status = 200, body = RoomList)), security(("bearer" = [])))]
pub async fn rooms(
    State(state): State<AppState>,
    _auth: AuthUser,
    ApiQuery(q): ApiQuery<RoomsQuery>,
) -> ApiResult<Json<RoomList>> {
    let rooms = state
        .store
        .list_rooms(q.after.as_deref(), page_limit(q.limit))
        .await?;
    Ok(Json(RoomList {
        rooms: rooms
            .into_iter()
            .map(|r| RoomItem {
                conversation: ConversationBody::new(r.conversation, None),
                member_count: r.members,
            })
            .collect(),
    }))
}
