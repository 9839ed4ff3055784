//! Signals: the `signals` thread turns TERM/INT/HUP/USR1 into [`Signal`]s for the driver, so
//! no work happens in a signal handler; the admin socket sends the same type.

use crossbeam_channel::Sender;

use super::error::DaemonError;
use super::spawn;

/// What the signal thread (and the admin socket) tells the core; `from` says who asked
/// (`SIGTERM from pid 812 (systemd)`, `pbchatctl failover`), for the line that says why the
/// node acts.
#[derive(Debug, Clone)]
pub(super) enum Signal {
    Stop {
        from: String,
    },
    Reload {
        from: String,
    },
    Drill {
        from: String,
    },
    /// `pbchatctl clients`: up to `max` of the core's connections and how many more, on
    /// `reply` (bounded(1); the admin thread waits on it with a deadline).
    Clients {
        max: usize,
        reply: crossbeam_channel::Sender<(Vec<crate::core::ClientInfo>, usize)>,
    },
    /// `pbchatctl kick`: close the connection of `nick` with `reason`; `reply` says whether
    /// a connection had that nick.
    Kick {
        nick: String,
        reason: String,
        reply: crossbeam_channel::Sender<bool>,
    },
    /// `pbchatctl rooms`: the same for rooms and their member counts.
    Rooms {
        max: usize,
        reply: crossbeam_channel::Sender<(Vec<(String, usize)>, usize)>,
    },
}

/// Installs the handlers and starts the `signals` thread, which sends each signal on `tx`.
pub(super) fn spawn_signals(tx: Sender<Signal>) -> Result<(), DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::iterator::exfiltrator::WithOrigin;
    use signal_hook::low_level::siginfo::Cause;
    let mut signals =
        signal_hook::iterator::SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .map_err(DaemonError::Signals)?;
    spawn("signals", move || {
        for origin in signals.forever() {
            let from = signal_origin(
                origin.signal,
                origin.process.map(|p| p.pid),
                origin.cause == Cause::Kernel,
            );
            let what = match origin.signal {
                SIGHUP => Signal::Reload { from },
                SIGUSR1 => Signal::Drill { from },
                _ => Signal::Stop { from },
            };
            if tx.send(what).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Who sent a signal, in words: `SIGTERM from pid 812 (systemd)`. The kernel sends the
/// SIGINT of a Ctrl-C typed in the node's terminal (no pid then).
fn signal_origin(signal: i32, pid: Option<i32>, by_kernel: bool) -> String {
    let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
    match pid.filter(|&pid| pid > 0) {
        Some(pid) => match process_name(pid) {
            Some(comm) => format!("{name} from pid {pid} ({comm})"),
            None => format!("{name} from pid {pid}"),
        },
        None if by_kernel => format!("{name} from the kernel (Ctrl-C in the node's terminal?)"),
        None => format!("{name} from an unknown sender"),
    }
}

/// A process's command name (`/proc/PID/comm`, at most 15 bytes), or `None` once it has
/// exited or cannot be read; control characters become `?` to keep the line one line.
fn process_name(pid: i32) -> Option<String> {
    use std::io::Read;
    /// More than the kernel's TASK_COMM_LEN (16): a bound, not a limit that bites.
    const COMM_MAX_BYTES: u64 = 64;
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/comm"))
        .ok()?
        .take(COMM_MAX_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    let name: String = String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (!name.is_empty()).then_some(name)
}
