//! The device's local SQLite file: the session, the outbox, the last inbox seq seen and
//! a cache of conversations and recent messages (so an app renders before the network
//! answers). One file per data path; a new client on the same path (after a crash or a
//! kill) finds the outbox and resends it with the same ids.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::protocol::Command;
use crate::sdk::error::{Result, SdkError};
use crate::sdk::secrets::{FileSecretStore, SecretStore, SESSION_SECRET_KEY};
use crate::sdk::types::{Conversation, Message, ReactionCount, ReplyPreview};

/// How many messages per conversation the cache keeps.
pub const CACHED_MESSAGES_PER_CONVERSATION: i64 = 500;

/// The session: tokens (kept in the [`SecretStore`]) and who they belong to (kept in
/// the SQLite file, without the tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    pub user_id: String,
    pub username: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds when the access token expires.
    pub expires_at: i64,
}

/// One pending command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: String,
    pub command: Command,
    /// Unix milliseconds when it was queued.
    pub created_at: i64,
    /// It was handed to the network at least once (the server may have it).
    pub published: bool,
}

/// What the SQLite file keeps of a session. Files written before the tokens moved to
/// the secret store also hold `access_token` and `refresh_token`; they are moved out
/// at the first read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRow {
    user_id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// The tokens, as kept under [`SESSION_SECRET_KEY`].
#[derive(Serialize, Deserialize)]
struct Tokens {
    access_token: String,
    refresh_token: String,
}

pub struct LocalStore {
    conn: Mutex<Connection>,
    file: PathBuf,
    secrets: Arc<dyn SecretStore>,
}

/// The file store's name inside the data path (when the app gives no keystore).
pub const SECRETS_FILE: &str = "tidings-secrets.json";

// secure_delete: a deleted row (a legacy session with its tokens, a wiped account) is
// overwritten with zeros, not left in free pages of the file.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA secure_delete = ON;
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    command TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    json TEXT NOT NULL,
    activity INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conv TEXT NOT NULL,
    seq INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conv_seq ON messages (conv, seq);
-- The file of a queued attachment message, until it is uploaded (the outbox row's
-- command gets the attachment id then, and this row and the file go).
CREATE TABLE IF NOT EXISTS outbox_files (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    mime TEXT NOT NULL,
    filename TEXT
);
-- Seq ranges of a conversation the cache holds completely (every message from lo to
-- hi that this user may see). Between two ranges is a gap: messages the device has
-- never been given, so offline paging stops there instead of skipping over them.
CREATE TABLE IF NOT EXISTS covered (
    conv TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (conv, lo)
);
";

/// The file of a queued attachment message, not uploaded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFile {
    pub path: PathBuf,
    pub mime: String,
    pub filename: Option<String>,
}

/// A page the cache answered: messages oldest first, whether older ones exist, and
/// whether the page stopped at a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPage {
    pub messages: Vec<Message>,
    pub has_more: bool,
    pub gap: bool,
}

