//! The lab's own relay between the nodes, for the faults nftables cannot make and the
//! kernel here has no `tc netem` for: delay with jitter, duplicated and reordered
//! datagrams (heartbeats), and delay with jitter on a TCP stream (the replication link,
//! whose order TCP keeps).
//!
//! It runs as threads of the test process that enter a lab host's network namespace with
//! `setns(2)` (through nix, so without unsafe code here) before they make a socket; the
//! nodes' configs name the relay as their peer's heartbeat and replication address.
//! Heartbeats are authenticated by their MAC, not their source address, so a relayed
//! heartbeat is the peer's own. Every queue is bounded; the threads end when the `Relay`
//! is dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Datagrams held for later delivery, per direction: far above what 200 ms heartbeats
/// delayed by at most a few hundred ms fill; beyond it a datagram is dropped (counted).
const DATAGRAMS_HELD_MAX: usize = 1_024;
/// TCP chunks in flight per direction: the reader blocks beyond it, which is TCP's own
/// back-pressure.
const CHUNKS_HELD_MAX: usize = 1_024;
const CHUNK_BYTES: usize = 16 * 1024;
/// How often a blocked relay thread looks at `stop`.
const POLL: Duration = Duration::from_millis(20);

/// What the relay does to what it carries; changeable while it runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Every datagram waits this long...
    pub delay_ms: u64,
    /// ...plus a uniform random 0..=jitter_ms. Datagrams are scheduled independently, so a
    /// jitter above the heartbeat interval reorders them.
    pub jitter_ms: u64,
    /// Datagrams sent twice, each copy with its own delay (%).
    pub duplicate_percent: u32,
    /// Every chunk of a TCP stream waits this long plus 0..=link_jitter_ms; a chunk never
    /// overtakes the one before it (TCP keeps order).
    pub link_delay_ms: u64,
    pub link_jitter_ms: u64,
}

/// What a relay did, for the figures.
#[derive(Default, Debug)]
pub struct Counters {
    pub datagrams: AtomicU64,
    pub duplicated: AtomicU64,
    /// Datagrams that arrived after one sent later than them (reordered on the way).
    pub reordered: AtomicU64,
    pub dropped_full: AtomicU64,
    pub tcp_bytes: AtomicU64,
}

/// Relays started in one namespace; stopped on drop.
pub struct Relay {
    pub impairment: Arc<Mutex<Impairment>>,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

/// Moves the calling thread into the network namespace `ns` (`ip netns` names it).
fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("relay: open namespace {ns}: {e}"));
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("relay: setns {ns}: {e}"));
}

impl Relay {
    pub fn new() -> Relay {
        Relay {
            impairment: Arc::default(),
            counters: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set(&self, impairment: Impairment) {
        *self.impairment.lock().unwrap() = impairment;
    }

    /// Relays datagrams that reach `listen` (in namespace `ns`) to `target`.
    pub fn udp(&self, ns: &str, listen: SocketAddr, target: SocketAddr, seed: u64) {
        let (ns, stop) = (ns.to_string(), self.stop.clone());
        let (impairment, counters) = (self.impairment.clone(), self.counters.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("relay-udp-{listen}"))
            .spawn(move || {
                enter(&ns);
                let socket = UdpSocket::bind(listen)
                    .unwrap_or_else(|e| panic!("relay: bind udp {listen}: {e}"));
                let _ = ready_tx.send(());
                let mut rng = StdRng::seed_from_u64(seed);
                // (due, order sent, bytes); the heap gives the earliest due first.
                let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
                let mut order = 0u64;
                let mut last_sent_order = 0u64;
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    while held.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
                        let Reverse((_, n, bytes)) = held.pop().expect("peeked");
                        if n < last_sent_order {
                            counters.reordered.fetch_add(1, Ordering::Relaxed);
                        }
                        last_sent_order = last_sent_order.max(n);
                        let _ = socket.send_to(&bytes, target);
                    }
                    let wait = held
                        .peek()
                        .map_or(POLL, |Reverse((due, _, _))| {
                            due.saturating_duration_since(now).min(POLL)
                        })
                        .max(Duration::from_millis(1));
                    socket.set_read_timeout(Some(wait)).expect("timeout");
                    let len = match socket.recv_from(&mut buf) {
                        Ok((len, _)) => len,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            continue
                        }
                        Err(_) => continue,
                    };
                    counters.datagrams.fetch_add(1, Ordering::Relaxed);
                    let imp = *impairment.lock().unwrap();
                    let copies = if rng.gen_range(0..100) < imp.duplicate_percent {
                        counters.duplicated.fetch_add(1, Ordering::Relaxed);
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        if held.len() >= DATAGRAMS_HELD_MAX {
                            counters.dropped_full.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let delay = imp.delay_ms + rng.gen_range(0..=imp.jitter_ms);
                        order += 1;
                        held.push(Reverse((
                            Instant::now() + Duration::from_millis(delay),
                            order,
                            buf[..len].to_vec(),
                        )));
                    }
                }
            })
            .expect("spawn relay");
        ready_rx.recv().expect("the relay is listening");
    }

