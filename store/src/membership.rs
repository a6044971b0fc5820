//! The in-memory membership index the broker's ACL consults on every SUBSCRIBE and
//! PUBLISH. It is loaded from the database when the store opens and updated by the
//! store itself after every committed membership change, so a join or leave takes
//! effect on the very next packet.
//!
//! It is also where revocations are announced: a member leaving or being removed, and a
//! session ending (logout, revocation, refresh-token theft). Whoever holds live
//! connections (the broker) [`watch`](MembershipIndex::watch)es them and acts at once,
//! in the same call that committed the change.
//!
//! With several Tidings nodes on one PostgreSQL database, each node's index also hears
//! the others' changes: the database sends them with NOTIFY from the writing
//! transaction, and `PgStore` applies them here (and [`replace_with`](MembershipIndex::replace_with)s
//! the whole index after its listening connection dropped).

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

/// A right that ended, announced after the change committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// `user` is no longer a member of `conv`.
    MemberRemoved { conv: String, user: String },
    /// The session `session` ended: its tokens, and connections made with them, are dead.
    SessionEnded { session: String },
}

type Watcher = Box<dyn Fn(&Revocation) + Send + Sync>;

#[derive(Default)]
pub struct MembershipIndex {
    inner: RwLock<Inner>,
    watchers: RwLock<Vec<Watcher>>,
}

impl std::fmt::Debug for MembershipIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipIndex").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_conv: HashMap<String, HashSet<String>>,
    by_user: HashMap<String, HashSet<String>>,
    /// Public rooms: sharing one shows nothing of a person (presence, last seen).
    rooms: HashSet<String>,
    /// Direct conversations (where a block stops sends).
    directs: HashSet<String>,
    /// Blocked user -> who blocked them.
    blocked_by: HashMap<String, HashSet<String>>,
    /// Each user's short conversation handles (the compact MQTT profile), both ways.
    handles: HashMap<String, Handles>,
}

#[derive(Debug, Default)]
struct Handles {
    conv_of: HashMap<u32, String>,
    handle_of: HashMap<String, u32>,
}

