//! The topic ACL: a pure function of (user, action, topic) and the membership index.
//!
//! It lives here, next to [`MembershipIndex`], because two planes decide with it: the
//! embedded broker's front door (tidings-broker) and the auth/ACL hooks an external
//! broker calls (tidings-rest), and those two crates must not know each other.
//!
//! | topic / filter                | subscribe                        | publish              |
//! |-------------------------------|----------------------------------|----------------------|
//! | `u/{me}/in`, `u/{me}/in/c`    | me                               | server only          |
//! | `u/{me}/out`                  | server only                      | me (QoS 0/1)         |
//! | `u/{uid}/p`                   | me, or anyone sharing a conv     | server only          |
//! | `c/{cid}/t/{uid|+|#}`         | members of cid                   | `c/{cid}/t/{me}`, members, QoS 0/1 |
//! | `c/{cid}/m`                   | members of cid                   | server only          |
//!
//! Anything else is refused, and so is every wildcard outside the last level of a
//! conversation's typing topic, every `$` topic (including `$share`), and every retained
//! publish from a client (retained messages would outlive the sender's rights).

use tidings_core::protocol::ids::{is_client_id, is_server_id};

/// Splits an MQTT client id `{user}:{device}` (the user's id, a client-chosen device id).
pub fn parse_client_id(client_id: &str) -> Option<(&str, &str)> {
    let (user, device) = client_id.split_once(':')?;
    (is_server_id(user) && is_client_id(device)).then_some((user, device))
}
use crate::{DeviceGrant, MembershipIndex};

/// May `user` subscribe to `filter`?
pub fn may_subscribe(user: &str, filter: &str, index: &MembershipIndex) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    match levels.as_slice() {
        ["u", owner, "in"] | ["u", owner, "in", "c"] => *owner == user,
        ["u", owner, "p"] => is_server_id(owner) && index.may_see_presence(user, owner),
        ["c", conv, "m"] => is_server_id(conv) && index.is_member(conv, user),
        ["c", conv, "t", who] => {
            is_server_id(conv)
                && (*who == "+" || *who == "#" || is_server_id(who))
                && index.is_member(conv, user)
        }
        _ => false,
    }
}

/// Why a connection may keep reading what a filter it was granted matches; checked
/// again on every delivery (see hub.rs), so rights lost later take effect at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The user's own topics (inbox, own presence): theirs while the connection lives.
    Own,
    /// A conversation's topics: while the user is a member.
    Member(String),
    /// Another user's presence: while the two share a private conversation and the
    /// subscriber has not blocked them.
    Presence(String),
}

impl Grant {
    /// The grant behind a filter `may_subscribe` allowed.
    pub fn of(user: &str, filter: &str) -> Grant {
        let levels: Vec<&str> = filter.split('/').collect();
        match levels.as_slice() {
            ["u", owner, "p"] if *owner != user => Grant::Presence((*owner).to_owned()),
            ["c", conv, ..] => Grant::Member((*conv).to_owned()),
            _ => Grant::Own,
        }
    }

    /// Does the right still hold?
    pub fn holds(&self, user: &str, index: &MembershipIndex) -> bool {
        match self {
            Grant::Own => true,
            Grant::Member(conv) => index.is_member(conv, user),
            Grant::Presence(other) => index.may_see_presence(user, other),
        }
    }
}

/// May `user` publish on `topic` (which must be a concrete topic) with `qos` and `retain`?
pub fn may_publish(
    user: &str,
    topic: &str,
    qos: u8,
    retain: bool,
    index: &MembershipIndex,
) -> bool {
    if retain || qos > 1 {
        return false;
    }
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["u", owner, "out"] => *owner == user,
        ["c", conv, "t", who] => *who == user && is_server_id(conv) && index.is_member(conv, user),
        _ => false,
    }
}

/// `u/{uid}/out/{session}`: a session's own command topic behind an external broker,
/// where the worker cannot otherwise tell which credential published a command. The
/// broker's ACL hook lets only the client of that session publish there, so the
/// session id in the topic is the credential's, and the worker checks each command
/// against its grant. Answers `(uid, session)`.
pub fn credential_outbox(topic: &str) -> Option<(&str, &str)> {
    match topic.split('/').collect::<Vec<_>>().as_slice() {
        ["u", owner, "out", session] if is_server_id(owner) && is_server_id(session) => {
            Some((*owner, *session))
        }
        _ => None,
    }
}

