//! Identifiers.
//!
//! Server-assigned ids (users, devices, conversations, messages, attachments) are
//! ULIDs: 26 Crockford base32 characters, sortable by creation time, and free of the
//! characters MQTT gives meaning to (`/`, `+`, `#`), so an id can be a topic level.
//!
//! Client-chosen ids (command ids, client message ids, device ids) are looser, because
//! a microcontroller may not have a ULID generator: 1 to [`MAX_CLIENT_ID_LEN`] characters
//! of `[A-Za-z0-9_-]`. A ULID is always a valid client id.

use ulid::Ulid;

pub use crate::protocol::limits::MAX_CLIENT_ID_LEN;

/// A user id (ULID string).
pub type UserId = String;
/// A conversation id (ULID string).
pub type ConversationId = String;
/// A stored message id (ULID string).
pub type MessageId = String;

/// A fresh ULID rendered as its canonical 26-character string.
pub fn new_id() -> String {
    Ulid::new().to_string()
}

/// A fresh ULID whose time part is `ms` (Unix milliseconds). Message ids are made this
/// way so that the id alone tells the message's `created_at`: the compact profile
/// leaves the timestamp out and loses nothing.
pub fn id_at(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Ulid::from_datetime(at).to_string()
}

/// The time part of a ULID, in Unix milliseconds.
pub fn id_time(id: &str) -> Option<i64> {
    i64::try_from(Ulid::from_string(id).ok()?.timestamp_ms()).ok()
}

/// True when `s` is a canonical server id (a 26-character ULID).
pub fn is_server_id(s: &str) -> bool {
    s.len() == 26 && Ulid::from_string(s).is_ok()
}

/// True when `s` is acceptable as a client-chosen id (command, message or device id).
pub fn is_client_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CLIENT_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_server_ids_and_client_ids() {
        let id = new_id();
        assert!(is_server_id(&id));
        assert!(is_client_id(&id));
    }

    #[test]
    fn client_ids_reject_topic_metacharacters_and_empty() {
        for bad in [
            "",
            "a/b",
            "a+b",
            "a#b",
            "a b",
            &"x".repeat(MAX_CLIENT_ID_LEN + 1),
        ] {
            assert!(!is_client_id(bad), "{bad:?} must be rejected");
        }
        assert!(!is_server_id("not-a-ulid"));
    }

    #[test]
    fn ids_made_at_a_time_tell_that_time() {
        let at = 1_732_226_400_123;
        assert_eq!(id_time(&id_at(at)), Some(at));
        assert!(is_server_id(&id_at(at)));
    }
}
