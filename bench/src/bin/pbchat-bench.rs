//! `pbchat-bench`: the benchmarks of issue #6 against real `pbchatd` processes (and Redis
//! as the peer). Thin: parses arguments, pins itself, runs one command from the
//! `pbchat_bench` library (bench/src/lib.rs), prints a table or JSON lines, and exits
//! non-zero when a run lost or reordered a message or failed.
//!
//! See docs/benchmarks.md for what each command measures and the figures on record.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use pbchat_bench::gap::GapClient;
use pbchat_bench::idle::IdleClients;
use pbchat_bench::load::{self, LoadResult, LoadSpec, Protocol, WindowOn};
use pbchat_bench::procs::{
    cpu_ticks, peer_binary, status_kib, Nats, NodeOptions, Pair, Redis, Single, TempDir, IN_SYNC,
    PROMOTED, START_DEADLINE, TICKS_PER_SEC,
};
use pbchat_bench::report::{median, percentile, round_ratios, Report};
use pbchat_bench::ws::Transport;
use pbchat_bench::{cores, ms, pin_self, raise_nofile};

#[derive(Parser)]
#[command(
    name = "pbchat-bench",
    version,
    about = "Benchmarks of pbchatd: fan-out, latency, capacity, fail-over, recovery, catch-up"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// The pbchatd binary (default: next to this one).
    #[arg(long, global = true)]
    pbchatd: Option<PathBuf>,
    /// JSON lines instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Shrink everything to seconds (for CI).
    #[arg(long, global = true)]
    smoke: bool,
    /// Echo the servers' logs.
    #[arg(long, global = true)]
    verbose: bool,
    /// Core for the server (the primary of a pair).
    #[arg(long, global = true, default_value_t = 0)]
    server_core: usize,
    /// Core for the backup of a pair and for this load generator.
    #[arg(long, global = true, default_value_t = 1)]
    loadgen_core: usize,
    /// Do not pin anything to cores.
    #[arg(long, global = true)]
    no_pin: bool,
    /// `log.fsync` of the pbchatd nodes.
    #[arg(long, global = true, default_value = "batch")]
    fsync: String,
}

impl Common {
    /// The server's core when servers are pinned (not with `--no-pin`, nor on one core).
    fn pinned_server_core(&self) -> Option<usize> {
        (!self.no_pin && cores() >= 2).then_some(self.server_core)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Saturated fan-out: N members, P senders, windowed sends; deliveries/s, latency, CPU.
    Fanout(FanoutArgs),
    /// Latency at a fixed send rate (default: half of the measured saturation).
    Latency(LatencyArgs),
    /// K idle clients: RSS per connection; then kill -9 the primary and time the resume.
    Capacity(CapacityArgs),
    /// Client-visible gap over repeated kill -9, SIGSTOP or planned hand-overs of a pair's primary.
    Failover(FailoverArgs),
    /// Log recovery speed at start-up after M records.
    Recovery(RecoveryArgs),
    /// Backup catch-up speed after M messages written while it was down.
    Catchup(CatchupArgs),
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Room members, a comma list.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    members: Vec<usize>,
    /// Senders: a number or `n/10` (a tenth of the members, at least 1); a comma list.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    senders: Vec<String>,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// What ends a send's flight: acks (the server's ack), or deliveries (the ack and the
    /// send's delivery to every member, so no member falls behind by more than senders ×
    /// window messages). latency applies it to its saturation run only.
    #[arg(long, default_value = "acks", value_parser = WindowOn::parse)]
    window_on: WindowOn,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    #[arg(long, default_value_t = 2000)]
    warmup_ms: u64,
    #[arg(long, default_value_t = 5000)]
    measure_ms: u64,
    /// Rounds per configuration: each runs every target once, in turn, each on a fresh
    /// server; figures are medians over the rounds, ratios the median of per-round ratios.
    #[arg(long, default_value_t = 1, alias = "runs")]
    rounds: usize,
    /// pbchat, redis, nats, both (pbchat and redis), all (redis, nats, single, pair), or a
    /// comma list of single, pair, redis, nats.
    #[arg(long, default_value = "pbchat")]
    target: String,
    /// How pbchat members connect: tcp (the client listener), ws (WebSocket to the node's
    /// `[web]` listener), or a comma list, each run in turn within a round.
    #[arg(long, default_value = "tcp", value_delimiter = ',')]
    transport: Vec<String>,
    /// pbchat runs as a primary with a sync backup (primary on the server core, backup on
    /// the load generator's core).
    #[arg(long)]
    pair: bool,
    /// An already running pbchat node to load instead of starting one (its web listener's
    /// address with `--transport ws`).
    #[arg(long)]
    pbchat_addr: Option<SocketAddr>,
    /// An already running Redis to load instead of starting one.
    #[arg(long)]
    redis_addr: Option<SocketAddr>,
    /// An already running nats-server to load instead of starting one.
    #[arg(long)]
    nats_addr: Option<SocketAddr>,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// A second pbchatd binary (an A/B run): every pbchat lane also runs with it, right
    /// after the same lane with `--pbchatd`, in every round; its rows carry build "b" and
    /// its ratios to build "a" in the same round (vs_a: deliveries/s, cpu_vs_a: server CPU
    /// per delivery), so a change is judged under the load the machine had at that moment.
    #[arg(long)]
    pbchatd_b: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Total sends per second; default: half the saturated sends/s measured first.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Args, Clone)]
