//! The interactive `pbchat-client` on a real terminal: tmux runs it in a pane against the
//! real `pbchatd`, the test types into the pane (`send-keys`) and reads the screen
//! (`capture-pane`), which is what a person sees. Needs the Debian package `tmux`; without
//! it the tests fail, saying so, rather than skip.

use crate::common;
use crate::common::state;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, PairFiles, DEADLINE};

/// A tmux server of the test's own (its socket in a temp dir), killed on drop with every
/// pane it runs.
struct Tmux {
    socket: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        let installed = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(
            installed,
            "tmux is not installed, and these tests drive pbchat-client's terminal through \
             it: install the Debian package `tmux` (apt-get install tmux; .ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        // A pane whose program exited stays readable; no user config gets in the way.
        let config = dir.path().join("tmux.conf");
        std::fs::write(
            &config,
            "set -g remain-on-exit on\nset -g history-limit 10000\n",
        )
        .unwrap();
        Tmux {
            socket: dir.path().join("socket"),
            config,
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `program args` in a new pane `name`, `columns` wide.
    fn start(&self, name: &str, columns: u16, program: &Path, args: &[&str]) {
        let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
        let mut command = quote(program.to_str().unwrap());
        for arg in args {
            command.push(' ');
            command.push_str(&quote(arg));
        }
        let columns = columns.to_string();
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &columns,
            "-y",
            "40",
            &command,
        ]);
    }

    /// Types `text` into pane `name`, as a person (or a paste without bracketing) would.
    fn type_text(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
    }

    /// Presses a key (`Enter`, `C-c`).
    fn press(&self, name: &str, key: &str) {
        self.run(&["send-keys", "-t", name, key]);
    }

    /// Every row the pane has shown: its scrollback and its screen.
    fn rows(&self, name: &str) -> Vec<String> {
        let text = self.run(&["capture-pane", "-p", "-S", "-", "-t", name]);
        let mut rows: Vec<String> = text.lines().map(|row| row.trim_end().to_string()).collect();
        while rows.last().is_some_and(|row| row.is_empty()) {
            rows.pop();
        }
        rows
    }

