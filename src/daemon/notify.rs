//! systemd's notification protocol (`sd_notify`), without libsystemd: datagrams to
//! `$NOTIFY_SOCKET` (a path, or an abstract name written `@name`).
//!
//! The driver owns the one [`Notifier`] and calls it from the core thread: `READY=1` once
//! the node serves, `STATUS=` when role, epoch, degraded or clients change (at most every
//! [`STATUS_INTERVAL`]), `WATCHDOG=1` every half of `$WATCHDOG_USEC` (sent by the core thread
//! on purpose: a stuck core stops them, and systemd restarts the process), and `STOPPING=1`
//! when shutdown starts. Without `NOTIFY_SOCKET` every call is a no-op. This module decides
//! nothing about the node; it only carries lines.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::daemon::logging::Throttle;

/// STATUS= lines go out at most this often; a change in between is sent when it is due.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(250);

pub struct Notifier {
    /// `None`: not started by systemd (or the socket is unusable), every call is a no-op.
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`, when systemd watches this process.
    watchdog_every: Option<Duration>,
    next_watchdog: Instant,
    /// The latest STATUS text sent, and when.
    sent_status: String,
    sent_at: Option<Instant>,
    /// A STATUS text waiting for [`STATUS_INTERVAL`] to pass.
    waiting_status: Option<String>,
    failures: Throttle,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            match open(&path) {
                Ok(socket) => Some(socket),
                Err(e) => {
                    log::warn!("NOTIFY_SOCKET {path}: {e}; not notifying systemd");
                    None
                }
            }
        });
        // WATCHDOG_PID, when set, names the process meant (not us if it differs).
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && socket.is_some())
            .map(|usec| Duration::from_micros(usec) / 2);
        Notifier {
            socket,
            watchdog_every,
            next_watchdog: Instant::now(),
            sent_status: String::new(),
            sent_at: None,
            waiting_status: None,
            failures: Throttle::new(1, Duration::from_secs(60)),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            socket: None,
            watchdog_every: None,
            next_watchdog: Instant::now(),
            sent_status: String::new(),
            sent_at: None,
            waiting_status: None,
            failures: Throttle::new(1, Duration::from_secs(60)),
        }
    }

    /// The interval at which the watchdog is kept fed, when systemd watches us.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// The node serves: listeners bound, log recovered.
    pub fn ready(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        self.sent_status = status.to_string();
        self.sent_at = Some(Instant::now());
    }

    /// Offers the current status line; it goes out if it changed, at most every
    /// [`STATUS_INTERVAL`] (a change in between waits for [`Notifier::poll`]).
    pub fn status(&mut self, status: String, now: Instant) {
        if self.socket.is_none() {
            return;
        }
        if status == self.sent_status {
            self.waiting_status = None;
            return;
        }
        self.waiting_status = Some(status);
        self.poll(now);
    }

    /// Sends what is due: a waiting STATUS line, the watchdog. Call after every turn.
    pub fn poll(&mut self, now: Instant) {
        if self.socket.is_none() {
            return;
        }
        if let Some(every) = self.watchdog_every {
            if now >= self.next_watchdog {
                self.next_watchdog = now + every;
                self.send("WATCHDOG=1");
            }
        }
        let due = self
            .sent_at
            .is_none_or(|at| now.saturating_duration_since(at) >= STATUS_INTERVAL);
        if due {
            if let Some(status) = self.waiting_status.take() {
                self.send(&format!("STATUS={status}"));
                self.sent_status = status;
                self.sent_at = Some(now);
            }
        }
    }

    /// Shutdown has started.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    fn send(&mut self, message: &str) {
        let Some((socket, address)) = &self.socket else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), address) {
            if let Some(suppressed) = self.failures.allow(Instant::now()) {
                log::warn!(
                    "cannot notify systemd: {e}{}",
                    crate::daemon::logging::suppressed_note(suppressed)
                );
            }
        }
    }
}

/// An unbound datagram socket and the address of `$NOTIFY_SOCKET`.
fn open(path: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let address = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract name (@name)",
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let notifier = Notifier {
            socket: Some(open(path.to_str().unwrap()).unwrap()),
            ..Notifier::disabled()
        };
        (dir, listener, notifier)
    }

    fn drain(socket: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn status_changes_are_rate_limited_and_the_latest_wins() {
        let (_dir, listener, mut n) = receiver();
        n.ready("primary epoch 1");
        let t0 = Instant::now();
        n.status("primary epoch 1".into(), t0);
        n.status("primary epoch 2".into(), t0);
        n.status("primary epoch 3".into(), t0);
        assert_eq!(drain(&listener), ["READY=1\nSTATUS=primary epoch 1"]);
        n.poll(t0 + STATUS_INTERVAL);
        assert_eq!(drain(&listener), ["STATUS=primary epoch 3"]);
        n.poll(t0 + STATUS_INTERVAL * 3);
        assert!(drain(&listener).is_empty());
    }

    #[test]
    fn abstract_names_are_accepted() {
        let name = format!("pbchat-notify-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let (socket, address) = open(&format!("@{name}")).unwrap();
        socket.send_to_addr(b"READY=1", &address).unwrap();
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(open("relative/path").is_err());
    }
}
