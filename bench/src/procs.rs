//! Starts and stops the servers under test: `pbchatd` (one node or a pair) and
//! `redis-server`, each pinned to a core with `taskset`, from generated configs in a temp
//! dir with free loopback ports. Reads their stderr into memory so a run can wait for a log
//! line, and reads CPU time and peak RSS from `/proc/<pid>`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The tests' definition, shared rather than copied (its `//!` says why it lives there).
#[path = "../../tests/it/common/ports.rs"]
mod ports;
pub use ports::free_port;
use ports::loopback;

/// How long a server may take to start, or a node to see its peer, on a loaded machine.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "pbchat-bench-{label}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// CPU time (user + system) of a process in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 11 and 12 after the name.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Where one core's time went, in clock ticks, from its `cpuN` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreTimes {
    /// Every column: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
    pub idle: u64,
    /// Idle with a disk request outstanding: a server that waits on its fsync shows here.
    pub iowait: u64,
}

impl CoreTimes {
    pub fn read(core: usize) -> Option<CoreTimes> {
        parse_core_times(&std::fs::read_to_string("/proc/stat").ok()?, core)
    }

    /// What went by from `earlier` to `self`.
    pub fn since(self, earlier: CoreTimes) -> CoreTimes {
        CoreTimes {
            total: self.total.saturating_sub(earlier.total),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
        }
    }

    /// `part`'s share of the whole, in percent.
    pub fn percent(self, part: u64) -> f64 {
        part as f64 * 100.0 / self.total.max(1) as f64
    }
}

fn parse_core_times(stat: &str, core: usize) -> Option<CoreTimes> {
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))?;
    let columns: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|column| column.parse().ok())
        .collect::<Option<_>>()?;
    let [_, _, _, idle, iowait, _, _, _] = columns[..] else {
        return None;
    };
    Some(CoreTimes {
        total: columns.iter().sum(),
        idle,
        iowait,
    })
}

/// Nanoseconds the threads of a process spent runnable but waiting for a CPU (the second
/// field of each `/proc/<pid>/task/*/schedstat`): a pinned server that waits a lot shares
/// its core with something else, and its figures are contended.
pub fn runnable_wait_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        total += schedstat_wait_ns(&task.path().join("schedstat")).unwrap_or(0);
    }
    Some(total)
}

/// The same for the calling thread alone (the load generator: if it waited for its core,
/// it may have been the limit).
pub fn own_runnable_wait_ns() -> u64 {
    schedstat_wait_ns(Path::new("/proc/thread-self/schedstat")).unwrap_or(0)
}

