//! tidings-broker: the realtime plane, and Tidings' own MQTT front door.
//!
//! - [`server`]: listeners, connection cap, shutdown; one task per connection.
//! - [`transport`]: TCP and WebSocket byte streams.
//! - [`connection`]: framing only: MQTT 3.1.1 / 5 packets to and from one small model.
//! - [`session`]: one connection's life: CONNECT and auth, then publish, subscribe,
//!   keep-alive, takeover, wills.
//! - [`hub`]: who is connected and follows what; routing by hash lookup, with every
//!   delivery checked against the subscriber's current rights.
//! - [`acl`]: who may subscribe to or publish on which topic; a pure function.
//! - [`auth`]: CONNECT authentication: JWT, session, client id.
//! - [`presence`]: online/offline with last seen.
//! - [`worker`]: the persistence worker: commands to `Store::write_batch`, then PUBACKs,
//!   acks and fan-out.
//! - [`fanout`]: encoding events for inboxes and the conversation mirror.
//! - [`external`]: external-broker mode: the worker takes its share of commands from a
//!   clustered broker and publishes back to it; no front door of our own.

pub mod acl;
pub mod auth;
pub mod config;
pub mod connection;
pub mod external;
pub mod fanout;
pub mod hub;
pub mod outbox;
pub mod presence;
mod probe;
pub mod server;
pub mod session;
pub mod transport;
pub mod worker;

pub use config::{Listeners, MqttLimits};
pub use external::{BrokerConfig, BrokerMode};
pub use server::{start, start_external, Realtime};
