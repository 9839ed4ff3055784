//! `pbchatctl`: asks a running `pbchatd` through its admin socket. Parses arguments, finds
//! the socket (from the node's config: `NAME` for `$PBCHAT_CONFIG_DIR/NAME.toml`, `-c FILE`,
//! or `--socket`), sends one request line, prints the answer, and maps it to an exit code:
//! see [`EXIT_CODES`]; this is the one place that does.
//!
//! `reload` checks the file first, as the node would: a bad one is reported (file, key,
//! problem) with exit 2 and the node is not asked, so that `systemctl reload` (ExecReload=
//! runs `pbchatctl -c FILE reload`) fails with the reason instead of "Reloaded". Errors
//! reach the journal at priority "err" when run by systemd.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};

/// The longest a request may take: a fail-over waits up to the hand-over timeout plus 1 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Where `pbchatctl NAME` looks for `NAME.toml` unless `PBCHAT_CONFIG_DIR` says otherwise:
/// where the package installs the configs that `pbchat@NAME.service` runs.
const CONFIG_DIR_DEFAULT: &str = "/etc/pbchat";
/// The node did what was asked; the answer is on stdout.
const EXIT_OK: u8 = 0;
/// The node refused or failed (the reason is on stderr).
const EXIT_REFUSED: u8 = 1;
/// A bad command line, or the config file is missing or invalid: the node was not asked.
const EXIT_USAGE: u8 = 2;
/// The node cannot be reached: not running, another socket, no permission.
const EXIT_UNREACHABLE: u8 = 3;
/// For --help (clap exits 2 on a bad command line, which is [`EXIT_USAGE`]).
const EXIT_CODES: &str = "\
Exit status:
  0  the node did what was asked; the answer is on standard output
  1  the node refused or failed; the reason is on standard error
  2  a bad command line, or the config file is missing or invalid (the node was not asked)
  3  the node cannot be reached (not running, another socket, no permission)";

/// Ask a running pbchatd (status, role, pid, clients, rooms) or tell it to fail over, reload,
/// change its log level or kick a client, through its admin socket.
#[derive(Parser)]
// No bare `about`: it would replace the line above with Cargo.toml's description, which
// describes the daemon.
#[command(version, after_help = EXIT_CODES)]
#[command(group(ArgGroup::new("target").required(true).args(["node", "config", "socket"])))]
struct Args {
    /// The node's name: its config is `$PBCHAT_CONFIG_DIR/NAME.toml` (by default
    /// /etc/pbchat/NAME.toml, the file `pbchat@NAME` runs), e.g. `pbchatctl primary status`.
    #[arg(value_name = "NAME")]
    node: Option<String>,
    /// The node's configuration file; the socket is its `admin.socket` (by default
    /// `<node.data_dir>/admin.sock`, relative paths from the current directory).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The admin socket itself, instead of NAME or -c.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The answer as one JSON object, for programs (every command).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Request,
}

#[derive(Subcommand)]
enum Request {
    /// Role, epoch, the backup's lag, the last role change and why, counters.
    Status,
    /// Print `primary` or `backup`: the role the node has now (a restart or a fail-over
    /// moves it, whatever the config file is called).
    Role,
    /// Print the node's process id, e.g. `kill -9 $(pbchatctl -c FILE pid)`.
    Pid,
    /// Hand the primary role to the caught-up backup (the same as SIGUSR1 to the primary).
    Failover,
    /// Re-read the config file (the same as SIGHUP) and show what changed.
    Reload,
    /// Connected clients, one a line: nick, address, rooms, connected since (UTC); at most
    /// 10 000, then a line saying how many more.
    Clients,
    /// Rooms, one a line: name and number of members; at most 10 000, as for clients.
    Rooms,
    /// Close the connection of the client with this nick; it gets a `kicked` error frame
    /// with the reason first. It may reconnect: this is not a ban.
    Kick {
        nick: String,
        /// What the client is told (words; by default "no reason given").
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Set the running node's log level at once; not kept: the next reload or restart
    /// returns to the file's `logging.level`.
    LogLevel {
        #[arg(value_parser = pbchat::daemon::admin::LOG_LEVELS)]
        level: String,
    },
}

impl Request {
    /// The request line on the admin socket (without `json`).
    fn line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::Role => "role".into(),
            Request::Pid => "pid".into(),
            Request::Failover => "failover".into(),
            Request::Reload => "reload".into(),
            Request::LogLevel { level } => format!("log-level {level}"),
            Request::Clients => "clients".into(),
            Request::Rooms => "rooms".into(),
            Request::Kick { nick, reason } => match reason {
                Some(reason) => format!("kick {nick} {reason}"),
                None => format!("kick {nick}"),
            },
        }
    }
}

/// Why pbchatctl stopped before or while asking, and the exit code that says so.
struct Failure {
    message: String,
    code: u8,
}

