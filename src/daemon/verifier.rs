//! The token verifier pool: argon2 off the core and I/O threads.
//!
//! argon2 is slow on purpose (tens of milliseconds and ~19 MiB per check), so it must never
//! run on the core thread or an I/O worker. A few named threads (`auth.verify_threads`)
//! take jobs from a bounded queue (`auth.max_pending_verifies`) and answer the core with
//! `Input::Authenticated`. When the queue is full, [`Verifier::submit`] says so at once and
//! the daemon answers the client `unavailable`: a burst of logins costs bounded memory and
//! never delays chat. The failure delay is the core's (a deadline on its ticks), so a
//! guesser occupies no verifier thread while it waits.

use std::sync::{Arc, RwLock};

use crossbeam_channel::{bounded, Sender, TrySendError};

use super::queue::QueueSender;
use crate::auth::Users;
use crate::core::{ConnId, Input};

struct Job {
    conn: ConnId,
    nick: Arc<str>,
    token: String,
}

pub struct Verifier {
    jobs: Sender<Job>,
    /// The users file as last loaded; replaced whole on a reload, read per job.
    users: Arc<RwLock<Arc<Users>>>,
}

impl Verifier {
    /// Starts `threads` verifier threads. They stop once the `Verifier` is dropped and the
    /// queue is empty.
    pub fn spawn(
        users: Users,
        threads: usize,
        queue_max: usize,
        inputs: QueueSender<Input>,
    ) -> Result<Verifier, super::DaemonError> {
        let (jobs, queue) = bounded::<Job>(queue_max);
        let users = Arc::new(RwLock::new(Arc::new(users)));
        for i in 0..threads {
            let queue = queue.clone();
            let users = users.clone();
            let inputs = inputs.clone();
            super::spawn(&format!("verify-{i}"), move || {
                for job in queue.iter() {
                    let table = users
                        .read()
                        .expect("never poisoned: no panic inside")
                        .clone();
                    let ok = table.verify(&job.nick, &job.token);
                    drop(job.token);
                    let input = Input::Authenticated {
                        conn: job.conn,
                        ok,
                        now_ms: super::wall_ms(),
                    };
                    if inputs.send(input).is_err() {
                        return;
                    }
                }
            })?;
        }
        Ok(Verifier { jobs, users })
    }

    /// Queues a check; false when the queue is full (the caller answers `unavailable`).
    pub fn submit(&self, conn: ConnId, nick: Arc<str>, token: String) -> bool {
        match self.jobs.try_send(Job { conn, nick, token }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Replaces the users table; checks already running finish with the old one.
    pub fn replace_users(&self, users: Users) {
        *self.users.write().expect("never poisoned: no panic inside") = Arc::new(users);
    }

    pub fn users(&self) -> usize {
        self.users.read().expect("never poisoned").len()
    }
}
