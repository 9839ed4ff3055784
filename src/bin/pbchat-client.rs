//! `pbchat-client`: the interactive chat client and its scripted modes (`--send`,
//! `--listen`, `--history`).
//!
//! Thin: parses arguments, runs the terminal (the library's line editor) or the script
//! around the `pbchat::client` library, and turns outcomes into messages and exit codes.
//! Protocol state, reconnects, resends, editing and drawing live in the library, never here.

use std::io::{self, Write};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::{
    bounded, never, select, tick, Receiver, RecvTimeoutError, Sender, TrySendError,
};
use rand::Rng;
use thiserror::Error;

use pbchat::client::display::{printable, Progress, View};
use pbchat::client::editor::{render_row, Edit, KeyDecoder, LineEditor};
use pbchat::client::input::{parse_input, Input, MessageIds, HELP};
use pbchat::client::net::{self, Command, Event, NetConfig, PING_INTERVAL_MS, QUIT_ACK_WAIT_MS};
use pbchat::client::session::Position;
use pbchat::client::state;
use pbchat::client::terminal::{self, Terminal, Typed, INPUT_QUEUE_MAX};
use pbchat::client::{COMMANDS_QUEUE_MAX, DEFAULT_SERVERS, EVENTS_QUEUE_MAX};
use pbchat::wire::client::{check_nick, check_printable, check_room, HISTORY_LIMIT_MAX};
use pbchat::wire::client::{ID_CHARS_MAX, SESSION_CHARS_MAX};

/// How long to wait, after asking the network thread to quit, for it to finish: its own
/// wait for acks, plus a connect and a write.
const QUIT_WAIT_MS: u64 = QUIT_ACK_WAIT_MS + 2_000;

/// Exit code for a command line that makes no sense (as clap uses).
const EXIT_USAGE: u8 = 2;

/// Exit code of a scripted mode that gave up at `--timeout-ms`: no server answered, or the
/// answer did not come. Told apart from 1 (the node refused) because a retry may succeed.
const EXIT_GAVE_UP: u8 = 3;

/// A chat client for pbchatd: interactive by default, or one scripted action.
#[derive(Parser, Debug)]
#[command(name = "pbchat-client", version, after_help = AFTER_HELP)]
struct Args {
    /// Client address of a node, HOST:PORT; repeat for several, tried in turn
    /// [default: 127.0.0.1:7400, 127.0.0.1:7410]
    #[arg(long = "server", value_name = "HOST:PORT")]
    servers: Vec<String>,

    /// Nick to chat as (required interactively; scripted modes make one up)
    #[arg(long)]
    nick: Option<String>,

    /// Room to join; repeat for several (the first is where typed lines go)
    #[arg(long = "room", value_name = "ROOM")]
    rooms: Vec<String>,

    /// Session id, stable across reconnects [default: random, new per process]
    #[arg(long)]
    session: Option<String>,

    /// Token for nodes that require authentication. Visible to every local user in `ps`:
    /// prefer --token-file or PBCHAT_TOKEN
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,

    /// Read the token from FILE (owner-only: refused when group or others may read it;
    /// surrounding white space ignored). Without --token and --token-file, the
    /// PBCHAT_TOKEN environment variable is used when set
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,

    /// Where the session and each room's last message shown are remembered between runs
    /// (interactive and --listen), in NICK-HASH.json (HASH: of the --server list) [default: $XDG_STATE_HOME/pbchat, else
    /// ~/.local/state/pbchat]
    #[arg(long, value_name = "DIR", conflicts_with = "no_state")]
    state_dir: Option<std::path::PathBuf>,

    /// Remember nothing between runs: a new session, and rooms from the time of joining
    #[arg(long)]
    no_state: bool,

    /// Speak TLS to the nodes (TLS 1.2 or 1.3), checking their certificates against the
    /// public roots, or the CA given with --ca
    #[arg(long)]
    tls: bool,

    /// PEM file of the CA that issued the nodes' certificates (a private CA)
    #[arg(long, value_name = "FILE", requires = "tls")]
    ca: Option<std::path::PathBuf>,

    /// The name the nodes' certificates must carry [default: the host of each address]
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_name: Option<String>,