struct CapacityArgs {
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Clients per room (each join is announced to the room's other members, so one huge
    /// room costs O(K^2) presence frames; 100 matches scripts/idle_rss.py).
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// After measuring RSS, skip the kill -9 and resume timing.
    #[arg(long)]
    no_failover: bool,
    /// Retry a failed attempt after a uniform pick in [ms/2, ms] instead of the real
    /// client's doubling backoff (50 ms to 2 s).
    #[arg(long)]
    retry_ms: Option<u64>,
}

#[derive(Args, Clone)]
struct FailoverArgs {
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// kill (kill -9 of the primary, which then restarts as backup), stop (SIGSTOP of the
    /// primary, SIGCONT once the client resumed: it steps down and follows), handover
    /// (SIGUSR1: planned hand-over), both (kill and handover) or all.
    #[arg(long, default_value = "both")]
    mode: String,
}

#[derive(Args, Clone)]
struct RecoveryArgs {
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
}

#[derive(Args, Clone)]
struct CatchupArgs {
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
}

/// Everything that went wrong in a command that did not stop it: printed at the end and
/// turned into a non-zero exit.
#[derive(Default)]
struct Verdict {
    problems: Vec<String>,
}

impl Verdict {
    fn check_order(&mut self, what: &str, lost: u64, out_of_order: u64) {
        if lost == 0 && out_of_order == 0 {
            eprintln!("{what}: lost = 0, out-of-order = 0: OK");
        } else {
            self.problems.push(format!(
                "{what}: lost = {lost}, out-of-order = {out_of_order} (both must be 0)"
            ));
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    if !common.no_pin {
        if cores() < 2 {
            eprintln!("one core only: nothing is pinned");
        } else if let Err(e) = pin_self(common.loadgen_core) {
            eprintln!("warning: {e}; running unpinned");
        }
    }
    let mut verdict = Verdict::default();
    let mut report = Report::new(common.json);
    let outcome = match &cli.command {
        Cmd::Fanout(args) => fanout(&common, args, &mut report, &mut verdict),
        Cmd::Latency(args) => latency(&common, args, &mut report, &mut verdict),
        Cmd::Capacity(args) => capacity(&common, args, &mut report, &mut verdict),
        Cmd::Failover(args) => failover(&common, args, &mut report, &mut verdict),
        Cmd::Recovery(args) => recovery(&common, args, &mut report),
        Cmd::Catchup(args) => catchup(&common, args, &mut report, &mut verdict),
    };
    if let Err(e) = outcome {
        eprintln!("pbchat-bench: {e}");
        return ExitCode::FAILURE;
    }
    for problem in &verdict.problems {
        eprintln!("pbchat-bench: FAILED: {problem}");
    }
    if verdict.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn node_options(common: &Common, max_clients: usize) -> Result<NodeOptions, String> {
    let pbchatd = match &common.pbchatd {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("pbchatd"),
    };
    if !pbchatd.is_file() {
        return Err(format!(
            "{}: no pbchatd there (build it, or pass --pbchatd)",
            pbchatd.display()
        ));
    }
    let pin = common.pinned_server_core().is_some();
    Ok(NodeOptions {
        pbchatd,
        fsync: common.fsync.clone(),
        replication: "sync".into(),
        max_clients,
        client_extra: String::new(),
        echo: common.verbose,
        cores: if pin {
            [Some(common.server_core), Some(common.loadgen_core)]
        } else {
            [None, None]
        },
    })
}

/// The options of a node under fan-out or latency load, running `pbchatd` if given.
fn load_node_options(common: &Common, pbchatd: Option<&Path>) -> Result<NodeOptions, String> {
    let mut options = node_options(common, 20_000)?;
    if let Some(path) = pbchatd {
        options.pbchatd = path.to_path_buf();
    }
    Ok(options)
}

/// A unique tag for nicks and sessions.
fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{}", nanos % 1_000_000_000)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Single,
    Pair,
    Redis,
    Nats,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Single => "pbchat",
            Target::Pair => "pbchat-pair",
            Target::Redis => "redis",
            Target::Nats => "nats",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Target::Single | Target::Pair => Protocol::Pbchat,
            Target::Redis => Protocol::Redis,
            Target::Nats => Protocol::Nats,
        }
    }

    /// A peer's server binary and the address of an already running one, if given.
    fn peer(self, args: &LoadArgs) -> Option<(&'static str, Option<SocketAddr>)> {
        match self {
            Target::Redis => Some(("redis-server", args.redis_addr)),
            Target::Nats => Some(("nats-server", args.nats_addr)),
            Target::Single | Target::Pair => None,
        }
    }
}

fn targets(args: &LoadArgs) -> Result<Vec<Target>, String> {
    let pbchat = if args.pair {
        Target::Pair
    } else {
        Target::Single
    };
    let mut out = Vec::new();
    for item in args.target.split(',') {
        match item.trim() {
            "pbchat" => out.push(pbchat),
            "redis" => out.push(Target::Redis),
            "nats" => out.push(Target::Nats),
            "both" => out.extend([pbchat, Target::Redis]),
            "all" => out.extend([Target::Redis, Target::Nats, Target::Single, Target::Pair]),
            "single" => out.push(Target::Single),
            "pair" => out.push(Target::Pair),
            other => return Err(format!("--target: unknown target {other:?}")),
        }
    }
    let mut seen = Vec::new();
    out.retain(|t| {
        let first = !seen.contains(t);
        seen.push(*t);
        first
    });
    Ok(out)
}

/// Which pbchatd binary a pbchat lane runs: `--pbchatd` (a) or `--pbchatd-b` (b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    A,
    B,
}

/// One kind of run: a server, and for pbchat the transport its members use and the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lane {
    target: Target,
    transport: Transport,
    build: Build,
}

impl Lane {
    fn name(self) -> String {
        let name = match (self.target.protocol(), self.transport) {
            (Protocol::Pbchat, Transport::Ws) => format!("{} ws", self.target.name()),
            _ => self.target.name().to_string(),
        };
        match self.build {
            Build::A => name,
            Build::B => format!("{name} (b)"),
        }
    }
}

