//! The replication link's protocol (the handshake is in [`handshake`]) as two pure machines: a
//! [`PrimarySession`] (streams the log within a window, beats when idle, relays hand-over
//! and re-commit answers) and a [`BackupSession`] (acks what is durable, beats when idle,
//! resubmits what only it had once caught up, turns the primary's frames into core inputs).
//!
//! Each takes frames from the peer, commands from the core and the time, and answers with
//! core [`Input`]s, frames to send, or the end of the session. They do no I/O: the daemon's
//! link threads (src/daemon/link.rs) own the sockets, read the log and the orphans file when
//! a machine asks, and carry out what it answers; the simulators drive the same machines.
//! Time is a `Duration` on the caller's monotonic base, never read here.

use std::time::Duration;

use super::{Input, LinkId};
use crate::entry::Entry;
use crate::wire::replication::PeerFrame;

/// Log entries per `Entries` frame, at most.
pub const ENTRIES_PER_FRAME: usize = 512;
/// Bytes of entry payload per `Entries` frame, at most (well under the codec's frame bound).
pub const ENTRY_BYTES_PER_FRAME: usize = 512 * 1024;
/// Per-entry overhead counted against [`ENTRY_BYTES_PER_FRAME`] besides its strings: the
/// fixed fields as encoded, rounded up.
const ENTRY_OVERHEAD_BYTES: usize = 64;
/// The core must accept (or close) a backup that finished the handshake within this.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the core asks of a link (routed to the session's writer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkCommand {
    Accept {
        truncate_after: u64,
        restart_at: Option<u64>,
    },
    Handover {
        epoch: u64,
    },
    TookOver {
        epoch: u64,
    },
    ResubmitDone {
        epoch: u64,
        seq: u64,
    },
}

/// The node's state a session's beats and entries carry (the daemon's snapshot of the core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub epoch: u64,
    /// The committed head.
    pub head: u64,
}

/// A session's next move, asked for by its writer whenever something may have changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Send this frame, then ask again.
    Send(PeerFrame),
    /// Primary: read the log from `from` up to `upto` (at most [`ENTRIES_PER_FRAME`]) and
    /// hand what was read to [`PrimarySession::on_read`].
    ReadLog { from: u64, upto: u64 },
    /// Backup: read the orphans side file and hand its batches to
    /// [`BackupSession::on_orphans`].
    ReadOrphans,
    /// Nothing to do before this time, unless a frame, a command or a wake-up comes.
    WaitUntil(Duration),
    /// The session is over, for this reason.
    End(String),
}

/// What one frame from the peer means for the node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    /// For the core.
    pub input: Option<Input>,
    /// Primary: a replication round trip finished, taking this long.
    pub round_trip: Option<Duration>,
    /// Primary: the window moved; a writer stopped at its edge goes on at once.
    pub wake_writer: bool,
    /// Backup: everything kept aside is re-committed; the orphans file can go.
    pub orphans_done: bool,
}

impl Received {
    fn input(input: Input) -> Self {
        Received {
            input: Some(input),
            ..Received::default()
        }
    }
}

fn millis(now: Duration) -> u64 {
    now.as_millis() as u64
}

/// The orig an entry is known by across histories: its first (epoch, seq).
fn orig(entry: &Entry) -> (u64, u64) {
    entry.orig.unwrap_or((entry.epoch, entry.seq))
}

/// When a session last sent anything, so it beats only when it has been quiet: the peer
/// counts any frame as a sign of life.
#[derive(Clone, Copy, Debug)]
struct Beats {
    interval: Duration,
    last_sent: Duration,
}

impl Beats {
    fn sent(&mut self, now: Duration) {
        self.last_sent = now;
    }

    /// A `Beat` carrying `view` when the session was quiet a whole interval, else when it
    /// will be.
    fn next(&mut self, now: Duration, view: NodeView) -> Next {
        let due = self.last_sent + self.interval;
        if now < due {
            return Next::WaitUntil(due);
        }
        self.last_sent = now;
        Next::Send(PeerFrame::Beat {
            epoch: view.epoch,
            head: view.head,
        })
    }

