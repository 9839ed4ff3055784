//! The heartbeat thread: one UDP socket and one thread that both sends this node's heartbeat
//! to the peer and receives the peer's.
//!
//! Owns the socket, the send timer (the socket's read timeout, so the thread sleeps in
//! `recv_from` and never spins), the boot nonce and counter, replay protection, and the
//! rate-limited warnings about rejected datagrams. It decides nothing about roles: it hands
//! each authenticated, fresh heartbeat from the peer to the core thread with the time it
//! arrived, and reads what to advertise from the driver's [`RoleView`].
//! A datagram is considered whatever address it comes from (the peer may send from another
//! interface); only the MAC, the node id and freshness decide.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};
use rand::Rng;
use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::heartbeat::{
    decode, encode, Heartbeat, HeartbeatError, ReplayGuard, MAX_HEARTBEAT_BYTES,
};
use crate::wire::keyring::Keyring;

use super::role_view::RoleView;

/// Each send interval is the configured one ± this percentage, drawn anew each time, so two
/// nodes started together do not stay in lockstep.
const JITTER_PERCENT: u64 = 10;
/// At most one warning about rejected datagrams per this long; a flood of forged or stray
/// datagrams must not flood the log. Each warning says how many were rejected since the last.
const REJECT_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// The same for failed sends, which repeat every interval while the peer's host is
/// unreachable.
const SEND_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// The longest the thread waits in `recv_from` before it looks at `stop` again, so a stop
/// is seen promptly even with a long heartbeat interval.
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest read timeout: zero means "block forever" to the OS, so never pass it.
const READ_TIMEOUT_MIN: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// Where to bind (`heartbeat.listen`); unused by [`spawn_with_socket`].
    pub listen: SocketAddr,
    /// Where the peer listens; heartbeats are sent here.
    pub peer: SocketAddr,
    /// The only node id whose heartbeats are accepted.
    pub peer_id: String,
    /// This node's id, sent in each heartbeat.
    pub node_id: String,
    /// The mean time between two sends, before jitter. Must be at least 1.
    pub interval_ms: u64,
}

/// Received, authenticated, fresh heartbeat handed to the core thread, with the monotonic
/// time it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub heartbeat: Heartbeat,
    pub at: Instant,
}

/// Counters for status output and tests; only the heartbeat thread writes them.
#[derive(Debug, Default)]
pub struct HeartbeatStats {
    /// Heartbeats handed to the OS.
    pub sent: AtomicU64,
    /// Sends the OS refused (peer host unreachable, no route, ...); never fatal.
    pub send_errors: AtomicU64,
    /// Peer heartbeats that authenticated and were fresh.
    pub received: AtomicU64,
    /// Of `received`, those dropped because the core's channel was full; a newer one
    /// follows within an interval.
    pub dropped: AtomicU64,
    /// Datagrams refused: malformed, unknown key, bad MAC, replayed, or from another node.
    pub rejected: AtomicU64,
}

