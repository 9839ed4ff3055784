//! Test harness: starts the real `pbchatd` binary on ephemeral ports and speaks the client
//! protocol to it over TCP. Every wait has a deadline; nothing sleeps a fixed time.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pbchat::wire::client::{decode_server_frame, ServerFrame};
use serde_json::{json, Value};

pub mod disk;
mod ports;
pub use ports::free_port;

/// How long any single expected event may take on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `log.segment_bytes` of test nodes: with fsync on, every node zeroes its next segment
/// ahead, and at the default 64 MiB a suite of a few hundred node starts would write
/// gigabytes of zeros; 1 MiB also makes the tests' logs roll.
pub const TEST_SEGMENT_BYTES: u64 = 1 << 20;

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    /// Removed on drop (a pair's nodes share a dir that `PairFiles` owns).
    pub owns_dir: bool,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Writes a standalone node's config into `dir` with `extra` TOML appended to the named
/// sections.
pub fn write_config(dir: &Path, role: &str, client_extra: &str, log_extra: &str) -> PathBuf {
    let text = format!(
        "[node]\nid = \"a\"\nrole = \"{role}\"\ndata_dir = \"{}\"\n\n\
         [client]\nlisten = \"127.0.0.1:0\"\n{client_extra}\n\n\
         [log]\nsegment_bytes = {TEST_SEGMENT_BYTES}\n{log_extra}\n\n\
         [logging]\nlevel = \"debug\"\n",
        dir.join("data").display()
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn pbchatd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pbchatd"))
}

impl Daemon {
    /// Starts pbchatd with a fresh temp dir.
    pub fn start(role: &str, client_extra: &str, log_extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap().keep();
        let config_path = write_config(&dir, role, client_extra, log_extra);
        Daemon::start_with(dir, config_path)
    }

    pub fn start_with(dir: PathBuf, config_path: PathBuf) -> Daemon {
        let mut child = pbchatd()
            .arg("-c")
            .arg(&config_path)
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
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(at) = line.find("clients on ") {
                        let _ = tx.send(line[at + 11..].trim().to_string());
                    }
                    eprintln!("  pbchatd| {line}");
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("pbchatd did not start: {:?}", log.lock().unwrap()));
        Daemon {
            child: Some(child),
            dir,
            config_path,
            addr: addr.parse().unwrap(),
            log,
            owns_dir: true,
        }
    }

    /// Restarts on the same data dir (and a new ephemeral port).
    pub fn restart(&mut self) {
        self.kill9();
        let mut next = Daemon::start_with(self.dir.clone(), self.config_path.clone());
        self.child = next.child.take();
        self.addr = next.addr;
        self.log = next.log.clone();
        // `next` owns nothing now but the shared dir, which must outlive it.
        next.owns_dir = false;
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY-free: libc::kill through a subprocess keeps the test crate unsafe-free.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(Instant::now() < deadline, "pbchatd did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A client that said hello and was welcomed.
    pub fn hello(&self, nick: &str, session: &str) -> Client {
        let mut client = self.client();
        client.send(json!({"type":"hello","version":1,"nick":nick,"session":session}));
        let welcome = client.recv();
        assert_eq!(welcome.kind, "welcome", "{welcome:?}");
        client
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// A client whose kernel receive buffer is tiny, so that not reading backs up quickly.
    pub fn connect_small_receive_buffer(addr: SocketAddr) -> Client {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, frame: Value) {
        let mut line = frame.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).unwrap();
    }

    /// Sends, reporting a dead connection instead of panicking.
    pub fn try_send(&mut self, frame: Value) -> bool {
        let mut line = frame.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).is_ok()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame; panics at the deadline or on close.
    pub fn recv(&mut self) -> ServerFrame {
        self.try_recv()
            .unwrap_or_else(|| panic!("connection closed while waiting for a frame"))
    }

    /// The next frame, or None when the node closed the connection.
    pub fn try_recv(&mut self) -> Option<ServerFrame> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            // A line cut off by the close (the node gave up on a reader that never drained):
            // the connection is over.
            Ok(_) if !line.ends_with('\n') => None,
            Ok(_) => Some(
                decode_server_frame(line.trim_end().as_bytes())
                    .unwrap_or_else(|e| panic!("bad frame {line:?}: {e}")),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("waiting for a frame: {e}"),
        }
    }

    /// Skips frames until one of `kind` arrives (presence and the like may come between).
    pub fn recv_kind(&mut self, kind: &str) -> ServerFrame {
        loop {
            let frame = self.recv();
            if frame.kind == kind {
                return frame;
            }
        }
    }

    /// True once the node has closed the connection (reads to EOF).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    /// The `msg` frames of a `history` answer, up to its `history_end`.
    pub fn history(&mut self, room: &str, limit: u64) -> Vec<ServerFrame> {
        self.send(json!({"type":"history","room":room,"limit":limit}));
        let mut answer = Vec::new();
        loop {
            let frame = self.recv();
            match frame.kind.as_str() {
                "msg" => answer.push(frame),
                "history_end" => return answer,
                _ => {}
            }
        }
    }

    pub fn join(&mut self, room: &str) -> ServerFrame {
        self.send(json!({"type":"join","room":room}));
        self.recv_kind("joined")
    }

    /// Sends and waits for the ack; returns its seq.
    pub fn send_acked(&mut self, room: &str, id: &str, body: &str) -> u64 {
        self.send(json!({"type":"send","room":room,"id":id,"body":body}));
        loop {
            let frame = self.recv();
            match frame.kind.as_str() {
                "ack" if frame.id.as_deref() == Some(id) => return frame.seq.unwrap(),
                "error" => panic!("send {id}: {frame:?}"),
                _ => {}
            }
        }
    }
}

/// `pbchatctl ARGS`.
pub fn pbchatctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbchatctl"))
        .args(args)
        .output()
        .expect("run pbchatctl")
}

