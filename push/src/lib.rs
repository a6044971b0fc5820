//! Push notifications: waking a device that has no live connection.
//!
//! Who gets pushed is decided in the database, where the event is stored (migration
//! 0006's trigger fills `push_queue` in the transaction that stores the inbox event,
//! after the mute, archive and block rules). This crate owns what happens next: the
//! [`worker`] claims due rows, drops those whose session is connected right now (it has
//! the event over MQTT already), builds the [`Notification`] (ids only unless the device
//! opted in to text; the badge is the user's unread total) and hands it to the
//! [`Provider`] of the target's platform, then deletes, retries with backoff, or prunes
//! the token as the provider's answer says.
//!
//! *Invariants: the crate knows nothing of MQTT or HTTP serving (the binary passes the
//! broker's view of live sessions in as a [`Liveness`]); every send is of a row already
//! durable in the queue, and a row is deleted only after its provider answered.*

pub mod apns;
pub mod config;
pub mod fcm;
pub mod gateway;
pub mod notification;
pub mod provider;
pub mod webpush;
pub mod worker;

pub use config::PushConfig;
pub use notification::Notification;
pub use provider::{Outcome, Provider};
pub use worker::{start, Liveness};
