//! The namespace fault lab: four hosts as network namespaces on a bridge that lives in a
//! fifth namespace, the real `pbchatd`, `pbchat-witness` and `pbchat-client` binaries run
//! inside them with `ip netns exec`, and faults made with nftables in the hosts' namespaces.
//!
//! Layout of one lab (`k` unique per lab in this process, names unique per process):
//!
//! ```text
//!   pbl-<pid>-<n>-h1 (10.77.k.1: node a)  ─veth─┐
//!   pbl-<pid>-<n>-h2 (10.77.k.2: node b)  ─veth─┤
//!   pbl-<pid>-<n>-h3 (10.77.k.3: clients) ─veth─┼─ br0 in pbl-<pid>-<n>-br
//!   pbl-<pid>-<n>-h4 (10.77.k.4: witness) ─veth─┘  (strict mode only; idle otherwise)
//! ```
//!
//! Nothing is created in the root namespace. Everything is removed when the `Lab` is
//! dropped (also while a failing test unwinds), and `Lab::new` first removes the namespaces
//! of earlier test processes that died without cleaning up.
//!
//! Clients: a test process cannot move one of its threads into a namespace without unsafe
//! code (the crate forbids it), so every client is a process started with
//! `ip netns exec`: `pbchat-client --listen` / `--history`, and [`SenderProc`], which is this
//! very test binary re-run with a filter on the test that calls [`client_process_main`].

#![allow(dead_code)]

pub mod relay;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::common::{wait_until, DEADLINE};
use crate::history::{self, History, Kind, Report};

pub const ROOM: &str = "general";
/// Ports every node uses inside its own host (each host has its own address).
pub const CLIENT_PORT: u16 = 7400;
pub const HEARTBEAT_PORT: u16 = 7401;
pub const REPLICATION_PORT: u16 = 7402;
/// The test that runs [`client_process_main`], by its path in the test binary.
pub const CLIENT_PROCESS_TEST: &str = "netlab::netlab_client_process";

/// Not a scenario: the body of the sender processes the lab starts inside a host (this test
/// binary re-run on this test alone). In an ordinary run it does nothing.
#[test]
fn netlab_client_process() {
    client_process_main();
}

/// One lab at a time per process: the scenarios assert timings (fail-over within detection
/// + 1 s, no false fail-over) that two labs sharing 2 cores would blur.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT_LAB: AtomicU32 = AtomicU32::new(1);

/// A host of the lab: 1 to [`HOSTS`].
pub type Host = u8;
/// Node a, node b, the clients, the witness.
pub const HOSTS: Host = 4;
/// The witness's host and UDP port (strict mode).
pub const WITNESS_HOST: Host = 4;
pub const WITNESS_PORT: u16 = 7410;

pub struct Lab {
    /// `pbl-<pid>-<n>`; the namespaces are `<prefix>-br` and `<prefix>-h1..h4`.
    pub prefix: String,
    /// The third octet of the lab's addresses: 10.77.k.0/24.
    pub k: u32,
    /// Configs, secret and data dirs (removed on drop).
    pub dir: PathBuf,
    /// What every client of the scenario did and saw, for the checker (`tests/it/history`).
    pub history: History,
    created: Vec<String>,
    _serial: MutexGuard<'static, ()>,
}

/// Runs `cmd`, returns (success, stdout+stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
        Err(e) => (false, e.to_string()),
    }
}

fn ip(args: &[&str]) -> (bool, String) {
    run(Command::new("ip").args(args))
}

fn must(what: &str, (ok, text): (bool, String)) {
    assert!(ok, "{what}: {text}");
}

/// Removes the `pbl-<pid>-*` namespaces of test processes that no longer exist (a test
/// killed before its `Drop` ran), after killing what still runs inside them (daemons and
/// clients such a test started).
pub fn sweep_stale() {
    let (_, list) = ip(&["netns", "list"]);
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("pbl-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_inside(name);
        let _ = ip(&["netns", "del", name]);
        eprintln!("netlab: removed stale namespace {name}");
    }
}