    /// Send TEXT to the room, wait for its ack, exit (a blank TEXT is refused, exit 2)
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["listen", "history"])]
    send: Option<String>,

    /// Message id for --send [default: made up, unique]
    #[arg(long, value_name = "ID", requires = "send")]
    id: Option<String>,

    /// Print each message of the room(s) as one JSON line, as received, until killed
    #[arg(long, conflicts_with = "history")]
    listen: bool,

    /// With --listen: replay from after this seq
    #[arg(long, value_name = "SEQ", requires = "listen")]
    after: Option<u64>,

    /// With --after: the epoch of message SEQ, so a node whose history parted from the
    /// one it came from replays from the parting
    #[arg(long, value_name = "EPOCH", requires = "after")]
    after_epoch: Option<u64>,

    /// Print the last N messages of the room as JSON lines, exit
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=HISTORY_LIMIT_MAX as u64))]
    history: Option<u64>,

    /// Scripted modes: give up after this long, exit 3 (--send: until the ack; --history:
    /// until the end of the answer; --listen: until the first connection)
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,

    /// Say more on stderr: every connection attempt and redirect; --send prints the seq
    #[arg(long, short)]
    verbose: bool,
}

/// The longest a token file may be: tokens are a few dozen characters.
const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// The state file is rewritten at most this often while messages arrive (and at exit), so a
/// busy room costs one small write a second, and a client killed outright repeats at most
/// this much.
const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(1);

const AFTER_HELP: &str = "\
Exit status: 0 done (--send: acknowledged); 1 the node refused (the message is not stored),
or another failure; 2 a command line that makes no sense (a blank --send among them);
3 gave up after --timeout-ms: no server answered, or the answer did not come in time (a
--send may then be stored or not: resending with the same --session and --id is safe).

Connection trouble is told on stderr in words: which servers cannot be reached and why,
a lost connection, the reconnect. A redirect to the primary is normal and said only
with -v.";

#[derive(Debug, Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("error {code}: {message}")]
    Node { code: String, message: String },
    #[error("{0}")]
    Failed(String),
    /// A scripted mode reached its deadline; the text says what was missing.
    #[error("{0}")]
    GaveUp(String),
    #[error("cannot start the network thread: {0}")]
    Spawn(io::Error),
    #[error("terminal: {0}")]
    Terminal(io::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(EXIT_USAGE),
            CliError::GaveUp(_) => ExitCode::from(EXIT_GAVE_UP),
            _ => ExitCode::FAILURE,
        }
    }
}

fn main() -> ExitCode {
    if let Some(code) = pbchat::completions::requested::<Args>("pbchat-client") {
        return code;
    }
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pbchat-client: {e}");
            e.exit_code()
        }
    }
}

/// What the scripted modes and the terminal share: the checked arguments and the channels
/// to a running network thread.
struct Client {
    commands: Sender<Command>,
    events: Receiver<Event>,
}

impl Client {
    fn start(config: NetConfig) -> Result<Client, CliError> {
        let (command_tx, command_rx) = bounded(COMMANDS_QUEUE_MAX);
        let (event_tx, event_rx) = bounded(EVENTS_QUEUE_MAX);
        // The thread ends by itself on quit or a fatal refusal; nobody needs to join it.
        net::spawn(config, command_rx, event_tx).map_err(CliError::Spawn)?;
        Ok(Client {
            commands: command_tx,
            events: event_rx,
        })
    }

    fn command(&self, command: Command) -> Result<(), CliError> {
        if self.commands.send(command).is_ok() {
            return Ok(());
        }
        // The thread ended before taking the command: the refusal it reported says why (a
        // certificate that does not verify ends it at once, as `--send` queues its frames).
        while let Ok(event) = self.events.try_recv() {
            if let Event::Fatal { code, message } = event {
                return Err(CliError::Node { code, message });
            }
        }
        Err(CliError::Failed("the network thread ended".into()))
    }

    /// Asks the network thread to quit and waits (bounded) until it has.
    fn quit(self) {
        let _ = self.commands.send(Command::Quit);
        let deadline = Instant::now() + Duration::from_millis(QUIT_WAIT_MS);
        // The thread is done when it drops its event sender.
        while self.events.recv_deadline(deadline).is_ok() {}
    }
}

