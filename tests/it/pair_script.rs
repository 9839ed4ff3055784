//! scripts/pair.sh and scripts/pid-of.sh as a newcomer meets them (issue 15), run on a
//! scratch pair (ephemeral ports and a temp dir, never the shipped configs' 7400/7410) with
//! the binaries cargo built for the tests (`PBCHAT_BIN_DIR`, so nothing is built).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use common::{signal_pid, PairFiles, DEADLINE};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pbchatd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// scripts/pair.sh running the scratch pair, with everything it and the nodes print.
struct PairScript {
    child: Child,
    /// stdout and stderr lines, in the order they were read.
    output: Arc<Mutex<Vec<String>>>,
}

impl PairScript {
    fn start(files: &PairFiles) -> PairScript {
        let mut child = Command::new(script("pair.sh"))
            .arg(&files.config_a)
            .arg(&files.config_b)
            .env("PBCHAT_BIN_DIR", bin_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/pair.sh");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  pair.sh| {line}");
                    output.lock().unwrap().push(line);
                }
            });
        }
        PairScript { child, output }
    }

    fn lines(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// The index of the first line containing `needle`.
    fn position(&self, needle: &str) -> Option<usize> {
        self.lines().iter().position(|l| l.contains(needle))
    }

    fn wait_line(&self, needle: &str) {
        wait_until(&format!("a line with {needle:?}"), || {
            self.position(needle).is_some()
        });
    }

    /// Waits for the script to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "scripts/pair.sh did not exit: {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PairScript {
    fn drop(&mut self) {
        // A failed test must not leave nodes behind (they run in sessions of their own):
        // TERM makes the script stop both.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }
}

/// `pbchatctl -c CONFIG ARGS...`: its stdout when it succeeded.
fn pbchatctl(config: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pbchatctl"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
}

fn role(config: &Path) -> Option<String> {
    pbchatctl(config, &["role"])
}

/// `scripts/pid-of.sh ROLE` over the scratch pair's configs.
fn pid_of(files: &PairFiles, role: &str) -> u32 {
    let out = Command::new(script("pid-of.sh"))
        .arg(role)
        .arg(&files.config_a)
        .arg(&files.config_b)
        .env("PBCHAT_BIN_DIR", bin_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pid-of.sh {role}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn running(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state letter says it is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Both nodes up, a primary and b following it.
fn started_pair(files: &PairFiles) -> PairScript {
    let pair = PairScript::start(files);
    wait_until("a primary, b backup", || {
        role(&files.config_a).as_deref() == Some("primary")
            && role(&files.config_b).as_deref() == Some("backup")
    });
    pair
}

#[test]
fn pid_of_finds_the_node_by_its_role_not_by_its_config_name() {
    let files = PairFiles::new("");
    let mut pair = started_pair(&files);
    let (primary, backup) = (pid_of(&files, "primary"), pid_of(&files, "backup"));
    assert_ne!(primary, backup);
    assert_eq!(
        pbchatctl(&files.config_a, &["pid"]),
        Some(primary.to_string())
    );
    // Move the role: config a's node is now the backup, and pid-of.sh follows the role.
    wait_until("a fail-over from a to b", || {
        pbchatctl(&files.config_a, &["failover"]).is_some()
    });
    assert_eq!(role(&files.config_b).as_deref(), Some("primary"));
    assert_eq!(pid_of(&files, "primary"), backup);
    assert_eq!(pid_of(&files, "backup"), primary);
    signal_pid(pair.child.id(), "INT");
    assert_eq!(pair.wait_exit(), Some(0));
}

/// Issue 15: one node exited and the other kept running under the script for 11 minutes.
#[test]
fn pair_script_stops_the_other_node_when_one_exits() {
    let files = PairFiles::new("");
    let mut pair = started_pair(&files);
    let (primary, backup) = (pid_of(&files, "primary"), pid_of(&files, "backup"));
    signal_pid(primary, "KILL");
    assert_eq!(pair.wait_exit(), Some(1), "{:#?}", pair.lines());
    pair.wait_line("pbchat pair: node a (");
    let said = pair.lines().join("\n");
    assert!(
        said.contains("exited with status 137; stopping the other node"),
        "{said}"
    );
    assert!(said.contains("pbchatd[b]: stopped cleanly"), "{said}");
    assert!(!running(backup), "node b still runs");
}

/// Issue 15: Ctrl-C stopped config b's node first, taking it for the backup; when it was
/// primary that was a needless hand-over and a second `goodbye` for every client.
#[test]
fn ctrl_c_stops_the_node_that_is_backup_now_first() {
    let files = PairFiles::new("");
    let mut pair = started_pair(&files);
    // The situation: b is primary, a (started from the "primary" config) follows.
    wait_until("a fail-over from a to b", || {
        pbchatctl(&files.config_a, &["failover"]).is_some()
    });
    wait_until("a following b", || {
        role(&files.config_a).as_deref() == Some("backup")
            && pbchatctl(&files.config_b, &["status", "--json"])
                .is_some_and(|json| json.contains("\"link\":true"))
    });
    let script_pid = pair.child.id();
    signal_pid(script_pid, "INT");
    assert_eq!(pair.wait_exit(), Some(0), "{:#?}", pair.lines());
    // The script's own process sent each TERM (its name is its interpreter's, `bash`).
    let from_script = format!("SIGTERM from pid {script_pid} (");
    let stop_a = pair
        .position(&format!("pbchatd[a]: {from_script}"))
        .unwrap_or_else(|| panic!("{:#?}", pair.lines()));
    let stop_b = pair
        .position(&format!("pbchatd[b]: {from_script}"))
        .unwrap_or_else(|| panic!("{:#?}", pair.lines()));
    assert!(stop_a < stop_b, "b, the primary, was stopped first");
    let said = pair.lines()[stop_a..].join("\n");
    assert!(said.contains("pbchatd[a]: stopping as backup"), "{said}");
    assert!(
        said.contains("pbchatd[b]: stopping without a hand-over (no backup connected)"),
        "{said}"
    );
    assert!(!said.contains("hand-over:"), "{said}");
    assert!(!said.contains("promoted to primary"), "{said}");
    assert!(said.contains("pbchat pair stopped"), "{said}");
}

/// The page's URL names the scheme its node serves: `https://` where the web listener speaks
/// TLS (with the client listener's certificate), `http://` where it does not.
#[test]
fn pair_script_prints_each_page_url_with_the_scheme_its_node_serves() {
    let files = PairFiles::new("");
    let tls = files.dir.join("tls");
    let made = common::pbchatd()
        .arg("--gen-cert")
        .arg(&tls)
        .args(["--name", "node-a", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (web_a, web_b) = (common::free_port(false), common::free_port(false));
    for (config, port, client_extra) in [
        (
            &files.config_a,
            web_a,
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                tls.join("node-a.pem").display(),
                tls.join("node-a.key").display()
            ),
        ),
        (&files.config_b, web_b, String::new()),
    ] {
        let text = std::fs::read_to_string(config).unwrap().replacen(
            "[client]\n",
            &format!("[client]\n{client_extra}"),
            1,
        );
        let text = format!("{text}\n[web]\nlisten = \"127.0.0.1:{port}\"\n");
        std::fs::write(config, text).unwrap();
    }
    let mut pair = started_pair(&files);
    pair.wait_line(&format!("chat in a browser: https://127.0.0.1:{web_a}/"));
    pair.wait_line(&format!("chat in a browser: http://127.0.0.1:{web_b}/"));
    signal_pid(pair.child.id(), "INT");
    assert_eq!(pair.wait_exit(), Some(0), "{:#?}", pair.lines());
}
