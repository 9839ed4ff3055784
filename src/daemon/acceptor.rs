//! Accepts client connections and deals them out to the I/O workers round-robin.
//!
//! Enforces `client.max_clients`: a connection over it gets an `unavailable` error frame
//! and is closed at once, costing the workers and the core nothing.

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::Waker;

use super::io::Command;
use crate::core::ConnId;
use crate::wire::client::{encode_reply, ErrorCode, Reply};

pub struct WorkerHandle {
    pub commands: Sender<Command>,
    pub waker: Arc<Waker>,
}

/// Which worker owns a connection: fixed by its id, so the core can route without a map.
pub fn worker_of(conn: ConnId, workers: usize) -> usize {
    (conn % workers as u64) as usize
}

pub fn run(
    listener: TcpListener,
    workers: Vec<WorkerHandle>,
    clients: Arc<AtomicUsize>,
    max_clients: Arc<AtomicUsize>,
    next_conn: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let full = encode_reply(&Reply::Error {
        code: ErrorCode::Unavailable,
        message: "this node has as many clients as it takes; try again later",
        id: None,
    });
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
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(&full);
            continue;
        }
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        clients.fetch_add(1, Ordering::Relaxed);
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let worker = &workers[worker_of(conn, workers.len())];
        if worker
            .commands
            .send(Command::Adopt { conn, stream })
            .is_err()
        {
            return;
        }
        let _ = worker.waker.wake();
    }
}