impl MembershipIndex {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let index = MembershipIndex::default();
        for (conv, user) in pairs {
            index.add(&conv, &user);
        }
        index
    }

    // A poisoned lock only means another thread panicked mid-update of two hash sets;
    // the data is still usable, and refusing every packet after that would be worse.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_member(&self, conv: &str, user: &str) -> bool {
        self.read()
            .by_conv
            .get(conv)
            .is_some_and(|m| m.contains(user))
    }

    /// True when `a` and `b` are the same user or are both members of some direct or
    /// private group conversation (who may see whose presence). A public room does not
    /// count: anyone can join one, so it would show anyone's presence to anyone.
    pub fn share_conversation(&self, a: &str, b: &str) -> bool {
        if a == b {
            return true;
        }
        let inner = self.read();
        match (inner.by_user.get(a), inner.by_user.get(b)) {
            (Some(ca), Some(cb)) => {
                let (small, large) = if ca.len() <= cb.len() {
                    (ca, cb)
                } else {
                    (cb, ca)
                };
                small
                    .iter()
                    .any(|c| large.contains(c) && !inner.rooms.contains(c))
            }
            _ => false,
        }
    }

    /// Records that `conv` is a public room (at load, and when one is created).
    pub fn mark_room(&self, conv: &str) {
        self.write().rooms.insert(conv.to_owned());
    }

    /// Records that `conv` is a direct conversation (at load, and when one is created).
    pub fn mark_direct(&self, conv: &str) {
        self.write().directs.insert(conv.to_owned());
    }

    /// May `viewer` see `owner`'s presence: they share a private conversation and
    /// `viewer` has not blocked `owner`.
    pub fn may_see_presence(&self, viewer: &str, owner: &str) -> bool {
        self.share_conversation(viewer, owner) && !self.has_blocked(viewer, owner)
    }

    pub fn block(&self, blocker: &str, blocked: &str) {
        self.write()
            .blocked_by
            .entry(blocked.to_owned())
            .or_default()
            .insert(blocker.to_owned());
    }

    pub fn unblock(&self, blocker: &str, blocked: &str) {
        let mut inner = self.write();
        if let Some(set) = inner.blocked_by.get_mut(blocked) {
            set.remove(blocker);
            if set.is_empty() {
                inner.blocked_by.remove(blocked);
            }
        }
    }

    /// Has `blocker` blocked `blocked`?
    pub fn has_blocked(&self, blocker: &str, blocked: &str) -> bool {
        self.read()
            .blocked_by
            .get(blocked)
            .is_some_and(|s| s.contains(blocker))
    }

    /// Has anyone blocked `user`? (A cheap first test before looking closer.)
    pub fn is_blocked_by_anyone(&self, user: &str) -> bool {
        self.read().blocked_by.contains_key(user)
    }

    /// When `conv` is a direct conversation whose other member blocked `sender`: that
    /// member.
    pub fn direct_blocker(&self, conv: &str, sender: &str) -> Option<String> {
        let inner = self.read();
        if !inner.directs.contains(conv) {
            return None;
        }
        let blockers = inner.blocked_by.get(sender)?;
        inner
            .by_conv
            .get(conv)?
            .iter()
            .find(|m| *m != sender && blockers.contains(*m))
            .cloned()
    }

    pub fn add(&self, conv: &str, user: &str) {
        let mut inner = self.write();
        inner
            .by_conv
            .entry(conv.to_owned())
            .or_default()
            .insert(user.to_owned());
        inner
            .by_user
            .entry(user.to_owned())
            .or_default()
            .insert(conv.to_owned());
    }

    /// Records `user`'s handle for `conv` (at load, and when they join). A handle
    /// outlives the membership, so it never comes to mean another conversation.
    pub fn set_handle(&self, user: &str, conv: &str, handle: u32) {
        let mut inner = self.write();
        let h = inner.handles.entry(user.to_owned()).or_default();
        h.conv_of.insert(handle, conv.to_owned());
        h.handle_of.insert(conv.to_owned(), handle);
    }

    /// `user`'s handle for `conv`.
    pub fn handle(&self, user: &str, conv: &str) -> Option<u32> {
        self.read().handles.get(user)?.handle_of.get(conv).copied()
    }

    /// The conversation `user` calls `handle`.
    pub fn conv_of_handle(&self, user: &str, handle: u32) -> Option<String> {
        self.read().handles.get(user)?.conv_of.get(&handle).cloned()
    }

    pub fn remove(&self, conv: &str, user: &str) {
        {
            let mut inner = self.write();
            if let Some(m) = inner.by_conv.get_mut(conv) {
                m.remove(user);
            }
            if let Some(c) = inner.by_user.get_mut(user) {
                c.remove(conv);
            }
        }
        self.announce(&Revocation::MemberRemoved {
            conv: conv.to_owned(),
            user: user.to_owned(),
        });
    }

    /// Takes over `fresh`'s contents (a full reload from the database), announcing every
    /// membership that is gone, so connections lose what they no longer have a right to
    /// even when the change that removed it was never heard. Watchers stay.
    pub fn replace_with(&self, fresh: MembershipIndex) {
        let fresh = fresh.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let removed: Vec<(String, String)> = {
            let mut inner = self.write();
            let old = std::mem::replace(&mut *inner, fresh);
            old.by_conv
                .into_iter()
                .flat_map(|(conv, users)| users.into_iter().map(move |u| (conv.clone(), u)))
                .filter(|(conv, user)| !inner.by_conv.get(conv).is_some_and(|m| m.contains(user)))
                .collect()
        };
        for (conv, user) in removed {
            self.announce(&Revocation::MemberRemoved { conv, user });
        }
    }

    /// Announces that a session ended (the store calls it after the commit).
    pub fn session_ended(&self, session: &str) {
        self.announce(&Revocation::SessionEnded {
            session: session.to_owned(),
        });
    }

    /// Calls `watcher` for every revocation from now on, synchronously: it must be quick
    /// and must not call back into the index's writers.
    pub fn watch(&self, watcher: impl Fn(&Revocation) + Send + Sync + 'static) {
        self.watchers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(watcher));
    }

    fn announce(&self, revocation: &Revocation) {
        for w in self
            .watchers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            w(revocation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_and_shared_conversations() {
        let index = MembershipIndex::from_pairs([
            ("c1".into(), "a".into()),
            ("c1".into(), "b".into()),
            ("c2".into(), "c".into()),
        ]);
        assert!(index.is_member("c1", "a"));
        assert!(!index.is_member("c2", "a"));
        assert!(index.share_conversation("a", "b"));
        assert!(!index.share_conversation("a", "c"));
        assert!(index.share_conversation("c", "c"));
        index.add("room", "a");
        index.add("room", "c");
        index.mark_room("room");
        index.set_handle("a", "c1", 1);
        index.set_handle("a", "room", 2);
        assert_eq!(index.handle("a", "room"), Some(2));
        assert_eq!(index.conv_of_handle("a", 1).as_deref(), Some("c1"));
        assert_eq!(index.conv_of_handle("b", 1), None);
        assert!(
            !index.share_conversation("a", "c"),
            "a public room shows nobody's presence"
        );
        index.add("c2", "a");
        assert!(index.share_conversation("a", "c"), "a private one does");
        index.block("a", "c");
        assert!(!index.may_see_presence("a", "c"), "a blocked c");
        assert!(index.may_see_presence("c", "a"), "a block is one way");
        index.add("dm", "a");
        index.add("dm", "c");
        assert_eq!(
            index.direct_blocker("dm", "c"),
            None,
            "not marked direct yet"
        );
        index.mark_direct("dm");
        assert_eq!(index.direct_blocker("dm", "c"), Some("a".into()));
        assert_eq!(index.direct_blocker("dm", "a"), None);
        index.unblock("a", "c");
        assert!(index.may_see_presence("a", "c"));
        assert!(!index.is_blocked_by_anyone("c"));
        index.remove("c1", "b");
        assert!(!index.share_conversation("a", "b"));
        assert!(!index.is_member("c1", "b"));
    }

    #[test]
    fn a_full_reload_announces_what_is_gone() {
        let index =
            MembershipIndex::from_pairs([("c1".into(), "a".into()), ("c1".into(), "b".into())]);
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = heard.clone();
        index.watch(move |r| sink.lock().expect("test lock").push(r.clone()));
        index.replace_with(MembershipIndex::from_pairs([
            ("c1".into(), "a".into()),
            ("c2".into(), "b".into()),
        ]));
        assert!(index.is_member("c2", "b") && !index.is_member("c1", "b"));
        assert_eq!(
            *heard.lock().expect("test lock"),
            vec![Revocation::MemberRemoved {
                conv: "c1".into(),
                user: "b".into()
            }]
        );
        index.remove("c2", "b");
        assert_eq!(heard.lock().expect("test lock").len(), 2, "watchers kept");
    }
}
