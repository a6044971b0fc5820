//! Presence: a user is online while at least one of their devices is connected.
//!
//! The front door reports each connection's start (registered, before its CONNACK)
//! and end (the registration's `Drop`, which runs on clean disconnects, dropped sockets,
//! takeovers and kicks alike). The tracker counts connections per user and emits a
//! change only on 0 → 1 and 1 → 0; a task turns changes into retained `u/{uid}/p`
//! publishes (held by the hub) and last-seen rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tidings_core::protocol::ephemeral::Presence;
use tidings_core::protocol::topics;
use tidings_store::{now_ms, Store};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::hub::Hub;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// A device connected; `first` when the user was offline until now.
    Connected {
        user: String,
        device: String,
        first: bool,
    },
    /// The user's last device went away at `at` (Unix ms).
    Offline { user: String, at: i64 },
}

pub struct PresenceTracker {
    online: Mutex<HashMap<String, usize>>,
    changes: UnboundedSender<PresenceChange>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn increment(map: &Mutex<HashMap<String, usize>>, user: &str) -> usize {
    let mut map = lock(map);
    let n = map.entry(user.to_owned()).or_insert(0);
    *n += 1;
    *n
}

fn decrement(map: &Mutex<HashMap<String, usize>>, user: &str) -> usize {
    let mut map = lock(map);
    let left = match map.get_mut(user) {
        Some(n) => {
            *n = n.saturating_sub(1);
            *n
        }
        None => 0,
    };
    if left == 0 {
        map.remove(user);
    }
    left
}

impl PresenceTracker {
    pub fn new(changes: UnboundedSender<PresenceChange>) -> Self {
        PresenceTracker {
            online: Mutex::default(),
            changes,
        }
    }

    pub fn connected(&self, user: &str, device: &str) {
        let first = increment(&self.online, user) == 1;
        let _ = self.changes.send(PresenceChange::Connected {
            user: user.to_owned(),
            device: device.to_owned(),
            first,
        });
    }

    pub fn disconnected(&self, user: &str, _device: &str) {
        if decrement(&self.online, user) == 0 {
            let _ = self.changes.send(PresenceChange::Offline {
                user: user.to_owned(),
                at: now_ms(),
            });
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        lock(&self.online).contains_key(user)
    }
}

/// Applies presence changes: retained presence publishes and device/last-seen rows.
pub async fn run(
    mut changes: UnboundedReceiver<PresenceChange>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
) {
    while let Some(change) = changes.recv().await {
        match change {
            PresenceChange::Connected {
                user,
                device,
                first,
            } => {
                if let Err(e) = store.touch_device(&user, &device, now_ms()).await {
                    tracing::warn!(error = %e, %user, "could not record device");
                }
                if first {
                    publish(
                        &hub,
                        &user,
                        Presence {
                            v: 1,
                            online: true,
                            last_seen: None,
                        },
                    );
                }
            }
            PresenceChange::Offline { user, at } => {
                if let Err(e) = store.set_last_seen(&user, at).await {
                    tracing::warn!(error = %e, %user, "could not record last seen");
                }
                // When the setting cannot be read, err on the side of hiding.
                let hidden = store.hides_last_seen(&user).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, %user, "could not read the last-seen setting");
                    true
                });
                publish(
                    &hub,
                    &user,
                    Presence {
                        v: 1,
                        online: false,
                        last_seen: (!hidden).then_some(at),
                    },
                );
            }
        }
    }
}

pub(crate) fn publish(hub: &Hub, user: &str, presence: Presence) {
    match serde_json::to_vec(&presence) {
        Ok(payload) => hub.retain(&topics::presence(user), payload.into()),
        Err(e) => tracing::error!(error = %e, "could not encode presence"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_first_and_last_connections_change_presence() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let t = PresenceTracker::new(tx);
        t.connected("u", "phone");
        t.connected("u", "laptop");
        t.disconnected("u", "phone");
        assert!(t.is_online("u"));
        t.disconnected("u", "laptop");
        assert!(!t.is_online("u"));
        let got: Vec<PresenceChange> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(matches!(
            &got[0],
            PresenceChange::Connected { first: true, .. }
        ));
        assert!(matches!(
            &got[1],
            PresenceChange::Connected { first: false, .. }
        ));
        assert!(matches!(&got[2], PresenceChange::Offline { .. }));
        assert_eq!(got.len(), 3);
    }
}
