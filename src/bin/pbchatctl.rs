//! `pbchatctl`: asks a running `pbchatd` through its admin socket. Parses arguments, finds
//! the socket (from the node's config, or `--socket`), sends one request line, prints the
//! answer, and maps it to an exit code: 0 on success, 1 when the node refused or cannot be
//! reached, 2 for a bad config file.
//!
//! `reload` checks the file first, as the node would: a bad one is reported (file, key,
//! problem) with exit 2 and the node is not asked, so that `systemctl reload` (ExecReload=
//! runs `pbchatctl -c FILE reload`) fails with the reason instead of "Reloaded". Errors
//! reach the journal at priority "err" when run by systemd.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};

/// The longest a request may take: a fail-over waits up to the hand-over timeout plus 1 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Ask a running pbchatd (status, role, pid) or tell it to fail over or reload, through its
/// admin socket.
#[derive(Parser)]
// No bare `about`: it would replace the line above with Cargo.toml's description, which
// describes the daemon.
#[command(version)]
#[command(group(ArgGroup::new("target").required(true).args(["config", "socket"])))]
struct Args {
    /// The node's configuration file; the socket is its `admin.socket` (by default
    /// `<node.data_dir>/admin.sock`, relative paths from the current directory).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The admin socket itself, instead of -c.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Request,
}

#[derive(Subcommand)]
enum Request {
    /// Role, epoch, the backup's lag, the last role change and why, counters.
    Status {
        /// One JSON object instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Print `primary` or `backup`: the role the node has now (a restart or a fail-over
    /// moves it, whatever the config file is called).
    Role,
    /// Print the node's process id, e.g. `kill -9 $(pbchatctl -c FILE pid)`.
    Pid,
    /// Hand the primary role to the caught-up backup (the same as SIGUSR1 to the primary).
    Failover,
    /// Re-read the config file (the same as SIGHUP) and show what changed.
    Reload,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = match (&args.socket, &args.config) {
        (Some(socket), _) => socket.clone(),
        (None, Some(config)) => match pbchat::config::load(config) {
            Ok(config) => config.admin_socket,
            Err(e) => {
                let mut message = e.to_string();
                if matches!(args.command, Request::Reload) {
                    message.push_str(
                        "\nnot reloaded: pbchatd was not asked and keeps the config it runs with",
                    );
                }
                fail(&message);
                return ExitCode::from(2);
            }
        },
        (None, None) => unreachable!("clap requires -c or --socket"),
    };
    let request = match args.command {
        Request::Status { json: false } => "status",
        Request::Status { json: true } => "status json",
        Request::Role => "role",
        Request::Pid => "pid",
        Request::Failover => "failover",
        Request::Reload => "reload",
    };
    match ask(&socket, request) {
        Ok(answer) => match answer.strip_prefix("error: ") {
            Some(error) => {
                fail(error.trim_end());
                ExitCode::from(1)
            }
            None => {
                print!("{answer}");
                ExitCode::SUCCESS
            }
        },
        Err(e) => {
            fail(&e);
            ExitCode::from(1)
        }
    }
}

/// An error on stderr, `pbchatctl: ...` (at priority "err" on the journal's stream).
fn fail(message: &str) {
    pbchat::daemon::logging::print_error("pbchatctl", message);
}

fn ask(socket: &std::path::Path, request: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach pbchatd at {}: {e}; is it running?",
            socket.display()
        )
    })?;
    let failed = |e: std::io::Error| format!("pbchatd at {}: {e}", socket.display());
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(failed)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(failed)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(failed)?;
    if answer.is_empty() {
        return Err(format!(
            "pbchatd at {} closed the connection without an answer",
            socket.display()
        ));
    }
    Ok(answer)
}
