//! Presence behind an external broker (issue 12; migrations 0008 and 0009), which only
//! PostgreSQL keeps: a SQLite database has one node, whose embedded broker's in-memory
//! tracker is exact.
//!
//! `broker_connections` says which of a user's clients are live, from the broker's
//! connect/disconnect events; `broker_presence` says what watchers were last told. Each
//! change is decided against the latter under the user's presence lock (a transaction's
//! advisory lock) and published through the sink before that lock is released, so two
//! nodes' changes for one user are published in the order they were decided. Events of
//! different broker nodes arrive in any order (a phone's disconnect before the laptop's
//! connect that preceded it), so "offline" waits out a grace: it is published only if,
//! that long after the last event that left the user with no live client, there still
//! is none.

use async_trait::async_trait;
use sqlx::{Postgres, Row, Transaction};

use super::PgStore;
use crate::{BrokerPresence, EventSink, PresenceSettled, StoreError, StoreResult};

/// The database's clock in Unix milliseconds: every node's graces on one clock.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint";

const UNSUPPORTED: &str = "external-broker presence needs PostgreSQL";

/// The store calls behind `Store::broker_client_event`, `settle_broker_presence` and
/// `unsettled_broker_presence`; SQLite keeps the defaults.
#[async_trait]
pub(crate) trait SharedPresence: Sync {
    async fn client_event(
        &self,
        _client_id: &str,
        _up: bool,
        _at: i64,
        _sink: &dyn EventSink,
    ) -> StoreResult<BrokerPresence> {
        Err(StoreError::Unsupported(UNSUPPORTED))
    }

    async fn settle(
        &self,
        _user: &str,
        _grace_ms: i64,
        _sink: &dyn EventSink,
    ) -> StoreResult<PresenceSettled> {
        Err(StoreError::Unsupported(UNSUPPORTED))
    }

    async fn unsettled(&self, _grace_ms: i64, _limit: i64) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
}

impl SharedPresence for crate::SqliteStore {}

/// Serializes one user's presence changes across nodes, without touching the `users`
/// row the write batches lock for the inbox counter. Released at commit or rollback,
/// so a dropped transaction cannot leave it held.
async fn lock_presence(tx: &mut Transaction<'_, Postgres>, user: &str) -> StoreResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tidings.presence'), hashtext($1))")
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn has_live_client(tx: &mut Transaction<'_, Postgres>, user: &str) -> StoreResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM broker_connections \
         WHERE user_id = $1 AND connected_at > disconnected_at)",
    )
    .bind(user)
    .fetch_one(&mut **tx)
    .await?)
}

