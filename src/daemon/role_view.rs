//! The node's role, epoch and log as the driver last published them: the one shared view
//! that the heartbeat and replication-link threads read. The driver publishes it once per
//! turn (`Driver::publish`); nothing else writes it. Admin and metrics read the fuller
//! `admin::Status`, which the driver builds from the same turn; the role-change hook is told
//! by the driver directly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::core::link::handshake::LogView;

/// The shared view. The role, epoch and head are also kept in atomics, so a heartbeat
/// reads them without a lock; each is read on its own, so one heartbeat may mix two turns
/// (the receiver treats heartbeats as hints). The handshake reads the whole [`LogView`]
/// under its lock, consistent as of one turn.
#[derive(Debug)]
pub struct RoleView {
    primary: AtomicBool,
    epoch: AtomicU64,
    head: AtomicU64,
    log: Mutex<LogView>,
    /// Rung on every (role, epoch) change; the backup's dialer waits on it. One slot: a
    /// ring not yet taken stands for any number since.
    changed: Sender<()>,
    changes: Receiver<()>,
}

impl RoleView {
    /// The view of a node that is `primary` (or not) with `log`; filled before the threads
    /// that read it start, so a dialer's first `Hello` carries the recovered log and epochs.
    pub fn new(primary: bool, log: LogView) -> Self {
        let (changed, changes) = bounded(1);
        RoleView {
            primary: AtomicBool::new(primary),
            epoch: AtomicU64::new(log.epoch),
            head: AtomicU64::new(log.head),
            log: Mutex::new(log),
            changed,
            changes,
        }
    }

    /// Publishes the node's role and, through `update`, its log view; the atomics follow
    /// the view.
    pub fn publish(&self, primary: bool, update: impl FnOnce(&mut LogView)) {
        let mut log = self.lock();
        update(&mut log);
        self.primary.store(primary, Ordering::Release);
        self.epoch.store(log.epoch, Ordering::Release);
        self.head.store(log.head, Ordering::Release);
    }

    /// Wakes whoever waits in [`RoleView::wait_changed`]: the role or epoch moved.
    pub fn ring_changed(&self) {
        let _ = self.changed.try_send(());
    }

    /// Waits up to `timeout` for a role or epoch change (at once if one came since the
    /// last wait).
    pub fn wait_changed(&self, timeout: Duration) {
        let _ = self.changes.recv_timeout(timeout);
    }

    pub fn primary(&self) -> bool {
        self.primary.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// The log and epochs as of the latest publish, for the link handshake.
    pub fn log_view(&self) -> LogView {
        self.lock().clone()
    }

    /// The epoch and head of one turn (read together, unlike the atomics), for a link
    /// session's beats: cheaper than the whole view.
    pub fn epoch_and_head(&self) -> (u64, u64) {
        let log = self.lock();
        (log.epoch, log.head)
    }

    /// The core's `log_stuck`: a backup does not follow a primary meanwhile.
    pub fn log_stuck(&self) -> bool {
        self.lock().log_stuck
    }

    fn lock(&self) -> MutexGuard<'_, LogView> {
        self.log.lock().expect("never poisoned: no panic inside")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_atomics_follow_the_published_view_and_a_change_wakes_a_waiter() {
        let view = RoleView::new(
            false,
            LogView {
                epoch: 3,
                head: 10,
                ..LogView::default()
            },
        );
        assert_eq!((view.primary(), view.epoch(), view.head()), (false, 3, 10));
        view.publish(true, |log| {
            log.epoch = 4;
            log.head = 12;
            log.log_stuck = true;
        });
        assert_eq!((view.primary(), view.epoch(), view.head()), (true, 4, 12));
        assert!(view.log_stuck());
        assert_eq!(view.log_view().epoch, 4);
        view.ring_changed();
        view.ring_changed();
        let started = std::time::Instant::now();
        view.wait_changed(Duration::from_secs(60));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a ring wakes at once"
        );
    }
}
