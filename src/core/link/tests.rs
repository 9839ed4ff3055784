//! The link machines step by step, invariants checked after every step.

use super::*;

const BEAT: Duration = Duration::from_millis(100);
const VIEW: NodeView = NodeView { epoch: 2, head: 5 };

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn entry(seq: u64, body_bytes: usize) -> Entry {
    Entry {
        epoch: 1,
        seq,
        ts_ms: 1,
        room: "r".into(),
        from: "n".into(),
        session: "s".into(),
        id: format!("m{seq}"),
        body: "b".repeat(body_bytes),
        orig: None,
    }
}

/// The value of `$step`, once `$session`'s invariants held after it.
macro_rules! checked {
    ($session:ident, $step:expr) => {{
        let value = $step;
        $session.invariants().expect("link session invariants");
        value
    }};
}

fn hello() -> BackupHello {
    BackupHello {
        epoch: 1,
        last_seq: 3,
        spans: vec![(1, 1)],
    }
}

/// A primary session the core accepted after seq `truncate_after`, with a window of 4.
fn accepted_primary(truncate_after: u64) -> PrimarySession {
    let (mut p, _) = PrimarySession::start(7, hello(), 4, BEAT, ms(0));
    let accept = LinkCommand::Accept {
        truncate_after,
        restart_at: None,
    };
    let frames = p.on_command(accept, ms(1));
    assert_eq!(
        frames,
        vec![PeerFrame::Truncate {
            after_seq: truncate_after
        }]
    );
    checked!(p, p.accepted());
    p
}

#[test]
fn a_primary_session_tells_the_core_of_the_backup_and_waits_for_its_accept() {
    let (mut p, input) = PrimarySession::start(7, hello(), 4, BEAT, ms(10));
    assert_eq!(
        input,
        Input::BackupHello {
            link: 7,
            epoch: 1,
            last_seq: 3,
            spans: vec![(1, 1)],
            mono_ms: 10
        }
    );
    // Commands other than Accept mean nothing yet.
    let handover = LinkCommand::Handover { epoch: 2 };
    assert!(checked!(p, p.on_command(handover, ms(11))).is_empty());
    let deadline = ms(10) + ACCEPT_TIMEOUT;
    assert_eq!(
        checked!(p, p.next(ms(12), 9, VIEW)),
        Next::WaitUntil(deadline)
    );
    let end = checked!(p, p.next(deadline, 9, VIEW));
    assert_eq!(
        end,
        Next::End("the core did not accept the backup in time".into())
    );
}

#[test]
fn an_accept_with_a_restart_streams_from_the_restart() {
    let (mut p, _) = PrimarySession::start(7, hello(), 100, BEAT, ms(0));
    let accept = LinkCommand::Accept {
        truncate_after: 0,
        restart_at: Some(50),
    };
    let frames = checked!(p, p.on_command(accept, ms(1)));
    assert_eq!(
        frames,
        vec![
            PeerFrame::Truncate { after_seq: 0 },
            PeerFrame::Restart { first_seq: 50 }
        ]
    );
    let next = checked!(p, p.next(ms(2), 60, VIEW));
    assert_eq!(next, Next::ReadLog { from: 50, upto: 60 });
}

#[test]
fn the_primary_streams_within_the_window_and_an_ack_opens_it() {
    let mut p = accepted_primary(2);
    // Window 4 past the ack (2): up to 6 though the log has 10.
    let next = checked!(p, p.next(ms(2), 10, VIEW));
    assert_eq!(next, Next::ReadLog { from: 3, upto: 6 });
    let read = (3..=6).map(|seq| entry(seq, 1)).collect();
    let frame = checked!(p, p.on_read(read, VIEW, ms(3))).expect("a frame");
    let PeerFrame::Entries {
        commit_seq,
        entries,
    } = frame
    else {
        panic!("expected entries, got {frame:?}");
    };
    assert_eq!(commit_seq, VIEW.head);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 4, 5, 6]
    );
    // At the window's edge: nothing to stream until the beat.
    let next = checked!(p, p.next(ms(4), 10, VIEW));
    assert_eq!(next, Next::WaitUntil(ms(3) + BEAT));
    let received = checked!(p, p.on_frame(PeerFrame::Ack { durable_seq: 6 }, ms(9)));
    let received = received.expect("an ack is fine");
    assert_eq!(received.round_trip, Some(ms(6)));
    assert!(received.wake_writer);
    assert_eq!(
        received.input,
        Some(Input::BackupAck {
            link: 7,
            durable_seq: 6,
            mono_ms: 9
        })
    );
    let next = checked!(p, p.next(ms(10), 10, VIEW));
    assert_eq!(next, Next::ReadLog { from: 7, upto: 10 });
}