/// The targets, each pbchat one once per transport (Redis and NATS speak TCP only).
fn lanes(args: &LoadArgs) -> Result<Vec<Lane>, String> {
    let transports = args
        .transport
        .iter()
        .map(|t| Transport::parse(t.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for target in targets(args)? {
        if target.protocol() != Protocol::Pbchat {
            out.push(Lane {
                target,
                transport: Transport::Tcp,
                build: Build::A,
            });
            continue;
        }
        for &transport in &transports {
            let lane = Lane {
                target,
                transport,
                build: Build::A,
            };
            if !out.contains(&lane) {
                out.push(lane);
            }
        }
    }
    Ok(out)
}

/// `lanes` with each pbchat lane followed by the same lane on build b.
fn with_build_b(lanes: Vec<Lane>) -> Vec<Lane> {
    let mut out = Vec::with_capacity(lanes.len() * 2);
    for lane in lanes {
        out.push(lane);
        if lane.target.protocol() == Protocol::Pbchat {
            out.push(Lane {
                build: Build::B,
                ..lane
            });
        }
    }
    out
}

fn senders_for(spec: &str, members: usize) -> Result<usize, String> {
    if spec == "n/10" {
        return Ok((members / 10).max(1));
    }
    spec.parse::<usize>()
        .map_err(|_| format!("--senders: {spec:?} is neither a number nor n/10"))
}

/// A server under load, whatever its kind, kept alive for one run.
enum Running {
    Single(Single),
    Pair(Box<Pair>),
    Redis(Redis),
    Nats(Nats),
    External(SocketAddr),
}

impl Running {
    /// Starts `target`'s server; a pbchat one runs `pbchatd` if given, else `--pbchatd`.
    fn start(
        target: Target,
        common: &Common,
        args: &LoadArgs,
        pbchatd: Option<&Path>,
    ) -> Result<Running, String> {
        let core = common.pinned_server_core();
        if let Some((_, Some(addr))) = target.peer(args) {
            return Ok(Running::External(addr));
        }
        match target {
            Target::Redis => Ok(Running::Redis(Redis::start(core, common.verbose)?)),
            Target::Nats => Ok(Running::Nats(Nats::start(core, common.verbose)?)),
            _ if args.pbchat_addr.is_some() => {
                Ok(Running::External(args.pbchat_addr.expect("checked")))
            }
            Target::Single => Ok(Running::Single(Single::start(&load_node_options(
                common, pbchatd,
            )?)?)),
            Target::Pair => Ok(Running::Pair(Box::new(Pair::start(&load_node_options(
                common, pbchatd,
            )?)?))),
        }
    }

    /// Where members connect: the client or the web listener of the node that serves.
    fn addr(&self, transport: Transport) -> SocketAddr {
        let files = match self {
            Running::Single(s) => &s.files,
            Running::Pair(p) => &p.files[p.primary],
            Running::Redis(r) => return r.addr,
            Running::Nats(n) => return n.addr,
            Running::External(a) => return *a,
        };
        match transport {
            Transport::Tcp => files.client,
            Transport::Ws => files.web,
        }
    }

    /// Server processes: the one serving clients first.
    fn pids(&self) -> Vec<u32> {
        match self {
            Running::Single(s) => vec![s.node.pid],
            Running::Pair(p) => p.nodes.iter().flatten().map(|n| n.pid).collect(),
            Running::Redis(r) => vec![r.server.pid],
            Running::Nats(n) => vec![n.server.pid],
            Running::External(_) => Vec::new(),
        }
    }

    /// A pair that fell out of sync during the run measured something else.
    fn degraded(&mut self) -> bool {
        match self {
            Running::Pair(p) => p.primary_node().log_count("degraded") > 0,
            _ => false,
        }
    }
}

/// How one run paces its sends.
#[derive(Clone, Copy)]
struct Pacing {
    /// Sends in flight per sender, at most.
    window: usize,
    window_on: WindowOn,
    /// Total sends per second; `None`: as fast as the windows allow.
    rate: Option<f64>,
}

/// The window of latency's paced run: large enough that only the rate sets the load; it
/// bounds a stall.
const PACED_WINDOW: usize = 4096;

struct RunFigures {
    result: LoadResult,
    peak_rss_kib: Vec<u64>,
    degraded: bool,
}

/// The figures of one run of `lane`; `pbchatd_b` is the binary of build b's lanes.
#[allow(clippy::too_many_arguments)]
fn one_load(
    lane: Lane,
    common: &Common,
    args: &LoadArgs,
    pbchatd_b: Option<&Path>,
    members: usize,
    senders: usize,
    pacing: Pacing,
) -> Result<RunFigures, String> {
    let pbchatd = match lane.build {
        Build::A => None,
        Build::B => pbchatd_b,
    };
    let mut server = Running::start(lane.target, common, args, pbchatd)?;
    let spec = LoadSpec {
        protocol: lane.target.protocol(),
        transport: lane.transport,
        addr: server.addr(lane.transport),
        members,
        senders,
        window: pacing.window,
        window_on: pacing.window_on,
        body_bytes: args.body_bytes,
        warmup: ms(args.warmup_ms),
        measure: ms(args.measure_ms),
        rate: pacing.rate,
        total_sends: None,
        room: "bench".into(),
        tag: tag(),
        sample_pids: server.pids(),
        server_core: match server {
            Running::External(_) => None,
            _ => common.pinned_server_core(),
        },
        drain: Duration::from_secs(10),
    };
    let result = load::run(&spec)?;
    let peak_rss_kib = server
        .pids()
        .iter()
        .map(|&p| status_kib(p, "VmHWM").unwrap_or(0))
        .collect();
    let degraded = server.degraded();
    Ok(RunFigures {
        result,
        peak_rss_kib,
        degraded,
    })
}

/// The medians of several runs of one configuration, as a report row.
fn summarize(
    lane: Lane,
    members: usize,
    senders: usize,
    pacing: Pacing,
    runs: &[RunFigures],
    verdict: &mut Verdict,
) -> serde_json::Value {
    let per_run =
        |f: &dyn Fn(&RunFigures) -> f64| -> f64 { median(&runs.iter().map(f).collect::<Vec<_>>()) };
    let pct = |r: &RunFigures, p: f64| r.result.latency_ns.percentile(p) as f64 / 1000.0;
    let deliveries = per_run(&deliveries_per_sec);
    let sends = per_run(&|r| r.result.acks_in_window as f64 / r.result.measured_secs);
    let cpu_ns = |i: usize| per_run(&|r| server_cpu_ns_per_delivery(r, i));
    let lost: u64 = runs.iter().map(|r| r.result.lost).sum();
    let out_of_order: u64 = runs.iter().map(|r| r.result.out_of_order).sum();
    let errors: u64 = runs.iter().map(|r| r.result.error_count).sum();
    let what = format!("{} N={members} P={senders}", lane.name());
    verdict.check_order(&what, lost, out_of_order);
    for r in runs {
        for e in &r.result.errors {
            eprintln!("  {what}: {e}");
        }
    }
    if errors > 0 {
        verdict.problems.push(format!("{what}: {errors} errors"));
    }
    let degraded = runs.iter().any(|r| r.degraded);
    if degraded {
        eprintln!("  {what}: the primary went degraded during a run (not fully in sync)");
    }
    let measured = per_run(&|r| r.result.measured_secs);
    let mut row = json!({
        "bench": "fanout",
        "target": lane.target.name(),
        "transport": lane.transport.name(),
        "build": match (lane.target.protocol(), lane.build) {
            (Protocol::Pbchat, Build::A) => "a",
            (Protocol::Pbchat, Build::B) => "b",
            _ => "-",
        },
        "members": members,
        "senders": senders,
        "window": pacing.window,
        "window_on": pacing.window_on.name(),
        "rounds": runs.len(),
        "deliveries_per_sec": deliveries,
        "sends_per_sec": sends,
        "p50_us": per_run(&|r| pct(r, 50.0)),
        "p99_us": per_run(&|r| pct(r, 99.0)),
        "p999_us": per_run(&|r| pct(r, 99.9)),
        "lost": lost,
        "out_of_order": out_of_order,
        "errors": errors,
        "server_cpu_ns_per_delivery": cpu_ns(0),
        "loadgen_cpu_ns_per_delivery": per_run(&|r| r.result.loadgen_cpu_ns as f64
            / r.result.deliveries_in_window.max(1) as f64),
        "server_cpu_pct": per_run(&|r| r.result.server_ticks.first().copied().unwrap_or(0) as f64
            / TICKS_PER_SEC / r.result.measured_secs * 100.0),
        "server_runnable_wait_pct": per_run(&|r| r.result.server_wait_ns.first().copied().unwrap_or(0) as f64
            / 1e9 / r.result.measured_secs * 100.0),
        "loadgen_cpu_pct": per_run(&|r| r.result.loadgen_cpu_ns as f64 / 1e9
            / r.result.measured_secs * 100.0),
        "loadgen_runnable_wait_pct": per_run(&|r| r.result.loadgen_wait_ns as f64 / 1e9
            / r.result.measured_secs * 100.0),
        "peak_rss_kib": per_run(&|r| r.peak_rss_kib.first().copied().unwrap_or(0) as f64),
        "measured_s": measured,
        "degraded": degraded,
    });
    if runs.iter().all(|r| r.result.server_core.is_some()) {
        let core = |r: &RunFigures| r.result.server_core.unwrap_or_default();
        row["server_core_idle_pct"] = json!(per_run(&|r| core(r).percent(core(r).idle)));
        row["server_core_iowait_pct"] = json!(per_run(&|r| core(r).percent(core(r).iowait)));
    }
    if lane.target == Target::Pair {
        row["backup_cpu_ns_per_delivery"] = json!(cpu_ns(1));
        row["backup_peak_rss_kib"] = json!(per_run(
            &|r| r.peak_rss_kib.get(1).copied().unwrap_or(0) as f64
        ));
    }
    row
}

fn shrink(common: &Common, args: &LoadArgs) -> LoadArgs {
    let mut args = args.clone();
    if common.smoke {
        args.members = args.members.iter().map(|&n| n.min(20)).collect();
        args.members.dedup();
        args.warmup_ms = args.warmup_ms.min(300);
        args.measure_ms = args.measure_ms.min(700);
        args.rounds = 1;
    }
    args
}

fn fanout(
    common: &Common,
    args: &FanoutArgs,
    report: &mut Report,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let pbchatd_b = args.pbchatd_b.as_deref();
    if let Some(path) = pbchatd_b {
        if !path.is_file() {
            return Err(format!("--pbchatd-b: {}: no such file", path.display()));
        }
    }
    let args = shrink(common, &args.load);
    let mut lanes = lanes(&args)?;
    if pbchatd_b.is_some() {
        lanes = with_build_b(lanes);
    }
    lanes.retain(|lane| match lane.target.peer(&args) {
        Some((binary, None)) if peer_binary(binary).is_none() => {
            eprintln!(
                "{binary} is not installed: skipping the {} runs (apt-get install -y {binary})",
                lane.name()
            );
            false
        }
        _ => true,
    });
    for &members in &args.members {
        for spec in &args.senders {
            let senders = senders_for(spec, members)?;
            // runs[l][k]: lane l in round k. A round runs every lane once, so the
            // ratios within it compare servers (or transports) under the same machine load.
            let mut runs: Vec<Vec<RunFigures>> = lanes.iter().map(|_| Vec::new()).collect();
            let pacing = Pacing {
                window: args.window,
                window_on: args.window_on,
                rate: None,
            };
            for round in 0..args.rounds {
                for l in round_order(lanes.len(), round) {
                    let lane = lanes[l];
                    eprintln!(
                        "fanout: {} N={members} P={senders} round {}/{}",
                        lane.name(),
                        round + 1,
                        args.rounds
                    );
                    let figures =
                        one_load(lane, common, &args, pbchatd_b, members, senders, pacing)?;
                    runs[l].push(figures);
                }
            }
            for (l, &lane) in lanes.iter().enumerate() {
                let mut row = summarize(lane, members, senders, pacing, &runs[l], verdict);
                add_lane_ratios(&mut row, l, &lanes, &runs);
                report.push(row);
            }
        }
    }
    let mut columns = vec![
        "target",
        "transport",
        "members",
        "senders",
        "window_on",
        "rounds",
        "deliveries_per_sec",
        "vs_redis",
        "vs_redis_range",
        "vs_nats",
        "p50_us",
        "p99_us",
        "p999_us",
        "server_cpu_ns_per_delivery",
        "cpu_vs_tcp",
        "cpu_vs_tcp_range",
        "backup_cpu_ns_per_delivery",
        "loadgen_cpu_ns_per_delivery",
        "loadgen_cpu_pct",
        "loadgen_runnable_wait_pct",
        "server_runnable_wait_pct",
        "server_core_idle_pct",
        "server_core_iowait_pct",
        "peak_rss_kib",
        "lost",
        "out_of_order",
    ];
    if pbchatd_b.is_some() {
        columns.splice(
            1..1,
            ["build", "vs_a", "vs_a_range", "cpu_vs_a", "cpu_vs_a_range"],
        );
    }
    report.table(&columns);
    Ok(())
}

/// Adds lane `l`'s per-round ratios to the lanes it is compared with, where they ran:
/// deliveries/s to Redis's and NATS's, a WebSocket lane's CPU per delivery to the TCP
/// lane's, and build b's deliveries/s and CPU per delivery to build a's.
fn add_lane_ratios(
    row: &mut serde_json::Value,
    l: usize,
    lanes: &[Lane],
    runs: &[Vec<RunFigures>],
) {
    let lane = lanes[l];
    let other = |want: &dyn Fn(&Lane) -> bool| lanes.iter().position(|x| *x != lane && want(x));
    for (base, key) in [(Target::Redis, "vs_redis"), (Target::Nats, "vs_nats")] {
        if let Some(b) = other(&|x| x.target == base) {
            add_ratio(row, key, &runs[l], &runs[b], &deliveries_per_sec);
        }
    }
    let cpu = |r: &RunFigures| server_cpu_ns_per_delivery(r, 0);
    let tcp = Lane {
        transport: Transport::Tcp,
        ..lane
    };
    if let Some(b) = other(&|x| *x == tcp) {
        add_ratio(row, "cpu_vs_tcp", &runs[l], &runs[b], &cpu);
    }
    let build_a = Lane {
        build: Build::A,
        ..lane
    };
    if let Some(a) = other(&|x| *x == build_a) {
        add_ratio(row, "vs_a", &runs[l], &runs[a], &deliveries_per_sec);
        add_ratio(row, "cpu_vs_a", &runs[l], &runs[a], &cpu);
    }
}

/// The lanes' order in round `round`: as given, then reversed, and so on, so that no lane
/// always runs right after the same other one (a run leaves the disk writing back its log
/// and the page cache full, which the next run pays for).
fn round_order(lanes: usize, round: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..lanes).collect()
    } else {
        (0..lanes).rev().collect()
    }
}

