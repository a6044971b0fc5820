//! Wills, owned by the front door: stored at CONNECT only if allowed then, and checked
//! again when they fire, against the rights and limits of that moment: a member
//! removed meanwhile, or a session revoked, publishes nothing.

use std::sync::Arc;

use super::connect::will_allowed;
use super::Shared;
use crate::connection::Will;
use crate::hub::ConnHandle;
use crate::worker::Inbound;

pub(super) async fn fire(shared: &Shared, conn: &Arc<ConnHandle>, will: Will) {
    let active = shared
        .store
        .session_active(&conn.session)
        .await
        .unwrap_or(false);
    if !active {
        tracing::info!(client_id = %conn.client_id, "will not published: the session ended");
        return;
    }
    if let Err(why) = will_allowed(shared, &conn.user, &will) {
        tracing::info!(client_id = %conn.client_id, why, topic = %will.topic, "will not published");
        metrics::counter!("tidings_mqtt_wills_refused_total").increment(1);
        return;
    }
    metrics::counter!("tidings_mqtt_wills_published_total").increment(1);
    if will.topic.starts_with("c/") {
        shared.hub.route(&will.topic, will.payload);
    } else {
        // The user's own outbox: the will is a command, stored like any other.
        let inbound = Inbound::Command {
            from: conn.clone(),
            payload: will.payload,
            pkid: None,
            compact: false,
            received: std::time::Instant::now(),
        };
        let waited = shared
            .worker
            .send_timeout(inbound, std::time::Duration::from_secs(5))
            .await;
        if waited.is_err() {
            tracing::warn!(client_id = %conn.client_id, "will command not stored: the worker is overloaded");
        }
    }
}
