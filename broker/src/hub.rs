//! The hub: who is connected, what each connection follows, and routing a publish to
//! the connections that may read it. It replaces rumqttd's router (see
//! ARCHITECTURE.md for why).
//!
//! Routing is a hash lookup, never a scan. The ACL admits wildcards only as the last
//! level of a filter (`c/{cid}/t/+`, `c/{cid}/t/#`), so a topic can be matched by
//! exactly three keys: itself, and its parent with `/+` or `/#`. Subscriptions are
//! kept under those keys (wildcard ones under the parent), so a publish costs two hash
//! lookups plus one step per subscriber, however many users are connected, and a
//! publish nobody follows costs two lookups and nothing else.
//!
//! Every delivery is checked against the subscriber's *current* rights (the grant
//! computed at SUBSCRIBE, re-evaluated against the live membership index), so a member
//! removed from a conversation stops receiving at once, even before the hub prunes
//! their subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tidings_store::{DeviceGrant, MembershipIndex};
use tokio::sync::watch;

use crate::outbox::{self, TrySendError};

pub use crate::acl::Grant;
use crate::connection::{AckCode, CloseReason};

pub type ConnId = u64;

/// What travels from the hub (and the worker) to one connection's writer.
#[derive(Debug)]
pub enum Outbound {
    Publish { topic: Bytes, payload: Bytes },
    PubAck { pkid: u16, code: AckCode },
}

/// A live, authenticated connection, as the rest of the broker sees it.
pub struct ConnHandle {
    pub id: ConnId,
    pub user: String,
    pub device: String,
    pub client_id: String,
    /// The session its token belongs to: logging that session out closes it.
    pub session: String,
    /// What its credential allows (everything, for a login's access token).
    pub grant: DeviceGrant,
    tx: outbox::Sender<Outbound>,
    close: watch::Sender<Option<CloseReason>>,
    closed: AtomicBool,
}

impl ConnHandle {
    pub fn new(
        id: ConnId,
        user: String,
        device: String,
        client_id: String,
        session: String,
        grant: DeviceGrant,
        queue: usize,
    ) -> (
        Arc<ConnHandle>,
        outbox::Receiver<Outbound>,
        watch::Receiver<Option<CloseReason>>,
    ) {
        let (tx, rx) = outbox::channel(queue);
        let (close, close_rx) = watch::channel(None);
        let handle = ConnHandle {
            id,
            user,
            device,
            client_id,
            session,
            grant,
            tx,
            close,
            closed: AtomicBool::new(false),
        };
        (Arc::new(handle), rx, close_rx)
    }

    /// A handle whose packets go into an existing queue: the external-broker bridge
    /// stands one up per command it takes from the broker, all of a broker connection's
    /// sharing one queue, so the worker's PUBACKs reach the bridge in arrival order.
    pub fn sharing(
        id: ConnId,
        user: String,
        client_id: String,
        tx: outbox::Sender<Outbound>,
    ) -> Arc<ConnHandle> {
        Self::sharing_as(
            id,
            user,
            client_id,
            String::new(),
            DeviceGrant::default(),
            tx,
        )
    }

    /// [`ConnHandle::sharing`] for a command a known device credential (`session`)
    /// published: the worker holds it to `grant`, as it would that credential's own
    /// connection.
    pub fn sharing_as(
        id: ConnId,
        user: String,
        client_id: String,
        session: String,
        grant: DeviceGrant,
        tx: outbox::Sender<Outbound>,
    ) -> Arc<ConnHandle> {
        let (close, _) = watch::channel(None);
        Arc::new(ConnHandle {
            id,
            user,
            device: String::new(),
            client_id,
            session,
            grant,
            tx,
            close,
            closed: AtomicBool::new(false),
        })
    }