fn deliveries_per_sec(run: &RunFigures) -> f64 {
    run.result.deliveries_in_window as f64 / run.result.measured_secs
}

/// CPU time of server process `i` (0: the one serving) per delivery in the window.
fn server_cpu_ns_per_delivery(run: &RunFigures, i: usize) -> f64 {
    let ticks = run.result.server_ticks.get(i).copied().unwrap_or(0) as f64;
    ticks / TICKS_PER_SEC * 1e9 / (run.result.deliveries_in_window.max(1) as f64)
}

/// Adds `key` (the median over rounds of this lane's `figure` over the base's in the same
/// round) and its spread: `key_min`, `key_max`, and `key_range` for the table.
fn add_ratio(
    row: &mut serde_json::Value,
    key: &str,
    runs: &[RunFigures],
    base: &[RunFigures],
    figure: &dyn Fn(&RunFigures) -> f64,
) {
    let figures = |runs: &[RunFigures]| -> Vec<f64> { runs.iter().map(figure).collect() };
    if let Some((median, min, max)) = round_ratios(&figures(runs), &figures(base)) {
        row[key] = json!(median);
        row[format!("{key}_min")] = json!(min);
        row[format!("{key}_max")] = json!(max);
        row[format!("{key}_range")] = json!(format!("{min:.2}-{max:.2}"));
    }
}