fn run(args: Args) -> Result<ExitCode, CliError> {
    let scripted = args.send.is_some() || args.listen || args.history.is_some();
    let nick = match (&args.nick, scripted) {
        (Some(nick), _) => nick.clone(),
        (None, true) => format!("pbchat-{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff),
        (None, false) => return Err(CliError::Usage("--nick is required".into())),
    };
    check_nick(&nick).map_err(|e| CliError::Usage(format!("--nick: {e}")))?;
    let mut rooms: Vec<String> = Vec::new();
    for room in &args.rooms {
        check_room(room).map_err(|e| CliError::Usage(format!("--room {room}: {e}")))?;
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
    }
    if (args.send.is_some() || args.history.is_some()) && rooms.len() != 1 {
        return Err(CliError::Usage(
            "--send and --history need exactly one --room".into(),
        ));
    }
    if args.listen && rooms.is_empty() {
        return Err(CliError::Usage("--listen needs a --room".into()));
    }
    // The same rule as a typed line, which the interactive client never sends when blank.
    if args
        .send
        .as_deref()
        .is_some_and(|body| body.trim().is_empty())
    {
        return Err(CliError::Usage(
            "--send: the message is blank (empty or only spaces); nothing to send".into(),
        ));
    }
    let servers = if args.servers.is_empty() {
        DEFAULT_SERVERS.iter().map(|s| s.to_string()).collect()
    } else {
        args.servers.clone()
    };
    // Only the modes that follow rooms remember where they were.
    let mut memory = if args.send.is_some() || args.history.is_some() || args.no_state {
        None
    } else {
        Memory::open(args.state_dir.clone(), &nick, &servers)
    };
    let session = match &args.session {
        Some(session) => {
            check_printable("--session", session, SESSION_CHARS_MAX)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            session.clone()
        }
        None => match &memory {
            Some(memory) if !memory.state.session.is_empty() => memory.state.session.clone(),
            _ => format!("{:016x}", rand::thread_rng().gen::<u64>()),
        },
    };
    if let Some(memory) = &mut memory {
        if memory.state.session != session {
            memory.state.session = session.clone();
            memory.dirty = true;
        }
    }
    let token = token(&args)?;
    // Ids unique per nick, not only per session: a session given on the command line may
    // have sent `m-1` before (a resend of it would be acknowledged without being stored),
    // and after two primaries served at once a copy is recognized by sender and id
    // (docs/protocol.md, the client recipe). See `MessageIds`.
    let mut ids = MessageIds::new(format!("m-{:08x}-", rand::thread_rng().gen::<u32>()));
    let tls = if args.tls {
        if let Some(name) = &args.tls_name {
            pbchat::tls::server_name(name)
                .map_err(|e| CliError::Usage(format!("--tls-name: {e}")))?;
        }
        let config = pbchat::tls::client_config(args.ca.as_deref(), None)
            .map_err(|e| CliError::Usage(format!("--ca: {e}")))?;
        Some(net::ClientTls {
            config,
            name: args.tls_name.clone(),
        })
    } else {
        None
    };
    let config = NetConfig {
        tls,
        servers,
        nick,
        session,
        token,
        ping_interval: Duration::from_millis(PING_INTERVAL_MS),
        seed: None,
    };
    if let Some(body) = &args.send {
        let id = match &args.id {
            Some(id) => {
                check_printable("--id", id, ID_CHARS_MAX)
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                id.clone()
            }
            None => ids.next_id(),
        };
        send_once(&args, config, &rooms[0], id, body)
    } else if let Some(limit) = args.history {
        print_history(&args, config, &rooms[0], limit as usize)
    } else if args.listen {
        listen(&args, config, &rooms, memory)
    } else {
        interactive(config, rooms, ids, args.verbose, memory)
    }
}

/// The token from --token, --token-file or `PBCHAT_TOKEN`, in that order.
fn token(args: &Args) -> Result<Option<String>, CliError> {
    if let Some(token) = &args.token {
        return Ok(Some(token.clone()));
    }
    if let Some(path) = &args.token_file {
        use pbchat::private_file::{read_private_text, PrivateFileError};
        let name = path.display();
        let text = read_private_text(path, TOKEN_FILE_BYTES_MAX).map_err(|e| {
            CliError::Usage(match e {
                PrivateFileError::Read(e) => format!("--token-file {name}: cannot read: {e}"),
                PrivateFileError::Permissions { mode } => format!(
                    "--token-file {name}: mode {mode:04o} lets group or others read or write \
                     the token; run chmod 600 {name}"
                ),
                PrivateFileError::TooLarge => format!(
                    "--token-file {name}: longer than {TOKEN_FILE_BYTES_MAX} bytes; not a token"
                ),
                PrivateFileError::NotUtf8 => format!("--token-file {name}: not UTF-8 text"),
            })
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::Usage(format!("--token-file {name}: empty")));
        }
        return Ok(Some(token.to_string()));
    }
    Ok(std::env::var("PBCHAT_TOKEN")
        .ok()
        .map(|token| token.trim().to_string())
        .filter(|token| !token.is_empty()))
}

/// The state file of this nick and what it holds now: the session and each room's last
/// message shown. Problems with it are told on stderr once and never stop the client.
struct Memory {
    path: std::path::PathBuf,
    state: state::State,
    /// Changed since the last write.
    dirty: bool,
    last_saved: Instant,
    /// A write failed: said once, not once a second.
    failed: bool,
}

impl Memory {
    /// The state of `nick` with `servers` in `dir` (or the default directory); a fresh one when there is
    /// none or it cannot be read (said on stderr). `None` without a directory to use.
    fn open(dir: Option<std::path::PathBuf>, nick: &str, servers: &[String]) -> Option<Memory> {
        let path = state::path(&dir.or_else(state::default_dir)?, nick, servers);
        let state = match state::load(&path, nick) {
            Ok(Some(state)) => state,
            Ok(None) => state::State::new(nick, ""),
            Err(e) => {
                eprintln!("pbchat-client: state: {e}; starting afresh");
                state::State::new(nick, "")
            }
        };
        Some(Memory {
            path,
            state,
            dirty: false,
            last_saved: Instant::now(),
            failed: false,
        })
    }

    /// Where to resume `room`.
    fn position(&self, room: &str) -> Option<Position> {
        self.state.position(room)
    }

    /// A message of the live stream was shown.
    fn on_event(&mut self, event: &Event) {
        if let Event::Msg {
            frame,
            history: false,
            ..
        } = event
        {
            if let (Some(room), Some(seq)) = (&frame.room, frame.seq) {
                let position = Position {
                    seq,
                    epoch: frame.epoch,
                };
                self.dirty |= self.state.shown(room, position);
            }
        }
    }

    /// When the next write is due, if one is.
    fn due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_saved + STATE_SAVE_INTERVAL)
    }

    /// Writes when due (`force`: at exit, whenever dirty).
    fn save(&mut self, force: bool) {
        if !self.dirty || (!force && self.due().is_some_and(|due| Instant::now() < due)) {
            return;
        }
        self.last_saved = Instant::now();
        self.dirty = false;
        if let Err(e) = state::save(&self.path, &self.state) {
            if !self.failed {
                eprintln!("pbchat-client: state: {e}; not remembering where this run stops");
                self.failed = true;
            }
        }
    }
}