    /// Asks the connection to close. From this moment nothing more is delivered to it.
    pub fn close(&self, reason: CloseReason) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close.send_replace(Some(reason));
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Queues a packet; a connection whose queue is full is not keeping up and is
    /// closed (it recovers what it missed by `iseq` and sync), so memory stays bounded.
    pub fn send(&self, out: Outbound) -> bool {
        if self.is_closed() {
            return false;
        }
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::info!(client_id = %self.client_id, "slow consumer: outbound queue full; closing");
                metrics::counter!("tidings_mqtt_slow_consumers_total").increment(1);
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

struct Subscriber {
    conn: Arc<ConnHandle>,
    grant: Grant,
    /// The topic name the connection subscribed with, when it differs from the routed
    /// one: the compact profile's `i` stands for the user's `u/{uid}/in/k`.
    publish_as: Option<Bytes>,
}

/// A subscription's key in the table: a concrete topic, or a wildcard filter stored
/// under its parent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Exact(String),
    /// `parent/+` or `parent/#`: both match exactly one more level here, because no
    /// topic Tidings routes is deeper than the filter's parent plus one level.
    Wild(String),
}

impl Key {
    fn of(filter: &str) -> Key {
        match filter.rsplit_once('/') {
            Some((parent, "+" | "#")) => Key::Wild(parent.to_owned()),
            _ => Key::Exact(filter.to_owned()),
        }
    }
}

#[derive(Default)]
struct Table {
    exact: HashMap<String, Vec<Subscriber>>,
    wild: HashMap<String, Vec<Subscriber>>,
    conns: HashMap<ConnId, ConnEntry>,
    by_client: HashMap<String, ConnId>,
    by_user: HashMap<String, Vec<ConnId>>,
    retained: HashMap<String, Bytes>,
}

struct ConnEntry {
    conn: Arc<ConnHandle>,
    keys: Vec<Key>,
}

impl Table {
    fn remove_conn(&mut self, id: ConnId) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        for key in &entry.keys {
            self.remove_sub(key, id);
        }
        if self.by_client.get(&entry.conn.client_id) == Some(&id) {
            self.by_client.remove(&entry.conn.client_id);
        }
        if let Some(ids) = self.by_user.get_mut(&entry.conn.user) {
            ids.retain(|c| *c != id);
            if ids.is_empty() {
                self.by_user.remove(&entry.conn.user);
            }
        }
    }

    fn list(&mut self, key: &Key) -> &mut Vec<Subscriber> {
        match key {
            Key::Exact(k) => self.exact.entry(k.clone()).or_default(),
            Key::Wild(k) => self.wild.entry(k.clone()).or_default(),
        }
    }

    fn get(&self, key: &Key) -> Option<&Vec<Subscriber>> {
        match key {
            Key::Exact(k) => self.exact.get(k),
            Key::Wild(k) => self.wild.get(k),
        }
    }

    fn remove_sub(&mut self, key: &Key, conn: ConnId) {
        let (map, k) = match key {
            Key::Exact(k) => (&mut self.exact, k),
            Key::Wild(k) => (&mut self.wild, k),
        };
        if let Some(list) = map.get_mut(k) {
            list.retain(|s| s.conn.id != conn);
            if list.is_empty() {
                map.remove(k);
            }
        }
    }
}

/// Counts for `/metrics` and for tests that prove nothing leaks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub client_ids: usize,
    pub users: usize,
    pub subscription_keys: usize,
}

/// Where everything routed also goes in external-broker mode: the external broker,
/// which alone knows who follows what (see `external.rs`).
pub type Forwarder = Box<dyn Fn(&str, Bytes) + Send + Sync>;

pub struct Hub {
    table: RwLock<Table>,
    /// Set once in external-broker mode: every routed topic is handed to it, encoded,
    /// whether or not a local connection follows it (none does in that mode).
    forwarder: std::sync::OnceLock<Forwarder>,
    index: Arc<MembershipIndex>,
    next_id: AtomicU64,
    /// Work done by `route`: hash lookups plus subscriber entries visited. The test that
    /// proves routing cost does not grow with the number of connections reads it.
    examined: AtomicU64,
}

