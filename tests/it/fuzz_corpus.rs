//! The fuzz corpus as a regression suite: every input kept under `fuzz/corpus/<target>/` (the
//! seeds written here, and every input a fuzzer ever crashed on, under a name saying what it
//! broke) goes through the same checks the fuzz targets run (`pbchat::fuzzing`), without
//! cargo-fuzz or a nightly feature.
//!
//! `PBCHAT_WRITE_FUZZ_SEEDS=1 cargo test --test it fuzz_corpus::` rewrites the seed files
//! (`seed-*`) from real encoders, so the fuzzers start from valid frames, configs and logs.

use std::fs;
use std::path::{Path, PathBuf};

use pbchat::entry::Entry;
use pbchat::fuzzing;
use pbchat::log::{Log, LogOptions};
use pbchat::wire::heartbeat::{self, Heartbeat};
use pbchat::wire::keyring::parse_keyring;
use pbchat::wire::replication::{self, PeerFrame};
use serde_json::json;

const TARGETS: [&str; 5] = [
    "client_frame",
    "heartbeat",
    "replication",
    "config",
    "log_recovery",
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn run(target: &str, data: &[u8]) {
    match target {
        "client_frame" => fuzzing::client_frame::check(data),
        "heartbeat" => fuzzing::heartbeat::check(data),
        "replication" => fuzzing::replication::check(data),
        "config" => fuzzing::config::check(data),
        "log_recovery" => {
            let (dir, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            fuzzing::log_recovery::check(data, dir.path(), fresh.path());
        }
        other => panic!("no fuzz target {other}"),
    }
}

#[test]
fn every_kept_fuzz_input_passes_its_targets_checks() {
    if std::env::var_os("PBCHAT_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    for target in TARGETS {
        let mut inputs: Vec<PathBuf> = fs::read_dir(corpus_dir(target))
            .unwrap_or_else(|e| panic!("{}: {e}", corpus_dir(target).display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 10, "{target}: only {} inputs", inputs.len());
        for input in inputs {
            let data = fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| run(target, &data));
            assert!(
                outcome.is_ok(),
                "{target}: {} broke a check",
                input.display()
            );
        }
    }
}

// ---- seeds ---------------------------------------------------------------------------------

fn write_target(target: &str, seeds: Vec<Vec<u8>>) {
    let dir = corpus_dir(target);
    fs::create_dir_all(&dir).unwrap();
    for old in fs::read_dir(&dir).unwrap() {
        let path = old.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("seed-")
        {
            fs::remove_file(path).unwrap();
        }
    }
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
    }
}

fn write_seeds() {
    write_target("client_frame", client_frame_seeds());
    write_target("heartbeat", heartbeat_seeds());
    write_target("replication", replication_seeds());
    write_target("config", config_seeds());
    write_target("log_recovery", log_recovery_seeds());
}

fn entry(seq: u64, room: &str, body: &str, orig: Option<(u64, u64)>) -> Entry {
    Entry {
        epoch: 1 + seq / 4,
        seq,
        ts_ms: 1_764_084_000_000 + seq,
        room: room.into(),
        from: "alice".into(),
        session: "s-1".into(),
        id: format!("m-{seq}"),
        body: body.into(),
        orig,
    }
}

/// Byte 0 is the read size less one (see the target).
fn client_frame_seeds() -> Vec<Vec<u8>> {
    let frames = [
        json!({"type":"hello","version":1,"nick":"alice","session":"3f2a9c"}),
        json!({"type":"hello","version":1,"nick":"bob","session":"s","token":"t0k3n"}),
        json!({"type":"hello","version":2,"nick":"alice","session":"s"}),
        json!({"type":"hello","version":1,"nick":"a".repeat(33),"session":"s"}),
        json!({"type":"hello","version":1,"nick":"al ice","session":"s\u{7f}"}),
        json!({"type":"hello","version":1,"nick":"alice","session":"s","token":7}),
        json!({"type":"join","room":"general","after":1200,"after_epoch":3}),
        json!({"type":"join","room":"#dev.ops-1"}),
        json!({"type":"join","room":""}),
        json!({"type":"leave","room":"general"}),
        json!({"type":"send","room":"general","id":"m-17","body":"hello"}),
        json!({"type":"send","room":"general","id":"m-18","body":"x".repeat(65)}),
        json!({"type":"send","room":"general","id":"m-19","body":"h\u{e9}llo \u{1f600}"}),
        json!({"type":"send","room":"general","body":"no id"}),
        json!({"type":"send","room":"r","id":"i".repeat(65),"body":""}),
        json!({"type":"history","room":"general","before":1235,"limit":50}),
        json!({"type":"history","room":"general","limit":99999}),
        json!({"type":"ping","token":"x"}),
        json!({"type":"ping","token":{"nested":[1,2,{"a":null}]}}),
        json!({"type":"quit"}),
        json!({"type":"bogus","extra":true}),
        json!({"type":7}),
        json!({"no_type":"join"}),
    ];
    let mut seeds: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let mut seed = vec![(i * 37 % 256) as u8];
            seed.extend_from_slice(frame.to_string().as_bytes());
            seed.push(b'\n');
            seed
        })
        .collect();
    let mut session = vec![0u8];
    for frame in &frames[..12] {
        session.extend_from_slice(frame.to_string().as_bytes());
        session.extend_from_slice(b"\r\n\n");
    }
    seeds.push(session);
    seeds.push(b"\x03[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n".to_vec());
    seeds.push(
        b"\x00{\"type\":\"send\",\"room\":\"r\",\"id\":\"\xff\xfe\",\"body\":\"x\"}\n".to_vec(),
    );
    seeds.push(b"\x01\xc3\x28\xa0\xa1\xe2\x28\xa1\n \r\n\t\n".to_vec());
    let mut long = vec![4u8];
    long.extend(std::iter::repeat_n(b'a', 300));
    long.push(b'\n');
    seeds.push(long);
    let mut edge = vec![255u8];
    edge.extend(std::iter::repeat_n(b' ', 255));
    edge.extend_from_slice(b"\r\n{\"type\":\"quit\"}");
    seeds.push(edge);
    seeds
}

