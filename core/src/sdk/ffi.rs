//! The uniffi surface: [`TidingsClient`] owns a multi-thread tokio runtime and wraps
//! [`Client`]; its async methods run on that runtime and are awaited from Swift
//! (async), Kotlin (suspend) or Python (asyncio) through the runtime-agnostic
//! `JoinHandle`. Errors are [`SdkError`]; nothing here can panic across the boundary.

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::sdk::client::Client;
use crate::sdk::config::ClientConfig;
use crate::sdk::error::{Result, SdkError};
use crate::sdk::secrets::SecretStore;
use crate::sdk::types::*;

#[derive(uniffi::Object)]
pub struct TidingsClient {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    client: Client,
}

impl TidingsClient {
    /// Runs a call on the SDK's runtime. When the caller stops waiting (a cancelled
    /// Swift `Task` or Kotlin coroutine drops the future) the call is aborted with it:
    /// an upload stops sending and nothing it would have done afterwards happens.
    async fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        AbortOnDrop(self.handle.spawn(fut))
            .await
            .map_err(|_| SdkError::Closed)?
    }
}

/// A spawned task that is aborted when its handle is dropped before it finished
/// (a plain `JoinHandle` lets the task run on, detached).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TidingsClient {
    fn build(config: ClientConfig, secrets: Option<Arc<dyn SecretStore>>) -> Result<Arc<Self>> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tidings-sdk")
            .enable_all()
            .build()
            .map_err(|e| SdkError::config(format!("runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let client = {
            let _guard = runtime.enter();
            match secrets {
                Some(s) => Client::with_secret_store(config, handle.clone(), s)?,
                None => Client::new(config, handle.clone())?,
            }
        };
        Ok(Arc::new(TidingsClient {
            runtime: Mutex::new(Some(runtime)),
            handle,
            client,
        }))
    }
}

#[uniffi::export]
impl TidingsClient {
    /// Opens the local store and starts the SDK's runtime. Nothing touches the network
    /// until `login`/`connect`.
    #[uniffi::constructor]
    pub fn new(config: ClientConfig) -> Result<Arc<Self>> {
        TidingsClient::build(config, None)
    }

    /// Like `new`, with the session's tokens in the app's keystore (`secrets`: iOS
    /// Keychain, Android Keystore-backed storage) instead of a 0600 file in the data
    /// path. The SQLite file then holds no token.
    #[uniffi::constructor]
    pub fn with_secret_store(
        config: ClientConfig,
        secrets: Arc<dyn SecretStore>,
    ) -> Result<Arc<Self>> {
        TidingsClient::build(config, Some(secrets))
    }

    /// Deletes all local data (tokens, database files), logged in or not, and shuts the
    /// client down. The server session is not ended: `logout` first when online.
    pub async fn wipe(&self) -> Result<()> {
        self.run(|c| async move { c.wipe().await }).await
    }

    pub fn set_listener(&self, listener: Arc<dyn TidingsListener>) {
        self.client.set_listener(listener);
    }

    pub async fn login(&self, username: String, password: String) -> Result<SessionInfo> {
        self.run(|c| async move { c.login(&username, &password).await })
            .await
    }

    pub async fn register(&self, username: String, password: String) -> Result<SessionInfo> {
        self.run(|c| async move { c.register(&username, &password).await })
            .await
    }

    /// Uses tokens obtained elsewhere; refreshes happen inside.
    pub async fn use_tokens(
        &self,
        user_id: String,
        username: String,
        access_token: String,
        refresh_token: String,
        expires_in_secs: i64,
    ) -> Result<SessionInfo> {
        self.run(|c| async move {
            c.use_tokens(
                &user_id,
                &username,
                &access_token,
                &refresh_token,
                expires_in_secs,
            )
            .await
        })
        .await
    }

    /// The stored session (present after a restart without logging in again).
    pub async fn session(&self) -> Option<SessionInfo> {
        self.run(|c| async move { Ok(c.session().await) })
            .await
            .ok()
            .flatten()
    }