    /// Relays TCP connections made to `listen` (in namespace `ns`) to `target`, each
    /// direction delayed by the impairment's delay and jitter, order kept.
    pub fn tcp(&self, ns: &str, listen: SocketAddr, target: SocketAddr, seed: u64) {
        let (ns, stop) = (ns.to_string(), self.stop.clone());
        let (impairment, counters) = (self.impairment.clone(), self.counters.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("relay-tcp-{listen}"))
            .spawn(move || {
                enter(&ns);
                let listener = TcpListener::bind(listen)
                    .unwrap_or_else(|e| panic!("relay: bind tcp {listen}: {e}"));
                listener.set_nonblocking(true).expect("nonblocking");
                let _ = ready_tx.send(());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let inbound = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            std::thread::sleep(POLL);
                            continue;
                        }
                    };
                    inbound.set_nonblocking(false).expect("blocking");
                    // A refused or unreachable target: the dialer sees its connection end,
                    // as it would have without the relay.
                    let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                    else {
                        continue;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    for (from, to) in [
                        (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                        (outbound.try_clone().unwrap(), inbound.try_clone().unwrap()),
                    ] {
                        n += 1;
                        pipe(
                            &ns,
                            from,
                            to,
                            impairment.clone(),
                            counters.clone(),
                            stop.clone(),
                            seed ^ n,
                        );
                    }
                }
            })
            .expect("spawn relay");
        ready_rx.recv().expect("the relay is listening");
    }
}

/// One direction of a relayed connection: a reader that stamps each chunk with when it may
/// go, and a writer that sends it then. A chunk never goes before the one ahead of it.
fn pipe(
    ns: &str,
    mut from: TcpStream,
    mut to: TcpStream,
    impairment: Arc<Mutex<Impairment>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let (tx, rx) = crossbeam_channel::bounded::<(Instant, Vec<u8>)>(CHUNKS_HELD_MAX);
    let ns_reader = ns.to_string();
    let stop_reader = stop.clone();
    std::thread::spawn(move || {
        enter(&ns_reader);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last_due = Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES];
        from.set_read_timeout(Some(POLL)).expect("timeout");
        while !stop_reader.load(Ordering::Relaxed) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(len) => {
                    let imp = *impairment.lock().unwrap();
                    let delay = imp.link_delay_ms + rng.gen_range(0..=imp.link_jitter_ms);
                    let due = (Instant::now() + Duration::from_millis(delay)).max(last_due);
                    last_due = due;
                    counters.tcp_bytes.fetch_add(len as u64, Ordering::Relaxed);
                    if tx.send((due, buf[..len].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        // Dropping tx tells the writer: after what is queued, close.
    });
    std::thread::spawn(move || {
        loop {
            match rx.recv_timeout(POLL) {
                Ok((due, bytes)) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                    if to.write_all(&bytes).is_err() {
                        break;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
