//! The witness's rules, as a pure state machine: a third party that hands out one lease at
//! a time, so that two nodes of a pair never commit in overlapping time (strict mode).
//!
//! It stores no chat: only the highest epoch it granted and to which node (durably, before
//! answering), and in memory until when the lease of that node runs on its own monotonic
//! clock. There is one request, a claim of an epoch by a node, which serves both as the
//! primary's renewal (a claim of its current epoch) and as a backup's bid to take over (a
//! claim of a newer one). No I/O here: `daemon::witness` carries the datagrams and the file.

/// The answer's verdict is the wire's (`wire::witness`): the rules decide it, the codec
/// carries it.
pub use crate::wire::witness::Verdict;

/// What the witness keeps on disk: the highest epoch it granted, and to whom.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    /// 0 until the first grant.
    pub epoch: u64,
    /// The node holding `epoch` (empty until the first grant).
    pub holder: String,
}

/// The witness: what it granted, and the lease of the holder.
#[derive(Debug)]
pub struct Witness {
    granted: Granted,
    lease_ms: u64,
    /// Witness monotonic time before which no other node may be granted anything.
    ///
    /// Invariant: no lease the witness ever answered `Granted` for (in this process or an
    /// earlier one) runs past it on the witness's clock.
    lease_until_ms: u64,
}

impl Witness {
    /// Starts from the state file's contents at monotonic time `mono_ms`. Whatever was
    /// granted before, a lease may have been renewed just before the old process died (or
    /// by a witness this one replaces), so nothing changes hands for one lease from now.
    pub fn new(granted: Granted, lease_ms: u64, mono_ms: u64) -> Self {
        assert!(lease_ms > 0, "lease_ms is validated as positive");
        Witness {
            granted,
            lease_ms,
            lease_until_ms: mono_ms + lease_ms,
        }
    }

    pub fn granted(&self) -> &Granted {
        &self.granted
    }

    /// How much longer the holder's lease runs at `mono_ms`.
    pub fn lease_left_ms(&self, mono_ms: u64) -> u64 {
        self.lease_until_ms.saturating_sub(mono_ms)
    }

    /// `node` claims `epoch` at witness time `mono_ms`. Returns the verdict and, when the
    /// grant changed hands or epochs, the new state, which the caller must make durable
    /// before it sends the verdict.
    ///
    /// Rules: an epoch below the highest granted is refused; the holder of the highest
    /// renews it; a newer epoch goes to the holder at once (it is the only one that could be
    /// committing) and to anyone else only once the holder's lease has run out.
    pub fn on_claim(&mut self, node: &str, epoch: u64, mono_ms: u64) -> (Verdict, Option<Granted>) {
        let refused = |w: &Witness| Verdict::Refused {
            epoch: w.granted.epoch,
            wait_ms: w.lease_left_ms(mono_ms),
        };
        let holder = self.granted.holder == node;
        if epoch < self.granted.epoch || (epoch == self.granted.epoch && !holder) {
            return (refused(self), None);
        }
        let mut changed = None;
        if epoch > self.granted.epoch {
            if !holder && mono_ms < self.lease_until_ms {
                return (refused(self), None);
            }
            self.granted = Granted {
                epoch,
                holder: node.to_string(),
            };
            changed = Some(self.granted.clone());
        }
        self.lease_until_ms = self.lease_until_ms.max(mono_ms + self.lease_ms);
        let verdict = Verdict::Granted {
            epoch,
            lease_ms: self.lease_ms,
        };
        (verdict, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE_MS: u64 = 600;

    #[test]
    fn a_fresh_witness_waits_one_lease_before_granting_anything() {
        let mut w = Witness::new(Granted::default(), LEASE_MS, 1_000);
        let (verdict, saved) = w.on_claim("a", 1, 1_599);
        assert_eq!(
            verdict,
            Verdict::Refused {
                epoch: 0,
                wait_ms: 1
            }
        );
        assert_eq!(saved, None);
        let (verdict, saved) = w.on_claim("a", 1, 1_600);
        assert_eq!(
            verdict,
            Verdict::Granted {
                epoch: 1,
                lease_ms: LEASE_MS
            }
        );
        assert_eq!(saved.unwrap().holder, "a");
    }

    #[test]
    fn the_holder_renews_and_the_other_node_waits_until_its_lease_runs_out() {
        let mut w = Witness::new(Granted::default(), LEASE_MS, 0);
        assert!(matches!(w.on_claim("a", 1, 600).0, Verdict::Granted { .. }));
        // Renewals push the lease on; the backup's bid for epoch 2 is refused meanwhile.
        for t in (700..3_000).step_by(200) {
            assert!(matches!(w.on_claim("a", 1, t).0, Verdict::Granted { .. }));
            let (verdict, _) = w.on_claim("b", 2, t + 1);
            assert!(matches!(verdict, Verdict::Refused { epoch: 1, wait_ms } if wait_ms > 0));
        }
        // Last renewal at 2900: the lease runs to 3500.
        assert!(matches!(
            w.on_claim("b", 2, 3_499).0,
            Verdict::Refused { .. }
        ));
        let (verdict, saved) = w.on_claim("b", 2, 3_500);
        assert_eq!(
            verdict,
            Verdict::Granted {
                epoch: 2,
                lease_ms: LEASE_MS
            }
        );
        assert_eq!(
            saved,
            Some(Granted {
                epoch: 2,
                holder: "b".into()
            })
        );
        // The old holder's renewal is refused from now on, with the epoch that replaced it.
        assert_eq!(
            w.on_claim("a", 1, 3_600).0,
            Verdict::Refused {
                epoch: 2,
                wait_ms: 500
            }
        );
    }

    #[test]
    fn the_holder_moves_to_a_newer_epoch_at_once_and_nobody_gets_an_old_one() {
        let mut w = Witness::new(
            Granted {
                epoch: 3,
                holder: "a".into(),
            },
            LEASE_MS,
            0,
        );
        let (verdict, saved) = w.on_claim("a", 5, 10);
        assert_eq!(
            verdict,
            Verdict::Granted {
                epoch: 5,
                lease_ms: LEASE_MS
            }
        );
        assert!(saved.is_some());
        // Equal or lower epochs never go to another node, even after every lease expired.
        assert!(matches!(
            w.on_claim("b", 5, 10_000).0,
            Verdict::Refused { epoch: 5, .. }
        ));
        assert!(matches!(
            w.on_claim("b", 4, 10_000).0,
            Verdict::Refused { epoch: 5, .. }
        ));
        // A renewal that changes nothing asks for no write.
        assert_eq!(w.on_claim("a", 5, 10_000).1, None);
    }
}