fn heartbeat_seeds() -> Vec<Vec<u8>> {
    let keys = parse_keyring("fuzz", fuzzing::heartbeat::KEY_LINE).unwrap();
    let mut seeds = Vec::new();
    for (i, node_id) in ["a", "b", "node-1", &"n".repeat(32), "\u{e9}t\u{e9}"]
        .iter()
        .enumerate()
    {
        let beat = Heartbeat {
            node_id: node_id.to_string(),
            primary: i % 2 == 0,
            epoch: i as u64 * 3,
            head: 1000 + i as u64,
            boot: 1_764_084_000_000_000 + i as u64,
            counter: i as u64 + 1,
        };
        let datagram = heartbeat::encode(&beat, &keys);
        seeds.push(datagram[..datagram.len() - 32].to_vec());
        seeds.push(datagram[..40].to_vec());
        seeds.push(datagram.clone());
        let mut flipped = datagram;
        flipped[10] ^= 0x40;
        seeds.push(flipped);
    }
    // Replay-guard scripts: (node, boot, counter) triples.
    seeds.push(vec![0, 0, 1, 0, 0, 2, 0, 0, 2, 1, 1, 0, 0, 0, 1, 1, 0, 5]);
    seeds.push(vec![3, 2, 9, 2, 2, 9, 1, 2, 9, 0, 2, 9, 3, 2, 8, 3, 3, 0]);
    seeds.push(b"PBHB\x01garbage that is not a heartbeat at all, padded to length.....".to_vec());
    seeds
}

fn replication_seeds() -> Vec<Vec<u8>> {
    let entries: Vec<Entry> = (5..9)
        .map(|seq| entry(seq, "general", "hi", None))
        .collect();
    let frames = vec![
        PeerFrame::Hello {
            version: replication::REPLICATION_VERSION,
            node_id: "b".into(),
            epoch: 3,
            last_seq: 1234,
            first_seq: 1,
            epochs: vec![(1, 1), (3, 1000)],
            nonce: [7; 16],
            boot: 99,
        },
        PeerFrame::Welcome {
            node_id: "a".into(),
            epoch: 4,
            epochs: vec![(1, 1), (4, 1200)],
            head: 1300,
            nonce: [9; 16],
            key_id: 1,
            mac: [3; 32],
        },
        PeerFrame::Auth {
            key_id: 1,
            mac: [5; 32],
        },
        PeerFrame::Refuse {
            reason: "epoch 3 is older than ours (4)".into(),
        },
        PeerFrame::Truncate { after_seq: 1200 },
        PeerFrame::Restart { first_seq: 5 },
        PeerFrame::Entries {
            commit_seq: 8,
            entries: entries.clone(),
        },
        PeerFrame::Entries {
            commit_seq: 0,
            entries: vec![entry(1, "r", "carried", Some((2, 77)))],
        },
        PeerFrame::Ack { durable_seq: 8 },
        PeerFrame::Beat { epoch: 4, head: 8 },
        PeerFrame::Handover { epoch: 4 },
        PeerFrame::TookOver { epoch: 5 },
        PeerFrame::Resubmit {
            entries: entries[..2].to_vec(),
        },
        PeerFrame::ResubmitDone { epoch: 3, seq: 6 },
    ];
    let mut seeds = Vec::new();
    let mut all = vec![3, 0];
    for (i, frame) in frames.iter().enumerate() {
        let mut seed = vec![(i * 11 % 256) as u8, 0];
        replication::encode(frame, &mut seed);
        all.extend_from_slice(&seed[2..]);
        seeds.push(seed.clone());
        // The same frame cut short, and with a length claiming more than is there.
        seeds.push(seed[..seed.len() - 3].to_vec());
        if i % 3 == 0 {
            let mut long = seed.clone();
            long[2] = long[2].wrapping_add(9);
            seeds.push(long);
        }
    }
    seeds.push(all);
    seeds.push(vec![0, 0, 0xff, 0xff, 0xff, 0x7f, 1]);
    seeds
}

