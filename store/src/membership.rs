//! The in-memory membership index the broker's ACL consults on every SUBSCRIBE and
//! PUBLISH. It is loaded from the database when the store opens and updated by the
//! store itself after every committed membership change, so a join or leave takes
//! effect on the very next packet.
//!
//! One process only: several Tidings nodes behind a load balancer would each need to
//! hear the others' changes (e.g. PostgreSQL LISTEN/NOTIFY); see ARCHITECTURE.md.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

#[derive(Debug, Default)]
pub struct MembershipIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_conv: HashMap<String, HashSet<String>>,
    by_user: HashMap<String, HashSet<String>>,
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

    /// True when `a` and `b` are the same user or are both members of some conversation
    /// (who may see whose presence).
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
                small.iter().any(|c| large.contains(c))
            }
            _ => false,
        }
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

    pub fn remove(&self, conv: &str, user: &str) {
        let mut inner = self.write();
        if let Some(m) = inner.by_conv.get_mut(conv) {
            m.remove(user);
        }
        if let Some(c) = inner.by_user.get_mut(user) {
            c.remove(conv);
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
        index.remove("c1", "b");
        assert!(!index.share_conversation("a", "b"));
        assert!(!index.is_member("c1", "b"));
    }
}
