//! What must hold of a [`Node`] between any two steps, stated once and checked after every
//! step: in full (O(connections + memberships)) wherever the core is compiled for tests, so
//! every unit test and every seeded simulation checks it; the O(1) part in every build,
//! release included, as a real `assert!`.

use std::collections::HashMap;
use std::sync::Arc;

use super::peer::RESUBMISSIONS_MAX;
use super::{Node, Role};

impl Node {
    /// The cheap invariants: the log positions agree. Checked after each step in every build.
    pub(super) fn assert_positions(&self) {
        assert!(
            self.head + self.pending.len() as u64 <= self.last_seq,
            "core: head {} + {} pending is past last_seq {}",
            self.head,
            self.pending.len(),
            self.last_seq
        );
        assert!(
            self.first_seq <= self.head + 1,
            "core: first retained seq {} is past head {} + 1",
            self.first_seq,
            self.head
        );
    }

    /// Every invariant; `Err` names the first that does not hold.
    pub fn invariants(&self) -> Result<(), String> {
        self.positions()?;
        self.role_state()?;
        self.sessions_and_nicks()?;
        self.memberships()
    }

    /// `pending` is the tail of the log, in seq order. Between `head` and it lie only a
    /// backup's entries not yet committed by its primary, or those a promotion inherited
    /// (up to `tail_commit`).
    fn positions(&self) -> Result<(), String> {
        let ordered_from = self.last_seq + 1 - self.pending.len() as u64;
        for (i, pending) in self.pending.iter().enumerate() {
            let want = ordered_from + i as u64;
            check(pending.entry.seq == want, || {
                format!("pending #{i} has seq {}, not {want}", pending.entry.seq)
            })?;
        }
        check(self.head < ordered_from, || {
            format!(
                "head {} reaches into the pending from {ordered_from}",
                self.head
            )
        })?;
        check(
            self.role == Role::Primary || self.pending.is_empty(),
            || format!("a backup holds {} pending messages", self.pending.len()),
        )?;
        let inherited = self.head < self.tail_commit;
        check(
            self.role == Role::Backup || inherited || self.head + 1 == ordered_from,
            || {
                format!(
                "primary: head {} but the pending start at {ordered_from} (inherited tail to {})",
                self.head, self.tail_commit
            )
            },
        )?;
        check(self.durable <= self.last_seq, || {
            format!(
                "durable {} is past last_seq {}",
                self.durable, self.last_seq
            )
        })?;
        check(self.first_seq <= self.head + 1, || {
            format!(
                "first_seq {} is past head {} + 1",
                self.first_seq, self.head
            )
        })?;
        let retained = self.last_seq + 1 - self.first_seq.min(self.last_seq + 1);
        check(self.dedup.len() as u64 <= retained, || {
            format!(
                "the de-duplication index holds {} keys for {retained} retained seqs",
                self.dedup.len()
            )
        })
    }

    fn role_state(&self) -> Result<(), String> {
        check(self.seen_epoch >= self.epochs.current(), || {
            format!(
                "seen_epoch {} is below the current epoch {}",
                self.seen_epoch,
                self.epochs.current()
            )
        })?;
        check(!self.degraded || self.role == Role::Primary, || {
            "a backup is degraded".to_string()
        })?;
        check(self.resubmissions.len() <= RESUBMISSIONS_MAX, || {
            format!("{} re-commits in flight", self.resubmissions.len())
        })?;
        let deadlines = self.hello_deadlines.iter().map(|(at, _)| *at);
        check(
            deadlines
                .clone()
                .zip(deadlines.skip(1))
                .all(|(a, b)| a <= b),
            || "hello deadlines out of order".to_string(),
        )
    }

    /// `sessions` and `nicks` index exactly the connections holding a session and a nick.
    fn sessions_and_nicks(&self) -> Result<(), String> {
        let mut with_session = 0;
        for (id, conn) in &self.conns {
            check(conn.session.is_some() == conn.nick.is_some(), || {
                format!("connection {id:?} has a session or a nick without the other")
            })?;
            check(conn.nick.is_some() || conn.rooms.is_empty(), || {
                format!("connection {id:?} is in rooms before its hello")
            })?;
            if let (Some(session), Some(nick)) = (&conn.session, &conn.nick) {
                with_session += 1;
                check(self.sessions.get(session) == Some(id), || {
                    format!("session {session} does not index connection {id:?}")
                })?;
                check(self.nicks.get(nick) == Some(id), || {
                    format!("nick {nick} does not index connection {id:?}")
                })?;
            }
        }
        check(
            self.sessions.len() == with_session && self.nicks.len() == with_session,
            || {
                format!(
                    "{} sessions and {} nicks indexed for {with_session} connections",
                    self.sessions.len(),
                    self.nicks.len()
                )
            },
        )
    }

    /// `rooms` lists exactly the nicks of the connections in each room, and no empty room.
    fn memberships(&self) -> Result<(), String> {
        let mut expected: HashMap<&Arc<str>, usize> = HashMap::new();
        for conn in self.conns.values() {
            let Some(nick) = &conn.nick else { continue };
            for room in &conn.rooms {
                *expected.entry(room).or_default() += 1;
                let listed = self.rooms.get(room).is_some_and(|m| m.contains(nick));
                check(listed, || format!("{nick} is in {room} but not listed"))?;
            }
        }
        for (room, members) in &self.rooms {
            let want = expected.get(room).copied().unwrap_or(0);
            check(!members.is_empty() && members.len() == want, || {
                format!(
                    "{room} lists {} members, {want} connections are in it",
                    members.len()
                )
            })?;
        }
        Ok(())
    }
}

fn check(holds: bool, problem: impl FnOnce() -> String) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(problem())
    }
}
