//! MQTT topic names. Short on purpose: every byte counts on a constrained link.
//!
//! | topic            | meaning                                         |
//! |------------------|-------------------------------------------------|
//! | `u/{uid}/in`     | the user's inbox (server → user)                 |
//! | `u/{uid}/out`    | the user's commands (user's devices → server)    |
//! | `u/{uid}/p`      | the user's presence (retained)                   |
//! | `c/{cid}/t/{uid}`| typing in a conversation, by one member (QoS 0)  |
//! | `c/{cid}/m`      | mirror of the conversation's messages            |
//!
//! Ids are ULIDs, which never contain `/`, `+` or `#`, so a parsed topic is unambiguous.

use crate::protocol::ids::is_server_id;

/// A concrete topic (no wildcards) of the Tidings scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Inbox(String),
    Outbox(String),
    Presence(String),
    Typing { conv: String, user: String },
    Mirror(String),
}

impl Topic {
    /// Parses a concrete topic name. Returns `None` for anything outside the scheme,
    /// including ids that are not ULIDs and any wildcard.
    pub fn parse(topic: &str) -> Option<Topic> {
        let mut levels = topic.split('/');
        let kind = levels.next()?;
        let id = levels.next()?;
        let leaf = levels.next()?;
        let extra = levels.next();
        if levels.next().is_some() || !is_server_id(id) {
            return None;
        }
        let id = id.to_owned();
        match (kind, leaf, extra) {
            ("u", "in", None) => Some(Topic::Inbox(id)),
            ("u", "out", None) => Some(Topic::Outbox(id)),
            ("u", "p", None) => Some(Topic::Presence(id)),
            ("c", "m", None) => Some(Topic::Mirror(id)),
            ("c", "t", Some(user)) if is_server_id(user) => Some(Topic::Typing {
                conv: id,
                user: user.to_owned(),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topic::Inbox(u) => write!(f, "u/{u}/in"),
            Topic::Outbox(u) => write!(f, "u/{u}/out"),
            Topic::Presence(u) => write!(f, "u/{u}/p"),
            Topic::Typing { conv, user } => write!(f, "c/{conv}/t/{user}"),
            Topic::Mirror(c) => write!(f, "c/{c}/m"),
        }
    }
}

/// `u/{uid}/in`
pub fn inbox(user: &str) -> String {
    format!("u/{user}/in")
}
/// `u/{uid}/out`
pub fn outbox(user: &str) -> String {
    format!("u/{user}/out")
}
/// `u/{uid}/p`
pub fn presence(user: &str) -> String {
    format!("u/{user}/p")
}
/// `c/{cid}/t/{uid}`
pub fn typing(conv: &str, user: &str) -> String {
    format!("c/{conv}/t/{user}")
}
/// `c/{cid}/t/+`: the filter a member subscribes to for everyone's typing.
pub fn typing_filter(conv: &str) -> String {
    format!("c/{conv}/t/+")
}
/// `c/{cid}/m`
pub fn mirror(conv: &str) -> String {
    format!("c/{conv}/m")
}
/// `u/+/out`: the filter the persistence worker subscribes to.
pub const ALL_OUTBOXES: &str = "u/+/out";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ids::new_id;
    use proptest::prelude::*;

    fn ulid() -> impl Strategy<Value = String> {
        any::<u128>().prop_map(|n| ulid::Ulid::from(n).to_string())
    }

    fn topic() -> impl Strategy<Value = Topic> {
        prop_oneof![
            ulid().prop_map(Topic::Inbox),
            ulid().prop_map(Topic::Outbox),
            ulid().prop_map(Topic::Presence),
            ulid().prop_map(Topic::Mirror),
            (ulid(), ulid()).prop_map(|(conv, user)| Topic::Typing { conv, user }),
        ]
    }

    proptest! {
        #[test]
        fn every_topic_round_trips_through_its_name(t in topic()) {
            prop_assert_eq!(Topic::parse(&t.to_string()), Some(t));
        }

        #[test]
        fn parse_never_panics_and_rejects_wildcards(s in "[uc+#/a-zA-Z0-9]{0,80}") {
            if let Some(t) = Topic::parse(&s) {
                prop_assert!(!s.contains('+') && !s.contains('#'));
                prop_assert_eq!(t.to_string(), s);
            }
        }
    }

    #[test]
    fn builders_match_display() {
        let (u, c) = (new_id(), new_id());
        assert_eq!(inbox(&u), Topic::Inbox(u.clone()).to_string());
        assert_eq!(outbox(&u), Topic::Outbox(u.clone()).to_string());
        assert_eq!(presence(&u), Topic::Presence(u.clone()).to_string());
        assert_eq!(mirror(&c), Topic::Mirror(c.clone()).to_string());
        assert_eq!(
            typing(&c, &u),
            Topic::Typing {
                conv: c.clone(),
                user: u.clone()
            }
            .to_string()
        );
    }

    #[test]
    fn malformed_topics_are_rejected() {
        let u = new_id();
        for bad in [
            String::new(),
            "u".into(),
            format!("u/{u}"),
            format!("u/{u}/in/x"),
            format!("u/{u}/inbox"),
            "u/not-an-id/in".into(),
            "u/+/in".into(),
            "#".into(),
            format!("c/{u}/t"),
            format!("c/{u}/t/+"),
            format!("x/{u}/in"),
        ] {
            assert_eq!(Topic::parse(&bad), None, "{bad:?}");
        }
    }
}