fn main() -> ExitCode {
    if let Some(code) = pbchat::completions::requested::<Args>("pbchatctl") {
        return code;
    }
    let args = Args::parse();
    match run(&args) {
        Ok(answer) => {
            print!("{answer}");
            ExitCode::from(EXIT_OK)
        }
        Err(failure) => {
            fail(&failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn run(args: &Args) -> Result<String, Failure> {
    let socket = socket(args)?;
    let mut request = args.command.line();
    if args.json {
        request.push_str(" json");
    } else if matches!(args.command, Request::Kick { .. }) {
        // The reason is free text: say "text" so that its last word is never taken for
        // the `json` switch.
        request.push_str(" text");
    }
    // The node reads one line of at most REQUEST_MAX_BYTES: a reason that would be cut
    // or split is refused here, rather than sent half.
    if request.contains('\n') || request.len() as u64 >= pbchat::daemon::admin::REQUEST_MAX_BYTES {
        return Err(Failure {
            message: format!(
                "the request is too long or has a line break; a kick reason must fit one line and about {} bytes",
                pbchat::daemon::admin::REQUEST_MAX_BYTES - 64
            ),
            code: EXIT_USAGE,
        });
    }
    let answer = ask(&socket, &request)?;
    match answer.strip_prefix("error: ") {
        Some(error) => Err(Failure {
            message: error.trim_end().to_string(),
            code: EXIT_REFUSED,
        }),
        None => Ok(answer),
    }
}

/// The admin socket: `--socket`, or the `admin.socket` of the config named by `-c` or NAME.
fn socket(args: &Args) -> Result<PathBuf, Failure> {
    if let Some(socket) = &args.socket {
        return Ok(socket.clone());
    }
    let config = match (&args.config, &args.node) {
        (Some(config), _) => config.clone(),
        (None, Some(name)) => config_of(name, std::env::var_os("PBCHAT_CONFIG_DIR"))?,
        (None, None) => unreachable!("clap requires NAME, -c or --socket"),
    };
    match pbchat::config::load(&config) {
        Ok(config) => Ok(config.admin_socket),
        Err(e) => {
            let mut message = e.to_string();
            if matches!(args.command, Request::Reload) {
                message.push_str(
                    "\nnot reloaded: pbchatd was not asked and keeps the config it runs with",
                );
            }
            Err(Failure {
                message,
                code: EXIT_USAGE,
            })
        }
    }
}

/// `NAME` → `DIR/NAME.toml`, DIR from `PBCHAT_CONFIG_DIR` (unset or empty: /etc/pbchat). A
/// name is a file name, not a path: one with a slash is refused rather than guessed at.
fn config_of(name: &str, dir: Option<std::ffi::OsString>) -> Result<PathBuf, Failure> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Failure {
            message: format!(
                "node name {name:?}: not a name (it is empty, has a slash or starts with a dot); give a file with -c FILE"
            ),
            code: EXIT_USAGE,
        });
    }
    let dir = dir
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(CONFIG_DIR_DEFAULT), PathBuf::from);
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        return Err(Failure {
            message: format!(
                "node {name}: no config file {} (NAME means $PBCHAT_CONFIG_DIR/NAME.toml, by default in {CONFIG_DIR_DEFAULT})",
                path.display()
            ),
            code: EXIT_USAGE,
        });
    }
    Ok(path)
}

/// An error on stderr, `pbchatctl: ...` (at priority "err" on the journal's stream).
fn fail(message: &str) {
    pbchat::daemon::logging::print_error("pbchatctl", message);
}

fn ask(socket: &Path, request: &str) -> Result<String, Failure> {
    let mut stream = UnixStream::connect(socket).map_err(|e| Failure {
        message: format!(
            "cannot reach pbchatd at {}: {e}; is it running?",
            socket.display()
        ),
        code: EXIT_UNREACHABLE,
    })?;
    let failed = |e: std::io::Error| Failure {
        message: format!("pbchatd at {}: {e}", socket.display()),
        code: EXIT_REFUSED,
    };
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(failed)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(failed)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(failed)?;
    if answer.is_empty() {
        return Err(Failure {
            message: format!(
                "pbchatd at {} closed the connection without an answer",
                socket.display()
            ),
            code: EXIT_REFUSED,
        });
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_is_a_file_in_the_config_dir_and_never_a_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("primary.toml"), "").unwrap();
        let given = Some(dir.path().as_os_str().to_owned());
        assert_eq!(
            config_of("primary", given.clone()).ok(),
            Some(dir.path().join("primary.toml"))
        );
        let missing = config_of("backup", given.clone()).err().unwrap();
        assert_eq!(missing.code, EXIT_USAGE);
        assert!(
            missing.message.contains("backup.toml"),
            "{}",
            missing.message
        );
        for bad in ["", "../primary", "a/b", ".hidden"] {
            let refused = config_of(bad, given.clone()).err().unwrap();
            assert_eq!(refused.code, EXIT_USAGE, "{bad}");
            assert!(refused.message.contains("-c FILE"), "{}", refused.message);
        }
    }
}
