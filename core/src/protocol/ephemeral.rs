//! Payloads that are never stored: typing and presence.

use serde::{Deserialize, Serialize};

/// Published by a member on `c/{cid}/t/{me}` (QoS 0). The typist is the topic's last
/// level, so the payload only says whether typing started or stopped; an empty or
/// unparsable payload from a tiny device is read as "typing".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    #[serde(default = "yes")]
    pub typing: bool,
}

fn yes() -> bool {
    true
}

/// Published retained by the server on `u/{uid}/p`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    #[serde(default = "crate::protocol::default_version")]
    pub v: u8,
    pub online: bool,
    /// Unix milliseconds when the user's last device went away; absent while online
    /// or for a user never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}