/// Binds the heartbeat socket. SO_REUSEADDR lets a restarted node bind again at once; two
/// live instances of one node are prevented by the data-dir lock, not here.
pub fn bind(listen: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

/// Binds `config.listen` and starts the heartbeat thread.
pub fn spawn(
    config: HeartbeatConfig,
    keys: Arc<Keyring>,
    status: Arc<RoleView>,
    out: Sender<Received>,
    stats: Arc<HeartbeatStats>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, super::DaemonError> {
    let fail = |source| super::DaemonError::Heartbeat {
        address: config.listen,
        source,
    };
    let socket = bind(config.listen).map_err(fail)?;
    spawn_with_socket(socket, config, keys, status, out, stats, stop).map_err(|source| {
        super::DaemonError::Thread {
            name: "heartbeat".to_string(),
            source,
        }
    })
}

/// Starts the heartbeat thread on a socket the caller bound (tests bind port 0 and read the
/// address first). The thread ends when `stop` is set or the core drops the receiver.
pub fn spawn_with_socket(
    socket: UdpSocket,
    config: HeartbeatConfig,
    keys: Arc<Keyring>,
    status: Arc<RoleView>,
    out: Sender<Received>,
    stats: Arc<HeartbeatStats>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    assert!(
        config.interval_ms > 0,
        "heartbeat interval must be positive"
    );
    let thread = HeartbeatThread {
        socket,
        boot: boot_nonce(),
        counter: 0,
        guard: ReplayGuard::new(),
        rejects: Warnings::new(REJECT_WARN_INTERVAL),
        send_failures: Warnings::new(SEND_WARN_INTERVAL),
        config,
        keys,
        status,
        out,
        stats,
        stop,
    };
    thread::Builder::new()
        .name("heartbeat".to_string())
        .spawn(move || thread.run())
}

/// Microseconds since the Unix epoch now, so a later boot has a larger nonce. A clock set
/// back across a restart makes the peer refuse our heartbeats as replays until it catches
/// up; that is the price of needing no state on disk.
fn boot_nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `interval_ms` ± `JITTER_PERCENT`, uniformly, at microsecond resolution.
fn jittered_interval(interval_ms: u64) -> Duration {
    let interval_us = interval_ms.saturating_mul(1_000);
    let spread_us = interval_us / 100 * JITTER_PERCENT;
    let jittered_us = rand::thread_rng()
        .gen_range(interval_us - spread_us..=interval_us.saturating_add(spread_us));
    Duration::from_micros(jittered_us)
}

/// Why a datagram was refused, for the warning.
#[derive(Debug)]
enum Reject {
    Decode(HeartbeatError),
    Replayed { boot: u64, counter: u64 },
    OtherNode(String),
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Decode(error) => write!(f, "{error}"),
            Reject::Replayed { boot, counter } => write!(
                f,
                "replayed or stale (boot {boot}, counter {counter} is not newer than the last)"
            ),
            Reject::OtherNode(node_id) => write!(f, "from node {node_id:?}, not our peer"),
        }
    }
}

/// Rate-limits one kind of warning: counts occurrences and logs at most one line per
/// `interval`, with the count since the last line and the latest cause.
struct Warnings {
    interval: Duration,
    last_logged: Option<Instant>,
    /// Occurrences not yet reported, and the latest one's description.
    pending: u64,
    latest: String,
}

impl Warnings {
    fn new(interval: Duration) -> Self {
        Warnings {
            interval,
            last_logged: None,
            pending: 0,
            latest: String::new(),
        }
    }

    fn note(&mut self, now: Instant, what: &str, latest: String) {
        self.pending += 1;
        self.latest = latest;
        self.flush(now, what);
    }

    /// Logs what is pending if the interval since the last line has passed.
    fn flush(&mut self, now: Instant, what: &str) {
        if self.pending == 0 {
            return;
        }
        if let Some(last) = self.last_logged {
            if now.duration_since(last) < self.interval {
                return;
            }
        }
        log::warn!(
            "heartbeat: {} {what} since the last warning; latest: {}",
            self.pending,
            self.latest
        );
        self.pending = 0;
        self.last_logged = Some(now);
    }
}

struct HeartbeatThread {
    socket: UdpSocket,
    config: HeartbeatConfig,
    keys: Arc<Keyring>,
    status: Arc<RoleView>,
    out: Sender<Received>,
    stats: Arc<HeartbeatStats>,
    stop: Arc<AtomicBool>,
    /// Fixed for the life of the thread; see [`boot_nonce`].
    boot: u64,
    /// The last counter sent; strictly increasing, so each heartbeat is newer than the last.
    counter: u64,
    guard: ReplayGuard,
    rejects: Warnings,
    send_failures: Warnings,
}

