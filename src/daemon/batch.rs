//! Coalesces the committed messages of one room that the core hands out together into one
//! frame, so each I/O worker queues one buffer per batch to each subscriber instead of one
//! per message: one queue entry, one refcount and one `writev` slice per subscriber per
//! batch. Only consecutive messages of the same room are joined, so no connection sees its
//! frames in another order than the core produced them.

use std::sync::Arc;
use std::time::Instant;

use crate::core::Frame;

/// Largest coalesced frame, in bytes. Big enough that a saturated room's fsync group (a few
/// hundred 150-byte frames) goes out in a handful of writes, small enough that one batch is a
/// small part of any connection's send queue (see [`PublishBatch::new`]).
pub const PUBLISH_BATCH_BYTES_MAX: usize = 32 * 1024;

/// Messages of one room, ready for fan-out.
#[derive(Debug, Clone)]
pub struct Published {
    pub room: Arc<str>,
    /// The highest seq in `frame`.
    pub last_seq: u64,
    /// Whole `msg` lines, in seq order.
    pub frame: Frame,
    /// How many `msg` lines `frame` holds.
    pub messages: u32,
    /// When the core thread committed its first message (one clock read per batch), for
    /// the delivery-queue histogram the workers observe.
    pub committed_at: Instant,
}

/// The batch being built on the core thread.
#[derive(Debug)]
pub struct PublishBatch {
    /// The first message, kept as is: a batch of one is sent without a copy.
    first: Option<Published>,
    /// The joined lines once a second message arrived.
    joined: Vec<u8>,
    max_bytes: usize,
}

impl PublishBatch {
    /// `send_queue_bytes`: a connection's queue limit. A batch is at most a quarter of it, so
    /// that joining never makes a keeping-up client look like a slow consumer.
    pub fn new(send_queue_bytes: usize) -> PublishBatch {
        PublishBatch {
            first: None,
            joined: Vec::new(),
            max_bytes: PUBLISH_BATCH_BYTES_MAX.min(send_queue_bytes / 4),
        }
    }

    /// Adds one committed message; returns the batch it ends, if the message belongs to
    /// another room or would make the batch too big (the message then starts the next one).
    pub fn push(&mut self, room: Arc<str>, seq: u64, frame: Frame) -> Option<Published> {
        let fits = self
            .first
            .as_ref()
            .is_some_and(|first| Arc::ptr_eq(&first.room, &room) || first.room == room)
            && self.len() + frame.len() <= self.max_bytes;
        if !fits {
            let done = self.take();
            self.first = Some(Published {
                room,
                last_seq: seq,
                frame,
                messages: 1,
                committed_at: Instant::now(),
            });
            return done;
        }
        let first = self.first.as_mut().expect("fits implies a first message");
        if self.joined.is_empty() {
            self.joined.extend_from_slice(&first.frame);
        }
        self.joined.extend_from_slice(&frame);
        first.last_seq = seq;
        first.messages += 1;
        None
    }

    /// The batch built so far, if any; the builder is empty afterwards.
    pub fn take(&mut self) -> Option<Published> {
        let mut done = self.first.take()?;
        if !self.joined.is_empty() {
            done.frame = Arc::from(self.joined.as_slice());
            self.joined.clear();
        }
        Some(done)
    }

    fn len(&self) -> usize {
        if self.joined.is_empty() {
            self.first.as_ref().map_or(0, |f| f.frame.len())
        } else {
            self.joined.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Arc::from(text.as_bytes())
    }

    #[test]
    fn consecutive_messages_of_a_room_become_one_frame_in_order() {
        let room: Arc<str> = Arc::from("general");
        let mut batch = PublishBatch::new(1 << 20);
        assert!(batch.push(room.clone(), 1, frame("a\n")).is_none());
        assert!(batch.push(room.clone(), 2, frame("b\n")).is_none());
        assert!(batch.push(Arc::from("general"), 3, frame("c\n")).is_none());
        let done = batch.take().unwrap();
        assert_eq!(&*done.frame, b"a\nb\nc\n");
        assert_eq!((done.last_seq, done.messages), (3, 3));
        assert!(batch.take().is_none());
    }

    #[test]
    fn a_single_message_keeps_its_own_frame() {
        let mut batch = PublishBatch::new(1 << 20);
        let one = frame("a\n");
        batch.push(Arc::from("r"), 7, one.clone());
        let done = batch.take().unwrap();
        assert!(Arc::ptr_eq(&done.frame, &one));
        assert_eq!((done.last_seq, done.messages), (7, 1));
    }

    #[test]
    fn another_room_or_the_size_limit_ends_a_batch() {
        let mut batch = PublishBatch::new(16);
        assert!(batch.push(Arc::from("a"), 1, frame("11\n")).is_none());
        let done = batch.push(Arc::from("b"), 2, frame("22\n")).unwrap();
        assert_eq!((&*done.room, &*done.frame), ("a", &b"11\n"[..]));
        // Limit 16 / 4 = 4 bytes: a second 3-byte line does not fit.
        let done = batch.push(Arc::from("b"), 3, frame("33\n")).unwrap();
        assert_eq!((done.last_seq, &*done.frame), (2, &b"22\n"[..]));
        let done = batch.take().unwrap();
        assert_eq!((done.last_seq, done.messages), (3, 1));
    }
}
