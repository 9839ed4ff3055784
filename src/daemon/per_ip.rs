//! Open client connections per source address (`client.max_connections_per_ip`): counted
//! by the acceptor when it takes a connection, released by the worker that drops it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