#[test]
fn a_frame_holds_the_bytes_limit_and_stops_at_a_gap() {
    let mut p = accepted_primary(0);
    let big = ENTRY_BYTES_PER_FRAME / 2;
    let read = vec![entry(1, big), entry(2, big), entry(3, 1)];
    let frame = checked!(p, p.on_read(read, VIEW, ms(2))).expect("a frame");
    let PeerFrame::Entries { entries, .. } = frame else {
        panic!("expected entries");
    };
    assert_eq!(entries.len(), 2, "the second entry reaches the byte limit");
    // The log skips seq 3: it no longer holds it.
    let gap = checked!(p, p.on_read(vec![entry(4, 1)], VIEW, ms(3)));
    assert_eq!(gap, Err("the log no longer holds seq 3".to_string()));
}

#[test]
fn an_idle_primary_beats_its_view_once_a_beat_interval() {
    let mut p = accepted_primary(5);
    assert_eq!(
        checked!(p, p.next(ms(50), 5, VIEW)),
        Next::WaitUntil(ms(1) + BEAT)
    );
    let beat = checked!(p, p.next(ms(101), 5, VIEW));
    assert_eq!(beat, Next::Send(PeerFrame::Beat { epoch: 2, head: 5 }));
    assert_eq!(
        checked!(p, p.next(ms(102), 5, VIEW)),
        Next::WaitUntil(ms(201))
    );
}

#[test]
fn the_primary_relays_the_backups_frames_and_ends_on_a_stray_one() {
    let mut p = accepted_primary(0);
    let took_over = p.on_frame(PeerFrame::TookOver { epoch: 3 }, ms(2));
    let took_over = checked!(p, took_over).expect("fine").input;
    assert_eq!(took_over, Some(Input::TookOver { link: 7, epoch: 3 }));
    let beat = p.on_frame(PeerFrame::Beat { epoch: 1, head: 0 }, ms(3));
    let beat = checked!(p, beat).expect("fine").input;
    assert_eq!(beat, Some(Input::LinkAlive { mono_ms: 3 }));
    let stray = checked!(p, p.on_frame(PeerFrame::Restart { first_seq: 1 }, ms(4)));
    assert_eq!(
        stray,
        Err("unexpected Restart frame from the backup".to_string())
    );
    let refused = p.on_frame(
        PeerFrame::Refuse {
            reason: "no".into(),
        },
        ms(5),
    );
    assert_eq!(refused, Err("backup refused: no".to_string()));
}

fn backup() -> BackupSession {
    let (b, input) = BackupSession::start(9, 4, vec![(1, 1), (4, 10)], BEAT, ms(0));
    assert_eq!(
        input,
        Input::PrimaryWelcome {
            link: 9,
            epoch: 4,
            mono_ms: 0
        }
    );
    b.invariants().expect("backup session invariants");
    b
}

#[test]
fn the_backup_acks_each_new_durable_seq_once_and_beats_when_idle() {
    let mut b = backup();
    let ack = |durable_seq| Next::Send(PeerFrame::Ack { durable_seq });
    assert_eq!(checked!(b, b.next(ms(1), 0, VIEW)), ack(0));
    assert_eq!(
        checked!(b, b.next(ms(2), 0, VIEW)),
        Next::WaitUntil(ms(101))
    );
    assert_eq!(checked!(b, b.next(ms(3), 4, VIEW)), ack(4));
    let beat = checked!(b, b.next(ms(103), 4, VIEW));
    assert_eq!(beat, Next::Send(PeerFrame::Beat { epoch: 2, head: 5 }));
}

