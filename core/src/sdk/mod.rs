//! The Tidings client SDK (feature `sdk`): an offline-first client for the Tidings
//! protocol, usable from Rust directly ([`Client`]) and from Swift, Kotlin and Python
//! through uniffi ([`ffi::TidingsClient`]).
//!
//! - [`config`]: where the server is, where local data lives, validated up front so no
//!   rumqttc option setter can panic.
//! - [`http`]: the REST calls, with the access token refreshed inside.
//! - [`local`]: the local SQLite file: who is logged in, outbox, last inbox seq, cache.
//! - [`secrets`]: the session's tokens, in the app's keystore or a 0600 file.
//! - [`conn`]: the MQTT connection loop (backoff + jitter, re-subscribe, sync, resend).
//! - [`client`]: the idiomatic async Rust API; [`manage`] adds the calls around it
//!   (members and roles, mute/archive, rooms, invitations, people, unread totals,
//!   attachment downloads).
//! - [`types`]: records and events shared by the Rust API and the bindings.
//! - [`ffi`]: the uniffi object that owns a tokio runtime.
//! - [`logging`]: the app's logger as a foreign trait (`set_logger`).

pub mod client;
pub mod config;
mod conn;
pub mod error;
pub mod ffi;
pub mod http;
pub mod local;
pub mod logging;
mod manage;
pub mod secrets;
pub mod types;

pub use client::Client;
pub use config::ClientConfig;
pub use error::SdkError;
pub use logging::{clear_logger, set_logger, LogLevel, TidingsLogger};
pub use secrets::{FileSecretStore, SecretStore};
pub use types::*;
