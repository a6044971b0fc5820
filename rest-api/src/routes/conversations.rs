//! Conversations. This slice: creating direct conversations, groups and rooms.
//! (Listing, membership changes, archive and mute come with the REST-plane issue.)

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tidings_core::protocol::event::{ConversationKind, Role};
use tidings_core::protocol::ids::{is_server_id, new_id};
use tidings_core::protocol::limits::{
    MAX_CONVERSATION_NAME_BYTES, MAX_CONVERSATION_TOPIC_BYTES, MAX_GROUP_MEMBERS,
};
use tidings_store::{now_ms, Member, NewConversation};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, AuthUser};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", post(create))
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Serialize)]
pub struct MemberBody {
    pub user_id: String,
    pub role: Role,
}

#[derive(Debug, Serialize)]
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
    pub members: Vec<MemberBody>,
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

async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(req): ApiJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<ConversationBody>)> {
    let name = bounded("name", req.name, MAX_CONVERSATION_NAME_BYTES)?;
    let topic = bounded("topic", req.topic, MAX_CONVERSATION_TOPIC_BYTES)?;
    let mut others: Vec<String> = Vec::new();
    for id in req.members {
        if !is_server_id(&id) {
            return Err(ApiError::invalid(format!("{id:?} is not a user id")));
        }
        if id != auth.user_id && !others.contains(&id) {
            others.push(id);
        }
    }
    if req.kind == ConversationKind::Direct && others.len() != 1 {
        return Err(ApiError::invalid(
            "a direct conversation has exactly one other member",
        ));
    }
    if others.len() + 1 > MAX_GROUP_MEMBERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_GROUP_MEMBERS} members"
        )));
    }
    for id in &others {
        if state.store.user(id).await?.is_none() {
            return Err(ApiError::invalid(format!("no user {id}")));
        }
    }
    let creator_role = if req.kind == ConversationKind::Direct {
        Role::Member
    } else {
        Role::Owner
    };
    let mut members = vec![(auth.user_id.clone(), creator_role)];
    members.extend(others.into_iter().map(|u| (u, Role::Member)));
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
    let members = state.store.members(&created.conversation.id).await?;
    let c = created.conversation;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(ConversationBody {
            id: c.id,
            kind: c.kind,
            name: c.name,
            topic: c.topic,
            created_by: c.created_by,
            created_at: c.created_at,
            last_seq: c.last_seq,
            members: members
                .into_iter()
                .map(|m: Member| MemberBody {
                    user_id: m.user_id,
                    role: m.role,
                })
                .collect(),
        }),
    ))
}