fn latency(
    common: &Common,
    args: &LatencyArgs,
    report: &mut Report,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let mut load = args.load.clone();
    if args.load.members == [10, 100, 1000] {
        load.members = vec![100];
    }
    let load = shrink(common, &load);
    if args.rate.is_some() && load.window_on == WindowOn::Deliveries {
        // A paced run is open loop: a window freed by deliveries would hold sends back
        // whenever members lag, lowering the rate asked for and hiding that queueing from
        // the latency. So only the saturation run takes the option, and --rate skips it.
        return Err(
            "latency: --window-on deliveries applies to the saturation run, which \
             --rate skips (the paced run's window counts acks so that the rate alone sets \
             the load): drop one of the two"
                .into(),
        );
    }
    let saturated = Pacing {
        window: load.window,
        window_on: load.window_on,
        rate: None,
    };
    for lane in lanes(&load)? {
        for &members in &load.members {
            let senders = senders_for(&load.senders[0], members)?;
            let (rate, saturation) = match args.rate {
                Some(rate) => (rate, None),
                None => {
                    eprintln!("latency: measuring saturation first ({})", lane.name());
                    let sat = one_load(lane, common, &load, None, members, senders, saturated)?;
                    let sends = sat.result.acks_in_window as f64 / sat.result.measured_secs;
                    (sends / 2.0, Some(sends))
                }
            };
            eprintln!("latency: {} N={members} at {rate:.0} sends/s", lane.name());
            let paced = Pacing {
                window: PACED_WINDOW,
                window_on: WindowOn::Acks,
                rate: Some(rate),
            };
            let fig = one_load(lane, common, &load, None, members, senders, paced)?;
            let mut row = summarize(lane, members, senders, paced, &[fig], verdict);
            row["bench"] = json!("latency");
            row["rate_per_sec"] = json!(rate);
            row["saturation_sends_per_sec"] = json!(saturation);
            row["saturation_window_on"] = json!(saturation.map(|_| load.window_on.name()));
            report.push(row);
        }
    }
    report.table(&[
        "target",
        "transport",
        "members",
        "senders",
        "saturation_window_on",
        "saturation_sends_per_sec",
        "rate_per_sec",
        "sends_per_sec",
        "deliveries_per_sec",
        "p50_us",
        "p99_us",
        "p999_us",
        "lost",
        "out_of_order",
        "server_cpu_pct",
        "server_core_idle_pct",
        "server_core_iowait_pct",
    ]);
    Ok(())
}

