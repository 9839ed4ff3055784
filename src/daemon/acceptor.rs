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

use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use mio::Waker;

use super::io::Command;
use super::per_ip::PerIp;
use super::queue::QueueSender;
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
    pub commands: QueueSender<Command>,
    pub waker: Arc<Waker>,
}

/// Which worker owns a connection: fixed by its id, so the core can route without a map.
pub fn worker_of(conn: ConnId, workers: usize) -> usize {
    (conn % workers as u64) as usize
}

/// What an acceptor shares with the workers and the driver: the counts it admits by, the
/// connection ids, and the stop.
pub struct Admission {
    /// Open client connections (the workers count them down).
    pub clients: Arc<AtomicUsize>,
    /// `client.max_clients` (a reload changes it).
    pub max_clients: Arc<AtomicUsize>,
    /// Both listeners number connections from one counter: ids route to workers.
    pub next_conn: Arc<AtomicU64>,
    pub stop: Arc<AtomicBool>,
    pub per_ip: Arc<PerIp>,
}

/// One listener's acceptor thread.
struct Acceptor {
    workers: Vec<WorkerHandle>,
    admission: Admission,
    kind: Listener,
    /// The refusals, encoded once: over `max_clients`, over the per-address limit.
    full: Vec<u8>,
    crowded: Vec<u8>,
    tls: Option<TlsSlot>,
    /// EMFILE and friends repeat every 50 ms while they last: a few lines, then a count.
    warnings: crate::daemon::logging::Throttle,
}

/// Accepts on `listener` until the stop is set or the workers are gone.
pub fn run(
    listener: TcpListener,
    workers: Vec<WorkerHandle>,
    admission: Admission,
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
    let mut acceptor = Acceptor {
        workers,
        admission,
        kind,
        full,
        crowded,
        tls,
        warnings: crate::daemon::logging::Throttle::new(3, Duration::from_secs(10)),
    };
    for stream in listener.incoming() {
        if acceptor.admission.stop.load(Ordering::Acquire) {
            return;
        }
        match stream {
            Ok(stream) => {
                if !acceptor.on_accepted(stream) {
                    return;
                }
            }
            Err(e) => {
                acceptor.warn("accepting a client connection failed", &e);
                // EMFILE and friends: back off briefly rather than spin.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Acceptor {
    /// Admits `stream` and hands it to its worker; false once the workers are gone.
    fn on_accepted(&mut self, stream: TcpStream) -> bool {
        let Some((stream, ip)) = self.admit(stream) else {
            return true;
        };
        let Some(session) = self.tls_session(ip) else {
            return true;
        };
        if stream.set_nonblocking(true).is_err() {
            self.admission.per_ip.release(ip);
            return true;
        }
        let _ = stream.set_nodelay(true);
        self.admission.clients.fetch_add(1, Ordering::Relaxed);
        let conn = self.admission.next_conn.fetch_add(1, Ordering::Relaxed);
        let worker = &self.workers[worker_of(conn, self.workers.len())];
        let adopt = Command::Adopt {
            conn,
            stream,
            ip,
            tls: session,
            web: matches!(self.kind, Listener::Web(_)),
        };
        if worker.commands.send(adopt).is_err() {
            return false;
        }
        let _ = worker.waker.wake();
        true
    }

    /// The connection and its address's key, when the limits let it in; otherwise it is
    /// told why (in plain text only: a TLS client could not read it) and closed.
    fn admit(&mut self, mut stream: TcpStream) -> Option<(TcpStream, IpAddr)> {
        let admission = &self.admission;
        let refusal = if admission.clients.load(Ordering::Relaxed)
            >= admission.max_clients.load(Ordering::Relaxed)
        {
            &self.full
        } else {
            let ip = PerIp::key(stream.peer_addr().ok()?.ip());
            if admission.per_ip.try_acquire(ip) {
                return Some((stream, ip));
            }
            &self.crowded
        };
        if self.tls.is_none() {
            // A fresh socket's send buffer is empty: this small write does not block.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(refusal);
        }
        None
    }

    /// A TLS listener's server state for a new connection (`Some(None)` on a plain one);
    /// `None` when it cannot be made, after releasing the address's count.
    fn tls_session(&mut self, ip: IpAddr) -> Option<Option<Box<rustls::ServerConnection>>> {
        let Some(slot) = &self.tls else {
            return Some(None);
        };
        let config = slot
            .lock()
            .expect("never poisoned: no panic inside")
            .clone();
        match rustls::ServerConnection::new(config) {
            Ok(session) => Some(Some(Box::new(session))),
            Err(e) => {
                self.warn("cannot start TLS for a client connection", &e);
                self.admission.per_ip.release(ip);
                None
            }
        }
    }

    fn warn(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.warnings.allow(std::time::Instant::now()) {
            log::warn!(
                "{what}: {e}{}",
                crate::daemon::logging::suppressed_note(suppressed)
            );
        }
    }
}