impl HeartbeatThread {
    fn run(mut self) {
        log::info!(
            "heartbeat: node {} every {} ms to peer {} at {}, listening on {}",
            self.config.node_id,
            self.config.interval_ms,
            self.config.peer_id,
            self.config.peer,
            self.socket
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
        );
        // One byte more than the largest heartbeat, so an oversized datagram is seen as
        // such instead of being cut to a size that parses.
        let mut buf = [0u8; MAX_HEARTBEAT_BYTES + 1];
        let mut next_send = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_send {
                self.on_send_due(now);
                next_send = now + jittered_interval(self.config.interval_ms);
            }
            self.rejects.flush(now, "datagrams rejected");
            self.send_failures.flush(now, "sends failed");

            let wait = next_send
                .saturating_duration_since(Instant::now())
                .clamp(READ_TIMEOUT_MIN, STOP_CHECK_INTERVAL);
            if let Err(error) = self.socket.set_read_timeout(Some(wait)) {
                // Cannot happen for a positive timeout; without it recv could block past
                // a stop, so end rather than hang.
                log::error!("heartbeat: cannot set the read timeout: {error}; stopping");
                return;
            }
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    if !self.on_datagram(&buf[..len], from, Instant::now()) {
                        return;
                    }
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => {
                    // An error queued by an earlier send (an ICMP unreachable on some
                    // systems) and the like: note it, and wait out this turn so a
                    // persistent error cannot make the loop spin.
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    self.send_failures.note(
                        Instant::now(),
                        "sends failed",
                        format!("receive: {error}"),
                    );
                    thread::sleep(wait);
                }
            }
        }
        log::info!("heartbeat: stopped");
    }

    fn on_send_due(&mut self, now: Instant) {
        self.counter += 1;
        let heartbeat = Heartbeat {
            node_id: self.config.node_id.clone(),
            primary: self.status.primary(),
            epoch: self.status.epoch(),
            head: self.status.head(),
            boot: self.boot,
            counter: self.counter,
        };
        let datagram = encode(&heartbeat, &self.keys);
        match self.socket.send_to(&datagram, self.config.peer) {
            Ok(_) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                // The peer being down is what heartbeats exist to detect; keep sending.
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                self.send_failures.note(
                    now,
                    "sends failed",
                    format!("to {}: {error}", self.config.peer),
                );
            }
        }
    }

    /// Checks one datagram and passes it on if it is a fresh heartbeat from the peer.
    /// Returns false when the core has gone and the thread should end.
    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr, at: Instant) -> bool {
        let heartbeat = match self.check(datagram) {
            Ok(heartbeat) => heartbeat,
            Err(reject) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                self.rejects
                    .note(at, "datagrams rejected", format!("from {from}: {reject}"));
                return true;
            }
        };
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        match self.out.try_send(Received { heartbeat, at }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                // The core is behind; a newer heartbeat follows within an interval.
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => {
                log::info!("heartbeat: the core has stopped; stopping");
                false
            }
        }
    }

    fn check(&mut self, datagram: &[u8]) -> Result<Heartbeat, Reject> {
        let heartbeat = decode(datagram, &self.keys).map_err(Reject::Decode)?;
        // Before the replay guard, so only the peer's id is ever tracked there and no other
        // id can evict it.
        if heartbeat.node_id != self.config.peer_id {
            return Err(Reject::OtherNode(heartbeat.node_id));
        }
        if !self.guard.accept(&heartbeat) {
            return Err(Reject::Replayed {
                boot: heartbeat.boot,
                counter: heartbeat.counter,
            });
        }
        Ok(heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::link::handshake::LogView;
    use crate::wire::keyring::parse_keyring;
    use crossbeam_channel::{bounded, Receiver};

    const SECRET_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SECRET_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    /// Generous: CI machines stall; tests finish as soon as the condition holds.
    const DEADLINE: Duration = Duration::from_secs(10);
    const INTERVAL_MS: u64 = 20;
    const OUT_MAX: usize = 64;

    fn keys(secret: &str) -> Arc<Keyring> {
        Arc::new(parse_keyring("test", &format!("1 {secret}\n")).unwrap())
    }

    fn local() -> UdpSocket {
        bind("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    struct Running {
        handle: JoinHandle<()>,
        stats: Arc<HeartbeatStats>,
        stop: Arc<AtomicBool>,
        out: Receiver<Received>,
        status: Arc<RoleView>,
    }

    impl Running {
        fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            wait_until("the thread ends", || self.handle.is_finished());
            self.handle.join().unwrap();
        }
    }

    fn start(socket: UdpSocket, node_id: &str, peer_id: &str, peer: SocketAddr) -> Running {
        start_with(socket, node_id, peer_id, peer, OUT_MAX)
    }

    fn start_with(
        socket: UdpSocket,
        node_id: &str,
        peer_id: &str,
        peer: SocketAddr,
        out_max: usize,
    ) -> Running {
        let (out_tx, out) = bounded(out_max);
        let stats = Arc::new(HeartbeatStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(RoleView::new(
            node_id == "a",
            LogView {
                epoch: 3,
                head: 10,
                ..LogView::default()
            },
        ));
        let config = HeartbeatConfig {
            listen: socket.local_addr().unwrap(),
            peer,
            peer_id: peer_id.to_string(),
            node_id: node_id.to_string(),
            interval_ms: INTERVAL_MS,
        };
        let handle = spawn_with_socket(
            socket,
            config,
            keys(SECRET_A),
            status.clone(),
            out_tx,
            stats.clone(),
            stop.clone(),
        )
        .unwrap();
        Running {
            handle,
            stats,
            stop,
            out,
            status,
        }
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn next(out: &Receiver<Received>) -> Received {
        out.recv_timeout(DEADLINE).expect("a heartbeat in time")
    }

    #[test]
    fn two_nodes_hear_each_other_with_fresh_counters() {
        let (socket_a, socket_b) = (local(), local());
        let (addr_a, addr_b) = (
            socket_a.local_addr().unwrap(),
            socket_b.local_addr().unwrap(),
        );
        let a = start(socket_a, "a", "b", addr_b);
        let b = start(socket_b, "b", "a", addr_a);

        for (node, peer_id, peer_primary) in [(&a, "b", false), (&b, "a", true)] {
            let mut last: Option<Heartbeat> = None;
            for _ in 0..5 {
                let Received { heartbeat, at } = next(&node.out);
                assert!(at <= Instant::now());
                assert_eq!(heartbeat.node_id, peer_id);
                assert_eq!(heartbeat.primary, peer_primary);
                assert_eq!((heartbeat.epoch, heartbeat.head), (3, 10));
                if let Some(last) = last {
                    assert_eq!(heartbeat.boot, last.boot, "boot is fixed per thread");
                    assert!(heartbeat.counter > last.counter);
                }
                last = Some(heartbeat);
            }
        }

        // The status is read at each send.
        b.status.publish(true, |log| log.epoch = 4);
        wait_until("b's new epoch reaches a", || {
            a.out
                .try_recv()
                .is_ok_and(|r| r.heartbeat.epoch == 4 && r.heartbeat.primary)
        });

        for node in [&a, &b] {
            assert!(node.stats.sent.load(Ordering::Relaxed) >= 5);
            assert!(node.stats.received.load(Ordering::Relaxed) >= 5);
            assert_eq!(node.stats.rejected.load(Ordering::Relaxed), 0);
        }
        a.stop();
        b.stop();
    }

    #[test]
    fn forged_replayed_truncated_and_foreign_datagrams_are_rejected() {
        let socket = local();
        let addr = socket.local_addr().unwrap();
        // The test plays the peer "b" from a socket of its own.
        let peer = local();
        let node = start(socket, "a", "b", peer.local_addr().unwrap());
        let beat = |node_id: &str, counter: u64| Heartbeat {
            node_id: node_id.to_string(),
            primary: false,
            epoch: 1,
            head: 0,
            boot: 1_000,
            counter,
        };
        let genuine = encode(&beat("b", 1), &keys(SECRET_A));
        peer.send_to(&genuine, addr).unwrap();
        assert_eq!(next(&node.out).heartbeat, beat("b", 1));

        let bad = [
            encode(&beat("b", 2), &keys(SECRET_B)), // forged: wrong key
            genuine.clone(),                        // replayed
            genuine[..genuine.len() - 1].to_vec(),  // truncated
            encode(&beat("c", 3), &keys(SECRET_A)), // another node
            encode(&beat("a", 4), &keys(SECRET_A)), // our own id, reflected
            vec![0u8; MAX_HEARTBEAT_BYTES + 100],   // oversized
        ];
        // From another socket too: the source address is not what is trusted.
        let stranger = local();
        for datagram in &bad {
            peer.send_to(datagram, addr).unwrap();
            stranger.send_to(datagram, addr).unwrap();
        }
        let rejected = 2 * bad.len() as u64;
        wait_until("every bad datagram is rejected", || {
            node.stats.rejected.load(Ordering::Relaxed) == rejected
        });

        // A genuine newer heartbeat still passes, and is the next thing out: none of the
        // rejected ones got through ahead of it.
        peer.send_to(&encode(&beat("b", 5), &keys(SECRET_A)), addr)
            .unwrap();
        assert_eq!(next(&node.out).heartbeat, beat("b", 5));
        assert!(node.out.try_recv().is_err());
        assert_eq!(node.stats.received.load(Ordering::Relaxed), 2);
        assert_eq!(node.stats.rejected.load(Ordering::Relaxed), rejected);

        // And the node's own heartbeats reach the peer, authenticated.
        let mut buf = [0u8; MAX_HEARTBEAT_BYTES + 1];
        peer.set_read_timeout(Some(DEADLINE)).unwrap();
        let (len, _) = peer.recv_from(&mut buf).unwrap();
        let heard = decode(&buf[..len], &keys(SECRET_A)).unwrap();
        assert_eq!(heard.node_id, "a");
        node.stop();
    }

    #[test]
    fn full_channel_drops_and_counts() {
        let socket = local();
        let addr = socket.local_addr().unwrap();
        let peer = local();
        let node = start_with(socket, "a", "b", peer.local_addr().unwrap(), 1);
        for counter in 1..=3 {
            let hb = Heartbeat {
                node_id: "b".to_string(),
                primary: false,
                epoch: 1,
                head: 0,
                boot: 1,
                counter,
            };
            peer.send_to(&encode(&hb, &keys(SECRET_A)), addr).unwrap();
        }
        wait_until("two heartbeats dropped", || {
            node.stats.dropped.load(Ordering::Relaxed) == 2
        });
        assert_eq!(next(&node.out).heartbeat.counter, 1);
        assert_eq!(node.stats.received.load(Ordering::Relaxed), 3);
        node.stop();
    }

    #[test]
    fn peer_down_is_not_fatal() {
        // A port with nobody on it: bind one, note it, close it.
        let down = local().local_addr().unwrap();
        let node = start(local(), "a", "b", down);
        wait_until("several heartbeats sent or refused", || {
            node.stats.sent.load(Ordering::Relaxed) + node.stats.send_errors.load(Ordering::Relaxed)
                >= 5
        });
        assert!(!node.handle.is_finished());
        node.stop();
    }

    #[test]
    fn ends_when_the_core_drops_the_receiver() {
        let socket = local();
        let addr = socket.local_addr().unwrap();
        let peer = local();
        let Running { handle, out, .. } = start(socket, "a", "b", peer.local_addr().unwrap());
        drop(out);
        let hb = Heartbeat {
            node_id: "b".to_string(),
            primary: false,
            epoch: 1,
            head: 0,
            boot: 1,
            counter: 1,
        };
        peer.send_to(&encode(&hb, &keys(SECRET_A)), addr).unwrap();
        wait_until("the thread ends", || handle.is_finished());
        handle.join().unwrap();
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let samples: Vec<Duration> = (0..200).map(|_| jittered_interval(1_000)).collect();
        let bounds = Duration::from_millis(900)..=Duration::from_millis(1_100);
        assert!(samples.iter().all(|d| bounds.contains(d)), "{samples:?}");
        assert!(samples.iter().any(|d| *d != samples[0]), "jitter varies");
        let shortest = jittered_interval(1);
        assert!((Duration::from_micros(900)..=Duration::from_micros(1_100)).contains(&shortest));
    }
}