fn config_seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let primary = fs::read_to_string(root.join("config/primary.toml")).unwrap();
    let backup = fs::read_to_string(root.join("config/backup.toml")).unwrap();
    let minimal = "[node]\nid = \"a\"\nrole = \"primary\"\ndata_dir = \"d\"\n";
    let mut seeds: Vec<String> = vec![
        primary.clone(),
        backup.clone(),
        minimal.to_string(),
        format!("{minimal}[client]\nlisten = \"[::1]:7400\"\nmax_line_bytes = 255\n"),
        format!("{minimal}[client]\nmax_clients = 0\nbogus_key = 1\n"),
        format!("{minimal}[auth]\nmode = \"token\"\n"),
        format!("{minimal}[log]\nfsync = \"sometimes\"\nsegment_bytes = 1\n"),
        format!("{minimal}[peer]\nid = \"a\"\nclient_address = \"host:0\"\n"),
        format!("{minimal}[metrics]\nlisten = \"127.0.0.1:9400\"\n"),
        format!("{minimal}[logging]\nlevel = \"loud\"\ntarget = \"syslog\"\n"),
        "[node]\nid = \"\u{e9}\"\nrole = \"primary\"\ndata_dir = \"\"\n".to_string(),
        "[node\nid = \"a\"\n".to_string(),
        "x = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n".to_string(),
        "a = { b = { c = { d = { e = 1 } } } }\n".to_string(),
        "[node]\nid = 'a'\nrole = \"\"\"primary\"\"\"\ndata_dir = 'x'\n".to_string(),
        // Pair secret files.
        "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n".to_string(),
        "# rotated\n2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n\
         1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
            .to_string(),
        "1 0001\n".to_string(),
        "1 zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n".to_string(),
        // Users files (hashes made with `pbchatd --hash-token`, shape is what counts).
        "alice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$8lw6bOL1HtJMXl3RQAyhYFNF0b0aQ6uFHRUpUqrdLm4\n"
            .to_string(),
        "# users\nbob:$argon2id$v=19$m=19456,t=2,p=1$YWFhYWFhYWFhYWFhYWFhYQ$AAAA\nnobody\n:x\n"
            .to_string(),
    ];
    seeds.push(primary.replace("\n#", "\n"));
    seeds.into_iter().map(String::into_bytes).collect()
}

/// Real logs written by `Log::append`, their segments laid end to end (the target's input
/// format), whole and damaged.
fn log_recovery_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (count, segment_bytes, body) in [
        (1u64, 1 << 20, "x"),
        (3, 1 << 20, "hello"),
        (8, 200, "several segments"),
        (20, 64, "one per segment"),
        (5, 1 << 20, "h\u{e9}llo \u{1f600}"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            dir: dir.path().to_path_buf(),
            segment_bytes,
            retain_messages: u64::MAX,
            retain_bytes: u64::MAX,
        };
        let (mut log, _) = Log::open(options, |_| {}).unwrap();
        let entries: Vec<Entry> = (1..=count)
            .map(|seq| {
                let orig = (seq % 3 == 0).then_some((1, seq + 100));
                entry(seq, ["general", "r2"][seq as usize % 2], body, orig)
            })
            .collect();
        log.append(&entries).unwrap();
        log.sync().unwrap();
        drop(log);
        let mut names: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let mut whole = Vec::new();
        for name in names {
            whole.extend_from_slice(&fs::read(name).unwrap());
        }
        seeds.push(whole.clone());
        seeds.push(whole[..whole.len() - 5].to_vec());
        let mut flipped = whole.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        seeds.push(flipped);
        seeds.push(whole[..whole.len().min(30)].to_vec());
    }
    // Damage recipes (see the target): count, segment size, fault, where (2 bytes), bodies.
    for i in 0u8..16 {
        let mut recipe = vec![3 + i * 5, i * 9, i % 4, i.wrapping_mul(37), i / 3];
        recipe.extend(std::iter::repeat_n(b'a' + i, 20 + usize::from(i) * 7));
        seeds.push(recipe);
    }
    seeds.push(b"PBLOG00".to_vec());
    seeds.push(b"NOTALOG!\x10\x00\x00\x00".to_vec());
    // A zeroed segment's unused end after the records (kept, nothing cut), and bytes after
    // such zeros (cut: they were never acknowledged). The first seed is a whole log.
    let mut zeroed = seeds[0].clone();
    zeroed.resize(zeroed.len() + 300, 0);
    seeds.push(zeroed.clone());
    zeroed.extend_from_slice(b"\x2a\x00\x00\x00late");
    seeds.push(zeroed);
    seeds
}
