//! What frees a slot of a sender's window in the fan-out generator, and the per-sender
//! count of members that received each send in flight. Pure: no sockets, no clock.
//!
//! With `acks`, a send leaves its sender's window when the server acknowledges it, which
//! it does at commit, before the members read it: a generator that reads members more
//! slowly than the server fans out lets their backlog grow until the server drops them as
//! slow consumers. With `deliveries`, a send leaves the window only once every member has
//! received it too, so a member's backlog is at most senders × window messages and the run
//! measures the slower of the server and the generator, without drops.

/// What frees a slot of a sender's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowOn {
    /// The server's acknowledgement of the send.
    Acks,
    /// The acknowledgement and the send's delivery to every member.
    Deliveries,
}

impl WindowOn {
    pub fn name(self) -> &'static str {
        match self {
            WindowOn::Acks => "acks",
            WindowOn::Deliveries => "deliveries",
        }
    }

    pub fn parse(text: &str) -> Result<WindowOn, String> {
        match text {
            "acks" => Ok(WindowOn::Acks),
            "deliveries" => Ok(WindowOn::Deliveries),
            other => Err(format!("{other:?} is neither acks nor deliveries")),
        }
    }
}

/// One sender's sends in flight towards the members: a ring of `window` counters, one per
/// send not yet received by every member, so a delivery costs O(1) whatever the member
/// count.
///
/// Invariant: the sends in flight are the counters `delivered .. delivered + window` at
/// most (the sender never has more than `window` sends past `delivered`), so each maps to
/// its own slot `counter % window`; `received[slot]` is how many members got that send.
#[derive(Clone, Debug)]
pub struct DeliveryRing {
    received: Vec<u32>,
    /// Every send with a counter below this reached every member.
    delivered: u64,
    /// Members that receive each send.
    members: u32,
}

impl DeliveryRing {
    pub fn new(window: usize, members: usize) -> DeliveryRing {
        assert!(window > 0, "a window of at least one send");
        let members = u32::try_from(members).expect("members fit in 32 bits");
        assert!(members > 0, "at least one member");
        DeliveryRing {
            received: vec![0; window],
            delivered: 0,
            members,
        }
    }

    /// Sends (from counter 0) that every member has received.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// One member received send `counter`, the next it expected from this sender (each
    /// member counts each send once). Err when `counter` is outside the sends in flight:
    /// not a send this ring can hold (already fully delivered, or past the window).
    pub fn on_delivery(&mut self, counter: u64) -> Result<(), String> {
        let window = self.received.len() as u64;
        if counter < self.delivered || counter - self.delivered >= window {
            return Err(format!(
                "send {counter} is outside the window in flight ({}..{})",
                self.delivered,
                self.delivered + window
            ));
        }
        let slot = &mut self.received[(counter % window) as usize];
        assert!(*slot < self.members, "a member counted twice for one send");
        *slot += 1;
        // Sends complete in any order across members, but the mark moves only past the
        // oldest: a later send fully received waits in its slot until those before it are.
        loop {
            let oldest = &mut self.received[(self.delivered % window) as usize];
            if *oldest != self.members {
                return Ok(());
            }
            *oldest = 0;
            self.delivered += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_moves_once_every_member_received_the_oldest_send() {
        let mut ring = DeliveryRing::new(4, 3);
        for _ in 0..2 {
            ring.on_delivery(0).unwrap();
        }
        assert_eq!(ring.delivered(), 0, "two of three members");
        ring.on_delivery(0).unwrap();
        assert_eq!(ring.delivered(), 1);
    }

    #[test]
    fn a_later_send_fully_received_waits_for_the_ones_before_it() {
        // Each member receives one sender's sends in order, but the ring does not rely on
        // it: counts for a later send may come first, and the mark still moves in order.
        let mut ring = DeliveryRing::new(4, 2);
        ring.on_delivery(0).unwrap();
        ring.on_delivery(1).unwrap();
        ring.on_delivery(1).unwrap();
        ring.on_delivery(2).unwrap();
        assert_eq!(ring.delivered(), 0, "send 0 misses a member");
        ring.on_delivery(0).unwrap();
        assert_eq!(ring.delivered(), 2, "send 1 was already complete");
        ring.on_delivery(2).unwrap();
        assert_eq!(ring.delivered(), 3);
    }

    #[test]
    fn the_ring_wraps_around_many_times() {
        let (window, members) = (3usize, 2usize);
        let mut ring = DeliveryRing::new(window, members);
        let mut next = [0u64; 2];
        // Member 0 runs a full window ahead of member 1, then member 1 catches up.
        for _ in 0..100 {
            while next[0] < ring.delivered() + window as u64 {
                ring.on_delivery(next[0]).unwrap();
                next[0] += 1;
            }
            assert_eq!(ring.delivered(), next[1]);
            while next[1] < next[0] {
                ring.on_delivery(next[1]).unwrap();
                next[1] += 1;
            }
            assert_eq!(ring.delivered(), next[0]);
        }
        assert_eq!(ring.delivered(), 300);
    }

    #[test]
    fn one_member_completes_each_send_at_once() {
        let mut ring = DeliveryRing::new(2, 1);
        for counter in 0..10 {
            ring.on_delivery(counter).unwrap();
            assert_eq!(ring.delivered(), counter + 1);
        }
    }

    #[test]
    fn sends_outside_the_window_in_flight_are_refused() {
        let mut ring = DeliveryRing::new(2, 1);
        ring.on_delivery(2).unwrap_err();
        ring.on_delivery(0).unwrap();
        ring.on_delivery(0).unwrap_err();
        ring.on_delivery(1).unwrap();
        ring.on_delivery(3).unwrap();
        assert_eq!(ring.delivered(), 2, "send 2 still missing");
        ring.on_delivery(2).unwrap();
        assert_eq!(ring.delivered(), 4);
    }
}
