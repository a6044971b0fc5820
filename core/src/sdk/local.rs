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
use crate::sdk::types::{Conversation, Message};

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
";

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
        Ok(())
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
                "DELETE FROM kv; DELETE FROM outbox; DELETE FROM conversations; DELETE FROM messages;",
            )
        })
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
        self.with(|c| {
            c.execute("DELETE FROM outbox WHERE id = ?1", [id])
                .map(|n| n > 0)
        })
    }

    /// Every pending command, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut st = c.prepare("SELECT id, command FROM outbox ORDER BY pos")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, json)| {
                serde_json::from_str(&json)
                    .ok()
                    .map(|command| OutboxEntry { id, command })
            })
            .collect())
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

    /// Caches a message and folds it into its conversation's summary.
    pub fn save_message(&self, m: &Message) -> Result<()> {
        let json = serde_json::to_string(m)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO messages (id, conv, seq, json) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET json = excluded.json",
                params![m.id, m.conversation_id, m.seq as i64, json],
            )?;
            c.execute(
                "DELETE FROM messages WHERE conv = ?1 AND seq <= ?2",
                params![
                    m.conversation_id,
                    m.seq as i64 - CACHED_MESSAGES_PER_CONVERSATION
                ],
            )
            .map(drop)
        })?;
        if let Some(mut conv) = self.conversation(&m.conversation_id)? {
            if m.seq >= conv.last_seq {
                conv.last_seq = m.seq;
                conv.last_message = Some(m.clone());
                self.save_conversation(&conv)?;
            }
        }
        Ok(())
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