/// Prints status lines of a scripted mode on stderr.
fn show_status(progress: &mut Progress, event: &Event) {
    for line in progress.on_event(event) {
        eprintln!("{line}");
    }
}

fn deadline_after(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms)
}

/// The next event before the deadline (`timeout_ms` after `started`), or why there is none:
/// `progress` says what was missing, `waiting_for` when it is the node's answer.
fn next_event(
    client: &Client,
    progress: &Progress,
    started: Instant,
    timeout_ms: u64,
    waiting_for: &str,
) -> Result<Event, CliError> {
    let deadline = started + Duration::from_millis(timeout_ms);
    match client.events.recv_deadline(deadline) {
        Ok(event) => Ok(event),
        Err(RecvTimeoutError::Timeout) => {
            Err(CliError::GaveUp(progress.gave_up(timeout_ms, waiting_for)))
        }
        Err(RecvTimeoutError::Disconnected) => {
            Err(CliError::Failed("the network thread ended".into()))
        }
    }
}

fn send_once(
    args: &Args,
    config: NetConfig,
    room: &str,
    id: String,
    body: &str,
) -> Result<ExitCode, CliError> {
    let mut progress = Progress::new(config.servers.len(), args.verbose, false);
    let client = Client::start(config)?;
    client.command(Command::Join {
        room: room.to_string(),
        after: None,
    })?;
    client.command(Command::Send {
        room: room.to_string(),
        id: id.clone(),
        body: body.to_string(),
    })?;
    let started = Instant::now();
    let waiting_for = format!("the ack of {id}");
    loop {
        match next_event(&client, &progress, started, args.timeout_ms, &waiting_for)? {
            Event::Acked { id: acked, seq } if acked == id => {
                if args.verbose {
                    println!("{seq}");
                }
                client.quit();
                return Ok(ExitCode::SUCCESS);
            }
            Event::SendFailed { code, message, .. }
            | Event::Error { code, message }
            | Event::Fatal { code, message } => return Err(CliError::Node { code, message }),
            Event::Rejected { message } => return Err(CliError::Failed(message)),
            other => show_status(&mut progress, &other),
        }
    }
}

