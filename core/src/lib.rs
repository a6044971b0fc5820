//! tidings-core: the Tidings wire protocol, shared by the server and every client.
//!
//! [`protocol`] is pure data: ids, topic names, commands, events, codecs and limits.
//! [`ratelimit`] is the token bucket both planes use. Neither performs I/O, so the server crates, the benchmark and the client SDK can all
//! depend on it without pulling in a runtime. The SDK itself lives behind the `sdk`
//! feature and depends on nothing server-side.

pub mod protocol;
pub mod ratelimit;

#[cfg(feature = "sdk")]
pub mod sdk;

// The uniffi scaffolding of the SDK (namespace `tidings_core`); the tidings-bindings
// cdylib re-exports it with `tidings_core::uniffi_reexport_scaffolding!()`.
#[cfg(feature = "sdk")]
uniffi::setup_scaffolding!();
