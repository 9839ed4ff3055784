//! Accepts client connections and deals them out to the I/O workers round-robin.
//!
//! Enforces `client.max_clients` and `client.max_connections_per_ip`: a connection over
//! either gets an `unavailable` error frame and is closed at once, costing the workers and
//! the core nothing. The per-address counts ([`PerIp`]) are released by the worker that
//! drops the connection.
//!
//! On a TLS listener each accepted connection gets its own rustls server state here, from
//! the config in the [`TlsSlot`] at that moment; refusals are closed without an answer (the
//! client's TLS stack could not read a plain-text frame).
//!
//! The `[web]` listener runs its own acceptor over the same workers and the same counts; its
//! refusals are an HTTP `503` (a browser could not read a frame either).

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use super::io::Command;
use crate::core::ConnId;
use crate::wire::client::{encode_reply, ErrorCode, Reply};

/// The client listener's TLS config when it speaks TLS. The driver swaps the config on
/// reload; each new connection takes the one in place when it is accepted, and connections
/// already open keep theirs.
pub type TlsSlot = Arc<Mutex<Arc<rustls::ServerConfig>>>;

/// What a listener speaks.
pub enum Listener {
    Plain,
    Tls(TlsSlot),
    /// HTTP, then WebSocket (`[web]`); over TLS when the client listener speaks it.
    Web(Option<TlsSlot>),
}

pub struct WorkerHandle {
    pub commands: Sender<Command>,
    pub waker: Arc<Waker>,
}

/// Open connections per source address. Entries leave the map when their count reaches
/// zero, so it never holds more entries than there are connections (`client.max_clients`).
#[derive(Debug)]
pub struct PerIp {
    counts: Mutex<HashMap<IpAddr, u32>>,
    /// `client.max_connections_per_ip`; reloadable.
    pub max: AtomicUsize,
}

impl PerIp {
    pub fn new(max: usize) -> PerIp {
        PerIp {
            counts: Mutex::new(HashMap::new()),
            max: AtomicUsize::new(max),
        }
    }

    /// The address a connection counts against: an IPv4 address (IPv4-mapped ones too),
    /// or an IPv6 /64, since one host commonly holds a whole /64.
    pub fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// Counts a connection from `key`; false (and nothing counted) when it has the most.
    pub fn try_acquire(&self, key: IpAddr) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let mut counts = self.counts.lock().expect("never poisoned: no panic inside");
        let count = counts.entry(key).or_insert(0);
        if *count as usize >= max {
            if *count == 0 {
                counts.remove(&key);
            }
            return false;
        }
        *count += 1;
        true
    }

    pub fn release(&self, key: IpAddr) {
        let mut counts = self.counts.lock().expect("never poisoned: no panic inside");
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Addresses with an open connection (for tests and status).
    pub fn addresses(&self) -> usize {
        self.counts.lock().expect("never poisoned").len()
    }
}

/// Which worker owns a connection: fixed by its id, so the core can route without a map.
pub fn worker_of(conn: ConnId, workers: usize) -> usize {
    (conn % workers as u64) as usize
}

// Each is a distinct shared handle the daemon wires up once; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn run(
    listener: TcpListener,
    workers: Vec<WorkerHandle>,
    clients: Arc<AtomicUsize>,
    max_clients: Arc<AtomicUsize>,
    next_conn: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    per_ip: Arc<PerIp>,
    kind: Listener,
) {
    let (full, crowded) = match kind {
        Listener::Web(_) => (super::web::unavailable(), super::web::unavailable()),
        _ => (
            encode_reply(&Reply::Error {
                code: ErrorCode::Unavailable,
                message: "this node has as many clients as it takes; try again later",
                id: None,
            }),
            encode_reply(&Reply::Error {
                code: ErrorCode::Unavailable,
                message: "too many connections from your address",
                id: None,
            }),
        ),
    };
    let tls = match &kind {
        Listener::Tls(slot) | Listener::Web(Some(slot)) => Some(slot.clone()),
        _ => None,
    };
    // EMFILE and friends repeat every 50 ms while they last: a few lines, then a count.
    let mut warnings = crate::daemon::logging::Throttle::new(3, Duration::from_secs(10));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                if let Some(suppressed) = warnings.allow(std::time::Instant::now()) {
                    log::warn!(
                        "accepting a client connection failed: {e}{}",
                        crate::daemon::logging::suppressed_note(suppressed)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if clients.load(Ordering::Relaxed) >= max_clients.load(Ordering::Relaxed) {
            if tls.is_none() {
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = stream.write_all(&full);
            }
            continue;
        }
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let ip = PerIp::key(peer.ip());
        if !per_ip.try_acquire(ip) {
            if tls.is_none() {
                // A fresh socket's send buffer is empty: this small write does not block.
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = stream.write_all(&crowded);
            }
            continue;
        }
        let session = match &tls {
            None => None,
            Some(slot) => {
                let config = slot
                    .lock()
                    .expect("never poisoned: no panic inside")
                    .clone();
                match rustls::ServerConnection::new(config) {
                    Ok(session) => Some(Box::new(session)),
                    Err(e) => {
                        if let Some(suppressed) = warnings.allow(std::time::Instant::now()) {
                            log::warn!(
                                "cannot start TLS for a client connection: {e}{}",
                                crate::daemon::logging::suppressed_note(suppressed)
                            );
                        }
                        per_ip.release(ip);
                        continue;
                    }
                }
            }
        };
        if stream.set_nonblocking(true).is_err() {
            per_ip.release(ip);
            continue;
        }
        let _ = stream.set_nodelay(true);
        clients.fetch_add(1, Ordering::Relaxed);
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let worker = &workers[worker_of(conn, workers.len())];
        if worker
            .commands
            .send(Command::Adopt {
                conn,
                stream,
                ip,
                tls: session,
                web: matches!(kind, Listener::Web(_)),
            })
            .is_err()
        {
            return;
        }
        let _ = worker.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_are_bounded_and_released() {
        let table = PerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b = PerIp::key("::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(b, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert!(table.try_acquire(a) && table.try_acquire(a));
        assert!(!table.try_acquire(a));
        assert!(table.try_acquire(b));
        table.release(a);
        assert!(table.try_acquire(a));
        table.release(a);
        table.release(a);
        table.release(b);
        assert_eq!(table.addresses(), 0);
        table.max.store(0, Ordering::Relaxed);
        assert!(!table.try_acquire(a));
        assert_eq!(table.addresses(), 0, "a refusal leaves no entry");
        // One IPv6 /64 is one address.
        let x = PerIp::key("2001:db8::1".parse().unwrap());
        let y = PerIp::key("2001:db8::ffff:2".parse().unwrap());
        assert_eq!(x, y);
    }
}