/// Why `register` refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The user already has `per_user` connections open.
    UserCap,
}

impl Hub {
    pub fn new(index: Arc<MembershipIndex>) -> Self {
        Hub {
            table: RwLock::default(),
            forwarder: std::sync::OnceLock::new(),
            index,
            next_id: AtomicU64::new(1),
            examined: AtomicU64::new(0),
        }
    }

    pub fn index(&self) -> &Arc<MembershipIndex> {
        &self.index
    }

    /// Hands every routed topic and payload to `forwarder` from now on (external-broker
    /// mode). The per-connection checks of local routing (grants, blocks, a device's
    /// conversation limit) are the external broker's ACL hooks' job there. Only the
    /// first call takes effect.
    pub fn forward_all_to(&self, forwarder: Forwarder) {
        if self.forwarder.set(forwarder).is_err() {
            tracing::warn!("the hub already forwards; a second forwarder is ignored");
        }
    }

    // A poisoned lock means a panic mid-update of plain maps; the maps are still
    // consistent enough to serve, and refusing every connection after it would be worse.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds an authenticated connection. An older connection with the same client id is
    /// taken over (closed); past `per_user` connections for the user, refused.
    pub fn register(&self, conn: Arc<ConnHandle>, per_user: usize) -> Result<(), RegisterError> {
        // One write lock for the whole decision: cap, takeover and insert are atomic.
        let mut t = self.write();
        let previous = t.by_client.get(&conn.client_id).copied();
        let open = t.by_user.get(&conn.user).map_or(0, Vec::len);
        let replaced = usize::from(previous.is_some());
        if open - replaced >= per_user {
            return Err(RegisterError::UserCap);
        }
        if let Some(old) = previous
            .and_then(|id| t.conns.get(&id))
            .map(|e| e.conn.clone())
        {
            tracing::info!(client_id = %conn.client_id, "session taken over by a new connection");
            old.close(CloseReason::TakenOver);
            t.remove_conn(old.id);
        }
        t.by_client.insert(conn.client_id.clone(), conn.id);
        t.by_user
            .entry(conn.user.clone())
            .or_default()
            .push(conn.id);
        t.conns.insert(
            conn.id,
            ConnEntry {
                conn,
                keys: Vec::new(),
            },
        );
        self.publish_stats(&t);
        Ok(())
    }

    /// Removes a connection and all its subscriptions. Idempotent.
    pub fn unregister(&self, id: ConnId) {
        let mut t = self.write();
        t.remove_conn(id);
        self.publish_stats(&t);
    }

    fn publish_stats(&self, t: &Table) {
        metrics::gauge!("tidings_mqtt_connections").set(t.conns.len() as f64);
        metrics::gauge!("tidings_mqtt_client_ids").set(t.by_client.len() as f64);
        metrics::gauge!("tidings_mqtt_subscription_keys")
            .set((t.exact.len() + t.wild.len()) as f64);
    }

    pub fn stats(&self) -> HubStats {
        let t = self.read();
        HubStats {
            connections: t.conns.len(),
            client_ids: t.by_client.len(),
            users: t.by_user.len(),
            subscription_keys: t.exact.len() + t.wild.len(),
        }
    }

    /// Adds a subscription (the ACL already granted it) and returns the retained
    /// message it should see at once, if any.
    pub fn subscribe(&self, conn: &Arc<ConnHandle>, filter: &str, grant: Grant) -> Option<Bytes> {
        self.subscribe_as(conn, filter, grant, None)
    }

