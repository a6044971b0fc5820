//! SUBSCRIBE and UNSUBSCRIBE. A filter the ACL refuses gets a failure code in the
//! SUBACK (0x80, or 0x87 "not authorized" in MQTT 5) and nothing else: the connection
//! stays up, and nothing it was refused is ever delivered. Granted filters are held at
//! QoS 0: deliveries are QoS 0, and what a device missed is recovered by `iseq`.

use super::Session;
use crate::acl::{device_may_subscribe, may_subscribe, Grant};
use crate::connection::{FrameError, Outgoing};
use crate::fanout::{compact_inbox, compact_inbox_alias, COMPACT_INBOX};
use crate::hub::Outbound;

impl Session<'_> {
    pub(super) async fn subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<(String, u8)>,
    ) -> Result<(), FrameError> {
        let user = self.conn.user.clone();
        let mut granted = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for (filter, _qos) in &filters {
            if filter == COMPACT_INBOX && self.conn.grant.can_receive {
                // The compact profile: the user's inbox, delivered as `i`.
                let topic = compact_inbox(&user);
                self.shared.hub.subscribe_as(
                    self.conn,
                    &topic,
                    Grant::Own,
                    Some(compact_inbox_alias()),
                );
                granted.push(Some(0));
                continue;
            }
            let allowed = rumqttc::mqttbytes::valid_filter(filter)
                && may_subscribe(&user, filter, self.shared.hub.index())
                && device_may_subscribe(&self.conn.grant, filter);
            if !allowed {
                tracing::info!(user = %user, client_id = %self.conn.client_id, filter = %filter, "subscription refused");
                metrics::counter!("tidings_mqtt_subscriptions_refused_total").increment(1);
                granted.push(None);
                continue;
            }
            let grant = Grant::of(&user, filter);
            if let Some(payload) = self.shared.hub.subscribe(self.conn, filter, grant) {
                retained.push((filter.clone(), payload));
            }
            granted.push(Some(0));
        }
        self.writer.encode(Outgoing::SubAck { pkid, granted })?;
        // Retained messages (presence) follow the SUBACK, as MQTT orders them.
        for (topic, payload) in retained {
            self.encode_outbound(Outbound::Publish {
                topic: topic.into(),
                payload,
            })?;
        }
        self.writer.flush().await
    }

    pub(super) async fn unsubscribe(
        &mut self,
        pkid: u16,
        filters: Vec<String>,
    ) -> Result<(), FrameError> {
        for filter in &filters {
            if filter == COMPACT_INBOX {
                let topic = compact_inbox(&self.conn.user);
                self.shared.hub.unsubscribe(self.conn.id, &topic);
            } else {
                self.shared.hub.unsubscribe(self.conn.id, filter);
            }
        }
        self.send_now(Outgoing::UnsubAck {
            pkid,
            count: filters.len(),
        })
        .await
    }
}
