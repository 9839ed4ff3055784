//! Micro-benchmarks of the per-message hot path (criterion; `cargo bench --bench hot_path`).
//!
//! - `decode_send`: one client `send` line to a `Request` (what a worker does per send).
//! - `encode_msg`: one committed entry to its `msg` line (done once per message).
//! - `log_append_64`: a batch of 64 entries appended to a real segment log in a temp dir,
//!   never fsynced (the write path without the disk flush).
//! - `fanout_queue/N`: one published frame queued to N subscribers the way
//!   `daemon/io.rs::Worker::fan_out` does it (connection map lookup, replay check, queue
//!   bound, `Arc` clone into the connection's `VecDeque`, dirty set). The worker itself owns
//!   mio sockets and cannot be driven without them, so this is a faithful copy of that
//!   loop's data structures, not the worker's code; the socket writes are measured by
//!   `pbchat-bench fanout` and the profile in docs/benchmarks.md.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use pbchat::entry::Entry;
use pbchat::log::{Log, LogOptions};
use pbchat::wire::client::{decode_request, encode_msg};

fn entry(seq: u64) -> Entry {
    Entry {
        epoch: 3,
        seq,
        ts_ms: 1_764_084_000_123,
        room: "general".into(),
        from: "alice".into(),
        session: "3f2a9c".into(),
        id: format!("m-{seq}"),
        body: "x".repeat(64),
        orig: None,
    }
}

fn decode_send(c: &mut Criterion) {
    let line = format!(
        "{{\"type\":\"send\",\"room\":\"general\",\"id\":\"m-17\",\"body\":\"{}\"}}",
        "x".repeat(64)
    );
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_send", |b| {
        b.iter(|| decode_request(black_box(line.as_bytes()), 4096).expect("valid"))
    });
    let e = entry(1235);
    group.bench_function("encode_msg", |b| b.iter(|| encode_msg(black_box(&e))));
    group.finish();
}

fn log_append(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("pbchat-bench-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = LogOptions {
        dir: dir.clone(),
        segment_bytes: 64 << 20,
        // Retention keeps the temp dir small over a long measurement.
        retain_messages: 1_000_000,
        retain_bytes: 256 << 20,
    };
    let (mut log, _) = Log::open(options, |_| {}).expect("open the log");
    let mut next = log.last_seq() + 1;
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(64));
    group.bench_function("append_64", |b| {
        b.iter_batched(
            || {
                let batch: Vec<Entry> = (next..next + 64).map(entry).collect();
                next += 64;
                batch
            },
            |batch| log.append(&batch).expect("append"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The parts of `io.rs`'s `Conn` that fan-out touches.
struct Conn {
    out: VecDeque<Arc<[u8]>>,
    out_bytes: usize,
    subs: Vec<(Arc<str>, Option<u64>)>,
    closing: bool,
}

fn fanout_queue(c: &mut Criterion) {
    let frame: Arc<[u8]> = encode_msg(&entry(1)).into();
    let room: Arc<str> = Arc::from("general");
    let mut group = c.benchmark_group("fanout_queue");
    for n in [10usize, 100, 1000] {
        let mut conns: HashMap<u64, Conn> = (0..n as u64)
            .map(|id| {
                (
                    id * 2,
                    Conn {
                        out: VecDeque::new(),
                        out_bytes: 0,
                        subs: vec![(room.clone(), None)],
                        closing: false,
                    },
                )
            })
            .collect();
        let subscribers: Vec<u64> = (0..n as u64).map(|id| id * 2).collect();
        let mut dirty: HashSet<u64> = HashSet::new();
        let limit = 1 << 20;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for &id in &subscribers {
                    let Some(c) = conns.get_mut(&id) else {
                        continue;
                    };
                    if c.closing
                        || c.subs
                            .iter()
                            .any(|(r, cursor)| *r == room && cursor.is_some())
                    {
                        continue;
                    }
                    if c.out_bytes + frame.len() > limit {
                        continue;
                    }
                    c.out_bytes += frame.len();
                    c.out.push_back(frame.clone());
                    dirty.insert(id);
                }
                // What flush does after the write: drop the frames, clear the dirty set.
                for id in dirty.drain() {
                    let c = conns.get_mut(&id).expect("subscriber");
                    c.out.clear();
                    c.out_bytes = 0;
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_send, log_append, fanout_queue);
criterion_main!(benches);