fn print_history(
    args: &Args,
    config: NetConfig,
    room: &str,
    limit: usize,
) -> Result<ExitCode, CliError> {
    let mut progress = Progress::new(config.servers.len(), args.verbose, false);
    let client = Client::start(config)?;
    client.command(Command::History {
        room: room.to_string(),
        limit,
    })?;
    let started = Instant::now();
    let waiting_for = format!("the whole history of {room}");
    let mut stdout = io::stdout().lock();
    loop {
        match next_event(&client, &progress, started, args.timeout_ms, &waiting_for)? {
            Event::Msg {
                raw, history: true, ..
            } => {
                if writeln!(stdout, "{raw}").is_err() {
                    // The reader went away (`| head`): nothing left to do.
                    break;
                }
            }
            Event::HistoryEnd { .. } => break,
            Event::Error { code, message } | Event::Fatal { code, message } => {
                return Err(CliError::Node { code, message })
            }
            Event::Rejected { message } => return Err(CliError::Failed(message)),
            other => show_status(&mut progress, &other),
        }
    }
    let _ = stdout.flush();
    client.quit();
    Ok(ExitCode::SUCCESS)
}

fn listen(
    args: &Args,
    config: NetConfig,
    rooms: &[String],
    mut memory: Option<Memory>,
) -> Result<ExitCode, CliError> {
    let mut progress = Progress::new(config.servers.len(), args.verbose, false);
    // TERM, INT and HUP end listening after writing the state (SIGWINCH is ignored).
    let signals = if memory.is_some() {
        watch_signals()?
    } else {
        never()
    };
    let client = Client::start(config)?;
    let after = args.after.map(|seq| Position {
        seq,
        epoch: args.after_epoch,
    });
    for room in rooms {
        // --after wins over the remembered place.
        let after = after.or_else(|| memory.as_ref().and_then(|m| m.position(room)));
        client.command(Command::Join {
            room: room.clone(),
            after,
        })?;
    }
    let started = Instant::now();
    let give_up = started + Duration::from_millis(args.timeout_ms);
    // Until the first session opens, a deadline: a listener that never reached a server
    // says so. Once one did, it follows the pair through fail-overs for as long as it runs.
    let mut opened = false;
    let mut stdout = io::stdout().lock();
    let stop = |client: Client, memory: &mut Option<Memory>| {
        if let Some(memory) = memory {
            memory.save(true);
        }
        client.quit();
        Ok(ExitCode::SUCCESS)
    };
    loop {
        let save_due = memory.as_ref().and_then(Memory::due);
        let wake = match (opened, save_due) {
            (false, Some(due)) => Some(due.min(give_up)),
            (false, None) => Some(give_up),
            (true, due) => due,
        };
        let timer = wake.map_or_else(never, |at| crossbeam_channel::at(at.max(Instant::now())));
        let event = select! {
            recv(client.events) -> event => {
                event.map_err(|_| CliError::Failed("the network thread ended".into()))?
            }
            recv(signals) -> signal => match signal {
                Ok(signal_hook::consts::SIGWINCH) => continue,
                _ => return stop(client, &mut memory),
            },
            recv(timer) -> _ => {
                if let Some(memory) = &mut memory {
                    memory.save(false);
                }
                if !opened && Instant::now() >= give_up {
                    return Err(CliError::GaveUp(progress.gave_up(args.timeout_ms, "a welcome")));
                }
                continue;
            }
        };
        opened |= matches!(event, Event::Connected { .. });
        if let Some(memory) = &mut memory {
            memory.on_event(&event);
        }
        match event {
            Event::Msg { raw, .. } => {
                // One line per message, flushed, so a reader sees it at once. A closed
                // stdout (the reader left) ends listening.
                if writeln!(stdout, "{raw}")
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return stop(client, &mut memory);
                }
            }
            Event::Fatal { code, message } => return Err(CliError::Node { code, message }),
            Event::Error { code, message } => eprintln!("pbchat-client: error {code}: {message}"),
            Event::Rejected { message } => eprintln!("pbchat-client: {message}"),
            other => show_status(&mut progress, &other),
        }
    }
}

