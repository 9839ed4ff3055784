//! The simulated network between the two nodes and the witness: per-direction cuts, and
//! the datagram path's latency, loss, duplication and reordering (each datagram's own
//! extra delay). Streams (the replication link) are TCP: in order, held by a cut rather
//! than lost; [`Network::stream_due`] keeps their order, the simulations hold them.

use super::Rng;

/// The witness's index in the cut matrix; the nodes are 0 and 1.
pub const WITNESS: usize = 2;
/// Nodes and the witness.
const ENDS: usize = 3;

/// Who can reach whom.
type Reach = [[bool; ENDS]; ENDS];

#[derive(Clone, Debug)]
pub struct Network {
    /// cut[from][to]: what `from` sends to `to` is lost (datagrams) or waits (streams).
    pub cut: Reach,
    /// The network's own randomness; `None`: no latency and no random loss, so a scenario
    /// is a plain sequence of inputs.
    pub rng: Option<Rng>,
    /// Every datagram and stream segment waits this long, drawn per send (inclusive).
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Datagrams lost at random (%), sent twice (%), and delayed by up to this much more
    /// than the latency, each on its own: past the heartbeat interval, that reorders them.
    pub loss_percent: u64,
    pub duplicate_percent: u64,
    pub jitter_ms: u64,
}

impl Network {
    /// A network that delivers everything at once, in order.
    pub fn calm() -> Self {
        Network {
            cut: [[false; ENDS]; ENDS],
            rng: None,
            latency_min_ms: 0,
            latency_max_ms: 0,
            loss_percent: 0,
            duplicate_percent: 0,
            jitter_ms: 0,
        }
    }

    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut[from][to]
    }

    /// Cuts (or heals) both directions between `x` and `y`.
    pub fn set_cut(&mut self, x: usize, y: usize, cut: bool) {
        self.cut[x][y] = cut;
        self.cut[y][x] = cut;
    }

    pub fn heal(&mut self) {
        self.cut = [[false; ENDS]; ENDS];
    }

    /// One send's latency.
    pub fn latency(&mut self) -> u64 {
        let (min, max) = (self.latency_min_ms, self.latency_max_ms);
        self.rng
            .as_mut()
            .map_or(0, |rng| min + rng.below(max - min + 1))
    }

    /// True `percent` % of the time with randomness; never otherwise.
    fn chance(&mut self, percent: u64) -> bool {
        percent > 0 && self.rng.as_mut().is_some_and(|rng| rng.chance(percent))
    }

    /// A datagram from `from` to `to` sent now: the delay of each copy that arrives (none
    /// when the direction is cut or the datagram is lost, two when it is duplicated).
    pub fn datagram(&mut self, from: usize, to: usize) -> Vec<u64> {
        if self.cut[from][to] {
            return Vec::new();
        }
        let copies = if self.chance(self.duplicate_percent) {
            2
        } else {
            1
        };
        let mut delays = Vec::new();
        for _ in 0..copies {
            if self.chance(self.loss_percent) {
                continue;
            }
            let jitter_max = self.jitter_ms;
            let jitter = self.rng.as_mut().map_or(0, |r| r.below(jitter_max + 1));
            delays.push(self.latency() + jitter);
        }
        delays
    }

    /// When a stream segment sent at `now_ms` is due, given the one sent before it on the
    /// same stream was due at `last_due_ms`: TCP keeps order, so never before that.
    pub fn stream_due(&mut self, now_ms: u64, last_due_ms: u64) -> u64 {
        (now_ms + self.latency()).max(last_due_ms)
    }
}
