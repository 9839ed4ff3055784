//! Micro-benchmarks of the per-message hot path (criterion; `cargo bench --bench hot_path`).
//!
//! - `decode_send`: one client `send` line to a `Request` (what a worker does per send).
//! - `encode_msg`: one committed entry to its `msg` line (done once per message).
//! - `log_append_64`: a batch of 64 entries appended to a real segment log in a temp dir,
//!   never fsynced (the write path without the disk flush).
//! - `fanout_queue/N`: one published frame queued to N subscribers the way
//!   `daemon/io.rs::Worker::fan_out` does it (the worker's own `ConnMap`, replay check, queue
//!   bound, `Arc` clone into the connection's queue, dirty flag + list), then drained as a
//!   flush would. The worker itself owns mio sockets and cannot be driven without them, so
//!   this repeats that loop over the same structures; the socket writes are measured by
//!   `pbchat-bench fanout` and the profile in docs/benchmarks.md.
//! - `fanout_batch16/N`: 16 messages of one room joined by the daemon's real `PublishBatch`,
//!   then queued as one frame per subscriber (what a commit of 16 messages costs now);
//!   throughput counts deliveries (16 × N), to compare with 16 × `fanout_queue/N`.
use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use pbchat::daemon::batch::PublishBatch;
use pbchat::daemon::io::ConnMap;
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
    dirty: bool,
}

struct Room {
    conns: ConnMap<Conn>,
    subscribers: Vec<u64>,
    dirty: Vec<u64>,
    name: Arc<str>,
}

impl Room {
    fn new(n: usize) -> Room {
        let name: Arc<str> = Arc::from("general");
        let conns = (0..n as u64)
            .map(|id| {
                let conn = Conn {
                    out: VecDeque::new(),
                    out_bytes: 0,
                    subs: vec![(name.clone(), None)],
                    closing: false,
                    dirty: false,
                };
                (id * 2, conn)
            })
            .collect();
        Room {
            conns,
            subscribers: (0..n as u64).map(|id| id * 2).collect(),
            dirty: Vec::new(),
            name,
        }
    }

    /// `Worker::fan_out` for one frame.
    fn fan_out(&mut self, frame: &Arc<[u8]>) {
        const LIMIT: usize = 1 << 20;
        for &id in &self.subscribers {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.closing
                || c.subs
                    .iter()
                    .any(|(r, cursor)| *r == self.name && cursor.is_some())
            {
                continue;
            }
            if c.out_bytes + frame.len() > LIMIT {
                continue;
            }
            c.out_bytes += frame.len();
            c.out.push_back(frame.clone());
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// What a flush leaves after the write: empty queues, no dirty connection.
    fn drain(&mut self) {
        for id in self.dirty.drain(..) {
            let c = self.conns.get_mut(&id).expect("subscriber");
            c.out.clear();
            c.out_bytes = 0;
            c.dirty = false;
        }
    }
}

fn fanout_queue(c: &mut Criterion) {
    let frame: Arc<[u8]> = encode_msg(&entry(1)).into();
    let mut group = c.benchmark_group("fanout_queue");
    for n in [10usize, 100, 1000] {
        let mut room = Room::new(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                room.fan_out(black_box(&frame));
                room.drain();
            })
        });
    }
    group.finish();

    let frames: Vec<Arc<[u8]>> = (1..=16).map(|seq| encode_msg(&entry(seq)).into()).collect();
    let mut group = c.benchmark_group("fanout_batch16");
    for n in [10usize, 100, 1000] {
        let mut room = Room::new(n);
        let mut batch = PublishBatch::new(1 << 20);
        group.throughput(Throughput::Elements(16 * n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for (seq, frame) in frames.iter().enumerate() {
                    let done = batch.push(room.name.clone(), seq as u64 + 1, frame.clone());
                    assert!(done.is_none(), "16 short lines fit one batch");
                }
                let published = batch.take().expect("a batch");
                room.fan_out(black_box(&published.frame));
                room.drain();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_send, log_append, fanout_queue);
criterion_main!(benches);
