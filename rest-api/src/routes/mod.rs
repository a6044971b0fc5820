//! One module per resource.

pub mod auth;
pub mod conversations;
pub mod devices;
pub mod health;
pub mod hooks;
pub mod invitations;
pub mod me;
pub mod messages;
pub mod push;
pub mod search;
pub mod sync;
pub mod uploads;
