//! The idiomatic async Rust API. [`Client`] needs a tokio runtime handle (the uniffi
//! layer in [`crate::sdk::ffi`] brings its own multi-thread runtime).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::protocol::event::{ConversationView, MessageView};
use crate::protocol::ids::{is_server_id, new_id};
use crate::protocol::{Command, Op};
use crate::sdk::config::ClientConfig;
use crate::sdk::conn::{self, Input};
use crate::sdk::error::{Result, SdkError};
use crate::sdk::http::{q, Api};
use crate::sdk::local::LocalStore;
use crate::sdk::secrets::{FileSecretStore, SecretStore};
use crate::sdk::types::*;

/// Delivers events to the app's listener on one dedicated thread, in order, so a slow
/// or blocking listener never stalls the connection.
pub(crate) struct Dispatcher {
    tx: Mutex<Option<std::sync::mpsc::Sender<ClientEvent>>>,
    listener: Arc<Mutex<Option<Arc<dyn TidingsListener>>>>,
}

impl Dispatcher {
    fn new() -> Dispatcher {
        let (tx, rx) = std::sync::mpsc::channel::<ClientEvent>();
        let listener: Arc<Mutex<Option<Arc<dyn TidingsListener>>>> = Arc::default();
        let l = listener.clone();
        let spawned = std::thread::Builder::new()
            .name("tidings-events".into())
            .spawn(move || {
                while let Ok(event) = rx.recv() {
                    let current = l.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(listener) = current {
                        // uniffi turns an exception thrown by a foreign listener into a
                        // panic on this (Rust) thread; keep delivering the next events.
                        let call = std::panic::AssertUnwindSafe(|| listener.on_event(event));
                        let _ = std::panic::catch_unwind(call);
                    }
                }
            });
        Dispatcher {
            tx: Mutex::new(spawned.ok().map(|_| tx)),
            listener,
        }
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        match &event {
            ClientEvent::ConnectionState { state } => {
                tracing::info!(state = ?state, "connection state")
            }
            ClientEvent::Error {
                client_id,
                code,
                detail,
            } => tracing::warn!(client_id = ?client_id, code = %code, "{detail}"),
            _ => {}
        }
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(event);
        }
    }

    fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

pub(crate) struct Running {
    tx: mpsc::UnboundedSender<Input>,
    /// The connection loop first, then its helpers (see `conn::spawn`).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The connection loop returned (it does at `LoggedOut`).
    fn ended(&self) -> bool {
        self.tasks.first().is_none_or(|t| t.is_finished())
    }

    fn abort(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

pub(crate) struct Inner {
    pub config: ClientConfig,
    /// The parsed `broker_url`.
    pub broker: crate::sdk::config::Broker,
    /// The rustls configuration MQTT shares with HTTPS (built once: the root store).
    pub tls: Arc<rustls::ClientConfig>,
    pub api: Api,
    pub local: Arc<LocalStore>,
    pub handle: tokio::runtime::Handle,
    pub events: Dispatcher,
    pub mqtt: Mutex<Option<rumqttc::AsyncClient>>,
    pub state: Mutex<ConnectionState>,
    pub running: Mutex<Option<Running>>,
    /// Topics subscribed on the current connection (typing, presence).
    pub subscribed: Mutex<HashSet<String>>,
    pub closed: std::sync::atomic::AtomicBool,
}

impl Inner {
    pub(crate) fn tls(&self) -> rumqttc::TlsConfiguration {
        rumqttc::TlsConfiguration::Rustls(self.tls.clone())
    }

    pub(crate) fn set_state(&self, state: ConnectionState) {
        let mut cur = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != state {
            *cur = state;
            drop(cur);
            self.events.emit(ClientEvent::ConnectionState { state });
        }
    }

    pub(crate) fn notify(&self, input: Input) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = r.tx.send(input);
        }
    }
}

/// A Tidings client for one device (one data path).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn check_id(field: &str, id: &str) -> Result<()> {
    if is_server_id(id) {
        Ok(())
    } else {
        Err(SdkError::invalid(
            "invalid",
            format!("{field} must be a 26-character id"),
        ))
    }
}