/// The runnable-wait field (the second) of a `schedstat` file.
fn schedstat_wait_ns(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Clock ticks per second as `/proc` counts them (USER_HZ; 100 on Linux for every
/// architecture this runs on).
pub const TICKS_PER_SEC: f64 = 100.0;

/// A `Vm*` line of `/proc/<pid>/status` in KiB (`VmHWM` is peak RSS, `VmRSS` current).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One server process with its stderr captured.
pub struct Server {
    pub name: String,
    child: Option<Child>,
    pub pid: u32,
    /// Every stderr (and stdout, for Redis) line so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Printed as they come when set (`--verbose`).
    echo: bool,
}

impl Server {
    /// Starts `program args` pinned to `core` (when given).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        core: Option<usize>,
        echo: bool,
    ) -> Result<Server, String> {
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{name}: cannot start {}: {e}", program.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let label = name.to_string();
            std::thread::Builder::new()
                .name(format!("log-{label}"))
                .spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        if echo {
                            eprintln!("  {label}| {line}");
                        }
                        log.lock().expect("log lock").push(line);
                    }
                })
                .map_err(|e| format!("{name}: log thread: {e}"))?;
        }
        // `taskset` execs the program, so the pid is the server's own.
        let pid = child.id();
        Ok(Server {
            name: name.to_string(),
            child: Some(child),
            pid,
            log,
            echo,
        })
    }

    /// The first log line containing `needle` at or after line `from`, waiting up to
    /// `deadline`; an error if the process exits or the deadline passes first.
    pub fn wait_log_from(
        &mut self,
        from: usize,
        needle: &str,
        deadline: Duration,
    ) -> Result<(usize, String), String> {
        let until = Instant::now() + deadline;
        loop {
            {
                let log = self.log.lock().expect("log lock");
                if let Some((i, line)) = log
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, l)| l.contains(needle))
                {
                    return Ok((i, line.clone()));
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} exited ({status}) before logging {needle:?}; last lines:\n{}",
                        self.name,
                        self.tail(15)
                    ));
                }
            }
            if Instant::now() >= until {
                return Err(format!(
                    "{}: no log line with {needle:?} within {deadline:?}; last lines:\n{}",
                    self.name,
                    self.tail(15)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn wait_log(&mut self, needle: &str, deadline: Duration) -> Result<String, String> {
        self.wait_log_from(0, needle, deadline).map(|(_, l)| l)
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().expect("log lock").len()
    }

    pub fn log_count(&self, needle: &str) -> usize {
        let log = self.log.lock().expect("log lock");
        log.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn tail(&self, lines: usize) -> String {
        let log = self.log.lock().expect("log lock");
        let start = log.len().saturating_sub(lines);
        log[start..].join("\n")
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name ("USR1", "TERM") with kill(1).
    pub fn signal(&self, signal: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .map_err(|e| format!("kill -{signal}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{signal} {} failed", self.pid))
        }
    }

    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn echo(&self) -> bool {
        self.echo
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How to run pbchatd nodes.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub pbchatd: PathBuf,
    /// `log.fsync`: "batch", "always" or "never".
    pub fsync: String,
    /// `replication.mode` for a pair: "sync" or "async".
    pub replication: String,
    pub max_clients: usize,
    /// Extra lines for the `[client]` section.
    pub client_extra: String,
    pub echo: bool,
    /// Cores for the first and second node; `None` leaves them unpinned.
    pub cores: [Option<usize>; 2],
}

/// One node's config file and address, so it can be restarted on the same data.
pub struct NodeFiles {
    pub id: String,
    pub config: PathBuf,
    pub client: SocketAddr,
    /// The `[web]` listener: WebSocket members connect to its `/ws`.
    pub web: SocketAddr,
    pub data_dir: PathBuf,
    pub core: Option<usize>,
}

impl NodeFiles {
    pub fn start(&self, options: &NodeOptions) -> Result<Server, String> {
        Server::spawn(
            &format!("pbchatd-{}", self.id),
            &options.pbchatd,
            &["-c".to_string(), self.config.display().to_string()],
            self.core,
            options.echo,
        )
    }
}

/// `client.send_queue_bytes` of the benchmark's nodes (see [`client_section`]).
pub const BENCH_SEND_QUEUE_BYTES: usize = 8 << 20;

/// `[client]` and `[web]`: every benchmark node serves both transports, so a run can put
/// its members on either without another server shape.
fn client_section(options: &NodeOptions, port: u16, web_port: u16) -> String {
    // Rate limits and timeouts out of the way: the benchmark measures throughput, its
    // clients all come from 127.0.0.1, and its idle clients must not be closed for idling
    // during a long capacity run. The send queue is Redis's pub/sub output buffer soft
    // limit (8 MB): with P = N/10 senders a member may have P × window messages queued,
    // more than the 1 MiB default, which would measure slow-consumer drops instead.
    format!(
        "[client]\nlisten = \"127.0.0.1:{port}\"\nrate_per_sec = 10000000\nrate_burst = 10000000\n\
         max_clients = {max}\nmax_connections_per_ip = {max}\nidle_timeout_ms = 3600000\n\
         hello_timeout_ms = 600000\nsend_queue_bytes = {queue}\n{}\n\n\
         [web]\nlisten = \"127.0.0.1:{web_port}\"\n",
        options.client_extra,
        max = options.max_clients,
        queue = BENCH_SEND_QUEUE_BYTES,
    )
}

/// Writes a standalone node's config into `dir`.
pub fn single_files(dir: &Path, options: &NodeOptions) -> Result<NodeFiles, String> {
    let (port, web_port) = (free_port(false), free_port(false));
    let data_dir = dir.join("data-a");
    let text = format!(
        "[node]\nid = \"a\"\nrole = \"primary\"\ndata_dir = \"{}\"\n\n{}\n\
         [log]\nfsync = \"{}\"\n\n[logging]\nlevel = \"info\"\n",
        data_dir.display(),
        client_section(options, port, web_port),
        options.fsync
    );
    let config = dir.join("a.toml");
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    Ok(NodeFiles {
        id: "a".into(),
        config,
        client: loopback(port),
        web: loopback(web_port),
        data_dir,
        core: options.cores[0],
    })
}

/// Writes two nodes' configs naming each other and a shared secret into `dir`: `a` is
/// configured as primary, `b` as backup.
pub fn pair_files(dir: &Path, options: &NodeOptions) -> Result<[NodeFiles; 2], String> {
    let secret = dir.join("pair.secret");
    let output = Command::new(&options.pbchatd)
        .arg("--gen-secret")
        .arg(&secret)
        .output()
        .map_err(|e| format!("{} --gen-secret: {e}", options.pbchatd.display()))?;
    if !output.status.success() {
        return Err(format!(
            "pbchatd --gen-secret failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let ports: Vec<(u16, u16, u16, u16)> = (0..2)
        .map(|_| {
            let client = free_port(false);
            let (heartbeat, replication) = (free_port(true), free_port(false));
            (client, heartbeat, replication, free_port(false))
        })
        .collect();
    let mut files = Vec::new();
    for (me, (id, peer, role)) in [("a", "b", "primary"), ("b", "a", "backup")]
        .into_iter()
        .enumerate()
    {
        let (c, h, r, w) = ports[me];
        let (pc, ph, pr, _) = ports[1 - me];
        let data_dir = dir.join(format!("data-{id}"));
        let text = format!(
            "[node]\nid = \"{id}\"\nrole = \"{role}\"\ndata_dir = \"{data}\"\n\n{client}\n\
             [log]\nfsync = \"{fsync}\"\n\n\
             [peer]\nid = \"{peer}\"\nclient_address = \"127.0.0.1:{pc}\"\n\
             heartbeat_address = \"127.0.0.1:{ph}\"\nreplication_address = \"127.0.0.1:{pr}\"\n\n\
             [heartbeat]\nlisten = \"127.0.0.1:{h}\"\nsecret_file = \"{secret}\"\n\n\
             [replication]\nlisten = \"127.0.0.1:{r}\"\nmode = \"{mode}\"\n\n\
             [failover]\npromotion_cooldown_ms = 0\n\n[logging]\nlevel = \"info\"\n",
            data = data_dir.display(),
            client = client_section(options, c, w),
            fsync = options.fsync,
            secret = secret.display(),
            mode = options.replication,
        );
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        files.push(NodeFiles {
            id: id.into(),
            config,
            client: loopback(c),
            web: loopback(w),
            data_dir,
            core: options.cores[me],
        });
    }
    let b = files.pop().expect("two nodes");
    let a = files.pop().expect("two nodes");
    Ok([a, b])
}

/// A standalone node, serving.
pub struct Single {
    pub node: Server,
    pub files: NodeFiles,
    _dir: TempDir,
}

impl Single {
    pub fn start(options: &NodeOptions) -> Result<Single, String> {
        let dir = TempDir::new("single")?;
        let files = single_files(&dir.path, options)?;
        let mut node = files.start(options)?;
        node.wait_log("clients on", START_DEADLINE)?;
        Ok(Single {
            node,
            files,
            _dir: dir,
        })
    }
}

/// A pair; `nodes[primary]` serves clients.
pub struct Pair {
    pub nodes: [Option<Server>; 2],
    pub files: [NodeFiles; 2],
    pub primary: usize,
    pub options: NodeOptions,
    _dir: TempDir,
}

/// The primary's log line once its backup holds everything (sync replication from then on).
pub const IN_SYNC: &str = "replication is synchronous again";
pub const PROMOTED: &str = "promoted to primary";
pub const FOLLOWING: &str = "following the primary";

impl Pair {
    /// Starts `a` (primary) and `b` (backup) and waits until `b` follows and `a` runs in sync.
    pub fn start(options: &NodeOptions) -> Result<Pair, String> {
        let dir = TempDir::new("pair")?;
        let files = pair_files(&dir.path, options)?;
        let a = files[0].start(options)?;
        let b = files[1].start(options)?;
        let mut pair = Pair {
            nodes: [Some(a), Some(b)],
            files,
            primary: 0,
            options: options.clone(),
            _dir: dir,
        };
        pair.node(1).wait_log(FOLLOWING, START_DEADLINE)?;
        pair.node(0).wait_log(IN_SYNC, START_DEADLINE)?;
        Ok(pair)
    }

    pub fn node(&mut self, i: usize) -> &mut Server {
        self.nodes[i].as_mut().expect("node running")
    }

    pub fn primary_node(&mut self) -> &mut Server {
        let p = self.primary;
        self.node(p)
    }

    pub fn addrs(&self) -> [SocketAddr; 2] {
        [self.files[0].client, self.files[1].client]
    }

    /// kill -9 of node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill9();
        }
    }

    /// Starts node `i` again on its data (it rejoins as backup when the other serves).
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill9(i);
        self.nodes[i] = Some(self.files[i].start(&self.options)?);
        Ok(())
    }
}

/// `redis-server` on a free loopback port with persistence off.
pub struct Redis {
    pub server: Server,
    pub addr: SocketAddr,
    _dir: TempDir,
}

/// Where Debian's package puts `name` (`/usr/bin/redis-server`, `/usr/sbin/nats-server`);
/// found on the PATH otherwise.
pub fn peer_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Starts the peer server `binary` (a Debian package of that name) as `name` with `args`
/// and waits for its `ready` log line.
fn start_peer(
    name: &str,
    binary: &str,
    args: &[&str],
    ready: &str,
    core: Option<usize>,
    echo: bool,
) -> Result<Server, String> {
    let path = peer_binary(binary)
        .ok_or_else(|| format!("{binary} is not installed (apt-get install -y {binary})"))?;
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut server = Server::spawn(name, &path, &args, core, echo)?;
    server.wait_log(ready, START_DEADLINE)?;
    Ok(server)
}

impl Redis {
    pub fn start(core: Option<usize>, echo: bool) -> Result<Redis, String> {
        let dir = TempDir::new("redis")?;
        let port = free_port(false).to_string();
        let dir_arg = dir.path.display().to_string();
        let args = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir_arg,
            "--daemonize",
            "no",
            "--maxclients",
            "20000",
        ];
        let ready = "Ready to accept connections";
        Ok(Redis {
            server: start_peer("redis", "redis-server", &args, ready, core, echo)?,
            addr: loopback(port.parse().expect("a port")),
            _dir: dir,
        })
    }
}

/// `nats-server` on a free loopback port, no persistence (core NATS has none), default
/// limits (64 MB of pending bytes per subscriber before it is dropped as slow).
pub struct Nats {
    pub server: Server,
    pub addr: SocketAddr,
}

impl Nats {
    pub fn start(core: Option<usize>, echo: bool) -> Result<Nats, String> {
        let port = free_port(false);
        // Its HTTP monitoring port stays off (the default), logs go to stderr, and its
        // default connection limit (65 536) is above any run's.
        let args = ["-a", "127.0.0.1", "-p", &port.to_string()];
        Ok(Nats {
            server: start_peer("nats", "nats-server", &args, "Server is ready", core, echo)?,
            addr: loopback(port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cores_times_come_from_its_own_line_of_proc_stat() {
        let stat = "cpu  30 0 60 900 10 0 5 0 0 0\n\
                    cpu1 10 0 20 300 5 0 1 0 0 0\n\
                    cpu10 1 0 1 1 1 0 1 0 0 0\n\
                    intr 12345\n";
        let one = parse_core_times(stat, 1).expect("cpu1 is there");
        assert_eq!(
            one,
            CoreTimes {
                total: 336,
                idle: 300,
                iowait: 5
            }
        );
        assert_eq!(parse_core_times(stat, 10).map(|t| t.total), Some(5));
        assert_eq!(parse_core_times(stat, 2), None);
        assert_eq!(parse_core_times("cpu0 1 2 3\n", 0), None, "too few columns");
        let later = CoreTimes {
            total: 436,
            idle: 350,
            iowait: 15,
        };
        let window = later.since(one);
        assert_eq!((window.total, window.idle, window.iowait), (100, 50, 10));
        assert_eq!(window.percent(window.iowait), 10.0);
    }
}