    /// Like [`subscribe`](Hub::subscribe), delivering under the topic name `publish_as`.
    pub fn subscribe_as(
        &self,
        conn: &Arc<ConnHandle>,
        filter: &str,
        grant: Grant,
        publish_as: Option<Bytes>,
    ) -> Option<Bytes> {
        let key = Key::of(filter);
        let mut t = self.write();
        let Some(entry) = t.conns.get_mut(&conn.id) else {
            return None; // closed meanwhile
        };
        if entry.keys.contains(&key) {
            return retained_for(&t, &key);
        }
        entry.keys.push(key.clone());
        t.list(&key).push(Subscriber {
            conn: conn.clone(),
            grant,
            publish_as,
        });
        let retained = retained_for(&t, &key);
        self.publish_stats(&t);
        retained
    }

    pub fn unsubscribe(&self, conn: ConnId, filter: &str) {
        let key = Key::of(filter);
        let mut t = self.write();
        if let Some(entry) = t.conns.get_mut(&conn) {
            entry.keys.retain(|k| *k != key);
        }
        t.remove_sub(&key, conn);
        self.publish_stats(&t);
    }

    /// Delivers `payload` on `topic` to every connection that follows it and still has
    /// the right to read it. Returns how many connections it was queued for.
    pub fn route(&self, topic: &str, payload: Bytes) -> usize {
        self.route_with(topic, || Some(payload))
    }

    /// Like [`route`](Hub::route), but the payload is only made (`None`: nothing to
    /// send) when someone follows the topic, in the same lookup: callers never encode
    /// an event nobody reads, and never look a topic up twice.
    pub fn route_with(&self, topic: &str, payload: impl FnOnce() -> Option<Bytes>) -> usize {
        self.route_where(topic, payload, |_| true)
    }

    /// Like [`route_with`](Hub::route_with), to the followers `admit` lets through as
    /// well: a device credential limited to some conversations, or one that asked not
    /// to get its own messages back.
    pub fn route_where(
        &self,
        topic: &str,
        payload: impl FnOnce() -> Option<Bytes>,
        admit: impl Fn(&ConnHandle) -> bool,
    ) -> usize {
        let t = self.read();
        let exact = t.exact.get(topic);
        let wild = topic
            .rsplit_once('/')
            .and_then(|(parent, _)| t.wild.get(parent));
        let visited = exact.map_or(0, Vec::len) + wild.map_or(0, Vec::len);
        self.examined
            .fetch_add(2 + visited as u64, Ordering::Relaxed);
        let forwarder = self.forwarder.get();
        if visited == 0 && forwarder.is_none() {
            return 0;
        }
        let Some(payload) = payload() else {
            return 0;
        };
        if let Some(forward) = forwarder {
            forward(topic, payload.clone());
        }
        if visited == 0 {
            return 0;
        }
        let topic_bytes = Bytes::copy_from_slice(topic.as_bytes());
        // Typing (`c/{cid}/t/{who}`) from someone followers may have blocked: found once
        // per route, so other topics cost nothing per subscriber.
        let typist = typing_sender(topic).filter(|who| self.index.is_blocked_by_anyone(who));
        let mut sent = 0;
        let exact = exact.map_or(&[][..], Vec::as_slice);
        let wild = wild.map_or(&[][..], Vec::as_slice);
        for (i, sub) in exact.iter().chain(wild).enumerate() {
            // A connection following both the topic and its wildcard gets one copy.
            if i >= exact.len() && exact.iter().any(|e| e.conn.id == sub.conn.id) {
                continue;
            }
            if !sub.grant.holds(&sub.conn.user, &self.index) {
                continue;
            }
            if typist.is_some_and(|who| self.index.has_blocked(&sub.conn.user, who)) {
                continue;
            }
            if !admit(&sub.conn) {
                continue;
            }
            let out = Outbound::Publish {
                topic: sub
                    .publish_as
                    .clone()
                    .unwrap_or_else(|| topic_bytes.clone()),
                payload: payload.clone(),
            };
            if sub.conn.send(out) {
                sent += 1;
            }
        }
        sent
    }