/// `pbchatctl -c CONFIG ARGS`.
pub fn ctl(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["-c", config.to_str().unwrap()];
    all.extend_from_slice(args);
    pbchatctl(&all)
}

/// `pbchatctl -c CONFIG status --json`, parsed; `None` while the node cannot answer.
pub fn status_json(config: &Path) -> Option<Value> {
    let out = ctl(config, &["status", "--json"]);
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("status --json is JSON"))
}

/// Waits until the node of `config` reports a status for which `state` holds, and returns
/// that status. States are read from `pbchatctl status --json`, not from log wording.
pub fn wait_status(config: &Path, what: &str, state: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let deadline = Instant::now() + DEADLINE;
    loop {
        last = status_json(config).or(last);
        if last.as_ref().is_some_and(&state) {
            return last.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{}: not {what} within {DEADLINE:?}; last status: {last:?}",
            config.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The states tests wait for, as `pbchatctl status --json` shows them.
pub mod state {
    use serde_json::Value;

    pub fn primary(s: &Value) -> bool {
        s["role"] == "primary"
    }

    /// A backup whose replication link is up to its peer, which is primary in its epoch.
    pub fn following_its_peer(s: &Value) -> bool {
        s["role"] == "backup"
            && s["peer"]["link"] == true
            && s["peer"]["primary"] == true
            && s["peer"]["epoch"] == s["epoch"]
    }

    /// The same, with the peer named.
    pub fn following<'a>(peer: &'a str) -> impl Fn(&Value) -> bool + 'a {
        move |s| s["peer"]["id"] == peer && following_its_peer(s)
    }

    /// A primary committing alone (no backup acknowledging).
    pub fn degraded(s: &Value) -> bool {
        s["role"] == "primary" && s["degraded"] == true
    }

    /// A synchronous primary whose linked backup holds everything up to `head` or later.
    pub fn in_sync(head: u64) -> impl Fn(&Value) -> bool {
        move |s| {
            s["role"] == "primary"
                && s["head"].as_u64() >= Some(head)
                && s["degraded"] == false
                && s["peer"]["link"] == true
                && s["peer"]["lag"] == 0
                && s["peer"]["acked"] == s["last_seq"]
        }
    }
}

/// Two nodes' configs naming each other, a shared secret, and their data dirs, in one temp
/// dir removed on drop.
pub struct PairFiles {
    pub dir: PathBuf,
    pub config_a: PathBuf,
    pub config_b: PathBuf,
    pub secret: PathBuf,
    /// Client addresses: fixed ports, so that each node can name the other's.
    pub client_a: SocketAddr,
    pub client_b: SocketAddr,
    pub heartbeat_a: SocketAddr,
    pub heartbeat_b: SocketAddr,
}

impl PairFiles {
    /// `heartbeat_extra`: lines for both nodes' [heartbeat] section.
    pub fn new(heartbeat_extra: &str) -> PairFiles {
        PairFiles::with(heartbeat_extra, "", "")
    }

    pub fn with(heartbeat_extra: &str, replication_extra: &str, log_extra: &str) -> PairFiles {
        PairFiles::with_failover(heartbeat_extra, replication_extra, log_extra, "")
    }

    /// `failover_extra`: lines for both nodes' [failover] section.
    pub fn with_failover(
        heartbeat_extra: &str,
        replication_extra: &str,
        log_extra: &str,
        failover_extra: &str,
    ) -> PairFiles {
        let dir = tempfile::tempdir().unwrap().keep();
        let secret = dir.join("pair.secret");
        let status = pbchatd().arg("--gen-secret").arg(&secret).output().unwrap();
        assert!(status.status.success());
        let port = |udp| free_port(udp);
        let (ca, cb) = (port(false), port(false));
        let (ha, hb) = (port(true), port(true));
        let (ra, rb) = (port(false), port(false));
        let write = |name: &str,
                     id: &str,
                     peer: &str,
                     role: &str,
                     mine: (u16, u16, u16),
                     theirs: (u16, u16, u16)| {
            let text = format!(
                "[node]\nid = \"{id}\"\nrole = \"{role}\"\ndata_dir = \"{data}\"\n\
                 [client]\nlisten = \"127.0.0.1:{c}\"\nrate_per_sec = 100000\nrate_burst = 100000\n\
                 [log]\nsegment_bytes = {TEST_SEGMENT_BYTES}\n{log_extra}\n\
                 [peer]\nid = \"{peer}\"\nclient_address = \"127.0.0.1:{pc}\"\n\
                 heartbeat_address = \"127.0.0.1:{ph}\"\nreplication_address = \"127.0.0.1:{pr}\"\n\
                 [heartbeat]\nlisten = \"127.0.0.1:{h}\"\nsecret_file = \"{secret}\"\n{heartbeat_extra}\n\
                 [replication]\nlisten = \"127.0.0.1:{r}\"\n{replication_extra}\n\
                 [failover]\npromotion_cooldown_ms = 0\n{failover_extra}\n\
                 [logging]\nlevel = \"debug\"\n",
                data = dir.join(format!("data-{id}")).display(),
                c = mine.0,
                h = mine.1,
                r = mine.2,
                pc = theirs.0,
                ph = theirs.1,
                pr = theirs.2,
                secret = secret.display(),
            );
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let config_a = write("a.toml", "a", "b", "primary", (ca, ha, ra), (cb, hb, rb));
        let config_b = write("b.toml", "b", "a", "backup", (cb, hb, rb), (ca, ha, ra));
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        PairFiles {
            dir,
            config_a,
            config_b,
            secret,
            client_a: addr(ca),
            client_b: addr(cb),
            heartbeat_a: addr(ha),
            heartbeat_b: addr(hb),
        }
    }

    pub fn start_a(&self) -> Daemon {
        let mut d = Daemon::start_with(self.dir.clone(), self.config_a.clone());
        d.owns_dir = false;
        d
    }

    pub fn start_b(&self) -> Daemon {
        let mut d = Daemon::start_with(self.dir.clone(), self.config_b.clone());
        d.owns_dir = false;
        d
    }
}

impl Drop for PairFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    /// Waits until `pbchatctl status --json` shows a state for which `state` holds.
    pub fn wait_state(&self, what: &str, state: impl Fn(&Value) -> bool) -> Value {
        wait_status(&self.config_path, what, state)
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log_contains(needle) {
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

/// Sends `signal` (a name such as "STOP") to a process.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A welcomed client of the node at `addr`.
pub fn hello_at(addr: SocketAddr, nick: &str, session: &str) -> Client {
    let mut client = Client::connect(addr);
    client.send(json!({"type":"hello","version":1,"nick":nick,"session":session}));
    let welcome = client.recv();
    assert_eq!(welcome.kind, "welcome", "{welcome:?}");
    client
}

/// The raw answer (status line, headers, body) to `GET path` on an HTTP listener.
pub fn http_get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// `GET path`'s status code and body.
pub fn http_status(address: &str, path: &str) -> (u16, String) {
    let response = http_get(address, path);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// Fails unless `promtool check metrics` (Debian's `prometheus` package; scripts/test.sh
/// installs it) passes the exposition text `body`.
pub fn promtool_check(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus) runs");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `condition` until it holds; fails naming `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