impl Client {
    /// Opens the local store under `config.data_path`, with the session's tokens in a
    /// 0600 file there ([`FileSecretStore`]); spawns its tasks on `handle`. Mobile apps
    /// use [`Client::with_secret_store`] and the platform's keystore.
    pub fn new(config: ClientConfig, handle: tokio::runtime::Handle) -> Result<Client> {
        let path = std::path::Path::new(&config.data_path).join(crate::sdk::local::SECRETS_FILE);
        Client::with_secret_store(config, handle, Arc::new(FileSecretStore::new(path)))
    }

    /// Like [`Client::new`], with the session's tokens in `secrets` (the app's keystore)
    /// and nowhere in the data path.
    pub fn with_secret_store(
        config: ClientConfig,
        handle: tokio::runtime::Handle,
        secrets: Arc<dyn SecretStore>,
    ) -> Result<Client> {
        config.validate()?;
        let local = Arc::new(LocalStore::open_with(
            std::path::Path::new(&config.data_path),
            &config.db_file(),
            secrets,
        )?);
        let api = Api::new(&config, local.clone())?;
        let broker = config.broker()?;
        let tls = Arc::new(config.tls_config()?);
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                broker,
                tls,
                api,
                local,
                handle,
                events: Dispatcher::new(),
                mqtt: Mutex::new(None),
                state: Mutex::new(ConnectionState::Disconnected),
                running: Mutex::new(None),
                subscribed: Mutex::new(HashSet::new()),
                closed: false.into(),
            }),
        })
    }

    /// Sets (or replaces) the listener that receives every [`ClientEvent`].
    pub fn set_listener(&self, listener: Arc<dyn TidingsListener>) {
        *self
            .inner
            .events
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    fn alive(&self) -> Result<()> {
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            Err(SdkError::Closed)
        } else {
            Ok(())
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<SessionInfo> {
        self.alive()?;
        self.switch_session(self.inner.api.authenticate(false, username, password), true)
            .await
    }

    pub async fn register(&self, username: &str, password: &str) -> Result<SessionInfo> {
        self.alive()?;
        self.switch_session(self.inner.api.authenticate(true, username, password), true)
            .await
    }

    /// Adopts a new session. The connection loop is bound to one user (its client id,
    /// topics and outbox), so it is stopped before the new tokens are in place: nothing
    /// may go out under the old identity with the new user's commands, or come in for
    /// the old user once the local store belongs to the new one. A different user than
    /// the stored one wipes the local store (`LocalStore::save_session`). The loop is
    /// started again, as the new user, if it was running.
    async fn switch_session(
        &self,
        adopt: impl std::future::Future<Output = Result<SessionInfo>>,
        start_at_head: bool,
    ) -> Result<SessionInfo> {
        let was_running = self.is_running();
        self.disconnect();
        let adopted = adopt.await;
        if adopted.is_ok() && start_at_head {
            self.start_at_inbox_head().await;
        }
        let logged_in = self.inner.api.session_info().await.is_some();
        if was_running && logged_in {
            self.connect().await?;
        }
        adopted
    }

    /// A device with nothing of the account yet starts reading the inbox where it is
    /// at login, instead of replaying the account's whole history to the listener as
    /// if it were live; the conversation list (with each last message) comes with the
    /// first connection, history per conversation on demand. Taken at login, not at the
    /// first connection, so nothing that arrives in between is skipped. If the server
    /// cannot say, the device replays from the start as before. (`use_tokens` keeps the
    /// replay: tokens from elsewhere may come with a device that has seen nothing.)
    async fn start_at_inbox_head(&self) {
        if self.inner.local.last_iseq().unwrap_or(1) != 0 {
            return;
        }
        let head = self
            .inner
            .api
            .get::<Value>("/v1/me")
            .await
            .ok()
            .and_then(|me| me["inbox_seq"].as_u64());
        if let Some(head) = head.filter(|h| *h > 0) {
            let _ = self.inner.local.set_last_iseq(head);
        }
    }

    /// Whether the connection loop is alive (it ends by itself at `LoggedOut`).
    fn is_running(&self) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|r| !r.ended())
    }

    /// Uses tokens obtained elsewhere (the refresh token keeps the session alive).
    pub async fn use_tokens(
        &self,
        user_id: &str,
        username: &str,
        access_token: &str,
        refresh_token: &str,
        expires_in_secs: i64,
    ) -> Result<SessionInfo> {
        self.alive()?;
        self.switch_session(
            self.inner.api.use_tokens(
                user_id,
                username,
                access_token,
                refresh_token,
                expires_in_secs,
            ),
            false,
        )
        .await
    }

    /// The stored session, if any (a restarted app is logged in without asking).
    pub async fn session(&self) -> Option<SessionInfo> {
        self.inner.api.session_info().await
    }

    /// Ends the session on the server and wipes what this device kept of the account:
    /// tokens, outbox, cached conversations and messages, the inbox position. The next
    /// person to log in on this device starts clean.
    pub async fn logout(&self) -> Result<()> {
        self.disconnect();
        self.inner.api.logout().await
    }

    /// Deletes everything this client kept on the device, logged in or not: the tokens
    /// in the secret store, the database file with its WAL and shared-memory files (and
    /// the file store's file). Local only: the server session is not ended (call
    /// `logout` first when online). The client is shut down afterwards; create a new one
    /// to start over.
    pub async fn wipe(&self) -> Result<()> {
        self.shutdown();
        self.inner.api.forget().await;
        self.inner.local.destroy()
    }

    async fn me(&self) -> Result<String> {
        self.inner
            .api
            .session_info()
            .await
            .map(|s| s.user_id)
            .ok_or(SdkError::NotLoggedIn)
    }

    /// Starts the connection loop (returns at once; watch `ConnectionState` events).
    pub async fn connect(&self) -> Result<()> {
        self.alive()?;
        let me = self.me().await?;
        let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.take() {
            Some(r) if !r.ended() => {
                *running = Some(r);
                return Ok(());
            }
            // The loop ended by itself (LoggedOut): clear what is left of it.
            Some(r) => r.abort(),
            None => {}
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let tasks = conn::spawn(self.inner.clone(), me, tx.clone(), rx);
        *running = Some(Running { tx, tasks });
        Ok(())
    }

    /// Stops the connection loop; the outbox keeps what was not acknowledged.
    pub fn disconnect(&self) {
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = running {
            r.abort();
            if let Some(c) = self
                .inner
                .mqtt
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                let _ = c.try_disconnect();
            }
            self.inner.set_state(ConnectionState::Disconnected);
        }
    }

    /// Disconnects and stops delivering events; the client cannot be used afterwards.
    pub fn shutdown(&self) {
        self.disconnect();
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.events.close();
    }

    pub fn connection_state(&self) -> ConnectionState {
        *self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates a command, writes it to the outbox, then asks the connection to send
    /// it. Works offline: it goes out after the next connect. Returns the command id.
    async fn enqueue(&self, op: Op) -> Result<String> {
        self.alive()?;
        self.me().await?;
        let cmd = Command {
            v: crate::protocol::PROTOCOL_VERSION,
            id: new_id(),
            op,
        };
        cmd.validate()
            .map_err(|e| SdkError::invalid(e.code.as_str(), e.message))?;
        self.inner.local.outbox_push(&cmd)?;
        self.inner.notify(Input::Flush);
        Ok(cmd.id)
    }

    /// Sends a text message; returns its client id (the outbox id).
    pub async fn send_text(
        &self,
        conversation_id: &str,
        body: &str,
        reply_to: Option<String>,
        mentions: Vec<String>,
    ) -> Result<String> {
        self.enqueue(Op::Send {
            conv: conversation_id.to_owned(),
            body: body.to_owned(),
            reply_to,
            mentions,
            attachment: None,
        })
        .await
    }

    /// Queues a message with an attachment; returns its client id at once, online or
    /// not. The bytes wait in a private file in the data folder; once connected they are
    /// uploaded in the background, then the message goes out in its conversation's
    /// order. `pending_messages` lists it meanwhile (with the file, for local echo);
    /// `abort_pending` stops it, upload included. A refusal of the file itself
    /// (type, size) is an `Error` event with this client id.
    pub async fn send_attachment(
        &self,
        conversation_id: &str,
        bytes: Vec<u8>,
        mime: &str,
        filename: Option<String>,
        caption: &str,
    ) -> Result<String> {
        self.alive()?;
        self.me().await?;
        check_id("conversation_id", conversation_id)?;
        if bytes.is_empty() || bytes.len() as u64 > crate::protocol::limits::MAX_UPLOAD_BYTES {
            return Err(SdkError::invalid(
                "too_large",
                "attachment must be 1 byte to 25 MiB",
            ));
        }
        if mime.trim().is_empty() || mime.len() > 255 {
            return Err(SdkError::invalid("invalid", "mime must be a media type"));
        }
        let cmd = Command {
            v: crate::protocol::PROTOCOL_VERSION,
            id: new_id(),
            op: Op::Send {
                conv: conversation_id.to_owned(),
                body: caption.to_owned(),
                reply_to: None,
                mentions: vec![],
                attachment: None,
            },
        };
        cmd.validate()
            .map_err(|e| SdkError::invalid(e.code.as_str(), e.message))?;
        self.inner
            .local
            .outbox_push_with_file(&cmd, &bytes, mime, filename.as_deref())?;
        self.inner.notify(Input::Flush);
        Ok(cmd.id)
    }

    pub async fn edit(&self, message_id: &str, body: &str) -> Result<String> {
        self.enqueue(Op::Edit {
            msg: message_id.to_owned(),
            body: body.to_owned(),
        })
        .await
    }

    pub async fn delete(&self, message_id: &str) -> Result<String> {
        self.enqueue(Op::Delete {
            msg: message_id.to_owned(),
        })
        .await
    }

    /// Adds (`add` = true) or removes a reaction.
    pub async fn react(&self, message_id: &str, emoji: &str, add: bool) -> Result<String> {
        let (msg, emoji) = (message_id.to_owned(), emoji.to_owned());
        self.enqueue(if add {
            Op::React { msg, emoji }
        } else {
            Op::Unreact { msg, emoji }
        })
        .await
    }

    /// Moves my read marker in a conversation up to `seq`.
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<String> {
        self.enqueue(Op::Read {
            conv: conversation_id.to_owned(),
            seq,
        })
        .await
    }

    /// Publishes typing (ephemeral, QoS 0). Offline it is dropped, not queued.
    pub async fn set_typing(&self, conversation_id: &str, typing: bool) -> Result<()> {
        check_id("conversation_id", conversation_id)?;
        let me = self.me().await?;
        let topic = crate::protocol::topics::typing(conversation_id, &me);
        let payload = serde_json::to_vec(&crate::protocol::ephemeral::Typing { typing })?;
        if let Some(c) = self
            .inner
            .mqtt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = c.try_publish(topic, rumqttc::QoS::AtMostOnce, false, payload);
        }
        Ok(())
    }

    /// Conversations from the server (cached); offline, the cached list.
    pub async fn conversations(&self) -> Result<Vec<Conversation>> {
        match conn::fetch_conversations(&self.inner).await {
            Ok(list) => Ok(list),
            Err(SdkError::Network { .. }) => self.inner.local.conversations(),
            Err(e) => Err(e),
        }
    }

    /// What the cache holds, without the network (for the first frame).
    pub fn cached_conversations(&self) -> Result<Vec<Conversation>> {
        self.inner.local.conversations()
    }

    /// The newest cached messages of a conversation, oldest first.
    pub fn cached_messages(&self, conversation_id: &str, limit: u32) -> Result<Vec<Message>> {
        self.inner.local.messages(conversation_id, limit)
    }

    /// A page of history: messages with seq < `before` (or the newest), oldest first,
    /// with their reactions and reply previews. Cached as it arrives. When the server
    /// cannot be reached, the page comes from the cache (`from_cache`), and stops at a
    /// gap in what the cache holds (`gap`) rather than skipping over it.
    pub async fn history(
        &self,
        conversation_id: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<HistoryPage> {
        check_id("conversation_id", conversation_id)?;
        let limit = limit.clamp(1, 200);
        let mut path = format!("/v1/conversations/{conversation_id}/messages?limit={limit}");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let page: ServerPage = match self.inner.api.get(&path).await {
            Ok(p) => p,
            Err(SdkError::Network { .. }) => {
                let cached = self.inner.local.page(conversation_id, before, limit)?;
                return Ok(HistoryPage {
                    messages: cached.messages,
                    has_more: cached.has_more,
                    from_cache: true,
                    gap: cached.gap,
                });
            }
            Err(e) => return Err(e),
        };
        let messages: Vec<Message> = page
            .messages
            .into_iter()
            .map(|m| Message {
                reactions: m.reactions,
                reply_preview: m.reply_preview,
                ..Message::from(m.message)
            })
            .collect();
        self.inner
            .local
            .save_page(conversation_id, before, &messages, page.has_more)?;
        Ok(HistoryPage {
            messages,
            has_more: page.has_more,
            from_cache: false,
            gap: false,
        })
    }

    /// Full-text search over my conversations (or one).
    pub async fn search(
        &self,
        query: &str,
        conversation_id: Option<String>,
    ) -> Result<Vec<Message>> {
        let mut path = format!("/v1/search?q={}", q(query));
        if let Some(c) = conversation_id {
            check_id("conversation_id", &c)?;
            path.push_str(&format!("&conversation_id={c}"));
        }
        let res: Value = self.inner.api.get(&path).await?;
        Ok(res["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| serde_json::from_value::<MessageView>(m.clone()).ok())
            .map(Message::from)
            .collect())
    }

    pub async fn members(&self, conversation_id: &str) -> Result<Vec<Member>> {
        check_id("conversation_id", conversation_id)?;
        conn::fetch_members(&self.inner, conversation_id).await
    }

    /// Creates a conversation (`direct`, `group` or `room`) with `members` (user ids).
    pub async fn create_conversation(
        &self,
        kind: &str,
        name: Option<String>,
        members: Vec<String>,
    ) -> Result<Conversation> {
        for m in &members {
            check_id("members[]", m)?;
        }
        let body: Value = self
            .inner
            .api
            .call(
                Method::POST,
                "/v1/conversations",
                Some(json!({"kind": kind, "name": name, "members": members})),
            )
            .await?;
        let view: ConversationView = serde_json::from_value(body.clone())
            .map_err(|e| SdkError::network(format!("conversation: {e}")))?;
        let mut conv = Conversation::from(view);
        conv.last_seq = body["last_seq"].as_u64().unwrap_or(0);
        self.inner.local.save_conversation(&conv)?;
        self.inner.notify(Input::Subscribe(conv.id.clone()));
        Ok(conv)
    }

    pub async fn leave_conversation(&self, conversation_id: &str) -> Result<()> {
        check_id("conversation_id", conversation_id)?;
        let _: Value = self
            .inner
            .api
            .call(
                Method::POST,
                &format!("/v1/conversations/{conversation_id}/leave"),
                None,
            )
            .await?;
        self.inner.local.remove_conversation(conversation_id)
    }

    /// Registers (or replaces) this session's push target, so the server wakes the
    /// device when it has no live connection. The server checks the token (an endpoint
    /// on a private address, or a platform it does not push to, is refused).
    pub async fn register_push(&self, registration: PushRegistration) -> Result<()> {
        let mut body = json!({
            "platform": registration.platform.as_str(),
            "token": registration.token,
            "app_id": registration.app_id,
            "full_text": registration.full_text,
        });
        if let Some(lang) = registration.lang {
            body["lang"] = json!(lang);
        }
        if registration.platform == PushPlatform::Webpush {
            match (registration.webpush_p256dh, registration.webpush_auth) {
                (Some(p256dh), Some(auth)) => {
                    body["data"] = json!({ "keys": { "p256dh": p256dh, "auth": auth } });
                }
                _ => {
                    return Err(SdkError::invalid(
                        "invalid",
                        "a Web Push registration needs webpush_p256dh and webpush_auth",
                    ))
                }
            }
        }
        let _: Value = self
            .inner
            .api
            .call(Method::PUT, "/v1/me/push", Some(body))
            .await?;
        Ok(())
    }

    /// Removes this session's push target (logging out does it too). Removing one
    /// that is not there is not an error.
    pub async fn unregister_push(&self) -> Result<()> {
        match self
            .inner
            .api
            .call::<Value>(Method::DELETE, "/v1/me/push", None)
            .await
        {
            Ok(_) | Err(SdkError::Server { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Ids of commands written locally and not yet acknowledged, oldest first.
    pub fn pending(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .local
            .outbox()?
            .into_iter()
            .map(|e| e.id)
            .collect())
    }

    /// Messages queued on this device and not stored yet, oldest first, with their
    /// content: what a chat screen shows as "sending" (local echo), also after a
    /// restart.
    pub fn pending_messages(&self) -> Result<Vec<PendingMessage>> {
        Ok(self
            .inner
            .local
            .outbox()?
            .into_iter()
            .filter_map(|e| match e.command.op {
                Op::Send {
                    conv,
                    body,
                    reply_to,
                    mentions,
                    attachment,
                } => Some(PendingMessage {
                    attachment_file: self
                        .inner
                        .local
                        .pending_file(&e.id)
                        .ok()
                        .flatten()
                        .map(|f| f.path.to_string_lossy().into_owned()),
                    client_id: e.id,
                    conversation_id: conv,
                    body,
                    reply_to,
                    mentions,
                    attachment_id: attachment,
                    queued_at: e.created_at,
                    sent: e.published,
                }),
                _ => None,
            })
            .collect())
    }

    /// Changes the text of a queued message that has not gone out yet. Once it was
    /// handed to the network the server may already have it: `already_sent` (edit the
    /// stored message instead, or abort the pending one).
    pub fn edit_pending(&self, client_id: &str, body: &str) -> Result<()> {
        let entry = self
            .inner
            .local
            .outbox()?
            .into_iter()
            .find(|e| e.id == client_id)
            .ok_or_else(|| SdkError::invalid("not_found", "no such pending message"))?;
        let Op::Send {
            conv,
            reply_to,
            mentions,
            attachment,
            ..
        } = entry.command.op
        else {
            return Err(SdkError::invalid(
                "invalid",
                "only a queued message can be edited",
            ));
        };
        let cmd = Command {
            v: entry.command.v,
            id: entry.id,
            op: Op::Send {
                conv,
                body: body.to_owned(),
                reply_to,
                mentions,
                attachment,
            },
        };
        cmd.validate()
            .map_err(|e| SdkError::invalid(e.code.as_str(), e.message))?;
        if self.inner.local.outbox_replace_unpublished(&cmd)? {
            Ok(())
        } else {
            Err(SdkError::invalid(
                "already_sent",
                "the message went out already; edit it once stored, or abort it",
            ))
        }
    }

    /// Tries the queues that were given up on (a `wedged` error) again.
    pub fn retry_wedged(&self) {
        self.inner.notify(Input::RetryWedged);
    }

    /// Removes a command that has not been sent or acknowledged from the outbox; true
    /// if it was there. A wedged conversation queue moves on to its next command.
    pub fn abort_pending(&self, client_id: &str) -> Result<bool> {
        let removed = self.inner.local.outbox_remove(client_id)?;
        self.inner.notify(Input::Aborted(client_id.to_owned()));
        self.inner.notify(Input::RetryWedged);
        Ok(removed)
    }

    /// The last inbox seq this device has applied.
    pub fn last_inbox_seq(&self) -> Result<u64> {
        self.inner.local.last_iseq()
    }
}

/// `GET /v1/conversations/{id}/messages`: messages with what a chat screen shows.
#[derive(serde::Deserialize)]
struct ServerPage {
    messages: Vec<ServerMessage>,
    #[serde(default)]
    has_more: bool,
}

#[derive(serde::Deserialize)]
struct ServerMessage {
    #[serde(flatten)]
    message: MessageView,
    #[serde(default)]
    reactions: Vec<ReactionCount>,
    #[serde(default)]
    reply_preview: Option<ReplyPreview>,
}