    /// Publishes a retained message: kept for future subscribers, and routed now.
    pub fn retain(&self, topic: &str, payload: Bytes) {
        self.write()
            .retained
            .insert(topic.to_owned(), payload.clone());
        self.route(topic, payload);
    }

    pub fn examined(&self) -> u64 {
        self.examined.load(Ordering::Relaxed)
    }

    /// Whether `user` has a live connection of `session`: the push worker asks before
    /// waking a device that has the event over MQTT already. Walks only that user's
    /// connections.
    pub fn session_connected(&self, user: &str, session: &str) -> bool {
        let t = self.read();
        t.by_user.get(user).is_some_and(|ids| {
            ids.iter().any(|id| {
                t.conns
                    .get(id)
                    .is_some_and(|e| e.conn.session == session && !e.conn.is_closed())
            })
        })
    }

    /// Closes every connection of a session (logout, revocation, token theft).
    pub fn close_session(&self, session: &str, reason: CloseReason) -> usize {
        self.close_where(reason, |c| c.session == session)
    }

    /// Closes every connection of a user (account disabled or deleted).
    pub fn close_user(&self, user: &str, reason: CloseReason) -> usize {
        let ids: Vec<ConnId> = self.read().by_user.get(user).cloned().unwrap_or_default();
        self.close_ids(&ids, reason)
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) -> usize {
        self.close_where(reason, |_| true)
    }

    fn close_where(&self, reason: CloseReason, pred: impl Fn(&ConnHandle) -> bool) -> usize {
        let ids: Vec<ConnId> = self
            .read()
            .conns
            .values()
            .filter(|e| pred(&e.conn))
            .map(|e| e.conn.id)
            .collect();
        self.close_ids(&ids, reason)
    }

    fn close_ids(&self, ids: &[ConnId], reason: CloseReason) -> usize {
        let conns: Vec<Arc<ConnHandle>> = {
            let t = self.read();
            ids.iter()
                .filter_map(|id| t.conns.get(id).map(|e| e.conn.clone()))
                .collect()
        };
        for c in &conns {
            c.close(reason);
        }
        conns.len()
    }

    /// Drops the subscriptions a user no longer has the right to (after they left or
    /// were removed from a conversation). Deliveries were already refused by the grant
    /// check; this keeps the table from holding dead entries. Walks only that user's
    /// connections and their own subscriptions.
    pub fn prune_user(&self, user: &str) {
        let mut t = self.write();
        let ids: Vec<ConnId> = t.by_user.get(user).cloned().unwrap_or_default();
        for id in ids {
            let keys = t.conns.get(&id).map(|e| e.keys.clone()).unwrap_or_default();
            for key in keys {
                let lost = t.get(&key).is_some_and(|subs| {
                    subs.iter()
                        .any(|s| s.conn.id == id && !s.grant.holds(user, &self.index))
                });
                if lost {
                    t.remove_sub(&key, id);
                    if let Some(e) = t.conns.get_mut(&id) {
                        e.keys.retain(|k| *k != key);
                    }
                }
            }
        }
        self.publish_stats(&t);
    }
}

fn retained_for(t: &Table, key: &Key) -> Option<Bytes> {
    match key {
        Key::Exact(topic) => t.retained.get(topic).cloned(),
        Key::Wild(_) => None,
    }
}

