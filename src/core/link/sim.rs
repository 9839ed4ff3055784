//! What both simulators (pair_tests, strict_tests) need to carry the link as the daemon
//! does: the stream's segments, the pair's keys and the node's view for the handshake, and
//! the log read a primary session asks for.

use super::handshake::LogView;
use super::ENTRIES_PER_FRAME;
use crate::core::Node;
use crate::entry::Entry;
use crate::wire::keyring::{parse_keyring, Keyring};
use crate::wire::replication::PeerFrame;

/// What a link's byte stream carries to one end: a frame, or the FIN after the last one.
#[derive(Clone, Debug)]
pub enum Segment {
    Frame(PeerFrame),
    /// The sender's socket closed: FIN after everything it sent.
    Fin,
}

/// A primary session's [`super::Next::ReadLog`] from a simulated log: the entries from
/// `from` up to `upto`, at most [`ENTRIES_PER_FRAME`], as `LogReader::range` reads them.
pub fn read_log(log: &[Entry], from: u64, upto: u64) -> Vec<Entry> {
    log.iter()
        .skip_while(|e| e.seq < from)
        .take_while(|e| e.seq <= upto)
        .take(ENTRIES_PER_FRAME)
        .cloned()
        .collect()
}

/// The pair's secret in the simulations: both nodes hold it, so every handshake verifies.
const PAIR_SECRET: &str = "1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";

pub fn pair_keys() -> Keyring {
    parse_keyring("simulation", PAIR_SECRET).expect("the simulation's secret parses")
}

/// Node `node`'s log and epochs as its driver's snapshot shows them to the handshake.
pub fn log_view(node: &Node, first_seq: u64) -> LogView {
    LogView {
        epoch: node.epoch(),
        seen_epoch: node.seen_epoch(),
        spans: node.epochs().spans().to_vec(),
        head: node.head(),
        last_seq: node.last_seq(),
        first_seq,
        log_stuck: node.log_stuck(),
    }
}