/// kill -9 every process running in namespace `ns`.
fn kill_inside(ns: &str) {
    let (_, pids) = ip(&["netns", "pids", ns]);
    for pid in pids.split_whitespace() {
        let _ = run(Command::new("kill").args(["-9", pid]));
    }
}

/// A lab that cannot be built: skipped outside CI, a failure in it.
fn skip(why: &str) -> Option<Lab> {
    assert!(
        std::env::var_os("CI").is_none(),
        "the namespace lab cannot run under CI: {why}"
    );
    eprintln!("skipped: {why}");
    None
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).1.trim().eq("0")
}

impl Lab {
    /// Builds the lab, or prints `skipped: ...` and returns None when this machine cannot
    /// (not root, no `ip netns`, no nftables). Under CI (`CI` set, as .ci/run does) it
    /// fails instead: CI runs as root with the tools installed, so a skip there hides a fault.
    pub fn new() -> Option<Lab> {
        if !is_root() {
            return skip("the namespace lab needs root (ip netns, nftables)");
        }
        if !run(Command::new("nft").arg("--version")).0 {
            return skip("nft is not installed (apt-get install -y nftables)");
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("pbl-{}-{n}", std::process::id());
        let dir = tempfile::tempdir().unwrap().keep();
        let mut lab = Lab {
            prefix,
            k: n % 250 + 1,
            dir,
            history: History::new(),
            created: Vec::new(),
            _serial: serial,
        };
        let br = lab.bridge_ns();
        let (ok, text) = ip(&["netns", "add", &br]);
        if !ok {
            return skip(&format!("`ip netns add` failed: {}", text.trim()));
        }
        lab.created.push(br.clone());
        for host in 1..=HOSTS {
            let ns = lab.ns(host);
            must("ip netns add", ip(&["netns", "add", &ns]));
            lab.created.push(ns);
        }
        lab.wire();
        Some(lab)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The namespace of host 1 to [`HOSTS`].
    pub fn ns(&self, host: Host) -> String {
        format!("{}-h{host}", self.prefix)
    }

    pub fn ip_of(&self, host: Host) -> String {
        format!("10.77.{}.{host}", self.k)
    }

    pub fn addr(&self, host: Host, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip_of(host)).parse().unwrap()
    }

    fn wire(&self) {
        let br = self.bridge_ns();
        must("bridge lo", ip(&["-n", &br, "link", "set", "lo", "up"]));
        must(
            "bridge",
            ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]),
        );
        must("bridge up", ip(&["-n", &br, "link", "set", "br0", "up"]));
        for host in 1..=HOSTS {
            let ns = self.ns(host);
            let port = format!("v{host}");
            must(
                "veth",
                ip(&[
                    "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ]),
            );
            must(
                "veth to bridge",
                ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]),
            );
            let cidr = format!("{}/24", self.ip_of(host));
            must(
                "address",
                ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]),
            );
            must("eth0 up", ip(&["-n", &ns, "link", "set", "eth0", "up"]));
            must("lo up", ip(&["-n", &ns, "link", "set", "lo", "up"]));
            self.nft(
                host,
                "add table inet pbl\n\
                 add chain inet pbl input { type filter hook input priority 0; policy accept; }\n\
                 add chain inet pbl output { type filter hook output priority 0; policy accept; }\n",
            );
        }
    }

    /// A command run inside `host`'s namespace.
    pub fn exec(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns").arg("exec").arg(self.ns(host)).arg(program);
        cmd
    }

    /// Runs an nft script inside `host`'s namespace.
    pub fn nft(&self, host: Host, script: &str) {
        let mut child = self
            .exec(host, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft in h{host}: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `host` drops every packet that comes from `from` (a one-way partition: `from` no
    /// longer reaches `host`, `host` still reaches `from`, but TCP to `from` stalls too since
    /// its answers are dropped).
    pub fn drop_from(&self, host: Host, from: Host) {
        self.history
            .fault(&format!("h{host} drops all from h{from}"));
        self.nft(
            host,
            &format!(
                "add rule inet pbl input ip saddr {} drop\n",
                self.ip_of(from)
            ),
        );
    }

    /// A full partition between two hosts: each drops what comes from the other.
    pub fn partition(&self, x: Host, y: Host) {
        self.drop_from(x, y);
        self.drop_from(y, x);
    }

    /// `host` drops `percent` % (at random, per packet) of the UDP datagrams it receives on
    /// `port`, counted: see [`Lab::dropped`].
    pub fn udp_loss(&self, host: Host, port: u16, percent: u32) {
        self.history
            .fault(&format!("h{host} drops {percent} % of udp to port {port}"));
        self.nft(
            host,
            &format!(
                "add rule inet pbl input udp dport {port} numgen random mod 100 < {percent} \
                 counter drop comment \"loss\"\n"
            ),
        );
    }

    /// `host` drops `percent` % (at random, per packet) of everything that comes from
    /// `from`: datagrams and TCP segments alike, counted.
    pub fn loss_from(&self, host: Host, from: Host, percent: u32) {
        self.history
            .fault(&format!("h{host} drops {percent} % of all from h{from}"));
        self.nft(
            host,
            &format!(
                "add rule inet pbl input ip saddr {} numgen random mod 100 < {percent} \
                 counter drop comment \"loss\"\n",
                self.ip_of(from)
            ),
        );
    }

    /// Packets dropped so far by `host`'s counted rules.
    pub fn dropped(&self, host: Host) -> u64 {
        let (ok, text) = run(self
            .exec(host, "nft")
            .args(["list", "chain", "inet", "pbl", "input"]));
        assert!(ok, "{text}");
        text.lines()
            .filter_map(|l| {
                let at = l.find("counter packets ")?;
                l[at + 16..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }

    /// Removes every fault from every host.
    pub fn heal(&self) {
        self.history.fault("heal");
        for host in 1..=HOSTS {
            self.nft(
                host,
                "flush chain inet pbl input\nflush chain inet pbl output\n",
            );
        }
    }

    /// Writes the pair's configs (node a in host 1 as primary, b in host 2 as backup) and
    /// secret. Every key not named here keeps its default (detection 1.0 s, sync
    /// replication, ack_timeout 1 s, cooldown 30 s) but logging, which is at debug.
    pub fn pair_configs(&self) -> (PathBuf, PathBuf) {
        let direct = |host| {
            (
                self.addr(host, HEARTBEAT_PORT),
                self.addr(host, REPLICATION_PORT),
            )
        };
        self.pair_configs_to([direct(2), direct(1)])
    }

    /// As [`Lab::pair_configs`], but node a sends its heartbeats and dials replication at
    /// `peer_of[0]` (b's, or a relay's) and node b at `peer_of[1]`.
    pub fn pair_configs_to(&self, peer_of: [(SocketAddr, SocketAddr); 2]) -> (PathBuf, PathBuf) {
        self.pair_configs_with(peer_of, "")
    }

    /// As [`Lab::pair_configs_to`], with `extra` (whole sections) appended to both configs.
    fn pair_configs_with(
        &self,
        peer_of: [(SocketAddr, SocketAddr); 2],
        extra: &str,
    ) -> (PathBuf, PathBuf) {
        let secret = self.dir.join("pair.secret");
        let out = Command::new(env!("CARGO_BIN_EXE_pbchatd"))
            .arg("--gen-secret")
            .arg(&secret)
            .output()
            .unwrap();
        assert!(out.status.success());
        let write = |id: &str, peer: &str, role: &str, me: Host, them: Host| {
            let (heartbeat_to, replication_to) = peer_of[me as usize - 1];
            let text = format!(
                "[node]\nid = \"{id}\"\nrole = \"{role}\"\ndata_dir = \"{data}\"\n\
                 [client]\nlisten = \"{me_ip}:{CLIENT_PORT}\"\n\
                 [peer]\nid = \"{peer}\"\nclient_address = \"{them_ip}:{CLIENT_PORT}\"\n\
                 heartbeat_address = \"{heartbeat_to}\"\n\
                 replication_address = \"{replication_to}\"\n\
                 [heartbeat]\nlisten = \"{me_ip}:{HEARTBEAT_PORT}\"\nsecret_file = \"{secret}\"\n\
                 [replication]\nlisten = \"{me_ip}:{REPLICATION_PORT}\"\n\
                 [logging]\nlevel = \"debug\"\n{extra}",
                data = self.dir.join(format!("data-{id}")).display(),
                me_ip = self.ip_of(me),
                them_ip = self.ip_of(them),
                secret = secret.display(),
            );
            let path = self.dir.join(format!("{id}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        };
        (
            write("a", "b", "primary", 1, 2),
            write("b", "a", "backup", 2, 1),
        )
    }

    /// Starts node a in host 1 and node b in host 2 and waits until b follows a.
    pub fn start_pair(&self) -> (Node, Node) {
        let (config_a, config_b) = self.pair_configs();
        self.start_configured(config_a, config_b)
    }

    /// As [`Lab::start_pair`], but everything between the nodes (heartbeats both ways, the
    /// replication link whichever way it is dialed) goes through the lab's relay in host 3,
    /// which carries it unimpaired until the test sets an [`relay::Impairment`].
    pub fn start_pair_via_relay(&self) -> (Node, Node, relay::Relay) {
        let relay = relay::Relay::new();
        let ns = self.ns(3);
        // (heartbeat, replication) relay ports in host 3 for traffic to a and to b.
        let to_a = (self.addr(3, 7511), self.addr(3, 7521));
        let to_b = (self.addr(3, 7512), self.addr(3, 7522));
        relay.udp(&ns, to_a.0, self.addr(1, HEARTBEAT_PORT), 1);
        relay.udp(&ns, to_b.0, self.addr(2, HEARTBEAT_PORT), 2);
        relay.tcp(&ns, to_a.1, self.addr(1, REPLICATION_PORT), 3);
        relay.tcp(&ns, to_b.1, self.addr(2, REPLICATION_PORT), 4);
        let (config_a, config_b) = self.pair_configs_to([to_b, to_a]);
        let (a, b) = self.start_configured(config_a, config_b);
        (a, b, relay)
    }

    /// A strict-mode pair (docs/failover.md, "Strict mode") with its witness in host 4:
    /// `failover.mode = "strict"`, lease 600 ms (the shipped default), every other key as in
    /// [`Lab::pair_configs`]. Starts the witness, then a (which takes epoch 1 through a
    /// grant) and b, and waits until b follows a.
    pub fn start_strict_pair(&self) -> (Node, Node, WitnessProc) {
        let direct = |host| {
            (
                self.addr(host, HEARTBEAT_PORT),
                self.addr(host, REPLICATION_PORT),
            )
        };
        let failover = format!(
            "[failover]\nmode = \"strict\"\nwitness = \"{}\"\nlease_ms = {STRICT_LEASE_MS}\n",
            self.addr(WITNESS_HOST, WITNESS_PORT)
        );
        let (config_a, config_b) = self.pair_configs_with([direct(2), direct(1)], &failover);
        let witness = WitnessProc::start(self);
        let (a, b) = self.start_configured(config_a, config_b);
        a.wait_log("promoted to primary in epoch 1");
        (a, b, witness)
    }

    /// As [`Lab::start_pair`], with each node's config text passed through `edit` (its
    /// host, the text) first.
    pub fn start_pair_edited(&self, edit: impl Fn(Host, String) -> String) -> (Node, Node) {
        let (config_a, config_b) = self.pair_configs();
        for (host, path) in [(1, &config_a), (2, &config_b)] {
            let text = std::fs::read_to_string(path).unwrap();
            std::fs::write(path, edit(host, text)).unwrap();
        }
        self.start_configured(config_a, config_b)
    }

    /// True when `host`'s eth0 carries the address `ip`.
    pub fn has_address(&self, host: Host, ip: &str) -> bool {
        let (ok, text) = run(Command::new("ip").args([
            "-n",
            &self.ns(host),
            "-o",
            "addr",
            "show",
            "dev",
            "eth0",
        ]));
        must("ip addr show", (ok, text.clone()));
        text.contains(&format!(" {ip}/"))
    }

    fn start_configured(&self, config_a: PathBuf, config_b: PathBuf) -> (Node, Node) {
        let a = Node::start(self, "a", 1, config_a);
        let b = Node::start(self, "b", 2, config_b);
        b.wait_log("following the primary");
        (a, b)
    }

    /// The room's whole history as the node at `server` stores it, fetched by
    /// `pbchat-client --history` from host 3 (at most 1000 messages: the protocol's limit;
    /// a longer history fails the test rather than be checked in part).
    pub fn history(&self, server: SocketAddr) -> Vec<Value> {
        let limit = 1000;
        let (ok, text) = {
            let out = self
                .exec(3, env!("CARGO_BIN_EXE_pbchat-client"))
                .args(["--server", &server.to_string(), "--nick", "checker"])
                .args(["--room", ROOM, "--history", &limit.to_string()])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                text.push_str(&String::from_utf8_lossy(&out.stderr));
            }
            (out.status.success(), text)
        };
        assert!(ok, "history from {server}: {text}");
        let history: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        assert!(
            history.len() < limit,
            "the history has {limit}+ messages: send fewer to check it whole"
        );
        history
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Whatever still runs inside (a daemon or client whose owner leaked it) goes first:
        // a namespace with processes in it outlives `ip netns del`.
        for ns in &self.created {
            kill_inside(ns);
        }
        for ns in self.created.iter().rev() {
            let (ok, text) = ip(&["netns", "del", ns]);
            if !ok {
                eprintln!("netlab: could not remove {ns}: {text}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lease of the lab's strict pairs and their witness (the shipped default).
pub const STRICT_LEASE_MS: u64 = 600;

/// `pbchat-witness` running in host 4 with the pair's secret, its state file in the lab's
/// directory (kept across [`WitnessProc::restart`]).
pub struct WitnessProc {
    ns: String,
    config: PathBuf,
    child: Option<Child>,
    /// Every stderr line with the time it was read.
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl WitnessProc {
    /// Writes its config and starts it; the pair's secret must exist already.
    pub fn start(lab: &Lab) -> WitnessProc {
        let config = lab.dir.join("witness.toml");
        let text = format!(
            "listen = \"{}\"\nsecret_file = \"{}\"\nstate_file = \"{}\"\n\
             lease_ms = {STRICT_LEASE_MS}\nlog_level = \"debug\"\n",
            lab.addr(WITNESS_HOST, WITNESS_PORT),
            lab.dir.join("pair.secret").display(),
            lab.dir.join("witness.state").display(),
        );
        std::fs::write(&config, text).unwrap();
        let mut witness = WitnessProc {
            ns: lab.ns(WITNESS_HOST),
            config,
            child: None,
            log: Arc::default(),
        };
        witness.spawn();
        witness
    }

    fn spawn(&mut self) {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_pbchat-witness"),
            ])
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pbchat-witness");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("witness on udp") {
                    let _ = tx.send(());
                }
                eprintln!("  w| {line}");
                log.lock().unwrap().push((Instant::now(), line));
            }
        });
        if rx.recv_timeout(DEADLINE).is_err() {
            panic!(
                "pbchat-witness did not start: {:?}",
                self.log.lock().unwrap()
            );
        }
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9 and start again on the same state file.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        let log = self.log.lock().unwrap();
        log.iter().any(|(_, l)| l.contains(needle))
    }

    pub fn wait_log(&self, needle: &str) -> Instant {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some((at, _)) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return *at;
            }
            assert!(
                Instant::now() < deadline,
                "witness: no log line with {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One `pbchatd` running inside a host's namespace.
pub struct Node {
    pub id: String,
    pub host: Host,
    pub client_addr: SocketAddr,
    ns: String,
    config: PathBuf,
    child: Option<Child>,
    /// Every stderr line with the time it was read.
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Node {
    pub fn start(lab: &Lab, id: &str, host: Host, config: PathBuf) -> Node {
        let mut node = Node {
            id: id.into(),
            host,
            client_addr: lab.addr(host, CLIENT_PORT),
            ns: lab.ns(host),
            config,
            child: None,
            log: Arc::default(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        // `ip netns exec` execs the program in place: the child's pid is pbchatd's.
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_pbchatd"),
                "-c",
            ])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pbchatd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            let id = self.id.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("clients on ") {
                        let _ = tx.send(());
                    }
                    eprintln!("  {id}| {line}");
                    log.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        if rx.recv_timeout(DEADLINE).is_err() {
            panic!(
                "pbchatd {} did not start: {:?}",
                self.id,
                log.lock().unwrap()
            );
        }
        self.child = Some(child);
        self.log = log;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9 and start again on the same data dir (the log so far is kept).
    pub fn restart(&mut self) {
        self.kill9();
        let old = self.log.lock().unwrap().clone();
        self.spawn();
        let mut log = self.log.lock().unwrap();
        let new = std::mem::replace(&mut *log, old);
        log.extend(new);
    }

    pub fn signal(&self, signal: &str) {
        must(
            "kill",
            run(Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string())),
        );
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log_time(needle).is_some()
    }

    /// When the first line containing `needle` was read.
    pub fn log_time(&self, needle: &str) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    /// The first line containing `needle`.
    pub fn log_line(&self, needle: &str) -> Option<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
    }

    pub fn log_count(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// Waits for a line containing `needle`; returns when it was read.
    pub fn wait_log(&self, needle: &str) -> Instant {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(t) = self.log_time(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: no log line with {needle:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process does not die of SIGKILL until it is continued on some
            // kernels' accounting of the wait; continue it first.
            let _ = run(Command::new("kill").args(["-CONT", &child.id().to_string()]));
        }
        self.kill9();
    }
}

/// Waits `span` (a scenario's "for N seconds"), not a condition.
pub fn hold(span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Node {
    /// Records in `history` each term this node's log announced (`promoted to primary in
    /// epoch N`: the first primary's start, a fail-over or a hand-over), at the time read.
    pub fn record_terms(&self, history: &History) {
        const NEEDLE: &str = "promoted to primary in epoch ";
        let log = self.log.lock().unwrap();
        for (at, line) in log.iter() {
            let Some(from) = line.find(NEEDLE) else {
                continue;
            };
            let epoch = line[from + NEEDLE.len()..]
                .split_whitespace()
                .next()
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| panic!("node {}: no epoch in {line:?}", self.id));
            history.record_at(
                *at,
                &format!("node:{}", self.id),
                Kind::Term {
                    node: self.id.clone(),
                    epoch,
                },
            );
        }
    }
}

impl Lab {
    /// Ends a scenario: records each node's terms and the room's stored history at `store`
    /// (the primary both nodes follow now) as receiver `store:<id>`, waits until every
    /// listener has shown every acknowledged and stored message (or the deadline passes),
    /// then checks the whole history (`tests/it/history`), prints its figures, and panics with
    /// the smallest excerpt of the history when an invariant broke.
    pub fn verify(&self, nodes: &[&Node], store: &Node, listeners: &[&Listener]) -> Report {
        for node in nodes {
            node.record_terms(&self.history);
        }
        let store_name = format!("store:{}", store.id);
        // A merge may still be re-committing: fetch until every acknowledged message is
        // stored (or the deadline passes, and the checker names what is missing).
        let acked = self.history.acked_keys();
        let deadline = Instant::now() + DEADLINE;
        let stored = loop {
            let stored = self.history(store.client_addr);
            let keys: std::collections::BTreeSet<(String, String)> = stored
                .iter()
                .map(|v| {
                    (
                        v["from"].as_str().unwrap_or_default().to_string(),
                        v["id"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            if acked.is_subset(&keys) || Instant::now() >= deadline {
                break stored;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        for v in stored {
            self.history.record(&store_name, deliver_of(&v));
        }
        let mut required = self.history.acked_keys();
        required.extend(self.history.delivered_keys(&store_name));
        let deadline = Instant::now() + DEADLINE;
        for l in listeners {
            while !required.is_subset(&self.history.delivered_keys(&l.nick))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut receivers: Vec<&str> = listeners.iter().map(|l| l.nick.as_str()).collect();
        receivers.push(&store_name);
        let report = history::assert_history(&self.history, &receivers);
        eprintln!("figures: {report}");
        report
    }
}

impl Lab {
    /// [`Lab::verify`], then strict mode's invariant over the same run
    /// ([`history::check_one_committer`]): the commits of the two nodes, as the senders'
    /// clocks bound them, never overlap. Panics with the excerpt when they may have.
    pub fn verify_strict(
        &self,
        nodes: &[&Node],
        store: &Node,
        listeners: &[&Listener],
    ) -> (Report, history::Committers) {
        let report = self.verify(nodes, store, listeners);
        let addresses: Vec<(String, String)> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.client_addr.to_string()))
            .collect();
        let addresses: Vec<(&str, &str)> = addresses
            .iter()
            .map(|(id, addr)| (id.as_str(), addr.as_str()))
            .collect();
        match history::check_one_committer(&self.history.events(), &addresses) {
            Ok(committers) => {
                eprintln!("figures: {committers}");
                (report, committers)
            }
            Err(violation) => panic!("{violation}"),
        }
    }
}

/// The history event of a `msg` line (a listener's or a stored history's).
fn deliver_of(v: &Value) -> Kind {
    let field = |name: &str| {
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("msg without {name}: {v}"))
    };
    let orig = v.get("orig").filter(|o| !o.is_null()).map(|o| {
        (
            o["epoch"].as_u64().expect("orig epoch"),
            o["seq"].as_u64().expect("orig seq"),
        )
    });
    Kind::Deliver {
        from: v["from"].as_str().expect("msg from").to_string(),
        id: v["id"].as_str().expect("msg id").to_string(),
        epoch: field("epoch"),
        seq: field("seq"),
        orig,
    }
}

/// A steady sender running as a process in a host: this test binary re-run on the test
/// named [`CLIENT_PROCESS_TEST`], which calls [`client_process_main`]. Each send attempt and
/// each ack it reports goes into the lab's history; closing its stdin stops it.
pub struct SenderProc {
    pub nick: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    history: History,
    done: Arc<AtomicBool>,
}

impl SenderProc {
    pub fn start(lab: &Lab, host: Host, nick: &str, servers: &[SocketAddr]) -> SenderProc {
        let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        let mut child = lab
            .exec(host, std::env::current_exe().unwrap())
            .args([
                CLIENT_PROCESS_TEST,
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("PBL_CLIENT_NICK", nick)
            .env("PBL_CLIENT_SERVERS", servers.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the sender process");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        {
            let (history, done, nick) = (lab.history.clone(), done.clone(), nick.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    // libtest may print `test netlab_client_process ... ` before the
                    // first report on the same line.
                    let Some(at) = line.find("PBL-") else {
                        continue;
                    };
                    let words: Vec<&str> = line[at..].split_whitespace().collect();
                    let clock = |at: usize| words.get(at).and_then(|w| w.parse().ok());
                    match words[..] {
                        ["PBL-SEND", id, node, ..] => history.record(
                            &nick,
                            Kind::Send {
                                id: id.into(),
                                node: node.into(),
                                clock_ns: clock(3),
                            },
                        ),
                        ["PBL-ACK", id, seq, node, ..] => history.record(
                            &nick,
                            Kind::Ack {
                                id: id.into(),
                                seq: seq.parse().unwrap(),
                                node: node.into(),
                                clock_ns: clock(4),
                            },
                        ),
                        ["PBL-DONE", ..] => done.store(true, Ordering::Relaxed),
                        _ => {}
                    }
                }
            });
        }
        SenderProc {
            nick: nick.into(),
            child: Some(child),
            stdin,
            history: lab.history.clone(),
            done,
        }
    }

    /// Acknowledged sends so far.
    pub fn count(&self) -> usize {
        self.history.ack_count(&self.nick)
    }

    /// Waits until `n` more sends than now are acknowledged.
    pub fn wait_more(&self, n: usize, what: &str) {
        let from = self.count();
        wait_until(what, || self.count() >= from + n);
    }

    /// Stops sending (the send in flight is given up to its read timeout) and waits for the
    /// process to report its last ack and exit.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sender {} did not stop", self.nick);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_until("the sender's last report", || {
            self.done.load(Ordering::Relaxed)
        });
    }
}

impl Drop for SenderProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on this kernel (the lab
/// makes no time namespaces), unlike `Instant`, which cannot leave its process.
pub fn monotonic_ns() -> u64 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The body of the sender process (see [`SenderProc`]): when `PBL_CLIENT_NICK` is set,
/// sends `m-0`, `m-1`, ... one at a time to the servers in `PBL_CLIENT_SERVERS` until its
/// stdin closes, riding over fail-overs the protocol's way (reconnect, the announced primary
/// first; rejoin; resend the unacknowledged id), and prints `PBL-SEND id server clock` per
/// send attempt, `PBL-ACK id seq server clock` per ack ([`monotonic_ns`]), `PBL-DONE` at
/// the end. Returns false when the
/// variables are not set (an ordinary run of the test suite).
pub fn client_process_main() -> bool {
    let Ok(nick) = std::env::var("PBL_CLIENT_NICK") else {
        return false;
    };
    let servers: Vec<SocketAddr> = std::env::var("PBL_CLIENT_SERVERS")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut out = std::io::stdout();
    let mut report = |line: String| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let mut next = 0u64;
    let mut target: Option<SocketAddr> = None;
    let mut turn = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let addr = target.take().unwrap_or_else(|| {
            turn += 1;
            servers[turn % servers.len()]
        });
        // After a failure the rotation goes on from the server that failed, so the next
        // try without a redirect is the other node, not the one that just went silent.
        turn = servers.iter().position(|s| *s == addr).unwrap_or(turn);
        let mut c = match crate::resilient::Connection::open(addr, &nick, ROOM) {
            Ok(c) => c,
            Err(redirect) => {
                target = redirect;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        'conn: while !stop.load(Ordering::Relaxed) {
            let id = format!("m-{next}");
            let body = format!("{nick} {next}");
            // Stamped before the send leaves: no node can have received it earlier.
            report(format!("PBL-SEND {id} {} {}", c.addr(), monotonic_ns()));
            if c.send(json!({"type":"send","room":ROOM,"id":id,"body":body}))
                .is_err()
            {
                break;
            }
            loop {
                let frame = match c.next(&nick, ROOM) {
                    crate::resilient::Next::Frame(frame) => *frame,
                    // The liveness rule moved it: resend the same id there.
                    crate::resilient::Next::Moved => continue 'conn,
                    crate::resilient::Next::Lost => break 'conn,
                };
                match frame.kind.as_str() {
                    "ack" if frame.id.as_deref() == Some(id.as_str()) => {
                        // Stamped after the ack arrived: the commit came before.
                        let seq = frame.seq.unwrap();
                        let addr = c.addr();
                        report(format!("PBL-ACK {id} {seq} {addr} {}", monotonic_ns()));
                        next += 1;
                        // A steady stream, not a flood: at most 50 messages a second,
                        // so a scenario's history stays under the 1000 `history` returns.
                        std::thread::sleep(Duration::from_millis(20));
                        continue 'conn;
                    }
                    "goodbye" => {
                        target = frame.primary.and_then(|p| p.parse().ok());
                        break 'conn;
                    }
                    "error" => match frame.code.as_deref() {
                        Some("unavailable") | Some("rate_limited") | Some("not_primary") => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue 'conn;
                        }
                        _ => panic!("{nick}: {frame:?}"),
                    },
                    _ => {}
                }
            }
        }
    }
    report("PBL-DONE".into());
    true
}

/// `pbchat-client --listen --after 0` running in a host: the real client's resume logic
/// (including skipping a re-committed message it showed already, by `orig`); each message
/// it shows goes into the lab's history as a delivery to `nick`.
pub struct Listener {
    pub nick: String,
    child: Child,
}

impl Listener {
    pub fn start(lab: &Lab, host: Host, nick: &str, servers: &[SocketAddr]) -> Listener {
        let mut cmd = lab.exec(host, env!("CARGO_BIN_EXE_pbchat-client"));
        // Nothing remembered in the runner's ~/.local/state between tests.
        cmd.arg("--no-state");
        for s in servers {
            cmd.arg("--server").arg(s.to_string());
        }
        let mut child = cmd
            .args(["--nick", nick, "--room", ROOM, "--listen", "--after", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        {
            let (history, nick) = (lab.history.clone(), nick.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["type"] == "msg" || v.get("seq").is_some() {
                            history.record(&nick, deliver_of(&v));
                        }
                    }
                }
            });
        }
        Listener {
            nick: nick.into(),
            child,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