    pub async fn logout(&self) -> Result<()> {
        self.run(|c| async move { c.logout().await }).await
    }

    pub async fn connect(&self) -> Result<()> {
        self.run(|c| async move { c.connect().await }).await
    }

    pub fn disconnect(&self) {
        self.client.disconnect();
    }

    pub fn connection_state(&self) -> ConnectionState {
        self.client.connection_state()
    }

    pub async fn send_text(
        &self,
        conversation_id: String,
        body: String,
        reply_to: Option<String>,
        mentions: Vec<String>,
    ) -> Result<String> {
        self.run(|c| async move {
            c.send_text(&conversation_id, &body, reply_to, mentions)
                .await
        })
        .await
    }

    pub async fn send_attachment(
        &self,
        conversation_id: String,
        bytes: Vec<u8>,
        mime: String,
        filename: Option<String>,
        caption: String,
    ) -> Result<String> {
        self.run(|c| async move {
            c.send_attachment(&conversation_id, bytes, &mime, filename, &caption)
                .await
        })
        .await
    }

    pub async fn edit(&self, message_id: String, body: String) -> Result<String> {
        self.run(|c| async move { c.edit(&message_id, &body).await })
            .await
    }

    pub async fn delete(&self, message_id: String) -> Result<String> {
        self.run(|c| async move { c.delete(&message_id).await })
            .await
    }

    pub async fn react(&self, message_id: String, emoji: String, add: bool) -> Result<String> {
        self.run(|c| async move { c.react(&message_id, &emoji, add).await })
            .await
    }

    pub async fn mark_read(&self, conversation_id: String, seq: u64) -> Result<String> {
        self.run(|c| async move { c.mark_read(&conversation_id, seq).await })
            .await
    }

    pub async fn set_typing(&self, conversation_id: String, typing: bool) -> Result<()> {
        self.run(|c| async move { c.set_typing(&conversation_id, typing).await })
            .await
    }

    pub async fn conversations(&self) -> Result<Vec<Conversation>> {
        self.run(|c| async move { c.conversations().await }).await
    }

    pub fn cached_conversations(&self) -> Result<Vec<Conversation>> {
        self.client.cached_conversations()
    }

    pub fn cached_messages(&self, conversation_id: String, limit: u32) -> Result<Vec<Message>> {
        self.client.cached_messages(&conversation_id, limit)
    }

