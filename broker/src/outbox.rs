//! A connection's outbound queue: bounded like tokio's `mpsc` channel, with the same
//! `try_send` / `recv` / `try_recv` surface, but holding no memory until first used and
//! giving back what a burst grew it to.
//!
//! Why not `tokio::sync::mpsc`: its channel allocates its first block of 32 slots when
//! it is created, 32 × the 64-byte [`crate::hub::Outbound`], and keeps it. Every
//! connection has a queue and most connections of a chat server are idle, so that was
//! about 2 KiB of each idle connection's 8.7 KiB (issue 9: the target is < 8 KB).
//! Here the queue is a `VecDeque` that is released when it drains after a burst: a
//! connection that was only ever sent a few packets at a time keeps 256 bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

pub use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

/// Slots a drained queue keeps: `VecDeque`'s first allocation (4 packets, 256 bytes),
/// so a connection that gets one packet at a time (a group's fan-out) does not allocate
/// for each of them.
const KEPT_SLOTS: usize = 4;

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: a value was queued, or the last sender went away.
    ready: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code panics while holding the lock; if one ever did, the queue itself is
        // still consistent (every operation is a single push, pop or counter step).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues values for the one [`Receiver`]; cloned for every producer that shares it.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    capacity: usize,
}

/// Takes the values in the order they were queued.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue that holds at most `capacity` values (at least one).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
        }),
        ready: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
            capacity: capacity.max(1),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `value` unless the queue is full or its receiver is gone.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Closed(value));
        }
        if state.items.len() >= self.capacity {
            return Err(TrySendError::Full(value));
        }
        state.items.push_back(value);
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
            capacity: self.capacity,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            // A receiver waiting in `recv` must see that nothing more will come.
            self.shared.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next value, or why there is none now.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match state.items.pop_front() {
            Some(value) => {
                if state.items.is_empty() && state.items.capacity() > KEPT_SLOTS {
                    // Drained after a burst: give the memory back (see the module
                    // comment), keeping the smallest allocation for the next packet.
                    state.items = VecDeque::new();
                }
                Ok(value)
            }
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next value; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: a value is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(value) => return Some(value),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            // `notify_one` leaves a permit when nobody waits, so a value queued between
            // the check above and this wait is not missed.
            self.shared.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        // Whatever was queued will never be written; free it now, not with the last
        // sender (a hub subscription can outlive its connection by a moment).
        let items = std::mem::take(&mut state.items);
        drop(state);
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_order_and_bounds_the_queue() {
        let (tx, mut rx) = channel(2);
        tx.try_send(1).expect("first");
        tx.try_send(2).expect("second");
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(rx.try_recv().ok(), Some(1));
        tx.try_send(3).expect("room again");
        assert_eq!(rx.try_recv().ok(), Some(2));
        assert_eq!(rx.try_recv().ok(), Some(3));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn holds_at_most_its_first_allocation_once_drained() {
        let (tx, mut rx) = channel(64);
        for i in 0..40 {
            tx.try_send(i).expect("queued");
        }
        assert!(rx.shared.lock().items.capacity() >= 40);
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.lock().items.capacity() <= KEPT_SLOTS);
    }

    #[test]
    fn a_gone_receiver_refuses_and_frees_what_was_queued() {
        let (tx, rx) = channel(8);
        let value = Arc::new(());
        tx.try_send(value.clone()).expect("queued");
        assert_eq!(Arc::strong_count(&value), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&value), 1, "the queued copy was dropped");
        assert!(matches!(
            tx.try_send(value.clone()),
            Err(TrySendError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn recv_wakes_for_a_value_and_ends_with_the_last_sender() {
        let (tx, mut rx) = channel(8);
        let second = tx.clone();
        let waiter = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(1).expect("queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
        second.try_send(2).expect("queued");
        drop(tx);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one sender is still there");
        drop(second);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("recv ended when the last sender went")
            .expect("join");
        assert_eq!(got, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        use std::future::Future;
        use std::task::Poll;
        let (tx, mut rx) = channel(8);
        for round in 0..100 {
            {
                // A `select!` that picks another branch drops the `recv` future after it
                // started waiting, here right after the value that woke it was queued.
                let waiting = rx.recv();
                tokio::pin!(waiting);
                let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
                assert!(first.is_pending(), "nothing queued yet");
                tx.try_send(round).expect("queued");
            }
            let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("not lost");
            assert_eq!(got, Some(round));
        }
    }
}