/// The typist of a typing topic `c/{cid}/t/{who}`.
fn typing_sender(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("c/")?;
    let (_, rest) = rest.split_once('/')?;
    rest.strip_prefix("t/").filter(|who| !who.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tidings_core::protocol::ids::new_id;

    struct Client {
        conn: Arc<ConnHandle>,
        rx: outbox::Receiver<Outbound>,
    }

    fn connect(hub: &Hub, user: &str, device: &str) -> Client {
        let (conn, rx, _close) = ConnHandle::new(
            hub.next_conn_id(),
            user.to_owned(),
            device.to_owned(),
            format!("{user}:{device}"),
            "session".into(),
            DeviceGrant::default(),
            64,
        );
        hub.register(conn.clone(), 10).expect("register");
        Client { conn, rx }
    }

    fn received(c: &mut Client) -> Vec<String> {
        std::iter::from_fn(|| c.rx.try_recv().ok())
            .filter_map(|o| match o {
                Outbound::Publish { topic, .. } => {
                    Some(String::from_utf8_lossy(&topic).into_owned())
                }
                Outbound::PubAck { .. } => None,
            })
            .collect()
    }

    /// Connects `n` users, each following their inbox, and returns the work `route`
    /// does per publish to a topic nobody follows and to one user's inbox.
    fn work_per_publish(n: usize) -> (u64, u64) {
        let hub = Hub::new(Arc::new(MembershipIndex::default()));
        let users: Vec<String> = (0..n).map(|_| new_id()).collect();
        let mut clients = Vec::new();
        for u in &users {
            let c = connect(&hub, u, "d");
            hub.subscribe(&c.conn, &format!("u/{u}/in"), Grant::Own);
            clients.push(c);
        }
        let before = hub.examined();
        for _ in 0..100 {
            hub.route(&format!("u/{}/in", new_id()), Bytes::from_static(b"x"));
        }
        let unfollowed = hub.examined() - before;
        let before = hub.examined();
        for _ in 0..100 {
            hub.route(&format!("u/{}/in", users[0]), Bytes::from_static(b"x"));
            clients[0].rx.try_recv().expect("delivered");
        }
        (unfollowed, hub.examined() - before)
    }

    #[test]
    fn a_connection_whose_queue_fills_is_closed_as_a_slow_consumer() {
        let hub = Hub::new(Arc::new(MembershipIndex::default()));
        let user = new_id();
        let mut c = connect(&hub, &user, "d");
        let inbox = format!("u/{user}/in");
        hub.subscribe(&c.conn, &inbox, Grant::Own);
        // `connect` gives each connection a queue of 64 packets, and nobody reads it.
        for _ in 0..64 {
            hub.route(&inbox, Bytes::from_static(b"x"));
        }
        assert!(!c.conn.is_closed(), "64 packets fit");
        hub.route(&inbox, Bytes::from_static(b"x"));
        assert!(
            c.conn.is_closed(),
            "the 65th overflows: closed, not buffered"
        );
        assert_eq!(
            received(&mut c).len(),
            64,
            "what was queued is still written"
        );
        hub.route(&inbox, Bytes::from_static(b"x"));
        assert!(
            received(&mut c).is_empty(),
            "nothing more for a closed connection"
        );
    }

    #[test]
    fn routing_work_does_not_grow_with_connected_users() {
        let small = work_per_publish(100);
        let large = work_per_publish(5_000);
        assert_eq!(small, large, "100 users: {small:?}, 5,000 users: {large:?}");
        // Two hash lookups for a topic nobody follows, plus one subscriber otherwise.
        assert_eq!(small, (200, 300));
    }

    #[test]
    fn rights_are_checked_on_every_delivery() {
        let index = Arc::new(MembershipIndex::default());
        let hub = Hub::new(index.clone());
        let (conv, alice, carol) = (new_id(), new_id(), new_id());
        index.add(&conv, &alice);
        index.add(&conv, &carol);
        let mut c = connect(&hub, &carol, "d");
        hub.subscribe(&c.conn, &format!("c/{conv}/m"), Grant::Member(conv.clone()));
        hub.subscribe(
            &c.conn,
            &format!("c/{conv}/t/+"),
            Grant::Member(conv.clone()),
        );
        hub.subscribe(
            &c.conn,
            &format!("u/{alice}/p"),
            Grant::Presence(alice.clone()),
        );
        let traffic = |hub: &Hub| {
            hub.route(&format!("c/{conv}/m"), Bytes::from_static(b"m"));
            hub.route(&format!("c/{conv}/t/{alice}"), Bytes::from_static(b"t"));
            hub.route(&format!("u/{alice}/p"), Bytes::from_static(b"p"));
        };
        traffic(&hub);
        assert_eq!(received(&mut c).len(), 3, "positive control");
        index.remove(&conv, &carol);
        traffic(&hub);
        assert_eq!(received(&mut c), Vec::<String>::new());
        hub.prune_user(&carol);
        assert_eq!(hub.stats().subscription_keys, 0);
    }

    #[test]
    fn takeover_closes_the_old_connection_and_unregister_leaves_nothing() {
        let hub = Hub::new(Arc::new(MembershipIndex::default()));
        let user = new_id();
        let first = connect(&hub, &user, "phone");
        hub.subscribe(&first.conn, &format!("u/{user}/in"), Grant::Own);
        let second = connect(&hub, &user, "phone");
        assert!(first.conn.is_closed());
        assert!(!second.conn.is_closed());
        assert_eq!(hub.stats().connections, 1);
        hub.unregister(first.conn.id); // the old task ending later changes nothing
        assert_eq!(hub.stats().connections, 1);
        hub.unregister(second.conn.id);
        assert_eq!(hub.stats(), HubStats::default());
    }

    #[test]
    fn a_full_queue_closes_the_connection_instead_of_growing() {
        let hub = Hub::new(Arc::new(MembershipIndex::default()));
        let user = new_id();
        let c = connect(&hub, &user, "d");
        hub.subscribe(&c.conn, &format!("u/{user}/in"), Grant::Own);
        for _ in 0..64 {
            assert_eq!(
                hub.route(&format!("u/{user}/in"), Bytes::from_static(b"x")),
                1
            );
        }
        assert_eq!(
            hub.route(&format!("u/{user}/in"), Bytes::from_static(b"x")),
            0
        );
        assert!(c.conn.is_closed());
    }

    const ME: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ1";
    const CONV: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ4";
    const OTHER: &str = "01HZZZZZZZZZZZZZZZZZZZZZZ2";

    fn filter() -> impl Strategy<Value = String> {
        proptest::sample::select(vec![
            format!("u/{ME}/in"),
            format!("u/{ME}/in/c"),
            format!("u/{OTHER}/p"),
            format!("c/{CONV}/m"),
            format!("c/{CONV}/t/+"),
            format!("c/{CONV}/t/#"),
            format!("c/{CONV}/t/{OTHER}"),
        ])
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::sample::select(vec![
            format!("u/{ME}/in"),
            format!("u/{ME}/in/c"),
            format!("u/{OTHER}/p"),
            format!("u/{OTHER}/in"),
            format!("c/{CONV}/m"),
            format!("c/{CONV}/t/{OTHER}"),
            format!("c/{CONV}/t/{ME}"),
            format!("c/{OTHER}/t/{ME}"),
        ])
    }

    proptest! {
        /// The hash-lookup router delivers exactly what MQTT's own matching rule says,
        /// for every filter shape the ACL can grant.
        #[test]
        fn routing_agrees_with_mqtt_matching(filters in proptest::collection::vec(filter(), 1..5), t in topic()) {
            let index = Arc::new(MembershipIndex::from_pairs([
                (CONV.to_string(), ME.to_string()),
                (CONV.to_string(), OTHER.to_string()),
            ]));
            let hub = Hub::new(index);
            let mut c = connect(&hub, ME, "d");
            for f in &filters {
                hub.subscribe(&c.conn, f, Grant::of(ME, f));
            }
            hub.route(&t, Bytes::from_static(b"x"));
            let got = received(&mut c).len();
            let expected = usize::from(filters.iter().any(|f| rumqttc::mqttbytes::matches(&t, f)));
            prop_assert_eq!(got, expected, "filters {:?} topic {}", filters, t);
        }
    }
}