/// Bound of the signal channel: a burst of resizes needs one redraw, and a request to
/// stop needs one.
const SIGNALS_QUEUE_MAX: usize = 8;

/// How often the view looks for members who did not come back after a reconnect
/// (`display::REJOIN_GRACE_MS`): they are told within this of the grace period's end.
const PRESENCE_CHECK_MS: u64 = 1_000;

/// The person's side of the interactive client: the rooms joined, the one typed lines go
/// to, and the ids of the messages sent.
struct Chat {
    joined: Vec<String>,
    current: Option<String>,
    ids: MessageIds,
    /// The state file: where each room was left, kept up to date as messages show.
    memory: Option<Memory>,
}

impl Chat {
    fn prompt(&self) -> String {
        match &self.current {
            Some(room) => format!("[{room}]> "),
            None => "> ".to_string(),
        }
    }

    /// Carries out a typed line. Returns the lines it shows, and whether to leave.
    fn on_line(&mut self, line: &str, client: &Client) -> Result<(Vec<String>, bool), CliError> {
        let join_first = || vec!["-- join a room first: /join ROOM".to_string()];
        let lines = match parse_input(line) {
            Input::Empty => Vec::new(),
            Input::Say(body) => match &self.current {
                Some(room) => {
                    client.command(Command::Send {
                        room: room.clone(),
                        id: self.ids.next_id(),
                        body,
                    })?;
                    Vec::new()
                }
                None => join_first(),
            },
            Input::Join(room) => {
                if !self.joined.contains(&room) {
                    self.joined.push(room.clone());
                    client.command(Command::Join {
                        room: room.clone(),
                        after: self.memory.as_ref().and_then(|m| m.position(&room)),
                    })?;
                }
                self.current = Some(room);
                Vec::new()
            }
            Input::Leave(room) => {
                if self.joined.contains(&room) {
                    self.joined.retain(|r| *r != room);
                    client.command(Command::Leave { room: room.clone() })?;
                    if self.current.as_ref() == Some(&room) {
                        self.current = self.joined.last().cloned();
                    }
                    Vec::new()
                } else {
                    vec![format!("-- not in {room}")]
                }
            }
            Input::Room(room) => {
                if self.joined.contains(&room) {
                    self.current = Some(room);
                    Vec::new()
                } else {
                    vec![format!("-- not in {room}; /join {room} first")]
                }
            }
            Input::History(limit) => match &self.current {
                Some(room) => {
                    client.command(Command::History {
                        room: room.clone(),
                        limit,
                    })?;
                    Vec::new()
                }
                None => join_first(),
            },
            Input::Who => match &self.current {
                Some(room) => {
                    client.command(Command::Who { room: room.clone() })?;
                    Vec::new()
                }
                None => join_first(),
            },
            Input::Quit => return Ok((Vec::new(), true)),
            Input::Help => HELP.lines().map(str::to_string).collect(),
            Input::Invalid(why) => vec![format!("-- {why}")],
        };
        Ok((lines, false))
    }
}

