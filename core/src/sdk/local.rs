//! The device's local SQLite file: the session, the outbox, the last inbox seq seen and
//! a cache of conversations and recent messages (so an app renders before the network
//! answers). One file per data path; a new client on the same path (after a crash or a
//! kill) finds the outbox and resends it with the same ids.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::protocol::Command;
use crate::sdk::error::{Result, SdkError};
use crate::sdk::types::{Conversation, Message};

/// How many messages per conversation the cache keeps.
pub const CACHED_MESSAGES_PER_CONVERSATION: i64 = 500;

/// Stored tokens.
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

pub struct LocalStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
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
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, file: &Path) -> Result<LocalStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            SdkError::config(format!("data_path {} is not writable: {e}", dir.display()))
        })?;
        let conn = Connection::open(file)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(LocalStore {
            conn: Mutex::new(conn),
        })
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

    pub fn session(&self) -> Result<Option<StoredSession>> {
        match self.get("session")? {
            Some(s) => Ok(serde_json::from_str(&s).ok()),
            None => Ok(None),
        }
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
        self.put("session", &serde_json::to_string(s)?)
    }

    pub fn clear_session(&self) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM kv WHERE key = 'session'", [])
                .map(drop)
        })
    }

    /// Forgets the account: session, outbox, cache and inbox position.
    pub fn wipe(&self) -> Result<()> {
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

    fn tempfile_dir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("tidings-sdk-{}", crate::protocol::ids::new_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