    /// `Err` when a frame went out after `now`, the latest time the session saw.
    fn check(&self, now: Duration, side: &str, link: LinkId) -> Result<(), String> {
        if self.last_sent > now {
            return Err(format!(
                "{side} link {link}: last sent at {:?}, after now {now:?}",
                self.last_sent
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Primary side

/// What the backup said of itself in its `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHello {
    pub epoch: u64,
    pub last_seq: u64,
    pub spans: Vec<(u64, u64)>,
}

/// The primary's end of one link, from the end of the handshake.
#[derive(Debug)]
pub struct PrimarySession {
    link: LinkId,
    /// Entries sent beyond the backup's ack, at most.
    window: u64,
    beats: Beats,
    /// Until the core accepts: when the session gives up waiting.
    accept_deadline: Duration,
    /// Once accepted: where the stream stands.
    stream: Option<Stream>,
    /// One round trip timed at a time: the last seq of the timed frame, and when it went.
    /// Invariant: the seq was sent (below `stream.next`).
    probe: Option<(u64, Duration)>,
    /// The latest time seen, so time never runs backwards here.
    now: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stream {
    /// The next seq to send. Invariant: at least 1.
    next: u64,
    /// The backup's newest durable seq (it only grows).
    acked: u64,
}

impl PrimarySession {
    /// A backup finished the handshake: the session, and the input telling the core.
    pub fn start(
        link: LinkId,
        hello: BackupHello,
        window: u64,
        beat_interval: Duration,
        now: Duration,
    ) -> (Self, Input) {
        let session = PrimarySession {
            link,
            window,
            beats: Beats {
                interval: beat_interval,
                last_sent: now,
            },
            accept_deadline: now + ACCEPT_TIMEOUT,
            stream: None,
            probe: None,
            now,
        };
        let input = Input::BackupHello {
            link,
            epoch: hello.epoch,
            last_seq: hello.last_seq,
            spans: hello.spans,
            mono_ms: millis(now),
        };
        (session, input)
    }

    pub fn accepted(&self) -> bool {
        self.stream.is_some()
    }

    fn tick(&mut self, now: Duration) -> Duration {
        self.now = self.now.max(now);
        self.now
    }

    /// A command from the core: the frames it makes. Before the core accepted the backup
    /// only `Accept` means anything; a backup's commands mean nothing here.
    pub fn on_command(&mut self, command: LinkCommand, now: Duration) -> Vec<PeerFrame> {
        let now = self.tick(now);
        let frames = match (command, self.stream) {
            (
                LinkCommand::Accept {
                    truncate_after,
                    restart_at,
                },
                None,
            ) => self.accept(truncate_after, restart_at),
            (LinkCommand::Handover { epoch }, Some(_)) => vec![PeerFrame::Handover { epoch }],
            (LinkCommand::ResubmitDone { epoch, seq }, Some(_)) => {
                vec![PeerFrame::ResubmitDone { epoch, seq }]
            }
            _ => Vec::new(),
        };
        if !frames.is_empty() {
            self.beats.sent(now);
        }
        frames
    }

    /// The core accepted the backup: where its log must part from ours, and where ours
    /// starts when it holds nothing we retain.
    fn accept(&mut self, truncate_after: u64, restart_at: Option<u64>) -> Vec<PeerFrame> {
        self.stream = Some(Stream {
            next: restart_at.unwrap_or(truncate_after + 1),
            acked: truncate_after,
        });
        let mut frames = vec![PeerFrame::Truncate {
            after_seq: truncate_after,
        }];
        if let Some(first_seq) = restart_at {
            frames.push(PeerFrame::Restart { first_seq });
        }
        frames
    }

    /// The writer's next move, given the log's last appended seq and the node's view.
    pub fn next(&mut self, now: Duration, appended_seq: u64, view: NodeView) -> Next {
        let now = self.tick(now);
        let Some(stream) = self.stream else {
            return if now >= self.accept_deadline {
                Next::End("the core did not accept the backup in time".into())
            } else {
                Next::WaitUntil(self.accept_deadline)
            };
        };
        let upto = appended_seq.min(stream.acked.saturating_add(self.window));
        if stream.next <= upto {
            return Next::ReadLog {
                from: stream.next,
                upto,
            };
        }
        self.beats.next(now, view)
    }

    /// What the log gave for [`Next::ReadLog`]: the `Entries` frame to send (the consecutive
    /// entries from the next seq, within [`ENTRY_BYTES_PER_FRAME`]), or why the session ends.
    pub fn on_read(
        &mut self,
        entries: Vec<Entry>,
        view: NodeView,
        now: Duration,
    ) -> Result<PeerFrame, String> {
        let now = self.tick(now);
        let stream = self.stream.as_mut().expect("the log is read once accepted");
        let mut batch = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            if entry.seq != stream.next {
                break;
            }
            bytes += entry.body.len() + entry.room.len() + entry.session.len();
            bytes += ENTRY_OVERHEAD_BYTES;
            stream.next += 1;
            batch.push(entry);
            if bytes >= ENTRY_BYTES_PER_FRAME {
                break;
            }
        }
        if batch.is_empty() {
            return Err(format!("the log no longer holds seq {}", stream.next));
        }
        if self.probe.is_none() {
            self.probe = Some((stream.next - 1, now));
        }
        self.beats.sent(now);
        Ok(PeerFrame::Entries {
            commit_seq: view.head,
            entries: batch,
        })
    }

    /// A frame from the backup.
    pub fn on_frame(&mut self, frame: PeerFrame, now: Duration) -> Result<Received, String> {
        let now = self.tick(now);
        let (link, mono_ms) = (self.link, millis(now));
        let received = match frame {
            PeerFrame::Ack { durable_seq } => self.on_ack(durable_seq, now),
            PeerFrame::Beat { .. } => Received::input(Input::LinkAlive { mono_ms }),
            PeerFrame::TookOver { epoch } => Received::input(Input::TookOver { link, epoch }),
            PeerFrame::Resubmit { entries } => Received::input(Input::Resubmit { link, entries }),
            PeerFrame::Refuse { reason } => return Err(format!("backup refused: {reason}")),
            other => return Err(format!("unexpected {} frame from the backup", other.name())),
        };
        Ok(received)
    }

    fn on_ack(&mut self, durable_seq: u64, now: Duration) -> Received {
        if let Some(stream) = &mut self.stream {
            stream.acked = stream.acked.max(durable_seq);
        }
        let round_trip = match self.probe {
            Some((seq, sent)) if durable_seq >= seq => {
                self.probe = None;
                Some(now.saturating_sub(sent))
            }
            _ => None,
        };
        Received {
            input: Some(Input::BackupAck {
                link: self.link,
                durable_seq,
                mono_ms: millis(now),
            }),
            round_trip,
            wake_writer: true,
            orphans_done: false,
        }
    }

    /// Every invariant; `Err` names the first that does not hold.
    pub fn invariants(&self) -> Result<(), String> {
        self.beats.check(self.now, "primary", self.link)?;
        if let Some(stream) = self.stream {
            if stream.next == 0 {
                return Err(format!("primary link {}: next seq is 0", self.link));
            }
        }
        match (self.probe, self.stream) {
            (None, _) => Ok(()),
            (Some((seq, _)), Some(stream)) if seq < stream.next => Ok(()),
            (Some((seq, _)), stream) => Err(format!(
                "primary link {}: timing seq {seq}, not sent yet ({stream:?})",
                self.link
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backup side

/// The backup's end of one link, from the end of the handshake.
#[derive(Debug)]
pub struct BackupSession {
    link: LinkId,
    beats: Beats,
    /// The primary's epoch history from its welcome, for the first `Truncate` (taken once).
    welcome_spans: Option<Vec<(u64, u64)>>,
    /// The primary's commit point, from its entries and beats. Invariant: 0 until known.
    commit_seq: u64,
    commit_known: bool,
    /// The last durable seq acked to the primary; `None` before the first ack.
    sent_ack: Option<u64>,
    /// Orphans sent: the orig of the last one, to hear done. Invariant: only after a check.
    orphans_waiting: Option<(u64, u64)>,
    /// When the orphans file was last looked at. The log writer creates it when it carries
    /// out the cut, which may come after the first ack, so it is looked at again (at most
    /// once a beat interval) until something was sent.
    orphans_checked_at: Option<Duration>,
    /// The latest time seen, so time never runs backwards here.
    now: Duration,
}

impl BackupSession {
    /// The primary welcomed us in `epoch` with its epoch history `spans`: the session, and
    /// the input telling the core.
    pub fn start(
        link: LinkId,
        epoch: u64,
        spans: Vec<(u64, u64)>,
        beat_interval: Duration,
        now: Duration,
    ) -> (Self, Input) {
        let session = BackupSession {
            link,
            beats: Beats {
                interval: beat_interval,
                last_sent: now,
            },
            welcome_spans: Some(spans),
            commit_seq: 0,
            commit_known: false,
            sent_ack: None,
            orphans_waiting: None,
            orphans_checked_at: None,
            now,
        };
        let input = Input::PrimaryWelcome {
            link,
            epoch,
            mono_ms: millis(now),
        };
        (session, input)
    }

    fn tick(&mut self, now: Duration) -> Duration {
        self.now = self.now.max(now);
        self.now
    }

    /// A command from the core: the frame it makes (only `TookOver` means anything here).
    pub fn on_command(&mut self, command: LinkCommand, now: Duration) -> Option<PeerFrame> {
        let now = self.tick(now);
        let LinkCommand::TookOver { epoch } = command else {
            return None;
        };
        self.beats.sent(now);
        Some(PeerFrame::TookOver { epoch })
    }

    /// The writer's next move, given the newest durable seq the core asked to ack.
    pub fn next(&mut self, now: Duration, durable_seq: u64, view: NodeView) -> Next {
        let now = self.tick(now);
        if self.sent_ack != Some(durable_seq) {
            self.sent_ack = Some(durable_seq);
            self.beats.sent(now);
            return Next::Send(PeerFrame::Ack { durable_seq });
        }
        if self.orphans_due(now) {
            self.orphans_checked_at = Some(now);
            return Next::ReadOrphans;
        }
        self.beats.next(now, view)
    }

    /// Caught up with the primary's commits (known from its entries or beats): time to
    /// re-commit what only we had. Asked every turn, so an idle pair gets there too.
    fn orphans_due(&self, now: Duration) -> bool {
        let checked_long_ago = self
            .orphans_checked_at
            .is_none_or(|at| now >= at + self.beats.interval);
        let caught_up = self.sent_ack.is_some_and(|acked| acked >= self.commit_seq);
        self.orphans_waiting.is_none() && checked_long_ago && self.commit_known && caught_up
    }

    /// The orphans file's batches for [`Next::ReadOrphans`]: the `Resubmit` frames to send.
    pub fn on_orphans(&mut self, batches: Vec<Vec<Entry>>, now: Duration) -> Vec<PeerFrame> {
        self.tick(now);
        let last = batches.iter().rev().find_map(|entries| entries.last());
        self.orphans_waiting = last.map(orig);
        batches
            .into_iter()
            .map(|entries| PeerFrame::Resubmit { entries })
            .collect()
    }

    /// A frame from the primary.
    pub fn on_frame(&mut self, frame: PeerFrame, now: Duration) -> Result<Received, String> {
        let now = self.tick(now);
        let (link, mono_ms) = (self.link, millis(now));
        let input = match frame {
            PeerFrame::Truncate { after_seq } => Input::PrimaryTruncate {
                link,
                after_seq,
                spans: self.welcome_spans.take().unwrap_or_default(),
            },
            PeerFrame::Restart { first_seq } => Input::PrimaryRestart { link, first_seq },
            PeerFrame::Entries {
                commit_seq,
                entries,
            } => self.replicate(commit_seq, entries, mono_ms),
            // An idle primary's beat carries its committed head: the backup's view of what
            // is committed moves on without new entries.
            PeerFrame::Beat { head, .. } => self.replicate(head, Vec::new(), mono_ms),
            PeerFrame::Handover { epoch } => Input::HandoverAsked { link, epoch },
            PeerFrame::ResubmitDone { epoch, seq } => return Ok(self.resubmit_done(epoch, seq)),
            PeerFrame::Refuse { reason } => return Err(format!("primary refused: {reason}")),
            other => {
                return Err(format!(
                    "unexpected {} frame from the primary",
                    other.name()
                ))
            }
        };
        Ok(Received::input(input))
    }

    fn replicate(&mut self, commit_seq: u64, entries: Vec<Entry>, mono_ms: u64) -> Input {
        self.commit_seq = self.commit_seq.max(commit_seq);
        self.commit_known = true;
        Input::Replicate {
            link: self.link,
            commit_seq,
            entries,
            mono_ms,
        }
    }

    fn resubmit_done(&mut self, epoch: u64, seq: u64) -> Received {
        let orphans_done = self.orphans_waiting == Some((epoch, seq));
        if orphans_done {
            self.orphans_waiting = None;
        }
        Received {
            input: Some(Input::LinkAlive {
                mono_ms: millis(self.now),
            }),
            orphans_done,
            ..Received::default()
        }
    }

    /// Every invariant; `Err` names the first that does not hold.
    pub fn invariants(&self) -> Result<(), String> {
        let link = self.link;
        self.beats.check(self.now, "backup", link)?;
        if !self.commit_known && self.commit_seq != 0 {
            return Err(format!(
                "backup link {link}: commit seq {} with no word from the primary",
                self.commit_seq
            ));
        }
        if self.orphans_checked_at.is_some_and(|at| at > self.now) {
            return Err(format!("backup link {link}: orphans checked in the future"));
        }
        if self.orphans_waiting.is_some() && self.orphans_checked_at.is_none() {
            return Err(format!(
                "backup link {link}: waiting for orphans never sent"
            ));
        }
        Ok(())
    }
}

pub mod handshake;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod tests;