/// A person at a terminal: keys edit one row at the bottom, lines print above it.
struct Screen {
    terminal: Terminal,
    decoder: KeyDecoder,
    editor: LineEditor,
}

/// Where the interactive client shows lines and reads typed ones.
enum Front {
    Terminal(Box<Screen>),
    /// Piped input: whole lines in, plain lines out.
    Plain,
}

impl Front {
    fn print(&mut self, lines: &[String]) -> Result<(), CliError> {
        match self {
            Front::Terminal(screen) => screen.terminal.print_above(lines),
            Front::Plain => {
                let mut stdout = io::stdout().lock();
                lines
                    .iter()
                    .try_for_each(|line| writeln!(stdout, "{}", printable(line)))
                    .and_then(|()| stdout.flush())
            }
        }
        .map_err(CliError::Terminal)
    }

    /// Draws the edited row again (the prompt or the terminal's width changed).
    fn redraw(&mut self, chat: &Chat) -> Result<(), CliError> {
        if let Front::Terminal(screen) = self {
            let row = screen
                .editor
                .render(&chat.prompt(), screen.terminal.columns());
            screen.terminal.show(&row).map_err(CliError::Terminal)?;
        }
        Ok(())
    }

    fn resized(&mut self, chat: &Chat) -> Result<(), CliError> {
        if let Front::Terminal(screen) = self {
            screen.terminal.measure();
        }
        self.redraw(chat)
    }

    /// Takes what was typed; returns whether to leave.
    fn on_typed(
        &mut self,
        typed: Typed,
        chat: &mut Chat,
        client: &Client,
    ) -> Result<bool, CliError> {
        let bytes = match typed {
            Typed::Line(line) => {
                let (lines, quit) = chat.on_line(&line, client)?;
                self.print(&lines)?;
                return Ok(quit);
            }
            Typed::Keys(bytes) => bytes,
        };
        let Front::Terminal(screen) = self else {
            return Ok(false);
        };
        let Screen {
            terminal,
            decoder,
            editor,
        } = &mut **screen;
        let mut keys = Vec::new();
        decoder.feed(&bytes, &mut keys);
        for key in keys {
            match editor.on_key(key) {
                Edit::Edited => {}
                Edit::Bell => terminal.bell().map_err(CliError::Terminal)?,
                Edit::ClearScreen => terminal.clear_screen().map_err(CliError::Terminal)?,
                Edit::Quit => return Ok(true),
                Edit::Submit(line) => {
                    // The line stays on the screen as sent: its start, on one row.
                    let chars: Vec<char> = line.chars().collect();
                    let (echo, _) = render_row(&chat.prompt(), &chars, 0, terminal.columns(), 0);
                    terminal.keep(&echo).map_err(CliError::Terminal)?;
                    let (lines, quit) = chat.on_line(&line, client)?;
                    terminal.print_above(&lines).map_err(CliError::Terminal)?;
                    if quit {
                        return Ok(true);
                    }
                }
            }
        }
        // One draw for all the keys of a read: a paste is drawn once, not once a key.
        self.redraw(chat)?;
        Ok(false)
    }
}

/// `SIGWINCH` (the terminal was resized), and the signals that ask to stop, which must
/// give the terminal back before the process ends.
fn watch_signals() -> Result<Receiver<i32>, CliError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
    let mut signals = signal_hook::iterator::Signals::new([SIGWINCH, SIGTERM, SIGHUP, SIGINT])
        .map_err(CliError::Spawn)?;
    let (signal_tx, signal_rx) = bounded(SIGNALS_QUEUE_MAX);
    thread::Builder::new()
        .name("pbchat-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let sent = if signal == SIGWINCH {
                    // A full queue already holds a redraw.
                    !matches!(
                        signal_tx.try_send(signal),
                        Err(TrySendError::Disconnected(_))
                    )
                } else {
                    signal_tx.send(signal).is_ok()
                };
                if !sent {
                    return;
                }
            }
        })
        .map_err(CliError::Spawn)?;
    Ok(signal_rx)
}

