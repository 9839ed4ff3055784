//! The benchmark harness behind `pbchat-bench`: load generators, process control and reports.
//!
//! A crate of its own (the workspace member `bench/`), so that the `pbchat` library and
//! `pbchatd` link none of it; it uses `pbchat` only for the client's reconnect back-off, and
//! the log format for the recovery run.
//!
//! It is a client of pbchatd (and of Redis, the peer it is compared with) like any other:
//! it speaks the wire protocol over TCP (or WebSocket), starts real `pbchatd` processes
//! from generated configs, and reads their logs and `/proc` entries. It must not reach into daemon state;
//! what it measures is what a client and an operator can see.
//!
//! Layout:
//! - `procs`: starting `pbchatd` (single node or pair) and `redis-server`, pinned to cores;
//!   waiting on their log lines; CPU time and peak RSS from `/proc`.
//! - `load`: the fan-out load generator: N members and P senders in one room on one mio
//!   poll, bounded windows or a fixed rate, latency from a send time carried in the body,
//!   and the lost / out-of-order checks.
//! - `idle`: K idle clients on one mio poll that reconnect, rejoin and resume after a
//!   fail-over (the capacity run).
//! - `gap`: one sender that rides over fail-overs and hand-overs and records each
//!   client-visible gap.
//! - `report`: percentiles, the table for people and JSON lines for scripts.
//! - `window`: what frees a slot of a sender's window (`--window-on acks|deliveries`) and
//!   the per-sender ring that counts each send's deliveries to the members.
//! - `ws`: the WebSocket side of a pbchat member (`--transport ws`): upgrade, masked text
//!   messages out, the server's frames unwrapped in place into lines.

pub mod frames;
pub mod gap;
pub mod idle;
pub mod load;
pub mod procs;
pub mod report;
pub mod window;
pub mod ws;

use std::time::Duration;

/// Milliseconds as a `Duration`, for command-line values.
pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// Pins the calling process (every thread it starts later inherits it) to `core`.
/// Returns a message for people when the machine has no such core or refuses.
pub fn pin_self(core: usize) -> Result<(), String> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    set.set(core)
        .map_err(|e| format!("core {core}: cannot name it: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pin to core {core}: {e}"))
}

/// Raises this process's open-file limit to `wanted` or the hard limit, whichever is lower;
/// children inherit it. Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let target = wanted.min(hard).max(soft);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

/// How many cores this machine has online. Not `available_parallelism`: that follows this
/// process's affinity, which is one core once [`pin_self`] ran, and then no server would be
/// pinned (they all shared the load generator's core).
pub fn cores() -> usize {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_the_load_generator_does_not_hide_the_other_cores() {
        // On a thread of its own: pinning changes only the calling thread here.
        let (before, after) = std::thread::spawn(|| {
            let before = cores();
            let pinned = pin_self(0).is_ok();
            (before, pinned.then(cores))
        })
        .join()
        .expect("pinning thread");
        if let Some(after) = after {
            assert_eq!(
                after, before,
                "cores() must count the machine, not the affinity"
            );
        }
    }
}
