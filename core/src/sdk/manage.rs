//! The calls an app needs around chatting: members and roles, this user's mute and
//! archive flags, public rooms, invitations, finding people, unread totals and
//! attachment downloads. Thin wrappers over the REST API that keep the cache current.

use reqwest::Method;
use serde_json::{json, Value};

use crate::protocol::event::ConversationView;
use crate::sdk::client::{check_id, Client};
use crate::sdk::conn::Input;
use crate::sdk::error::{Result, SdkError};
use crate::sdk::http::q;
use crate::sdk::types::*;

const ROLES: [&str; 3] = ["owner", "admin", "member"];

fn check_role(role: &str) -> Result<()> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(SdkError::invalid(
            "invalid",
            "role must be owner, admin or member",
        ))
    }
}

/// A conversation as the REST API returns it (with `last_seq`).
fn conversation_of(body: &Value) -> Result<Conversation> {
    let view: ConversationView = serde_json::from_value(body.clone())
        .map_err(|e| SdkError::network(format!("conversation: {e}")))?;
    let mut conv = Conversation::from(view);
    conv.last_seq = body["last_seq"].as_u64().unwrap_or(0);
    Ok(conv)
}

impl Client {
    /// Adds people to a group or room (admins and owners; only owners grant admin or
    /// owner). Returns the members after the change.
    pub async fn add_members(
        &self,
        conversation_id: &str,
        user_ids: Vec<String>,
        role: Option<String>,
    ) -> Result<Vec<Member>> {
        check_id("conversation_id", conversation_id)?;
        for u in &user_ids {
            check_id("user_ids[]", u)?;
        }
        if let Some(r) = &role {
            check_role(r)?;
        }
        let _: Value = self
            .inner
            .api
            .call(
                Method::POST,
                &format!("/v1/conversations/{conversation_id}/members"),
                Some(json!({"user_ids": user_ids, "role": role})),
            )
            .await?;
        self.members(conversation_id).await
    }

    /// Removes someone from a group or room (or leaves, for oneself).
    pub async fn remove_member(&self, conversation_id: &str, user_id: &str) -> Result<()> {
        check_id("conversation_id", conversation_id)?;
        check_id("user_id", user_id)?;
        let _: Value = self
            .inner
            .api
            .call(
                Method::DELETE,
                &format!("/v1/conversations/{conversation_id}/members/{user_id}"),
                None,
            )
            .await?;
        Ok(())
    }

    /// Changes a member's role (`owner`, `admin` or `member`).
    pub async fn set_role(&self, conversation_id: &str, user_id: &str, role: &str) -> Result<()> {
        check_id("conversation_id", conversation_id)?;
        check_id("user_id", user_id)?;
        check_role(role)?;
        let _: Value = self
            .inner
            .api
            .call(
                Method::PUT,
                &format!("/v1/conversations/{conversation_id}/members/{user_id}/role"),
                Some(json!({ "role": role })),
            )
            .await?;
        Ok(())
    }

    /// Mutes or archives a conversation for this user (None leaves a flag as it is);
    /// the cached conversation gets the server's answer.
    pub async fn set_conversation_flags(
        &self,
        conversation_id: &str,
        muted: Option<bool>,
        archived: Option<bool>,
    ) -> Result<()> {
        check_id("conversation_id", conversation_id)?;
        let res: Value = self
            .inner
            .api
            .call(
                Method::PATCH,
                &format!("/v1/conversations/{conversation_id}/membership"),
                Some(json!({ "muted": muted, "archived": archived })),
            )
            .await?;
        let muted = res["muted"].as_bool().unwrap_or(false);
        let archived = res["archived"].as_bool().unwrap_or(false);
        self.inner.local.set_flags(conversation_id, muted, archived)
    }

    /// Public rooms, a page at a time (`after` = the last room id of the previous page).
    pub async fn rooms(&self, after: Option<String>, limit: u32) -> Result<Vec<Room>> {
        let mut path = format!("/v1/rooms?limit={}", limit.clamp(1, 100));
        if let Some(a) = after {
            check_id("after", &a)?;
            path.push_str(&format!("&after={a}"));
        }
        let res: Value = self.inner.api.get(&path).await?;
        res["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                Ok(Room {
                    conversation: conversation_of(r)?,
                    member_count: r["member_count"].as_u64().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Joins a public room; live events for it start at once.
    pub async fn join_room(&self, conversation_id: &str) -> Result<Conversation> {
        check_id("conversation_id", conversation_id)?;
        let body: Value = self
            .inner
            .api
            .call(
                Method::POST,
                &format!("/v1/conversations/{conversation_id}/join"),
                None,
            )
            .await?;
        let conv = conversation_of(&body)?;
        self.inner.local.save_conversation(&conv)?;
        self.inner.notify(Input::Subscribe(conv.id.clone()));
        Ok(conv)
    }

    /// Invitations waiting for this user's answer.
    pub async fn invitations(&self) -> Result<Vec<Invitation>> {
        let res: Value = self.inner.api.get("/v1/invitations").await?;
        serde_json::from_value(res["invitations"].clone())
            .map_err(|e| SdkError::network(format!("invitations: {e}")))
    }

    /// Accepts (joins the conversation) or declines an invitation.
    pub async fn answer_invitation(&self, invitation_id: &str, accept: bool) -> Result<()> {
        check_id("invitation_id", invitation_id)?;
        let verb = if accept { "accept" } else { "decline" };
        let _: Value = self
            .inner
            .api
            .call(
                Method::POST,
                &format!("/v1/invitations/{invitation_id}/{verb}"),
                None,
            )
            .await?;
        Ok(())
    }

    /// People whose username or display name starts with `query`.
    pub async fn search_users(&self, query: &str, limit: u32) -> Result<Vec<UserSummary>> {
        if query.trim().is_empty() {
            return Err(SdkError::invalid("invalid", "query must not be empty"));
        }
        let res: Value = self
            .inner
            .api
            .get(&format!(
                "/v1/users?q={}&limit={}",
                q(query),
                limit.clamp(1, 50)
            ))
            .await?;
        serde_json::from_value(res).map_err(|e| SdkError::network(format!("users: {e}")))
    }

    /// Unread messages and conversations across all conversations, for a badge.
    pub async fn unread_total(&self) -> Result<UnreadTotal> {
        let res: Value = self.inner.api.get("/v1/me/unread").await?;
        serde_json::from_value(res).map_err(|e| SdkError::network(format!("unread: {e}")))
    }

    /// An attachment's bytes (up to the server's upload limit, 25 MiB by default).
    pub async fn download_attachment(&self, attachment_id: &str) -> Result<Vec<u8>> {
        check_id("attachment_id", attachment_id)?;
        self.inner
            .api
            .bytes(&format!("/v1/attachments/{attachment_id}"))
            .await
    }

    /// The URL and header for an app's own image loader to fetch an attachment.
    pub async fn attachment_request(&self, attachment_id: &str) -> Result<AttachmentRequest> {
        check_id("attachment_id", attachment_id)?;
        let token = self.inner.api.access_token(false).await?;
        Ok(AttachmentRequest {
            url: self
                .inner
                .api
                .url(&format!("/v1/attachments/{attachment_id}")),
            authorization: format!("Bearer {token}"),
        })
    }
}