fn interactive(
    config: NetConfig,
    rooms: Vec<String>,
    ids: MessageIds,
    verbose: bool,
    memory: Option<Memory>,
) -> Result<ExitCode, CliError> {
    let mut progress = Progress::new(config.servers.len(), verbose, true);
    let client = Client::start(config)?;
    for room in &rooms {
        client.command(Command::Join {
            room: room.clone(),
            after: memory.as_ref().and_then(|m| m.position(room)),
        })?;
    }
    // Until the first session opens the line editor is not up: plain stderr, and Ctrl-C
    // simply ends the process.
    loop {
        let event = client
            .events
            .recv()
            .map_err(|_| CliError::Failed("the network thread ended".into()))?;
        if let Event::Fatal { code, message } = event {
            return Err(CliError::Node { code, message });
        }
        show_status(&mut progress, &event);
        if progress.is_open() {
            break;
        }
    }

    let keys = terminal::is_interactive();
    let (signals, mut front) = if keys {
        let signals = watch_signals()?;
        let front = Front::Terminal(Box::new(Screen {
            terminal: Terminal::open().map_err(CliError::Terminal)?,
            decoder: KeyDecoder::new(),
            editor: LineEditor::new(),
        }));
        (signals, front)
    } else {
        (never(), Front::Plain)
    };
    // Started once the terminal is raw, so that no key is read as part of a cooked line.
    let (typed_tx, typed_rx) = bounded(INPUT_QUEUE_MAX);
    terminal::spawn_reader(keys, typed_tx).map_err(CliError::Spawn)?;
    let mut chat = Chat {
        current: rooms.first().cloned(),
        joined: rooms,
        ids,
        memory,
    };
    let mut view = View::new();
    let presence_checks = tick(Duration::from_millis(PRESENCE_CHECK_MS));
    front.redraw(&chat)?;
    let outcome = loop {
        select! {
            recv(client.events) -> event => {
                // The thread ends only after `Fatal` or a quit, both handled here.
                let Ok(event) = event else { break ExitCode::FAILURE };
                let fatal = matches!(event, Event::Fatal { .. });
                if let Some(memory) = &mut chat.memory {
                    memory.on_event(&event);
                }
                let mut lines = progress.on_event(&event);
                lines.extend(view.lines(&event, Instant::now()));
                front.print(&lines)?;
                if fatal {
                    front.print(&["-- cannot go on".to_string()])?;
                    break ExitCode::FAILURE;
                }
            }
            recv(typed_rx) -> typed => {
                // The end of the input (a pipe, or the terminal gone) is leaving.
                let Ok(typed) = typed else { break ExitCode::SUCCESS };
                if front.on_typed(typed, &mut chat, &client)? {
                    break ExitCode::SUCCESS;
                }
            }
            recv(presence_checks) -> _ => {
                front.print(&view.expire(Instant::now()))?;
                // The same 1 s tick writes the state file when it changed.
                if let Some(memory) = &mut chat.memory {
                    memory.save(false);
                }
            }
            recv(signals) -> signal => match signal {
                Ok(signal_hook::consts::SIGWINCH) => front.resized(&chat)?,
                _ => break ExitCode::SUCCESS,
            },
        }
    };
    // What still arrives (acks, the last messages) shows until the network thread ends,
    // which it does once the unacknowledged sends are acknowledged, or at its deadline.
    let _ = client.commands.send(Command::Quit);
    let deadline = deadline_after(QUIT_WAIT_MS);
    while let Ok(event) = client.events.recv_deadline(deadline) {
        if let Some(memory) = &mut chat.memory {
            memory.on_event(&event);
        }
        let mut lines = progress.on_event(&event);
        lines.extend(view.lines(&event, Instant::now()));
        // Leaving anyway: a terminal that is gone changes nothing.
        let _ = front.print(&lines);
    }
    if let Some(memory) = &mut chat.memory {
        memory.save(true);
    }
    // Dropping the terminal gives it back as it was.
    drop(front);
    Ok(outcome)
}
