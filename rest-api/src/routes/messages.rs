//! Messages of one conversation: history by sequence number (keyset, never OFFSET), and
//! sending over HTTP for bots and REST-only clients. A REST send is the same command as
//! an MQTT `send`: validated by `Command::validate`, stored by `Store::write_batch`
//! (idempotent on sender + client id), fanned out to every member's inbox.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tidings_core::protocol::event::{EventBody, MessageKind, MessageView};
use tidings_core::protocol::ids::id_at;
use tidings_core::protocol::limits::{DEFAULT_PAGE, MAX_PAGE};
use tidings_core::protocol::{Command, Op};
use tidings_store::{now_ms, NewMessage, SeqPage, WriteOp, WriteOutcome};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, AuthUser};
use crate::routes::conversations::membership;
use crate::state::{rate_limit, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(history, send))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages with seq < before (newest first from there); default: the newest.
    pub before: Option<u64>,
    /// Messages with seq > after (oldest first from there).
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReactionCount {
    pub emoji: String,
    pub count: u64,
    /// The caller reacted with this emoji.
    pub me: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplyPreview {
    pub id: String,
    pub sender: String,
    pub kind: MessageKind,
    /// The first 140 characters of the replied-to message (empty when deleted).
    pub body: String,
    pub deleted: bool,
}

/// A stored message with what a chat screen shows around it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryMessage {
    #[serde(flatten)]
    pub message: MessageView,
    pub reactions: Vec<ReactionCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_preview: Option<ReplyPreview>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// In ascending seq order, whichever way the page was taken.
    pub messages: Vec<HistoryMessage>,
    /// More messages exist beyond this page in the direction asked.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SendMessage {
    /// The client's id for this message (1-64 of `[A-Za-z0-9_-]`); resending with the
    /// same id returns the stored message instead of storing it twice.
    pub client_msg_id: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub mentions: Vec<String>,
    /// An upload id (`POST /v1/uploads`).
    #[serde(default)]
    pub attachment: Option<String>,
}

/// A page of history (members only).
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "messages",
    params(("id" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 404, description = "unknown, or not a member")), security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<HistoryPage>> {
    membership(&state, &id, &auth.user_id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let page = match (q.before, q.after) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give before or after, not both")),
        (before, None) => SeqPage::Before {
            before,
            limit: limit + 1,
        },
        (None, Some(after)) => SeqPage::After {
            after,
            limit: limit + 1,
        },
    };
    let mut messages = state.store.history(&id, page).await?;
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    if matches!(page, SeqPage::Before { .. }) {
        messages.reverse();
    }
    let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
    let mut reactions: HashMap<String, Vec<ReactionCount>> = HashMap::new();
    for r in state.store.reaction_summaries(&ids, &auth.user_id).await? {
        reactions.entry(r.message).or_default().push(ReactionCount {
            emoji: r.emoji,
            count: r.count,
            me: r.me,
        });
    }
    let reply_ids: Vec<String> = messages.iter().filter_map(|m| m.reply_to.clone()).collect();
    let replied: HashMap<String, MessageView> = state
        .store
        .messages_by_ids(&reply_ids)
        .await?
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let messages =
        messages
            .into_iter()
            .map(|m| HistoryMessage {
                reactions: reactions.remove(&m.id).unwrap_or_default(),
                reply_preview: m.reply_to.as_ref().and_then(|r| replied.get(r)).map(|r| {
                    ReplyPreview {
                        id: r.id.clone(),
                        sender: r.sender.clone(),
                        kind: r.kind,
                        body: r.body.chars().take(140).collect(),
                        deleted: r.deleted,
                    }
                }),
                message: m,
            })
            .collect();
    Ok(Json(HistoryPage { messages, has_more }))
}

/// Send a message over HTTP: 201 when stored, 200 with the earlier message when this
/// client id was already used for it.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "messages", params(("id" = String, Path)), request_body = SendMessage,
    responses((status = 201, body = MessageView), (status = 200, description = "already stored", body = MessageView),
        (status = 403, description = "the other member of this direct conversation blocked you"),
        (status = 404, description = "no such conversation (or not a member: the same answer)"), (status = 413, description = "too large"), (status = 429, description = "rate limited")),
    security(("bearer" = [])))]
pub async fn send(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<SendMessage>,
) -> ApiResult<(StatusCode, Json<MessageView>)> {
    // The same refusal as over MQTT (the broker checks there, before its worker).
    if state
        .store
        .membership()
        .direct_blocker(&id, &auth.user_id)
        .is_some()
    {
        return Err(ApiError::forbidden(
            crate::routes::conversations::BLOCKED_MESSAGE,
        ));
    }
    let cmd = Command {
        v: 1,
        id: req.client_msg_id,
        op: Op::Send {
            conv: id,
            body: req.body,
            reply_to: req.reply_to,
            mentions: req.mentions,
            attachment: req.attachment,
        },
    };
    cmd.validate()
        .map_err(|e| ApiError::from_code(e.code, e.message))?;
    rate_limit(&state.limits.sends, &auth.user_id).await?;
    let Op::Send {
        conv,
        body,
        reply_to,
        mentions,
        attachment,
    } = cmd.op
    else {
        return Err(ApiError::internal());
    };
    let now = now_ms();
    let op = WriteOp::Send(NewMessage {
        id: id_at(now),
        conv,
        sender: auth.user_id.clone(),
        client_msg_id: cmd.id,
        body,
        reply_to,
        mentions,
        attachment,
        created_at: now,
    });
    let outcome = state
        .store
        .write_batch(std::slice::from_ref(&op))
        .await?
        .pop()
        .ok_or_else(ApiError::internal)?;
    match outcome {
        WriteOutcome::Applied { deliveries, .. } => {
            state.sink.deliver(&deliveries);
            match deliveries.first().map(|d| &*d.body) {
                Some(EventBody::Message(m)) => Ok((StatusCode::CREATED, Json(m.clone()))),
                _ => Err(ApiError::internal()),
            }
        }
        WriteOutcome::Unchanged { ack } => {
            let id = ack.msg.ok_or_else(ApiError::internal)?;
            let stored = state
                .store
                .message(&id)
                .await?
                .ok_or_else(ApiError::internal)?;
            Ok((StatusCode::OK, Json(stored)))
        }
        WriteOutcome::Rejected { code, message } => Err(ApiError::from_code(code, message)),
    }
}
