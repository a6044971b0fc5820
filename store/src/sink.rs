//! Where stored events go to be published live. The broker implements [`EventSink`];
//! the REST API calls it after writes it makes itself (e.g. creating a conversation),
//! so it needs no knowledge of MQTT.

use crate::model::Delivery;

pub trait EventSink: Send + Sync {
    /// Publishes each delivery to its user's inbox. Best effort: the events are already
    /// stored, and a client that misses one finds it through sync.
    fn deliver(&self, deliveries: &[Delivery]);

    /// Publishes `user`'s presence (`u/{uid}/p`): online, or offline with the last-seen
    /// time when the user shows it. Used where presence is decided outside the broker
    /// (an external broker's connect/disconnect events reach the REST API's hooks).
    fn presence(&self, _user: &str, _online: bool, _last_seen: Option<i64>) {}
}

/// A sink that publishes nothing (tools and tests without a broker).
pub struct NoSink;

impl EventSink for NoSink {
    fn deliver(&self, _: &[Delivery]) {}
}