/// Marks `lo..=hi` of `conv` as held completely, merged with the ranges it overlaps or
/// touches (so a live message right after a cached page extends it).
fn cover(c: &Connection, conv: &str, lo: u64, hi: u64) -> rusqlite::Result<()> {
    if lo > hi {
        return Ok(());
    }
    let (lo, hi) = (lo as i64, hi as i64);
    let (min, max): (Option<i64>, Option<i64>) = c.query_row(
        "SELECT min(lo), max(hi) FROM covered WHERE conv = ?1 AND lo <= ?3 + 1 AND hi >= ?2 - 1",
        params![conv, lo, hi],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (lo, hi) = (min.map_or(lo, |m| m.min(lo)), max.map_or(hi, |m| m.max(hi)));
    c.execute(
        "DELETE FROM covered WHERE conv = ?1 AND lo <= ?3 + 1 AND hi >= ?2 - 1",
        params![conv, lo, hi],
    )?;
    c.execute(
        "INSERT INTO covered (conv, lo, hi) VALUES (?1, ?2, ?3)",
        params![conv, lo, hi],
    )
    .map(drop)
}

/// Stores one message row (no summary, no ranges).
fn put_message(c: &Connection, m: &Message) -> Result<()> {
    let json = serde_json::to_string(m)?;
    c.execute(
        "INSERT INTO messages (id, conv, seq, json) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET json = excluded.json",
        params![m.id, m.conversation_id, m.seq as i64, json],
    )?;
    Ok(())
}

/// Keeps the newest [`CACHED_MESSAGES_PER_CONVERSATION`] seqs of `conv`, and the ranges
/// with them.
fn prune(c: &Connection, conv: &str) -> rusqlite::Result<()> {
    let newest: Option<i64> = c.query_row(
        "SELECT max(seq) FROM messages WHERE conv = ?1",
        [conv],
        |r| r.get(0),
    )?;
    let Some(newest) = newest else {
        return Ok(());
    };
    let cut = newest - CACHED_MESSAGES_PER_CONVERSATION;
    c.execute(
        "DELETE FROM messages WHERE conv = ?1 AND seq <= ?2",
        params![conv, cut],
    )?;
    c.execute(
        "DELETE FROM covered WHERE conv = ?1 AND hi <= ?2",
        params![conv, cut],
    )?;
    c.execute(
        "UPDATE covered SET lo = ?2 + 1 WHERE conv = ?1 AND lo <= ?2",
        params![conv, cut],
    )
    .map(drop)
}

impl LocalStore {
    /// Opens (or creates) the store in `dir`, with the tokens in a [`FileSecretStore`]
    /// next to it.
    pub fn open(dir: &Path, file: &Path) -> Result<LocalStore> {
        let secrets = Arc::new(FileSecretStore::new(dir.join(SECRETS_FILE)));
        LocalStore::open_with(dir, file, secrets)
    }

    /// Opens (or creates) the store in `dir`, with the tokens in `secrets`.
    pub fn open_with(dir: &Path, file: &Path, secrets: Arc<dyn SecretStore>) -> Result<LocalStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SdkError::config(format!("data_path {} is not writable: {e}", dir.display()))
        })?;
        let conn = Connection::open(file)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        add_published_column(&conn)?;
        Ok(LocalStore {
            conn: Mutex::new(conn),
            file: file.to_path_buf(),
            secrets,
        })
    }

    /// Deletes everything this store kept: the tokens, then the database file and its
    /// WAL and shared-memory files (the connection is closed first and replaced by an
    /// empty in-memory one, so later calls see an empty store and recreate nothing).
    pub fn destroy(&self) -> Result<()> {
        self.secrets.delete(SESSION_SECRET_KEY.to_owned())?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let memory = Connection::open_in_memory()?;
        memory.execute_batch(SCHEMA)?;
        add_published_column(&memory)?;
        let old = std::mem::replace(&mut *conn, memory);
        old.close().map_err(|(_, e)| e)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = self.file.clone().into_os_string();
            name.push(suffix);
            match std::fs::remove_file(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SdkError::Storage {
                        detail: format!("remove {}: {e}", PathBuf::from(name).display()),
                    })
                }
            }
        }
        remove_dir_if_there(&self.files_dir())
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&conn)?)
    }

    fn get(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    fn put(&self, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
        })
    }

    /// The session: who from the SQLite file, the tokens from the secret store. No
    /// tokens there (the keystore was reset, another device restored a backup) is no
    /// session. A row from before the secret store is migrated: tokens moved out, the
    /// row rewritten without them.
    pub fn session(&self) -> Result<Option<StoredSession>> {
        let Some(raw) = self.get("session")? else {
            return Ok(None);
        };
        let Ok(mut row) = serde_json::from_str::<SessionRow>(&raw) else {
            return Ok(None);
        };
        if let (Some(access_token), Some(refresh_token)) =
            (row.access_token.take(), row.refresh_token.take())
        {
            self.put_tokens(&access_token, &refresh_token)?;
            self.put("session", &serde_json::to_string(&row)?)?;
            self.with(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);"))?;
        }
        let Some(tokens) = self.secrets.get(SESSION_SECRET_KEY.to_owned())? else {
            return Ok(None);
        };
        let Ok(tokens) = serde_json::from_str::<Tokens>(&tokens) else {
            return Ok(None);
        };
        Ok(Some(StoredSession {
            user_id: row.user_id,
            username: row.username,
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_at: row.expires_at,
        }))
    }

    fn put_tokens(&self, access_token: &str, refresh_token: &str) -> Result<()> {
        let tokens = serde_json::to_string(&Tokens {
            access_token: access_token.to_owned(),
            refresh_token: refresh_token.to_owned(),
        })?;
        self.secrets.set(SESSION_SECRET_KEY.to_owned(), tokens)
    }

    /// Saves tokens. A different user than the one the local data belongs to wipes
    /// everything first: the outbox, the cache and the inbox position are theirs. The
    /// owner is kept apart from the session, so it is still known after a session
    /// ended on its own (revoked, refresh refused) and someone else logs in.
    pub fn save_session(&self, s: &StoredSession) -> Result<()> {
        let owner = self.get("owner")?;
        if owner.as_deref().is_some_and(|o| o != s.user_id) {
            self.wipe()?;
        }
        if owner.as_deref() != Some(s.user_id.as_str()) {
            self.put("owner", &s.user_id)?;
        }
        // Tokens first: a session row without tokens reads as no session, the reverse
        // would pair the new tokens with the old row's user.
        self.put_tokens(&s.access_token, &s.refresh_token)?;
        let row = SessionRow {
            user_id: s.user_id.clone(),
            username: s.username.clone(),
            expires_at: s.expires_at,
            access_token: None,
            refresh_token: None,
        };
        self.put("session", &serde_json::to_string(&row)?)
    }

    pub fn clear_session(&self) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM kv WHERE key = 'session'", [])
                .map(drop)
        })?;
        self.secrets.delete(SESSION_SECRET_KEY.to_owned())
    }

    /// Forgets the account: tokens, session, outbox, cache and inbox position.
    pub fn wipe(&self) -> Result<()> {
        self.secrets.delete(SESSION_SECRET_KEY.to_owned())?;
        self.with(|c| {
            c.execute_batch(
                "DELETE FROM kv; DELETE FROM outbox; DELETE FROM conversations; DELETE FROM messages; \
                 DELETE FROM covered; DELETE FROM outbox_files;",
            )
        })?;
        remove_dir_if_there(&self.files_dir())
    }

    /// The last inbox seq applied (0 = none).
    pub fn last_iseq(&self) -> Result<u64> {
        Ok(self
            .get("last_iseq")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub fn set_last_iseq(&self, iseq: u64) -> Result<()> {
        self.put("last_iseq", &iseq.to_string())
    }

    /// Appends a command to the outbox (before it is published).
    pub fn outbox_push(&self, cmd: &Command) -> Result<()> {
        let json = serde_json::to_string(cmd)?;
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO outbox (id, command, created_at) VALUES (?1, ?2, ?3)",
                params![cmd.id, json, now],
            )
            .map(drop)
        })
    }

    /// Removes an entry; true if it was there.
    pub fn outbox_remove(&self, id: &str) -> Result<bool> {
        let file = self.pending_file(id)?;
        let removed = self.with(|c| {
            c.execute("DELETE FROM outbox_files WHERE id = ?1", [id])?;
            c.execute("DELETE FROM outbox WHERE id = ?1", [id])
                .map(|n| n > 0)
        })?;
        if let Some(f) = file {
            let _ = std::fs::remove_file(f.path);
        }
        Ok(removed)
    }

    /// Where queued attachments wait for their upload.
    fn files_dir(&self) -> PathBuf {
        self.file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("outbox-files")
    }

    /// Queues a message whose attachment is still to be uploaded: the bytes go to a
    /// file only this user can read, then the command and the file's row go in one
    /// transaction (a crash in between leaves at most an orphan file).
    pub fn outbox_push_with_file(
        &self,
        cmd: &Command,
        bytes: &[u8],
        mime: &str,
        filename: Option<&str>,
    ) -> Result<()> {
        let dir = self.files_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| SdkError::config(format!("{}: {e}", dir.display())))?;
        let path = dir.join(&cmd.id);
        write_private(&path, bytes)
            .map_err(|e| SdkError::config(format!("{}: {e}", path.display())))?;
        let json = serde_json::to_string(cmd)?;
        let now = now_ms();
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO outbox (id, command, created_at) VALUES (?1, ?2, ?3)",
            params![cmd.id, json, now],
        )?;
        tx.execute(
            "INSERT INTO outbox_files (id, path, mime, filename) VALUES (?1, ?2, ?3, ?4)",
            params![cmd.id, path.to_string_lossy(), mime, filename],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The file a queued message still has to upload, if any.
    pub fn pending_file(&self, id: &str) -> Result<Option<PendingFile>> {
        self.with(|c| {
            c.query_row(
                "SELECT path, mime, filename FROM outbox_files WHERE id = ?1",
                [id],
                |r| {
                    Ok(PendingFile {
                        path: PathBuf::from(r.get::<_, String>(0)?),
                        mime: r.get(1)?,
                        filename: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// The upload of a queued message finished: its command names the attachment now,
    /// and the local file goes. False if the message was aborted meanwhile.
    pub fn attach_uploaded(&self, id: &str, attachment_id: &str) -> Result<bool> {
        let file = self.pending_file(id)?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let json: Option<String> = tx
            .query_row("SELECT command FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(mut cmd) = json.and_then(|j| serde_json::from_str::<Command>(&j).ok()) else {
            return Ok(false);
        };
        if let crate::protocol::Op::Send { attachment, .. } = &mut cmd.op {
            *attachment = Some(attachment_id.to_owned());
        }
        tx.execute(
            "UPDATE outbox SET command = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(&cmd)?],
        )?;
        tx.execute("DELETE FROM outbox_files WHERE id = ?1", [id])?;
        tx.commit()?;
        drop(conn);
        if let Some(f) = file {
            let _ = std::fs::remove_file(f.path);
        }
        Ok(true)
    }

    /// Every pending command, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<(String, String, i64, bool)> = self.with(|c| {
            let mut st =
                c.prepare("SELECT id, command, created_at, published FROM outbox ORDER BY pos")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, json, created_at, published)| {
                serde_json::from_str(&json).ok().map(|command| OutboxEntry {
                    id,
                    command,
                    created_at,
                    published,
                })
            })
            .collect())
    }

    /// Marks a command as handed to the network and returns it as stored now: from here
    /// on the server may have it, so it can no longer be edited locally.
    pub fn outbox_mark_published(&self, id: &str) -> Result<Option<Command>> {
        let json: Option<String> = self.with(|c| {
            c.query_row(
                "UPDATE outbox SET published = 1 WHERE id = ?1 RETURNING command",
                [id],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Replaces a command that was never handed to the network; false if it was (or
    /// is gone).
    pub fn outbox_replace_unpublished(&self, cmd: &Command) -> Result<bool> {
        let json = serde_json::to_string(cmd)?;
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET command = ?2 WHERE id = ?1 AND published = 0",
                params![cmd.id, json],
            )
            .map(|n| n == 1)
        })
    }

    pub fn save_conversation(&self, conv: &Conversation) -> Result<()> {
        let json = serde_json::to_string(conv)?;
        let activity = conv
            .last_message
            .as_ref()
            .map_or(conv.created_at, |m| m.created_at);
        self.with(|c| {
            c.execute(
                "INSERT INTO conversations (id, json, activity) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET json = excluded.json,
                     activity = max(activity, excluded.activity)",
                params![conv.id, json, activity],
            )
            .map(drop)
        })
    }

    pub fn conversation(&self, id: &str) -> Result<Option<Conversation>> {
        let json: Option<String> = self.with(|c| {
            c.query_row("SELECT json FROM conversations WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    pub fn remove_conversation(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM conversations WHERE id = ?1", [id])?;
            c.execute("DELETE FROM covered WHERE conv = ?1", [id])?;
            c.execute("DELETE FROM messages WHERE conv = ?1", [id])
                .map(drop)
        })
    }

    /// Cached conversations, most recently active first.
    pub fn conversations(&self) -> Result<Vec<Conversation>> {
        let rows: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT json FROM conversations ORDER BY activity DESC")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(rows
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Caches a live (or synced) message and folds it into its conversation's summary.
    /// The cache has every message up to the one before it only if a range says so; the
    /// message itself is a range of one, joined to a range that ends right before it.
    /// Returns the message as cached: with the reactions an edit keeps, and the preview
    /// of the message it replies to when that one is cached.
    pub fn save_message(&self, m: &Message) -> Result<Message> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = m.clone();
        if let Some(old) = message_row(&conn, &m.id)? {
            // An edit or a deletion: the counts and the preview are not in the event.
            m.reactions = old.reactions;
            if m.reply_preview.is_none() {
                m.reply_preview = old.reply_preview;
            }
        } else if let Some(parent) = m.reply_to.as_deref() {
            m.reply_preview = message_row(&conn, parent)?.map(|p| ReplyPreview::of(&p));
        }
        put_message(&conn, &m)?;
        cover(&conn, &m.conversation_id, m.seq, m.seq)?;
        prune(&conn, &m.conversation_id)?;
        drop(conn);
        self.fold_into_summary(&m)?;
        Ok(m)
    }

    /// Caches a page the server gave for `before` (None: the newest page): the range
    /// from its first message (from seq 1 when nothing older exists) up to `before` - 1
    /// (or its last message) is now held completely.
    pub fn save_page(
        &self,
        conv: &str,
        before: Option<u64>,
        messages: &[Message],
        has_more: bool,
    ) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        for m in messages {
            put_message(&tx, m)?;
        }
        let lo = if has_more {
            messages.first().map(|m| m.seq)
        } else {
            Some(1)
        };
        let hi = match before {
            Some(b) => Some(b.saturating_sub(1)),
            None => messages.last().map(|m| m.seq),
        };
        if let (Some(lo), Some(hi)) = (lo, hi) {
            cover(&tx, conv, lo, hi)?;
        }
        prune(&tx, conv)?;
        tx.commit()?;
        drop(conn);
        if before.is_none() {
            if let Some(last) = messages.last() {
                self.fold_into_summary(last)?;
            }
        }
        Ok(())
    }

    /// A newer message becomes the summary's last one; from someone else it is one
    /// more unread (the owner of the local data is the user).
    fn fold_into_summary(&self, m: &Message) -> Result<()> {
        if let Some(mut conv) = self.conversation(&m.conversation_id)? {
            if m.seq >= conv.last_seq {
                let new = m.seq > conv.last_seq;
                conv.last_seq = m.seq;
                conv.last_message = Some(m.clone());
                if new && self.get("owner")?.as_deref() != Some(m.sender.as_str()) {
                    conv.unread += 1;
                }
                self.save_conversation(&conv)?;
            }
        }
        Ok(())
    }

    /// This user read `conv` up to `seq` (on any device): what is unread is what came
    /// after it.
    pub fn mark_read(&self, conv: &str, seq: u64) -> Result<()> {
        if let Some(mut c) = self.conversation(conv)? {
            let left = c.last_seq.saturating_sub(seq);
            if left < c.unread {
                c.unread = left;
                self.save_conversation(&c)?;
            }
        }
        Ok(())
    }

    /// Keeps this user's mute and archive flags in the cached summary.
    pub fn set_flags(&self, conv: &str, muted: bool, archived: bool) -> Result<()> {
        if let Some(mut c) = self.conversation(conv)? {
            c.muted = muted;
            c.archived = archived;
            self.save_conversation(&c)?;
        }
        Ok(())
    }

    /// One cached message.
    pub fn message(&self, id: &str) -> Result<Option<Message>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        message_row(&conn, id)
    }

    /// Folds a live reaction into the cached message (if cached); returns its counts.
    pub fn apply_reaction(
        &self,
        message_id: &str,
        emoji: &str,
        mine: bool,
        added: bool,
    ) -> Result<Option<Vec<ReactionCount>>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut m) = message_row(&conn, message_id)? else {
            return Ok(None);
        };
        m.apply_reaction(emoji, mine, added);
        put_message(&conn, &m)?;
        Ok(Some(m.reactions))
    }

    /// A page of history from the cache alone: up to `limit` messages with seq <
    /// `before` (None: from the newest cached), oldest first, never across a gap.
    pub fn page(&self, conv: &str, before: Option<u64>, limit: u32) -> Result<CachedPage> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let top: Option<i64> = match before {
            Some(0) | Some(1) => {
                return Ok(CachedPage {
                    messages: vec![],
                    has_more: false,
                    gap: false,
                })
            }
            Some(b) => Some(b as i64 - 1),
            None => conn.query_row("SELECT max(hi) FROM covered WHERE conv = ?1", [conv], |r| {
                r.get(0)
            })?,
        };
        let range: Option<(i64, i64)> = match top {
            None => None,
            Some(top) => conn
                .query_row(
                    "SELECT lo, hi FROM covered WHERE conv = ?1 AND lo <= ?2 AND hi >= ?2",
                    params![conv, top],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
        };
        let (Some(top), Some((lo, _))) = (top, range) else {
            // Nothing known right below `before`: the cache cannot say what is there.
            return Ok(CachedPage {
                messages: vec![],
                has_more: true,
                gap: true,
            });
        };
        let rows: Vec<String> = {
            let mut st = conn.prepare(
                "SELECT json FROM messages WHERE conv = ?1 AND seq >= ?2 AND seq <= ?3 \
                 ORDER BY seq DESC LIMIT ?4",
            )?;
            let rows = st.query_map(params![conv, lo, top, limit], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut messages: Vec<Message> = rows
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        messages.reverse();
        let first = messages.first().map_or(top + 1, |m| m.seq as i64);
        // Seqs a user may not see (before they joined, say) have no rows, so the page
        // may hold fewer than `limit` and still reach the range's bottom.
        let reached_bottom = messages.len() < limit as usize || first <= lo;
        Ok(CachedPage {
            has_more: !reached_bottom || lo > 1,
            gap: reached_bottom && lo > 1,
            messages,
        })
    }

    /// The newest `limit` cached messages of a conversation, oldest first.
    pub fn messages(&self, conv: &str, limit: u32) -> Result<Vec<Message>> {
        let rows: Vec<String> = self.with(|c| {
            let mut st =
                c.prepare("SELECT json FROM messages WHERE conv = ?1 ORDER BY seq DESC LIMIT ?2")?;
            let rows = st.query_map(params![conv, limit], |r| r.get(0))?;
            rows.collect()
        })?;
        let mut out: Vec<Message> = rows
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        out.reverse();
        Ok(out)
    }
}

/// Writes a file readable by this user only (queued attachments may be private).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// `outbox.published` (added after the first release of the file format).
fn add_published_column(c: &Connection) -> rusqlite::Result<()> {
    let has: bool = c.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'published'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        c.execute_batch("ALTER TABLE outbox ADD COLUMN published INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

fn remove_dir_if_there(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SdkError::Storage {
            detail: format!("{}: {e}", dir.display()),
        }),
    }
}

fn message_row(c: &Connection, id: &str) -> Result<Option<Message>> {
    let json: Option<String> = c
        .query_row("SELECT json FROM messages WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Op;

    fn send(id: &str) -> Command {
        Command {
            v: 1,
            id: id.into(),
            op: Op::Send {
                conv: crate::protocol::ids::new_id(),
                body: "hi".into(),
                reply_to: None,
                mentions: vec![],
                attachment: None,
            },
        }
    }

    fn msg(conv: &str, seq: u64) -> Message {
        Message {
            id: format!("{conv}-{seq}"),
            conversation_id: conv.into(),
            seq,
            sender: "u2".into(),
            client_msg_id: format!("c{seq}"),
            kind: "text".into(),
            body: format!("m{seq}"),
            reply_to: None,
            mentions: vec![],
            attachment: None,
            created_at: seq as i64,
            edited_at: None,
            deleted: false,
            reactions: vec![],
            reply_preview: None,
        }
    }

    fn seqs(p: &CachedPage) -> Vec<u64> {
        p.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn ranges_merge_and_pages_stop_at_gaps_and_at_the_pruning_cut() {
        let dir = tempfile_dir();
        let s = LocalStore::open(&dir, &dir.join("db.sqlite3")).unwrap();
        let page = |lo: u64, hi: u64| (lo..=hi).map(|q| msg("c", q)).collect::<Vec<_>>();
        // A newest page 41..=50 (more before), then live 51 and 53 (52 missed).
        s.save_page("c", None, &page(41, 50), true).unwrap();
        s.save_message(&msg("c", 51)).unwrap();
        s.save_message(&msg("c", 53)).unwrap();
        let top = s.page("c", None, 5).unwrap();
        assert_eq!(
            (seqs(&top), top.gap),
            (vec![53], true),
            "53 alone: 52 is a gap"
        );
        let below = s.page("c", Some(53), 20).unwrap();
        assert!(below.messages.is_empty() && below.gap);
        s.save_message(&msg("c", 52)).unwrap(); // sync brings the missing one
        let top = s.page("c", None, 5).unwrap();
        assert_eq!(
            (seqs(&top), top.has_more, top.gap),
            (vec![49, 50, 51, 52, 53], true, false)
        );
        let rest = s.page("c", Some(49), 50).unwrap();
        assert_eq!(
            (seqs(&rest).len(), rest.gap, rest.has_more),
            (8, true, true)
        );
        // The page below 41 said nothing older exists: the range reaches seq 1.
        s.save_page("c", Some(41), &page(1, 40), false).unwrap();
        let all = s.page("c", Some(54), 100).unwrap();
        assert_eq!(
            (seqs(&all), all.has_more, all.gap),
            ((1..=53).collect(), false, false)
        );
        // Pruning keeps the newest 500 seqs and cuts the range with them.
        for q in 54..=600 {
            s.save_message(&msg("c", q)).unwrap();
        }
        let old = s.page("c", Some(101), 50).unwrap();
        assert_eq!((seqs(&old), old.gap, old.has_more), (vec![], true, true));
        let edge = s.page("c", Some(103), 50).unwrap();
        assert_eq!((seqs(&edge), edge.gap), (vec![101, 102], true));
    }

    #[test]
    fn outbox_survives_reopen_in_order_and_a_new_user_wipes_it() {
        let dir = tempfile_dir();
        let file = dir.join("db.sqlite3");
        {
            let s = LocalStore::open(&dir, &file).unwrap();
            s.save_session(&StoredSession {
                user_id: "u1".into(),
                username: "a".into(),
                access_token: "x".into(),
                refresh_token: "y".into(),
                expires_at: 0,
            })
            .unwrap();
            for id in ["c", "a", "b"] {
                s.outbox_push(&send(id)).unwrap();
            }
            s.outbox_push(&send("a")).unwrap(); // same id: ignored
            s.set_last_iseq(7).unwrap();
        }
        let s = LocalStore::open(&dir, &file).unwrap();
        let ids: Vec<String> = s.outbox().unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["c", "a", "b"]);
        assert_eq!(s.last_iseq().unwrap(), 7);
        assert!(s.outbox_remove("a").unwrap());
        assert!(!s.outbox_remove("a").unwrap());
        // The session ended on its own (revoked, refresh refused): the data still
        // belongs to u1, and u2 logging in must not inherit it.
        s.clear_session().unwrap();
        s.save_session(&StoredSession {
            user_id: "u2".into(),
            username: "b".into(),
            access_token: "x".into(),
            refresh_token: "y".into(),
            expires_at: 0,
        })
        .unwrap();
        assert!(s.outbox().unwrap().is_empty());
        assert_eq!(s.last_iseq().unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file written before the secret store: its tokens move to the store at the
    /// first read and are gone from the database's bytes (secure_delete, checkpoint).
    #[test]
    fn a_legacy_session_row_moves_its_tokens_to_the_secret_store() {
        let dir = tempfile_dir();
        let file = dir.join("db.sqlite3");
        let s = LocalStore::open(&dir, &file).unwrap();
        s.put(
            "session",
            r#"{"user_id":"u1","username":"a","access_token":"ACCESS-LEGACY-123","refresh_token":"REFRESH-LEGACY-456","expires_at":9}"#,
        )
        .unwrap();
        let grep = |needle: &str| {
            ["", "-wal"].iter().any(|suffix| {
                let bytes =
                    std::fs::read(format!("{}{suffix}", file.display())).unwrap_or_default();
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            })
        };
        assert!(
            grep("REFRESH-LEGACY-456"),
            "positive control: the legacy row is on disk"
        );
        let session = s.session().unwrap().unwrap();
        assert_eq!(session.refresh_token, "REFRESH-LEGACY-456");
        assert_eq!(session.expires_at, 9);
        assert!(!grep("REFRESH-LEGACY-456") && !grep("ACCESS-LEGACY-123"));
        let secrets = std::fs::read_to_string(dir.join(SECRETS_FILE)).unwrap();
        assert!(secrets.contains("REFRESH-LEGACY-456"));
        // Read again (no legacy fields now): the same session.
        assert_eq!(s.session().unwrap(), Some(session));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("tidings-sdk-{}", crate::protocol::ids::new_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