fn capacity(
    common: &Common,
    args: &CapacityArgs,
    report: &mut Report,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let wanted = if common.smoke {
        args.clients.min(200)
    } else {
        args.clients
    };
    // Each client is one socket here and one in the server (which inherits the limit).
    let limit = raise_nofile(wanted as u64 + 1000);
    let clients = wanted.min((limit as usize).saturating_sub(200));
    if clients < wanted {
        eprintln!(
            "capacity: the open-file limit is {limit}: K capped at {clients} (asked {wanted})"
        );
    }
    let options = node_options(common, clients + 1000)?;
    let mut pair = Pair::start(&options)?;
    let pid = pair.primary_node().pid;
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = status_kib(pid, "VmRSS").unwrap_or(0);
    let mut idle = IdleClients::new(
        clients,
        pair.addrs().to_vec(),
        "lobby",
        args.room_size,
        &tag(),
    )
    .map_err(|e| format!("poll: {e}"))?;
    idle.fixed_retry = args.retry_ms.map(ms);
    let connect_started = Instant::now();
    let all_ready = idle
        .run_until(Duration::from_secs(120), |ready| ready >= clients, || {})
        .map_err(|e| e.to_string())?;
    if !all_ready {
        return Err(format!(
            "capacity: only {} of {clients} clients joined within 120 s",
            idle.ready
        ));
    }
    let connect_ms = connect_started.elapsed().as_millis() as u64;
    // Let the workers free their start-up buffers before reading RSS.
    let settle_until = Instant::now() + Duration::from_millis(1000);
    idle.run_until(
        Duration::from_secs(2),
        |_| Instant::now() >= settle_until,
        || {},
    )
    .map_err(|e| e.to_string())?;
    let rss_after = status_kib(pid, "VmRSS").unwrap_or(0);
    let per_client_bytes = (rss_after.saturating_sub(rss_before) * 1024) as f64 / clients as f64;
    let mut row = json!({
        "bench": "capacity",
        "clients": clients,
        "room_size": args.room_size,
        "connect_all_ms": connect_ms,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_client_bytes": per_client_bytes,
        "refusals": idle.refusals,
        "retry": args.retry_ms.map_or("client backoff".to_string(), |m| format!("fixed {m} ms")),
    });
    if per_client_bytes > 2048.0 {
        eprintln!("capacity: {per_client_bytes:.0} bytes per idle client (target <= 2048)");
    }
    if !args.no_failover {
        eprintln!("capacity: kill -9 of the primary with {clients} clients connected");
        let killed_at = Instant::now();
        pair.kill9(0);
        let mut promoted_at: Option<Instant> = None;
        let mut first_lost: Option<Instant> = None;
        let backup = pair.nodes[1].as_ref().expect("backup runs");
        let backup_log = backup.log.clone();
        let mut seen_lines = 0;
        let done = idle
            .run_until(
                Duration::from_secs(60),
                |ready| {
                    if ready < clients && first_lost.is_none() {
                        first_lost = Some(Instant::now());
                    }
                    first_lost.is_some() && ready >= clients
                },
                || {
                    if promoted_at.is_none() {
                        let log = backup_log.lock().expect("log lock");
                        if log[seen_lines..].iter().any(|l| l.contains(PROMOTED)) {
                            promoted_at = Some(Instant::now());
                        }
                        seen_lines = log.len();
                    }
                },
            )
            .map_err(|e| e.to_string())?;
        let resumed_at = Instant::now();
        if !done {
            verdict.problems.push(format!(
                "capacity: only {} of {clients} clients resumed within 60 s of the kill",
                idle.ready
            ));
        }
        let after_kill = (resumed_at - killed_at).as_secs_f64() * 1000.0;
        let after_promotion = promoted_at.map(|p| (resumed_at - p).as_secs_f64() * 1000.0);
        row["all_resumed_after_kill_ms"] = json!(after_kill);
        row["promoted_after_kill_ms"] =
            json!(promoted_at.map(|p| (p - killed_at).as_secs_f64() * 1000.0));
        row["all_resumed_after_promotion_ms"] = json!(after_promotion);
        row["resumed"] = json!(idle.ready);
        row["refusals"] = json!(idle.refusals);
    }
    report.push(row);
    report.table(&[
        "clients",
        "room_size",
        "retry",
        "connect_all_ms",
        "rss_per_client_bytes",
        "promoted_after_kill_ms",
        "all_resumed_after_kill_ms",
        "all_resumed_after_promotion_ms",
        "resumed",
        "refusals",
    ]);
    Ok(())
}

