//! A Matrix push gateway (spec: push-gateway-api, `POST /_matrix/push/v1/notify`), so an
//! operator can put Sygnal or their own bouncer holding the app publisher's keys in
//! front of Tidings — the Zulip/Mattermost/Tinode answer to "the app's publisher is
//! not the server's operator". The gateway URL is the operator's, never a device's, so
//! a device cannot make the server call an address of its choosing.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tidings_store::PushTarget;

use crate::notification::Notification;
use crate::provider::{by_status, send, Outcome, Provider};

pub struct Gateway {
    client: reqwest::Client,
    url: String,
}

impl Gateway {
    pub fn new(url: String, timeout: Duration) -> Result<Gateway, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect would send the pushkey somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Gateway { client, url })
    }

    /// The request body: Matrix's `event_id_only` shape unless the device opted in to
    /// text, plus a `tidings` object with the ids a Tidings app syncs by.
    fn body(target: &PushTarget, n: &Notification) -> Value {
        let data: Value = serde_json::from_str(&target.data).unwrap_or_else(|_| json!({}));
        let mut notification = json!({
            "event_id": n.event_id,
            "room_id": n.conversation,
            // Synapse's badge-only notification is low priority; so is ours.
            "prio": if n.is_badge() { "low" } else { "high" },
            "counts": { "unread": n.unread },
            "devices": [{
                "app_id": target.app_id,
                "pushkey": target.token,
                "pushkey_ts": target.created_at / 1000,
                "data": data,
            }],
            "tidings": {
                "conv": n.conversation,
                "seq": n.seq,
                "iseq": n.iseq,
                "reason": n.reason,
            },
        });
        if let (Some(obj), true) = (notification.as_object_mut(), n.sender.is_some()) {
            let kind = if n.is_invitation() {
                "m.room.member"
            } else {
                "m.room.message"
            };
            obj.insert("type".into(), json!(kind));
            obj.insert("sender".into(), json!(n.sender));
            if let Some(body) = &n.body {
                obj.insert(
                    "content".into(),
                    json!({ "msgtype": "m.text", "body": body }),
                );
            }
        }
        json!({ "notification": notification })
    }
}

#[async_trait]
impl Provider for Gateway {
    fn name(&self) -> &'static str {
        "gateway"
    }

    async fn send(&self, target: &PushTarget, n: &Notification) -> Outcome {
        let request = self.client.post(&self.url).json(&Gateway::body(target, n));
        let response = match send(request, self.name()).await {
            Ok(r) => r,
            Err(retry) => return retry,
        };
        let status = response.status();
        if !status.is_success() {
            return by_status(status, response.headers());
        }
        // A 200 may still reject this device's pushkey: the gateway knows the token is
        // dead (Synapse deletes such pushers, and so do we).
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let rejected = answer
            .get("rejected")
            .and_then(Value::as_array)
            .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(&target.token)));
        if rejected {
            Outcome::Gone {
                reason: "rejected".into(),
            }
        } else {
            Outcome::Sent
        }
    }
}
