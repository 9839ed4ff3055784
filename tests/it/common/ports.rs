//! Free loopback ports for configs that must name a port before their server starts.
//!
//! One definition for two users that must not depend on each other: the integration tests
//! (`tests/it/common`, whose `mod ports` this file is) and the benchmark harness
//! (`bench/src/procs.rs` includes it with `#[path]`), so that the tests need not link the
//! bench. Only `std`: it compiles in either crate.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// Where [`free_port`] looks when the kernel's ephemeral range cannot be read: Linux's default
/// range starts here.
const EPHEMERAL_START_DEFAULT: u16 = 32768;
/// The lowest port [`free_port`] hands out: above the ports services usually take.
const PICK_LOW: u16 = 10000;
/// Fewest ports below the ephemeral range worth picking from; with fewer, fall back to the OS.
const PICK_MIN_SPAN: u16 = 2000;

/// A free loopback port for a config that must name it before the server starts.
///
/// The port comes from below the kernel's ephemeral range: one the OS handed out from inside
/// that range (port 0) and took back can be given to any process's next outgoing connection
/// as its source port before the server binds it, which made a test's daemon fail with
/// "Address already in use". Ports are tried from a start that differs per process and never
/// twice within one, and each is checked free (TCP and UDP) before it is returned.
pub fn free_port(udp: bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

    let ephemeral_start = ephemeral_start();
    let span = ephemeral_start.saturating_sub(PICK_LOW);
    if span < PICK_MIN_SPAN {
        return os_port(udp);
    }
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = std::process::id().wrapping_mul(7919) ^ nanos;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PICK_LOW + (n % u32::from(span)) as u16;
        let addr = loopback(port);
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return port;
        }
    }
    os_port(udp)
}

/// The first port the kernel may give an outgoing connection as its source port.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(EPHEMERAL_START_DEFAULT)
}

/// A port the OS hands out and takes back: from the ephemeral range, so see [`free_port`].
fn os_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_or(0, |a| a.port())
    } else {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_or(0, |a| a.port())
    }
}

/// `port` on 127.0.0.1.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ephemeral_start = ephemeral_start();
        let ports: Vec<u16> = (0..50).map(|i| free_port(i % 2 == 0)).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for port in ports {
            if ephemeral_start.saturating_sub(PICK_LOW) >= PICK_MIN_SPAN {
                assert!((PICK_LOW..ephemeral_start).contains(&port), "{port}");
            }
            TcpListener::bind(loopback(port)).unwrap();
            UdpSocket::bind(loopback(port)).unwrap();
        }
    }
}