#[async_trait]
impl SharedPresence for PgStore {
    async fn client_event(
        &self,
        client_id: &str,
        up: bool,
        at: i64,
        sink: &dyn EventSink,
    ) -> StoreResult<BrokerPresence> {
        let mut tx = self.pool.begin().await?;
        let user: Option<String> = sqlx::query_scalar(
            "SELECT s.user_id FROM mqtt_clients m JOIN sessions s ON s.id = m.session_id \
             WHERE m.client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else {
            return Ok(BrokerPresence::UnknownClient);
        };
        lock_presence(&mut tx, &user).await?;
        // Only ever forward in time, so a late event cannot undo a newer one.
        let sql = if up {
            "INSERT INTO broker_connections (client_id, user_id, connected_at) VALUES ($1, $2, $3) \
             ON CONFLICT (client_id) DO UPDATE SET user_id = EXCLUDED.user_id, \
             connected_at = GREATEST(broker_connections.connected_at, EXCLUDED.connected_at)"
        } else {
            "INSERT INTO broker_connections (client_id, user_id, disconnected_at) VALUES ($1, $2, $3) \
             ON CONFLICT (client_id) DO UPDATE SET user_id = EXCLUDED.user_id, \
             disconnected_at = GREATEST(broker_connections.disconnected_at, EXCLUDED.disconnected_at)"
        };
        sqlx::query(sql)
            .bind(client_id)
            .bind(&user)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        let live = has_live_client(&mut tx, &user).await?;
        let shown_online: bool =
            sqlx::query_scalar("SELECT online FROM broker_presence WHERE user_id = $1")
                .bind(&user)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(false);
        let outcome = match (live, shown_online) {
            (true, false) => {
                sqlx::query(
                    "INSERT INTO broker_presence (user_id, online, gone_at) VALUES ($1, TRUE, NULL) \
                     ON CONFLICT (user_id) DO UPDATE SET online = TRUE, gone_at = NULL",
                )
                .bind(&user)
                .execute(&mut *tx)
                .await?;
                // Under the lock: no other node can decide (and publish) a change for
                // this user until the commit, so this one cannot be overtaken. If the
                // commit fails, watchers were told "online" once more than recorded,
                // and the next connect says it again: harmless.
                sink.presence(&user, true, None);
                BrokerPresence::Online { user }
            }
            (false, true) => {
                // (Re)starts the grace: "offline" only if no client is live that long
                // after the latest event that left none.
                sqlx::query(&format!(
                    "UPDATE broker_presence SET gone_at = {DB_NOW_MS} WHERE user_id = $1"
                ))
                .bind(&user)
                .execute(&mut *tx)
                .await?;
                BrokerPresence::OfflinePending { user }
            }
            (true, true) => {
                // A client is back within the grace: watchers never knew it went.
                sqlx::query(
                    "UPDATE broker_presence SET gone_at = NULL \
                     WHERE user_id = $1 AND gone_at IS NOT NULL",
                )
                .bind(&user)
                .execute(&mut *tx)
                .await?;
                BrokerPresence::Unchanged { user }
            }
            (false, false) => BrokerPresence::Unchanged { user },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn settle(
        &self,
        user: &str,
        grace_ms: i64,
        sink: &dyn EventSink,
    ) -> StoreResult<PresenceSettled> {
        let mut tx = self.pool.begin().await?;
        lock_presence(&mut tx, user).await?;
        let row = sqlx::query(&format!(
            "SELECT online, gone_at, {DB_NOW_MS} AS now FROM broker_presence WHERE user_id = $1"
        ))
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(PresenceSettled::Unchanged);
        };
        if !row.try_get::<bool, _>("online")? {
            return Ok(PresenceSettled::Unchanged);
        }
        if has_live_client(&mut tx, user).await? {
            sqlx::query("UPDATE broker_presence SET gone_at = NULL WHERE user_id = $1")
                .bind(user)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(PresenceSettled::Unchanged);
        }
        // No grace running (shown online with no live client and no event since, which
        // only a crash between statements could leave) is a grace long over.
        if let Some(gone_at) = row.try_get::<Option<i64>, _>("gone_at")? {
            let now: i64 = row.try_get("now")?;
            let left = gone_at.saturating_add(grace_ms).saturating_sub(now);
            if left > 0 {
                return Ok(PresenceSettled::Wait(left));
            }
        }
        // Last seen when the last client went: the latest disconnect the broker reported.
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(disconnected_at), 0) FROM broker_connections WHERE user_id = $1",
        )
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
        let last = if last > 0 { last } else { crate::now_ms() };
        let hidden: Option<bool> = sqlx::query_scalar(
            "UPDATE users SET last_seen_at = $2 WHERE id = $1 RETURNING hide_last_seen",
        )
        .bind(user)
        .bind(last)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("UPDATE broker_presence SET online = FALSE, gone_at = NULL WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        // Published under the lock, like "online". A user who is gone is hidden.
        let hidden = hidden.unwrap_or(true);
        sink.presence(user, false, (!hidden).then_some(last));
        tx.commit().await?;
        Ok(PresenceSettled::Offline)
    }

    async fn unsettled(&self, grace_ms: i64, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT user_id FROM broker_presence \
             WHERE online AND gone_at IS NOT NULL AND gone_at < {DB_NOW_MS} - $1 \
             ORDER BY gone_at LIMIT $2"
        ))
        .bind(grace_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
