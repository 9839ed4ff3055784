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
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use super::io::Command;
use super::per_ip::PerIp;
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

/// Which worker owns a connection: fixed by its id, so the core can route without a map.
pub fn worker_of(conn: ConnId, workers: usize) -> usize {
    (conn % workers as u64) as usize
}

// Each is a distinct shared handle the daemon wires up once; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
// Long: not split yet (issue 17 item 7 lists it).
#[allow(clippy::too_many_lines)]
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
