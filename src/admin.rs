//! The operator's commands: `tidings user list|show|disable|enable|delete|reset-password`
//! and `tidings session list|revoke`. They open the same database as the server (SQLite
//! file or PostgreSQL) and change it directly; a running server notices revoked sessions
//! within `auth.revocation_poll_ms` and closes their live connections (see
//! `serve::watch_revocations`), and refuses their tokens on the next request at once.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Subcommand;
use tidings_store::{now_ms, AccountRecord, Store};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (for bootstrapping; users normally register over HTTP).
    Create {
        #[arg(long)]
        username: String,
        /// The password; omit it to read one line from standard input instead.
        #[arg(long)]
        password: Option<String>,
    },
    /// List accounts (active, disabled and deleted), by id.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this user id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one account: a user id or a username.
    Show { user: String },
    /// Disable an account: no login, refresh or connection; its sessions end and its
    /// live connections close.
    Disable { user: String },
    /// Enable a disabled account (its old sessions stay ended: the user logs in again).
    Enable { user: String },
    /// Delete an account: profile and credentials erased, sessions ended, every
    /// conversation left; its messages stay, shown as from a deleted user.
    Delete {
        user: String,
        /// Required: deletion cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Set a new password and end every session of the account.
    ResetPassword {
        user: String,
        /// The new password; omit it to read one line from standard input instead.
        #[arg(long)]
        password: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List an account's sessions (one per device login), newest first.
    List { user: String },
    /// End sessions: their tokens stop working and their live connections close.
    Revoke {
        /// Session ids.
        sessions: Vec<String>,
        /// Every session of this account instead.
        #[arg(long, conflicts_with = "sessions")]
        user: Option<String>,
    },
}

/// The password from `--password`, or one line of standard input.
pub fn password_arg(password: Option<String>) -> anyhow::Result<String> {
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        bail!("no password given");
    }
    Ok(password)
}

async fn account(store: &Arc<dyn Store>, key: &str) -> anyhow::Result<AccountRecord> {
    store
        .find_account(key)
        .await?
        .with_context(|| format!("no account {key:?} (give a user id or a username)"))
}

pub async fn user(store: Arc<dyn Store>, command: UserCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Create { username, password } => {
            let password = password_arg(password)?;
            let hashing = tidings_rest::hashing::HashPool::new(1);
            let user = tidings_rest::routes::auth::create_account(
                &store, &hashing, &username, &password, None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
            writeln!(out, "{}", user.id)?;
        }
        UserCommand::List { limit, after } => {
            writeln!(out, "id\tusername\tstatus\tsessions\tcreated")?;
            for a in store.list_accounts(after.as_deref(), limit).await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    a.user.id,
                    a.user.username,
                    a.status(),
                    a.active_sessions,
                    time(Some(a.user.created_at))
                )?;
            }
        }
        UserCommand::Show { user } => {
            let a = account(&store, &user).await?;
            writeln!(out, "id: {}", a.user.id)?;
            writeln!(out, "username: {}", a.user.username)?;
            writeln!(
                out,
                "display_name: {}",
                a.user.display_name.as_deref().unwrap_or("-")
            )?;
            writeln!(out, "status: {}", a.status())?;
            writeln!(out, "created: {}", time(Some(a.user.created_at)))?;
            writeln!(out, "last_seen: {}", time(a.user.last_seen_at))?;
            writeln!(out, "disabled: {}", time(a.disabled_at))?;
            writeln!(out, "deleted: {}", time(a.deleted_at))?;
            writeln!(out, "active_sessions: {}", a.active_sessions)?;
        }
        UserCommand::Disable { user } => {
            let a = account(&store, &user).await?;
            if !store.set_disabled(&a.user.id, true, now_ms()).await? {
                bail!("account {} is deleted", a.user.id);
            }
            writeln!(out, "disabled {} ({})", a.user.id, a.user.username)?;
        }
        UserCommand::Enable { user } => {
            let a = account(&store, &user).await?;
            if !store.set_disabled(&a.user.id, false, now_ms()).await? {
                bail!("account {} is deleted", a.user.id);
            }
            writeln!(out, "enabled {} ({})", a.user.id, a.user.username)?;
        }
        UserCommand::Delete { user, yes } => {
            if !yes {
                bail!("deleting an account cannot be undone: add --yes");
            }
            let a = account(&store, &user).await?;
            if a.deleted_at.is_some() {
                bail!("account {} is already deleted", a.user.id);
            }
            let events = store.delete_account(&a.user.id, now_ms()).await?;
            writeln!(
                out,
                "deleted {} ({}); {} members notified",
                a.user.id,
                a.user.username,
                events.len()
            )?;
        }
        UserCommand::ResetPassword { user, password } => {
            let a = account(&store, &user).await?;
            let password = password_arg(password)?;
            tidings_rest::routes::auth::check_password(&password)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
            let hash = tidings_auth::password::hash(&password)
                .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
            if !store.set_password_hash(&a.user.id, &hash, now_ms()).await? {
                bail!("account {} is deleted", a.user.id);
            }
            writeln!(
                out,
                "password of {} ({}) reset; every session ended",
                a.user.id, a.user.username
            )?;
        }
    }
    Ok(())
}

pub async fn session(store: Arc<dyn Store>, command: SessionCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        SessionCommand::List { user } => {
            let a = account(&store, &user).await?;
            writeln!(out, "id\tdevice\tcreated\trevoked")?;
            for s in store.user_sessions(&a.user.id).await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    s.id,
                    s.device_id.as_deref().unwrap_or("-"),
                    time(Some(s.created_at)),
                    time(s.revoked_at)
                )?;
            }
        }
        SessionCommand::Revoke { sessions, user } => {
            if let Some(user) = user {
                let a = account(&store, &user).await?;
                let ended = store.revoke_user_sessions(&a.user.id, now_ms()).await?;
                writeln!(out, "revoked {} sessions of {}", ended.len(), a.user.id)?;
                return Ok(());
            }
            if sessions.is_empty() {
                bail!("name the sessions to revoke, or --user USER for all of an account's");
            }
            let mut missing = Vec::new();
            for id in &sessions {
                if store.revoke_session(id, now_ms()).await? {
                    writeln!(out, "revoked {id}")?;
                } else {
                    missing.push(id.as_str());
                }
            }
            if !missing.is_empty() {
                bail!("no live session {}", missing.join(", "));
            }
        }
    }
    Ok(())
}

/// Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SSZ`, or `-`.
fn time(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_utc_iso_8601() {
        assert_eq!(super::time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(Some(1_709_210_096_000)), "2024-02-29T12:34:56Z");
        assert_eq!(super::time(None), "-");
    }
}
