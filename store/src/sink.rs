//! Where stored events go to be published live. The broker implements [`EventSink`];
//! the REST API calls it after writes it makes itself (e.g. creating a conversation),
//! so it needs no knowledge of MQTT.

use crate::model::Delivery;

pub trait EventSink: Send + Sync {
    /// Publishes each delivery to its user's inbox. Best effort: the events are already
    /// stored, and a client that misses one finds it through sync.
    fn deliver(&self, deliveries: &[Delivery]);
}

/// A sink that publishes nothing (tools and tests without a broker).
pub struct NoSink;

impl EventSink for NoSink {
    fn deliver(&self, _: &[Delivery]) {}
}
