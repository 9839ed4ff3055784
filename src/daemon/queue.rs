//! A bounded queue whose memory follows its depth: the I/O workers' and the log writer's
//! command queues, and the core's single inputs.
//!
//! `crossbeam_channel::bounded` allocates and touches every slot when it is made, so a
//! worker's 65 536-slot command queue would be 11.5 MiB resident on an idle node, the log
//! writer's (`log.max_pending` + 1 024 slots) 2.5 MiB and the core's 4 096 single inputs
//! 416 KiB. This queue keeps the same bound but stores items in crossbeam's unbounded
//! (linked-block) channel, which allocates a block of 31 slots as it fills and frees it once
//! read; a depth counter enforces the bound. The hot path is one lock-free channel operation
//! plus one atomic read-modify-write on each side; the mutex and condvar are touched only
//! while the queue is full (a sender waits there, as on a full bounded channel).
//!
//! A receiver that waits on other channels too (the driver's `select!`) selects on
//! [`QueueReceiver::channel`]; what that yields is a [`Queued`] item that only
//! [`QueueReceiver::selected`] opens, which gives its unit of depth back.
//!
//! Invariant: items in the channel ≤ `depth` ≤ `max`: a sender reserves a unit of depth
//! before it sends, the receiver gives it back after it takes the item.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::RecvError;

/// State both ends share.
struct Shared {
    /// Items sent or being sent and not yet received; never above `max`.
    depth: AtomicUsize,
    max: usize,
    /// Held by a sender between its last failed reservation and its wait, so the receiver's
    /// notice (taken under it) cannot fall between the two.
    full: Mutex<()>,
    /// Signalled when the depth falls from `max`, or the receiver goes.
    room: Condvar,
    receiver_gone: AtomicBool,
}

impl Shared {
    /// Takes one unit of depth if the queue is not full.
    fn reserve(&self) -> bool {
        self.depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d < self.max).then_some(d + 1)
            })
            .is_ok()
    }

    /// Blocks until a unit of depth is taken (true) or the receiver is gone (false).
    fn wait_for_room(&self) -> bool {
        let mut guard = self.full.lock().expect("queue lock");
        loop {
            if self.receiver_gone.load(Ordering::Acquire) {
                return false;
            }
            if self.reserve() {
                return true;
            }
            guard = self.room.wait(guard).expect("queue lock");
        }
    }

    fn wake_senders(&self) {
        drop(self.full.lock().expect("queue lock"));
        self.room.notify_all();
    }
}

/// The receiver is gone; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Disconnected<T>(pub T);

/// Why `try_send` did not queue its item (which comes back).
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Disconnected(T),
}

/// An item as it sits in the channel. Its field is private: the value comes out only
/// through its queue's receiver, which gives the item's unit of depth back, so an item taken
/// by a `select!` cannot be used without being accounted for.
#[must_use = "a queued item holds a unit of its queue's depth until `selected` opens it"]
pub struct Queued<T>(T);

pub struct QueueSender<T> {
    items: crossbeam_channel::Sender<Queued<T>>,
    shared: Arc<Shared>,
}

pub struct QueueReceiver<T> {
    items: crossbeam_channel::Receiver<Queued<T>>,
    shared: Arc<Shared>,
}

/// A queue of at most `max` items, holding memory only for those in it.
pub fn queue<T>(max: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    assert!(max > 0, "a queue holds at least one item");
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        depth: AtomicUsize::new(0),
        max,
        full: Mutex::new(()),
        room: Condvar::new(),
        receiver_gone: AtomicBool::new(false),
    });
    let sender = QueueSender {
        items: tx,
        shared: shared.clone(),
    };
    (sender, QueueReceiver { items: rx, shared })
}

impl<T> QueueSender<T> {
    /// Queues `item`, waiting while the queue is full.
    pub fn send(&self, item: T) -> Result<(), Disconnected<T>> {
        if !self.shared.reserve() && !self.shared.wait_for_room() {
            return Err(Disconnected(item));
        }
        self.push(item).map_err(Disconnected)
    }

