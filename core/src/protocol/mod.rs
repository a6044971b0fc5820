//! The wire contract of Tidings (see docs/PROTOCOL.md for the prose version).
//!
//! - [`ids`]: ULID identifiers and client-chosen ids.
//! - [`topics`]: builders and a parser for every MQTT topic of the design.
//! - [`command`]: what a device publishes on `u/{me}/out`.
//! - [`event`]: what the server publishes on `u/{uid}/in` and `c/{cid}/m`.
//! - [`ephemeral`]: typing and presence payloads, never stored.
//! - [`codec`]: JSON and compact CBOR, behind one [`codec::Codec`] trait.
//! - [`compact`]: the compact profile's codec (integer keys, binary ids, handles).
//! - [`limits`]: every size, count and rate bound, in one place.

pub mod codec;
pub mod command;
pub mod compact;
pub mod ephemeral;
pub mod event;
pub mod ids;
pub mod limits;
pub mod topics;

pub use codec::{CborCodec, Codec, CodecError, JsonCodec, WireFormat};
pub use command::{Command, Op};
pub use event::{ErrorCode, Event, EventBody};
pub use topics::Topic;

/// The protocol version this build speaks. Payloads carry it as `v`; a missing `v`
/// means version 1 so that hand-written JSON from small devices stays short.
pub const PROTOCOL_VERSION: u8 = 1;

pub(crate) fn default_version() -> u8 {
    PROTOCOL_VERSION
}