    pub async fn history(
        &self,
        conversation_id: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage> {
        self.run(|c| async move { c.history(&conversation_id, before, limit).await })
            .await
    }

    pub async fn search(
        &self,
        query: String,
        conversation_id: Option<String>,
    ) -> Result<Vec<Message>> {
        self.run(|c| async move { c.search(&query, conversation_id).await })
            .await
    }

    pub async fn members(&self, conversation_id: String) -> Result<Vec<Member>> {
        self.run(|c| async move { c.members(&conversation_id).await })
            .await
    }

    pub async fn create_conversation(
        &self,
        kind: String,
        name: Option<String>,
        members: Vec<String>,
    ) -> Result<Conversation> {
        self.run(|c| async move { c.create_conversation(&kind, name, members).await })
            .await
    }

    pub async fn leave_conversation(&self, conversation_id: String) -> Result<()> {
        self.run(|c| async move { c.leave_conversation(&conversation_id).await })
            .await
    }

    /// Registers (or replaces) this session's push target.
    pub async fn register_push(&self, registration: PushRegistration) -> Result<()> {
        self.run(|c| async move { c.register_push(registration).await })
            .await
    }

    /// Removes this session's push target.
    pub async fn unregister_push(&self) -> Result<()> {
        self.run(|c| async move { c.unregister_push().await }).await
    }

    /// Ids of commands not yet acknowledged by the server, oldest first.
    pub fn pending(&self) -> Result<Vec<String>> {
        self.client.pending()
    }

    pub fn retry_wedged(&self) {
        self.client.retry_wedged()
    }

    pub fn pending_messages(&self) -> Result<Vec<PendingMessage>> {
        self.client.pending_messages()
    }

    pub fn edit_pending(&self, client_id: String, body: String) -> Result<()> {
        self.client.edit_pending(&client_id, &body)
    }

    pub fn abort_pending(&self, client_id: String) -> Result<bool> {
        self.client.abort_pending(&client_id)
    }

    pub fn last_inbox_seq(&self) -> Result<u64> {
        self.client.last_inbox_seq()
    }

    /// Disconnects and stops the runtime; the object is unusable afterwards.
    pub fn shutdown(&self) {
        self.client.shutdown();
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}

/// The calls around chatting (see `manage.rs`).
#[uniffi::export]
impl TidingsClient {
    pub async fn add_members(
        &self,
        conversation_id: String,
        user_ids: Vec<String>,
        role: Option<String>,
    ) -> Result<Vec<Member>> {
        self.run(|c| async move { c.add_members(&conversation_id, user_ids, role).await })
            .await
    }

    pub async fn remove_member(&self, conversation_id: String, user_id: String) -> Result<()> {
        self.run(|c| async move { c.remove_member(&conversation_id, &user_id).await })
            .await
    }

    pub async fn set_role(
        &self,
        conversation_id: String,
        user_id: String,
        role: String,
    ) -> Result<()> {
        self.run(|c| async move { c.set_role(&conversation_id, &user_id, &role).await })
            .await
    }

    pub async fn set_conversation_flags(
        &self,
        conversation_id: String,
        muted: Option<bool>,
        archived: Option<bool>,
    ) -> Result<()> {
        self.run(|c| async move {
            c.set_conversation_flags(&conversation_id, muted, archived)
                .await
        })
        .await
    }

    pub async fn rooms(&self, after: Option<String>, limit: u32) -> Result<Vec<Room>> {
        self.run(|c| async move { c.rooms(after, limit).await })
            .await
    }

    pub async fn join_room(&self, conversation_id: String) -> Result<Conversation> {
        self.run(|c| async move { c.join_room(&conversation_id).await })
            .await
    }

    pub async fn invitations(&self) -> Result<Vec<Invitation>> {
        self.run(|c| async move { c.invitations().await }).await
    }

    pub async fn answer_invitation(&self, invitation_id: String, accept: bool) -> Result<()> {
        self.run(|c| async move { c.answer_invitation(&invitation_id, accept).await })
            .await
    }

    pub async fn search_users(&self, query: String, limit: u32) -> Result<Vec<UserSummary>> {
        self.run(|c| async move { c.search_users(&query, limit).await })
            .await
    }

    pub async fn unread_total(&self) -> Result<UnreadTotal> {
        self.run(|c| async move { c.unread_total().await }).await
    }

    pub async fn download_attachment(&self, attachment_id: String) -> Result<Vec<u8>> {
        self.run(|c| async move { c.download_attachment(&attachment_id).await })
            .await
    }

    pub async fn attachment_request(&self, attachment_id: String) -> Result<AttachmentRequest> {
        self.run(|c| async move { c.attachment_request(&attachment_id).await })
            .await
    }
}

impl Drop for TidingsClient {
    fn drop(&mut self) {
        // shutdown_background never blocks, so this is safe even on a runtime thread.
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// What a cancelled Swift Task or Kotlin coroutine does to a call: drops its future
    /// after it started. The spawned work must stop with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_started_call_aborts_its_work() {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let call = AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flag.store(true, Ordering::SeqCst);
        }));
        assert!(tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!finished.load(Ordering::SeqCst), "the dropped call ran on");

        // Control: awaited to the end, the same work does finish.
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flag.store(true, Ordering::SeqCst);
        }))
        .await
        .unwrap();
        assert!(finished.load(Ordering::SeqCst));
    }
}