    /// Waits until the rows of pane `name` satisfy `condition`; returns them.
    fn wait(&self, name: &str, what: &str, condition: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let rows = self.rows(name);
            if condition(&rows) {
                return rows;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no {what} on the screen:\n{}",
                rows.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_row(&self, name: &str, needle: &str) -> Vec<String> {
        self.wait(name, &format!("row with {needle:?}"), |rows| {
            rows.iter().any(|row| row.contains(needle))
        })
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

fn client_program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pbchat-client"))
}

/// Issue 15: a 5000-character paste redrew the edited line 12 times in growing copies, and
/// the `too_large` refusal then repeated the whole body.
#[test]
fn a_long_paste_stays_on_one_row_and_its_refusal_quotes_a_short_prefix() {
    // The default body limit (4096 bytes) refuses the paste.
    let node = Daemon::start("primary", "", "");
    let tmux = Tmux::new();
    let server = node.addr.to_string();
    let args = [
        "--server",
        &server,
        "--nick",
        "alice",
        "--room",
        "general",
        "--no-state",
    ];
    tmux.start("alice", 200, client_program(), &args);
    tmux.wait_row("alice", "-- joined general; members: alice");

    let text = format!("START{}END", "x".repeat(4992));
    tmux.type_text("alice", &text);
    // All of it is in once the row shows its end, scrolled: `<` marks the hidden start.
    let rows = tmux.wait("alice", "edited row showing the end", |rows| {
        rows.iter()
            .any(|row| row.starts_with("[general]> <") && row.ends_with("END"))
    });
    let long: Vec<&String> = rows.iter().filter(|row| row.contains("xxxxxxxx")).collect();
    assert_eq!(long.len(), 1, "one row, no copies:\n{}", rows.join("\n"));
    assert!(long[0].chars().count() < 200, "{}", long[0]);

    tmux.press("alice", "Enter");
    let rows = tmux.wait_row("alice", "(too_large");
    let refusal = rows.iter().find(|row| row.contains("(too_large")).unwrap();
    assert!(
        refusal.starts_with("-- not sent to general (too_large: ")
            && refusal.ends_with(&format!("START{}… (5000 characters)", "x".repeat(35))),
        "{refusal}"
    );
    // What shows of the paste: the row as sent (its start) and the refusal's quote.
    let long: Vec<&String> = rows.iter().filter(|row| row.contains("xxxxxxxx")).collect();
    assert_eq!(long.len(), 2, "{}", rows.join("\n"));
    assert!(long[0].starts_with("[general]> START") && long[0].ends_with('>'));
    assert!(
        !rows.iter().any(|row| row.contains("END")),
        "{}",
        rows.join("\n")
    );
    // The editor is back on an empty row.
    assert_eq!(rows.last().unwrap(), "[general]>");
}

fn count(rows: &[String], needle: &str) -> usize {
    rows.iter().filter(|row| row.contains(needle)).count()
}

/// Issue 15: after a fail-over bob saw "* alice joined general" although alice never left,
/// and alice saw nothing for bob. Two people chat through a kill -9 of the primary; a third
/// member (a `--listen` client) dies with it. Neither person is shown joining or leaving;
/// the one who is really gone is shown leaving once the grace period is over.
#[test]
fn after_a_kill_9_of_the_primary_nobody_is_shown_joining_who_never_left() {
    let pair = PairFiles::new("");
    let mut a = pair.start_a();
    let b = pair.start_b();
    b.wait_state("following its peer", state::following_its_peer);
    let (server_a, server_b) = (pair.client_a.to_string(), pair.client_b.to_string());
    let servers = ["--server", &server_a, "--server", &server_b];
    let tmux = Tmux::new();
    for nick in ["alice", "bob"] {
        let mut args = servers.to_vec();
        args.extend(["--nick", nick, "--room", "general", "--no-state"]);
        tmux.start(nick, 120, client_program(), &args);
        tmux.wait_row(nick, "-- joined general; members:");
    }
    tmux.wait_row("alice", "* bob joined general");
    let mut carol = Command::new(client_program())
        .args(servers)
        .args([
            "--nick",
            "carol",
            "--room",
            "general",
            "--listen",
            "--no-state",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tmux.wait_row("alice", "* carol joined general");
    tmux.wait_row("bob", "* carol joined general");

    a.kill9();
    carol.kill().unwrap();
    carol.wait().unwrap();
    for nick in ["alice", "bob"] {
        tmux.wait_row(nick, "-- reconnected to node b");
    }
    // Each says a line after its rejoin. Once each has seen the other's, whatever the
    // other's rejoin made the node announce has been shown: it came first on the same
    // connection.
    for nick in ["alice", "bob"] {
        tmux.type_text(nick, &format!("{nick} is back"));
        tmux.press(nick, "Enter");
    }
    let alice = tmux.wait_row("alice", "<bob> bob is back");
    let bob = tmux.wait_row("bob", "<alice> alice is back");
    let screens = || format!("alice:\n{}\n\nbob:\n{}", alice.join("\n"), bob.join("\n"));
    // bob joined after alice: alice saw that once, before the fail-over; bob never did.
    assert_eq!(count(&alice, "* bob joined general"), 1, "{}", screens());
    assert_eq!(count(&bob, "* alice joined general"), 0, "{}", screens());
    assert_eq!(count(&alice, "* bob left"), 0, "{}", screens());
    assert_eq!(count(&bob, "* alice left"), 0, "{}", screens());

    // carol did not come back: both are told, once the grace period (10 s) is over.
    for nick in ["alice", "bob"] {
        let rows = tmux.wait_row(nick, "* carol left general (not back since the reconnect)");
        assert_eq!(count(&rows, "* carol"), 2, "{nick}:\n{}", rows.join("\n"));
    }
    let alice = tmux.rows("alice");
    assert_eq!(count(&alice, "* bob"), 1, "{}", alice.join("\n"));
    eprintln!("alice's screen:\n{}", alice.join("\n"));
}

/// `bob` says `text` in general through `server` (a scripted `--send`).
fn say(server: &str, text: &str) {
    let out = Command::new(client_program())
        .args(["--server", server, "--nick", "bob", "--room", "general"])
        .args(["--send", text, "--no-state"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "--send {text}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 18: the interactive client remembers its session and what it showed (its state
/// file). Restarted after lines were said without it, it shows exactly those, not again
/// what it had shown before; without the file it would show the room's recent history.
#[test]
fn a_restarted_interactive_client_shows_what_it_missed_and_nothing_twice() {
    let node = Daemon::start("primary", "", "");
    let tmux = Tmux::new();
    let server = node.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let args = [
        "--server",
        &server,
        "--nick",
        "alice",
        "--room",
        "general",
        "--state-dir",
        state_dir,
    ];
    tmux.start("first", 120, client_program(), &args);
    tmux.wait_row("first", "-- joined general; members: alice");
    say(&server, "one");
    say(&server, "two");
    tmux.wait_row("first", "<bob> two");
    tmux.type_text("first", "/quit");
    tmux.press("first", "Enter");
    // NICK-HASH.json, written at the exit.
    common::wait_until("alice's state file", || {
        std::fs::read_dir(state.path()).unwrap().any(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("alice-")
        })
    });

    say(&server, "three");
    say(&server, "four");
    tmux.start("second", 120, client_program(), &args);
    let rows = tmux.wait_row("second", "<bob> four");
    let screen = rows.join("\n");
    assert_eq!(count(&rows, "<bob> three"), 1, "{screen}");
    assert_eq!(count(&rows, "<bob> one"), 0, "shown again:\n{screen}");
    assert_eq!(count(&rows, "<bob> two"), 0, "shown again:\n{screen}");
}
