//! What both simulators (pair_tests, strict_tests) need to carry the link as the daemon
//! does: the stream's segments and the log read a primary session asks for.

use super::ENTRIES_PER_FRAME;
use crate::entry::Entry;
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