/// What a device credential's grant adds to the ACL: a send-only credential reads
/// nothing, and one limited to some conversations follows only their topics.
pub fn device_may_subscribe(grant: &DeviceGrant, filter: &str) -> bool {
    if !grant.can_receive {
        return false;
    }
    match filter.split('/').collect::<Vec<_>>().as_slice() {
        ["c", conv, ..] => grant.covers(conv),
        _ => true,
    }
}

/// A receive-only credential publishes nothing but queries (on its outbox, checked per
/// command by the worker); typing needs the right to send into that conversation.
pub fn device_may_publish(grant: &DeviceGrant, topic: &str) -> bool {
    match topic.split('/').collect::<Vec<_>>().as_slice() {
        ["c", conv, ..] => grant.can_send && grant.covers(conv),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::protocol::ids::new_id;

    #[test]
    fn credential_outboxes_name_user_and_session() {
        let (uid, sid) = (new_id(), new_id());
        assert_eq!(
            credential_outbox(&format!("u/{uid}/out/{sid}")),
            Some((uid.as_str(), sid.as_str()))
        );
        for topic in [
            format!("u/{uid}/out"),
            format!("u/{uid}/out/x"),
            format!("u/{uid}/out/{sid}/more"),
            format!("u/{uid}/in/{sid}"),
            format!("u/x/out/{sid}"),
        ] {
            assert_eq!(credential_outbox(&topic), None, "{topic}");
        }
    }

    struct World {
        me: String,
        friend: String,
        stranger: String,
        shared: String,
        private: String,
        index: MembershipIndex,
    }

    fn world() -> World {
        let (me, friend, stranger, shared, private) =
            (new_id(), new_id(), new_id(), new_id(), new_id());
        let index = MembershipIndex::from_pairs([
            (shared.clone(), me.clone()),
            (shared.clone(), friend.clone()),
            (private.clone(), friend.clone()),
            (private.clone(), stranger.clone()),
        ]);
        World {
            me,
            friend,
            stranger,
            shared,
            private,
            index,
        }
    }

    #[test]
    fn own_and_shared_topics_are_allowed() {
        let w = world();
        let ok_sub = [
            format!("u/{}/in", w.me),
            format!("u/{}/in/c", w.me),
            format!("u/{}/p", w.me),
            format!("u/{}/p", w.friend),
            format!("c/{}/m", w.shared),
            format!("c/{}/t/+", w.shared),
            format!("c/{}/t/#", w.shared),
            format!("c/{}/t/{}", w.shared, w.friend),
        ];
        for f in ok_sub {
            assert!(may_subscribe(&w.me, &f, &w.index), "{f}");
        }
        assert!(may_publish(
            &w.me,
            &format!("u/{}/out", w.me),
            1,
            false,
            &w.index
        ));
        assert!(may_publish(
            &w.me,
            &format!("c/{}/t/{}", w.shared, w.me),
            0,
            false,
            &w.index
        ));
    }

    #[test]
    fn everything_else_is_refused() {
        let w = world();
        let bad_sub = [
            "#".to_string(),
            "+/+/+".into(),
            "u/+/in".into(),
            "u/#".into(),
            "$share/g/u/+/in".into(),
            "$SYS/#".into(),
            format!("u/{}/in", w.friend),
            format!("u/{}/out", w.me),
            format!("u/{}/p", w.stranger),
            "u/+/p".into(),
            format!("c/{}/m", w.private),
            format!("c/{}/t/+", w.private),
            "c/+/m".into(),
            format!("c/{}/#", w.shared),
            format!("c/{}/+", w.shared),
            format!("u/{}/in/#", w.me),
        ];
        for f in bad_sub {
            assert!(!may_subscribe(&w.me, &f, &w.index), "{f}");
        }
        let bad_pub = [
            format!("u/{}/out", w.friend),
            format!("u/{}/in", w.me),
            format!("u/{}/p", w.me),
            format!("c/{}/t/{}", w.shared, w.friend),
            format!("c/{}/t/{}", w.private, w.me),
            format!("c/{}/m", w.shared),
        ];
        for t in bad_pub {
            assert!(!may_publish(&w.me, &t, 0, false, &w.index), "{t}");
        }
        assert!(
            !may_publish(&w.me, &format!("u/{}/out", w.me), 0, true, &w.index),
            "no retained"
        );
        assert!(
            !may_publish(&w.me, &format!("u/{}/out", w.me), 2, false, &w.index),
            "no QoS 2"
        );
    }
}
