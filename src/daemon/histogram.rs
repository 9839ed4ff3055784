//! Latency histograms for `/metrics`: fixed buckets, relaxed atomic counters, no lock and
//! no allocation on an observation (a bucket search over [`BUCKETS_US`] and three adds).
//!
//! Hand-written rather than a crate's: `prometheus-client` (0.26) takes a lock on every
//! observation and encodes OpenMetrics, not the text format this endpoint serves;
//! `prometheus` (0.14) brings protobuf and a global registry for what is here ~100 lines.
//! It owns the counters and their text; it measures nothing itself.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 100 µs (a page-cache fsync, a loopback
/// round trip) to 5 s (a disk that stalls; past the default detection time everything is
/// in `+Inf`). Roughly ×2.5 steps, as Prometheus's default buckets, 15 of them.
pub const BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// One histogram: a counter per bucket (not cumulative: each observation adds to one), the
/// count and the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `buckets[i]`: observations in (BUCKETS_US[i-1], BUCKETS_US[i]]; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let i = BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The exposition of `name` (with its `_seconds` unit), cumulative buckets, sum and count.
    /// A scrape racing an observation may see a count a step off its buckets; Prometheus
    /// tolerates that, and it heals by the next scrape.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match BUCKETS_US.get(i) {
                Some(&us) => {
                    let le = us as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The node's latency histograms, shared (one `Arc`) by the threads that measure them (the
/// delivery queue's is in `io::IoStats`, which every worker holds already).
#[derive(Default)]
pub struct Latencies {
    /// Primary: a send ordered by the core to its commit, when its ack goes out.
    pub send_ack: Histogram,
    /// The log writer's fsync (`log.fsync` always or batch).
    pub fsync: Histogram,
    /// Primary: entries sent to the backup to the backup's ack that they are durable.
    pub replication_round_trip: Histogram,
}

impl Latencies {
    pub fn render(&self, out: &mut String) {
        self.send_ack.render(
            out,
            "pbchat_send_ack_seconds",
            "Primary: from a send ordered by the core to its commit (its ack goes out then).",
        );
        self.fsync.render(
            out,
            "pbchat_log_fsync_seconds",
            "Duration of the log writer's fsyncs.",
        );
        self.replication_round_trip.render(
            out,
            "pbchat_replication_round_trip_seconds",
            "Primary: entries sent to the backup until it acknowledges them durable (one sample in flight at a time).",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets_with_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on a bound: in that bucket (le is <=)
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // past every bound
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "Test.");
        assert!(out.starts_with("# HELP x_seconds Test.\n# TYPE x_seconds histogram\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00025\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"5\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 60.003201\n"), "{out}");
        assert!(out.ends_with("x_seconds_count 4\n"), "{out}");
        assert_eq!(h.count(), 4);
    }
}