fn failover(
    common: &Common,
    args: &FailoverArgs,
    report: &mut Report,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let runs = if common.smoke {
        args.runs.min(2)
    } else {
        args.runs
    };
    let modes: Vec<&str> = match args.mode.as_str() {
        "both" => vec!["handover", "kill"],
        "all" => vec!["handover", "kill", "stop"],
        "kill" => vec!["kill"],
        "stop" => vec!["stop"],
        "handover" => vec!["handover"],
        other => {
            return Err(format!(
                "--mode: {other:?} is not kill, stop, handover, both or all"
            ))
        }
    };
    for mode in modes {
        let options = node_options(common, 1000)?;
        let mut pair = Pair::start(&options)?;
        let mut client = GapClient::start("gap", "lobby", pair.addrs().to_vec(), 0);
        if !client.wait_acks(0, 50, START_DEADLINE) {
            return Err("failover: the client got no acks".into());
        }
        let mut gaps_ms = Vec::new();
        let mut detect_ms = Vec::new();
        for run in 0..runs {
            let primary = pair.primary;
            let other = 1 - primary;
            let mark = pair.node(other).log_len();
            let breaks_before = client.breaks().len();
            let acked = client.acked();
            client.wait_acks(acked, 20, START_DEADLINE);
            let started = Instant::now();
            match mode {
                "kill" => pair.kill9(primary),
                "stop" => pair.node(primary).signal("STOP")?,
                _ => pair.node(primary).signal("USR1")?,
            }
            pair.node(other)
                .wait_log_from(mark, PROMOTED, START_DEADLINE)?;
            let promoted = started.elapsed();
            if !client.wait_breaks(breaks_before + 1, START_DEADLINE) {
                return Err(format!(
                    "failover {mode} run {run}: the client never resumed"
                ));
            }
            let b = client.breaks()[breaks_before];
            let gap = b.gap().as_secs_f64() * 1000.0;
            eprintln!(
                "failover {mode} run {}/{runs}: gap {gap:.0} ms (promotion logged after {} ms)",
                run + 1,
                promoted.as_millis()
            );
            gaps_ms.push(gap);
            detect_ms.push(promoted.as_secs_f64() * 1000.0);
            pair.primary = other;
            // Back to a pair in sync before the next run (after a hand-over the old primary
            // follows at once, so the line may already be there: search from the mark).
            match mode {
                "kill" => pair.restart(primary)?,
                // Woken, it hears the newer epoch, steps down and follows.
                "stop" => pair.node(primary).signal("CONT")?,
                _ => {}
            }
            pair.node(other)
                .wait_log_from(mark, IN_SYNC, START_DEADLINE)?;
        }
        client.stop();
        let ooo = client
            .out_of_order
            .load(std::sync::atomic::Ordering::Relaxed);
        verdict.check_order(&format!("failover {mode}"), 0, ooo);
        let mut sorted: Vec<u64> = gaps_ms.iter().map(|g| (*g * 1000.0) as u64).collect();
        sorted.sort_unstable();
        let p = |q| percentile(&sorted, q) as f64 / 1000.0;
        report.push(json!({
            "bench": "failover",
            "mode": mode,
            "runs": gaps_ms.len(),
            "gap_p50_ms": p(50.0),
            "gap_p99_ms": p(99.0),
            "gap_max_ms": sorted.last().map_or(0.0, |g| *g as f64 / 1000.0),
            "gap_min_ms": sorted.first().map_or(0.0, |g| *g as f64 / 1000.0),
            "promotion_logged_p50_ms": median(&detect_ms),
            "out_of_order_acks": ooo,
            "gaps_ms": gaps_ms,
        }));
    }
    report.table(&[
        "mode",
        "runs",
        "gap_p50_ms",
        "gap_p99_ms",
        "gap_min_ms",
        "gap_max_ms",
        "promotion_logged_p50_ms",
    ]);
    Ok(())
}

/// Parses "log recovered: N messages (...) ... in X ms".
fn parse_recovered(line: &str) -> Option<(u64, u64)> {
    let after = line.split("log recovered: ").nth(1)?;
    let count = after.split_whitespace().next()?.parse().ok()?;
    let ms = after
        .rsplit(" in ")
        .next()?
        .trim_end_matches(" ms")
        .trim()
        .parse()
        .ok()?;
    Some((count, ms))
}

