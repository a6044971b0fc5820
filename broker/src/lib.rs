//! tidings-broker: the realtime plane.
//!
//! - [`acl`]: who may subscribe to or publish on which topic; a pure function.
//! - [`guard`]: a rumqttd `Protocol` wrapper, cloned per connection, that binds the
//!   connection to the user of its CONNECT and checks every packet against the ACL.
//! - [`auth`]: rumqttd's async CONNECT hook: JWT, session, client id.
//! - [`presence`]: online/offline with last seen, from the guard's lifecycle.
//! - [`worker`]: the persistence worker: commands from `u/+/out` to
//!   `Store::write_batch`, then acks and fan-out.
//! - [`fanout`]: encoding events for inboxes and the conversation mirror.
//! - [`server`]: wiring rumqttd's router, listeners and links on our runtime.

pub mod acl;
pub mod auth;
pub mod fanout;
pub mod guard;
pub mod presence;
pub mod server;
pub mod worker;
mod ws_gate;

pub use server::{start, BrokerConfig, Realtime};