#[test]
fn the_primarys_frames_become_the_backups_inputs() {
    let mut b = backup();
    let mut input = |frame, at| {
        let received = b.on_frame(frame, ms(at)).expect("fine");
        b.invariants().expect("backup session invariants");
        received.input.expect("an input")
    };
    let spans = vec![(1, 1), (4, 10)];
    assert_eq!(
        input(PeerFrame::Truncate { after_seq: 3 }, 1),
        Input::PrimaryTruncate {
            link: 9,
            after_seq: 3,
            spans
        }
    );
    // The welcome's spans go with the first truncate only.
    let again = input(PeerFrame::Truncate { after_seq: 3 }, 2);
    assert!(matches!(again, Input::PrimaryTruncate { spans, .. } if spans.is_empty()));
    // A beat carries the idle primary's head to the core.
    assert_eq!(
        input(PeerFrame::Beat { epoch: 4, head: 8 }, 3),
        Input::Replicate {
            link: 9,
            commit_seq: 8,
            entries: Vec::new(),
            mono_ms: 3
        }
    );
    assert_eq!(
        input(PeerFrame::Handover { epoch: 4 }, 4),
        Input::HandoverAsked { link: 9, epoch: 4 }
    );
    let stray = b.on_frame(PeerFrame::Ack { durable_seq: 1 }, ms(5));
    assert_eq!(
        stray,
        Err("unexpected Ack frame from the primary".to_string())
    );
}

#[test]
fn a_caught_up_backup_resubmits_its_orphans_and_hears_them_done() {
    let mut b = backup();
    assert!(matches!(b.next(ms(1), 2, VIEW), Next::Send(_)));
    // The primary's commit point is unknown: no resubmission yet.
    assert_eq!(b.next(ms(2), 2, VIEW), Next::WaitUntil(ms(101)));
    let entries = PeerFrame::Entries {
        commit_seq: 3,
        entries: vec![entry(3, 1)],
    };
    checked!(b, b.on_frame(entries, ms(3))).expect("fine");
    // Behind the commit point (acked 2 of 3): not yet.
    assert_eq!(b.next(ms(4), 2, VIEW), Next::WaitUntil(ms(101)));
    assert!(matches!(
        b.next(ms(5), 3, VIEW),
        Next::Send(PeerFrame::Ack { .. })
    ));
    assert_eq!(checked!(b, b.next(ms(6), 3, VIEW)), Next::ReadOrphans);
    // No file yet: looked at again a beat interval later.
    assert!(checked!(b, b.on_orphans(Vec::new(), ms(7))).is_empty());
    assert_eq!(b.next(ms(50), 3, VIEW), Next::WaitUntil(ms(105)));
    assert_eq!(b.next(ms(106), 3, VIEW), Next::ReadOrphans);
    let mut carried = entry(1, 1);
    carried.orig = Some((1, 7));
    let frames = checked!(b, b.on_orphans(vec![vec![entry(2, 1), carried]], ms(107)));
    assert_eq!(frames.len(), 1);
    // Waiting for the answer: no new look at the file.
    assert!(matches!(
        b.next(ms(300), 3, VIEW),
        Next::Send(PeerFrame::Beat { .. })
    ));
    let other = b.on_frame(PeerFrame::ResubmitDone { epoch: 1, seq: 2 }, ms(301));
    assert!(!checked!(b, other).expect("fine").orphans_done);
    let done = b.on_frame(PeerFrame::ResubmitDone { epoch: 1, seq: 7 }, ms(302));
    assert!(checked!(b, done).expect("fine").orphans_done);
}

#[test]
fn the_backup_sends_took_over_and_ignores_the_primarys_commands() {
    let mut b = backup();
    let took_over = b.on_command(LinkCommand::TookOver { epoch: 5 }, ms(1));
    assert_eq!(took_over, Some(PeerFrame::TookOver { epoch: 5 }));
    let handover = b.on_command(LinkCommand::Handover { epoch: 5 }, ms(2));
    assert_eq!(checked!(b, handover), None);
}

#[test]
fn the_invariants_catch_a_broken_session() {
    let mut p = accepted_primary(0);
    p.probe = Some((5, ms(1)));
    assert!(p.invariants().is_err(), "timing a seq not sent yet");
    let mut b = backup();
    b.commit_seq = 3;
    assert!(b.invariants().is_err(), "a commit seq nobody told");
}