    /// Queues `item` if there is room now.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return Err(TrySendError::Disconnected(item));
        }
        if !self.shared.reserve() {
            return Err(TrySendError::Full(item));
        }
        self.push(item).map_err(TrySendError::Disconnected)
    }

    /// Sends on a reserved unit of depth, giving it back if the receiver is gone.
    fn push(&self, item: T) -> Result<(), T> {
        self.items.send(Queued(item)).map_err(|e| {
            self.shared.depth.fetch_sub(1, Ordering::AcqRel);
            e.into_inner().0
        })
    }
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            items: self.items.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> QueueReceiver<T> {
    /// The oldest item, if any; never blocks.
    pub fn try_recv(&self) -> Option<T> {
        self.selected(self.items.try_recv().map_err(|_| RecvError))
    }

    /// The oldest item, waiting for one; `None` once every sender is gone and it is empty.
    pub fn recv(&self) -> Option<T> {
        self.selected(self.items.recv())
    }

    /// The channel to name in a `crossbeam_channel::select!` arm, for a receiver that waits
    /// on other channels too: `recv(queue.channel()) -> item => queue.selected(item)`.
    /// Pass every item the arm takes to `selected` on this same receiver: until then the
    /// item holds a unit of depth, and a queue whose units are all held stops its senders.
    pub fn channel(&self) -> &crossbeam_channel::Receiver<Queued<T>> {
        &self.items
    }

    /// Opens what a `select!` arm on [`channel`](Self::channel) received and gives the
    /// item's unit of depth back (waking a sender waiting on a full queue); `None` once
    /// every sender is gone and the queue is empty.
    pub fn selected(&self, received: Result<Queued<T>, RecvError>) -> Option<T> {
        let Queued(item) = received.ok()?;
        self.taken();
        Some(item)
    }

    /// Gives back the unit of depth of an item taken.
    fn taken(&self) {
        if self.shared.depth.fetch_sub(1, Ordering::AcqRel) == self.shared.max {
            self.shared.wake_senders();
        }
    }

    /// Items queued now (stale as soon as it is read).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        self.shared.wake_senders();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_try_send_and_takes_again_after_a_receive() {
        let (tx, rx) = queue(3);
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.len(), 3);
        assert_eq!(rx.try_recv(), Some(0));
        tx.try_send(3).unwrap();
        assert_eq!(tx.try_send(4), Err(TrySendError::Full(4)));
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn a_sender_blocked_on_a_full_queue_finishes_once_the_receiver_takes_one() {
        let (tx, rx) = queue(1);
        tx.send(0u32).unwrap();
        let blocked = std::thread::spawn({
            let tx = tx.clone();
            move || tx.send(1)
        });
        // Whether or not the thread is waiting yet, the queue holds only the first item
        // until one is taken.
        assert_eq!(rx.try_recv(), Some(0));
        blocked.join().unwrap().unwrap();
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), None);
    }

    /// Takes one item the way the driver does: a `select!` over the queue and another
    /// channel, with a deadline so that a lost item fails the test instead of hanging it.
    fn select_one<T>(rx: &QueueReceiver<T>) -> Option<T> {
        let other = crossbeam_channel::never::<()>();
        crossbeam_channel::select! {
            recv(rx.channel()) -> item => rx.selected(item),
            recv(other) -> _ => unreachable!("never() yields nothing"),
            default(std::time::Duration::from_secs(60)) => panic!("nothing to select"),
        }
    }

    #[test]
    fn an_item_taken_by_select_releases_a_sender_blocked_on_a_full_queue() {
        let (tx, rx) = queue(2);
        tx.send(0u32).unwrap();
        tx.send(1).unwrap();
        let blocked = std::thread::spawn({
            let tx = tx.clone();
            move || tx.send(2)
        });
        assert_eq!(select_one(&rx), Some(0));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !blocked.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sender stayed blocked"
            );
            std::thread::yield_now();
        }
        blocked.join().unwrap().unwrap();
        // The select gave back exactly one unit: the queue is full again.
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(select_one(&rx), Some(1));
        tx.try_send(3).unwrap();
        let got: Vec<u32> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(got, vec![2, 3]);
        drop(tx);
        assert_eq!(select_one(&rx), None, "no senders left");
    }

    #[test]
    fn many_senders_never_exceed_the_bound_and_lose_nothing() {
        const MAX: usize = 8;
        const SENDERS: u64 = 4;
        const EACH: u64 = 5_000;
        let (tx, rx) = queue(MAX);
        let threads: Vec<_> = (0..SENDERS)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        tx.send((s, i)).unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0u64; SENDERS as usize];
        let mut received = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while received < SENDERS * EACH {
            assert!(rx.len() <= MAX, "{} items queued, bound {MAX}", rx.len());
            match rx.try_recv() {
                Some((s, i)) => {
                    assert_eq!(i, next[s as usize], "sender {s} out of order");
                    next[s as usize] += 1;
                    received += 1;
                }
                None => {
                    assert!(std::time::Instant::now() < deadline, "senders stalled");
                    std::thread::yield_now();
                }
            }
        }
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_worker_queue_takes_worker_commands_max_items_then_refuses() {
        let max = crate::daemon::start::WORKER_COMMANDS_MAX;
        let (tx, rx) = queue(max);
        for i in 0..max {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(max), Err(TrySendError::Full(max)));
        assert_eq!(rx.len(), max);
    }

    #[test]
    fn recv_waits_for_an_item_and_ends_when_the_senders_are_gone() {
        let (tx, rx) = queue(2);
        let sender = std::thread::spawn(move || {
            tx.send(7u8).unwrap();
            tx.send(8).unwrap();
            tx.send(9).unwrap();
        });
        assert_eq!(rx.recv(), Some(7));
        assert_eq!(rx.recv(), Some(8));
        assert_eq!(rx.recv(), Some(9));
        sender.join().unwrap();
        assert_eq!(rx.recv(), None);
    }

    #[test]
    fn a_sender_waiting_on_a_full_queue_is_released_when_the_receiver_goes() {
        let (tx, rx) = queue(1);
        tx.send(0u8).unwrap();
        let waiting = std::thread::spawn({
            let tx = tx.clone();
            move || tx.send(1)
        });
        drop(rx);
        assert_eq!(waiting.join().unwrap(), Err(Disconnected(1)));
        assert_eq!(tx.try_send(2), Err(TrySendError::Disconnected(2)));
    }
}
