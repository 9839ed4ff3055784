//! `[hooks] role_change`: runs the operator's program on every role change, with
//! `ROLE EPOCH PEER` as arguments (and `PBCHAT_ROLE`, `PBCHAT_EPOCH`, `PBCHAT_PEER`,
//! `PBCHAT_NODE` in its environment), the way keepalived's `notify_master` is used: to move
//! a virtual IP with `ip addr`, to page someone.
//!
//! It owns one thread (`hook`) fed by a bounded queue: the core thread only queues, never
//! waits for a program. Programs run one at a time, in order, each killed after
//! [`HOOK_TIMEOUT`]; the exit status is logged (WARN when it is not 0). It decides nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// Role changes waiting for the hook thread. A pair changes role a few times in a
/// fail-over, and each run takes at most `HOOK_TIMEOUT`: 16 is room for a flapping pair
/// behind one slow hook. When it is full the *oldest* waiting change is dropped (and said
/// so): the newest role is the one a VIP must follow.
const HOOK_QUEUE_MAX: usize = 16;
/// A hook still running after this long is killed (SIGKILL) and logged: `ip addr` and a
/// paging `curl` take well under a second; 10 s is generous and still bounds how long a
/// stuck hook delays the next role change's hook.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the hook thread looks whether its child exited (std has no wait with a timeout).
const HOOK_POLL: Duration = Duration::from_millis(10);

/// One role change, as the hook's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleEvent {
    pub role: &'static str,
    pub epoch: u64,
    /// The peer's node id; `none` for a standalone node.
    pub peer: String,
}

/// The core thread's end: queues events without waiting.
pub struct Hooks {
    events: Sender<RoleEvent>,
    /// The same queue's receiving end, so a full queue can drop its oldest event.
    oldest: Receiver<RoleEvent>,
}

impl Hooks {
    /// Starts the `hook` thread for `program`; `node` goes to `PBCHAT_NODE`.
    pub fn spawn(program: PathBuf, node: String) -> Result<Hooks, super::DaemonError> {
        let (events, queue) = bounded::<RoleEvent>(HOOK_QUEUE_MAX);
        let oldest = queue.clone();
        super::spawn("hook", move || {
            for event in queue {
                run(&program, &node, &event);
            }
        })?;
        Ok(Hooks { events, oldest })
    }

    /// Queues `event`; when the queue is full, drops the oldest waiting one first.
    pub fn role_changed(&self, event: RoleEvent) {
        let mut event = event;
        loop {
            match self.events.try_send(event) {
                Ok(()) => return,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    event = back;
                    if let Ok(dropped) = self.oldest.try_recv() {
                        log::warn!(
                            "hooks.role_change: {HOOK_QUEUE_MAX} role changes wait for the hook; not running it for the oldest ({} epoch {})",
                            dropped.role,
                            dropped.epoch
                        );
                    }
                }
            }
        }
    }
}

/// Runs the hook once, killing it at the deadline; every outcome is logged.
fn run(program: &PathBuf, node: &str, event: &RoleEvent) {
    let what = format!(
        "hooks.role_change {} {} {} {}",
        program.display(),
        event.role,
        event.epoch,
        event.peer
    );
    let started = Instant::now();
    let spawned = Command::new(program)
        .arg(event.role)
        .arg(event.epoch.to_string())
        .arg(&event.peer)
        .env("PBCHAT_ROLE", event.role)
        .env("PBCHAT_EPOCH", event.epoch.to_string())
        .env("PBCHAT_PEER", &event.peer)
        .env("PBCHAT_NODE", node)
        .stdin(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            log::warn!("{what}: cannot start: {e}");
            return;
        }
    };
    let deadline = started + HOOK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let ms = started.elapsed().as_millis();
                if status.success() {
                    log::info!("{what}: exited 0 in {ms} ms");
                } else {
                    log::warn!("{what}: failed ({status}) in {ms} ms");
                }
                return;
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                log::warn!(
                    "{what}: still running after {} s: killed",
                    HOOK_TIMEOUT.as_secs()
                );
                return;
            }
            Ok(None) => std::thread::sleep(HOOK_POLL),
            Err(e) => {
                log::warn!("{what}: waiting for it: {e}");
                return;
            }
        }
    }
}