fn recovery(common: &Common, args: &RecoveryArgs, report: &mut Report) -> Result<(), String> {
    use pbchat::entry::Entry;
    use pbchat::log::{Log, LogOptions};
    let records = if common.smoke {
        args.records.min(20_000)
    } else {
        args.records
    };
    let options = node_options(common, 1000)?;
    let dir = TempDir::new("recovery")?;
    let files = pbchat_bench::procs::single_files(&dir.path, &options)?;
    let log_options = LogOptions {
        dir: files.data_dir.join("log"),
        segment_bytes: 64 << 20,
        retain_messages: u64::MAX / 2,
        retain_bytes: u64::MAX / 2,
    };
    let written = Instant::now();
    {
        let (mut log, _) = Log::open(log_options.clone(), |_| {}).map_err(|e| e.to_string())?;
        let body: String = "x".repeat(args.body_bytes);
        let mut batch = Vec::with_capacity(1024);
        let mut seq = 1;
        while seq <= records {
            batch.clear();
            while batch.len() < 1024 && seq <= records {
                batch.push(Entry {
                    epoch: 1,
                    seq,
                    ts_ms: 1_764_084_000_000 + seq,
                    room: format!("room-{}", seq % 16),
                    from: format!("nick{}", seq % 100),
                    session: format!("session{}", seq % 100),
                    id: format!("m-{seq}"),
                    body: body.clone(),
                    orig: None,
                });
                seq += 1;
            }
            log.append(&batch).map_err(|e| e.to_string())?;
        }
        log.sync().map_err(|e| e.to_string())?;
    }
    let write_s = written.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(&log_options.dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    // In process: the log's own recovery scan (the page cache is warm, as after a restart).
    let opened = Instant::now();
    let mut visited = 0u64;
    let (log, recovered) =
        Log::open(log_options.clone(), |_| visited += 1).map_err(|e| e.to_string())?;
    let open_s = opened.elapsed().as_secs_f64();
    drop(log);
    if recovered.records != records || visited != records {
        return Err(format!(
            "recovery: wrote {records} records, Log::open found {} ({visited} visited)",
            recovered.records
        ));
    }
    // The daemon: its start-up reports the recovery time, which includes rebuilding the
    // core's de-duplication index.
    let started = Instant::now();
    let mut node = files.start(&options)?;
    let line = node.wait_log("log recovered:", Duration::from_secs(300))?;
    let serving = node
        .wait_log("clients on", START_DEADLINE)
        .map(|_| started.elapsed());
    let (count, daemon_ms) =
        parse_recovered(&line).ok_or_else(|| format!("cannot read {line:?}"))?;
    let rss = status_kib(node.pid, "VmHWM").unwrap_or(0);
    node.kill9();
    report.push(json!({
        "bench": "recovery",
        "records": records,
        "log_bytes": bytes,
        "write_records_per_sec": records as f64 / write_s,
        "log_open_ms": open_s * 1000.0,
        "log_open_records_per_sec": records as f64 / open_s,
        "daemon_recovered": count,
        "daemon_recovery_ms": daemon_ms,
        "daemon_records_per_sec": count as f64 / (daemon_ms.max(1) as f64 / 1000.0),
        "daemon_serving_after_ms": serving.ok().map(|d| d.as_millis() as u64),
        "daemon_peak_rss_kib": rss,
    }));
    report.table(&[
        "records",
        "log_bytes",
        "log_open_ms",
        "log_open_records_per_sec",
        "daemon_recovery_ms",
        "daemon_records_per_sec",
        "daemon_serving_after_ms",
        "daemon_peak_rss_kib",
    ]);
    Ok(())
}

fn catchup(
    common: &Common,
    args: &CatchupArgs,
    report: &mut Report,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let messages = if common.smoke {
        args.messages.min(5_000)
    } else {
        args.messages
    };
    let options = node_options(common, 1000)?;
    let mut pair = Pair::start(&options)?;
    pair.kill9(1);
    let mark = pair.node(0).log_len();
    // Fill while the backup is down: the primary turns degraded after its ack timeout.
    let spec = LoadSpec {
        protocol: Protocol::Pbchat,
        transport: Transport::Tcp,
        addr: pair.files[0].client,
        members: 4,
        senders: 4,
        window: 64,
        window_on: WindowOn::Acks,
        body_bytes: 64,
        warmup: Duration::ZERO,
        measure: Duration::from_secs(3600),
        rate: None,
        total_sends: Some(messages),
        room: "fill".into(),
        tag: tag(),
        sample_pids: Vec::new(),
        server_core: None,
        drain: Duration::from_secs(30),
    };
    let filled = Instant::now();
    let fill = load::run(&spec)?;
    let fill_s = filled.elapsed().as_secs_f64();
    verdict.check_order("catchup fill", fill.lost, fill.out_of_order);
    if fill.acked < messages {
        return Err(format!(
            "catchup: only {} of {messages} sends acked",
            fill.acked
        ));
    }
    pair.node(0)
        .wait_log_from(mark, "degraded", Duration::from_secs(1))
        .map(|_| ())
        .unwrap_or(());
    let mark = pair.node(0).log_len();
    let started = Instant::now();
    pair.restart(1)?;
    let (_, line) =
        pair.node(0)
            .wait_log_from(mark, "backup caught up", Duration::from_secs(300))?;
    let caught_up = started.elapsed().as_secs_f64();
    let backup_recovery = pair
        .node(1)
        .wait_log("log recovered:", Duration::from_secs(1))
        .ok()
        .and_then(|l| parse_recovered(&l));
    let backup_cpu = cpu_ticks(pair.node(1).pid).unwrap_or(0) as f64 / TICKS_PER_SEC;
    let primary_rss = status_kib(pair.node(0).pid, "VmHWM").unwrap_or(0);
    report.push(json!({
        "bench": "catchup",
        "messages": messages,
        "fill_sends_per_sec": messages as f64 / fill_s,
        "caught_up_after_ms": caught_up * 1000.0,
        "catchup_msgs_per_sec": messages as f64 / caught_up,
        "backup_log_recovery_ms": backup_recovery.map(|r| r.1),
        "backup_cpu_s": backup_cpu,
        "primary_peak_rss_kib": primary_rss,
        "log_line": line,
    }));
    report.table(&[
        "messages",
        "fill_sends_per_sec",
        "caught_up_after_ms",
        "catchup_msgs_per_sec",
        "backup_log_recovery_ms",
        "backup_cpu_s",
    ]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn fanout_args(argv: &[&str]) -> FanoutArgs {
        let argv = ["pbchat-bench", "fanout"].iter().chain(argv);
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Cmd::Fanout(args) => args,
            _ => unreachable!("parsed as fanout"),
        }
    }

    #[test]
    fn build_b_follows_each_pbchat_lane_and_no_peer() {
        let args = fanout_args(&["--target", "redis,single,pair", "--transport", "tcp,ws"]);
        let names: Vec<String> = with_build_b(lanes(&args.load).unwrap())
            .iter()
            .map(|lane| lane.name())
            .collect();
        assert_eq!(
            names,
            [
                "redis",
                "pbchat",
                "pbchat (b)",
                "pbchat ws",
                "pbchat ws (b)",
                "pbchat-pair",
                "pbchat-pair (b)",
                "pbchat-pair ws",
                "pbchat-pair ws (b)",
            ]
        );
    }

    #[test]
    fn rounds_alternate_the_lanes_order() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [2, 1, 0]);
        assert_eq!(round_order(3, 2), [0, 1, 2]);
        assert!(round_order(0, 1).is_empty());
    }

    #[test]
    fn pbchatd_b_is_a_fanout_option() {
        let args = fanout_args(&["--pbchatd-b", "/tmp/other/pbchatd"]);
        assert_eq!(args.pbchatd_b, Some(PathBuf::from("/tmp/other/pbchatd")));
        assert!(Cli::try_parse_from(["pbchat-bench", "latency", "--pbchatd-b", "x"]).is_err());
    }
}
