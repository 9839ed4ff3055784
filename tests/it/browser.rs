//! The page in real headless Chromium on a real pair: two pages (one WebDriver session
//! each), chat, kill -9 of the primary; both pages go on through the backup and show every
//! acknowledged line exactly once, in order.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them as root);
//! without them the test fails, saying so. It speaks WebDriver's HTTP+JSON itself over a
//! std TcpStream (a dozen calls; no client crate), and reads the page only through the
//! stable facts it exposes (`data-state`, `data-epoch`, `data-reconnects` on `#conn`;
//! `data-id`, `data-seq`, `data-state` on each line), in one script call per look.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, hello_at, Daemon, PairFiles, DEADLINE};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Adds `[web]` to both nodes' configs, each naming the other's page; their page addresses.
fn add_web(pair: &PairFiles) -> (SocketAddr, SocketAddr) {
    let a: SocketAddr = ([127, 0, 0, 1], free_port(false)).into();
    let b: SocketAddr = ([127, 0, 0, 1], free_port(false)).into();
    for (config, me, peer) in [(&pair.config_a, a, b), (&pair.config_b, b, a)] {
        let mut text = std::fs::read_to_string(config).unwrap();
        text.push_str(&format!(
            "\n[web]\nlisten = \"{me}\"\npeer_url = \"http://{peer}\"\n"
        ));
        std::fs::write(config, text).unwrap();
    }
    (a, b)
}

fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start() -> Driver {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install chromium chromium-driver (scripts/test.sh \
                 installs them as root)"
            );
        }
        let port = free_port(false);
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        };
        wait_until("chromedriver", || {
            TcpStream::connect(driver.addr)
                .ok()
                .and_then(|_| driver.call("GET", "/status", None).get("ready").cloned())
                .filter(|ready| ready == true)
        });
        driver
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(self.addr).expect("chromedriver");
        stream.set_read_timeout(Some(DEADLINE * 3)).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        // chromedriver may keep the connection open: read the head, then Content-Length.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let (head_end, length) = loop {
            let n = stream.read(&mut chunk).expect("chromedriver answers");
            assert!(n > 0, "{method} {path}: chromedriver closed");
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .expect("a Content-Length");
                break (end + 4, length);
            }
        };
        while answer.len() < head_end + length {
            let n = stream.read(&mut chunk).expect("chromedriver answers");
            assert!(n > 0, "{method} {path}: chromedriver closed");
            answer.extend_from_slice(&chunk[..n]);
        }
        let value: Value = serde_json::from_slice(&answer[head_end..head_end + length])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        value["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser with one page.
struct Page<'d> {
    driver: &'d Driver,
    session: String,
    _profile: tempfile::TempDir,
}

impl<'d> Page<'d> {
    fn open(driver: &'d Driver, url: &str) -> Page<'d> {
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=900,640".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = driver.call("POST", "/session", Some(capabilities));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        let page = Page {
            driver,
            session,
            _profile: profile,
        };
        page.command("url", json!({ "url": url }));
        page
    }

    fn command(&self, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        self.driver.call("POST", &path, Some(body))
    }

    fn run(&self, script: &str, args: Value) -> Value {
        self.command("execute/sync", json!({"script": script, "args": args}))
    }

    /// Saves a PNG of the page (`PBCHAT_SCREENSHOT=docs/web-page.png` makes the README's).
    fn screenshot(&self, path: &str) {
        let path_of = format!("/session/{}/screenshot", self.session);
        let png = self.driver.call("GET", &path_of, None);
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 PNG"))
            .expect("base64");
        std::fs::write(path, bytes).unwrap();
    }

    fn login(&self, nick: &str) {
        self.run(
            "document.getElementById('nick').value = arguments[0];\
             document.getElementById('rooms').value = 'general';\
             document.getElementById('login').requestSubmit();",
            json!([nick]),
        );
    }

    fn say(&self, body: &str) {
        self.run(
            "document.getElementById('input').value = arguments[0];\
             document.getElementById('compose').requestSubmit();",
            json!([body]),
        );
    }

    /// The connection facts and the lines of `general`, in DOM order.
    fn look(&self) -> View {
        let value = self.run(
            "const c = document.getElementById('conn');\
             const lines = document.querySelectorAll('.log[data-room=\"general\"] .line');\
             return {state: c.dataset.state, epoch: Number(c.dataset.epoch),\
               elements_in_bodies: document.querySelectorAll('.line .body *').length,\
               reconnects: Number(c.dataset.reconnects),\
               lines: Array.from(lines, (l) => ({id: l.dataset.id, from: l.dataset.from,\
                 seq: l.dataset.seq ? Number(l.dataset.seq) : null, state: l.dataset.state,\
                 body: l.querySelector('.body').textContent}))};",
            json!([]),
        );
        serde_json::from_value(value).expect("the page's facts")
    }

    /// Browser console entries at SEVERE (script errors, CSP refusals). A probe line
    /// written first must come back, so an empty answer means a clean log, not a deaf one.
    fn severe_logs(&self) -> Vec<String> {
        const PROBE: &str = "pbchat-test-log-probe";
        self.run("console.error(arguments[0]);", json!([PROBE]));
        let logs = self.command("se/log", json!({"type": "browser"}));
        let entries = logs
            .as_array()
            .unwrap_or_else(|| panic!("the browser log: {logs}"));
        let severe: Vec<String> = entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].to_string())
            .collect();
        assert!(
            severe.iter().any(|m| m.contains(PROBE)),
            "the probe line is not in the browser log: {logs}"
        );
        severe.into_iter().filter(|m| !m.contains(PROBE)).collect()
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = self.driver.call("DELETE", &path, None);
    }
}

#[derive(Debug, serde::Deserialize)]
struct View {
    state: String,
    /// Elements inside message bodies: 0, as bodies are text (`<b>` in one stays text).
    elements_in_bodies: usize,
    epoch: u64,
    reconnects: u64,
    lines: Vec<Line>,
}

#[derive(Debug, serde::Deserialize)]
struct Line {
    id: String,
    from: String,
    seq: Option<u64>,
    state: String,
    body: String,
}

impl View {
    fn live(self) -> Option<View> {
        (self.state == "live").then_some(self)
    }

    /// True when every one of `bodies` is shown committed (with a seq).
    fn shows_all(&self, bodies: &[String]) -> bool {
        bodies.iter().all(|b| {
            self.lines
                .iter()
                .any(|l| &l.body == b && l.seq.is_some() && l.state == "shown")
        })
    }
}

/// Each body exactly once, every line committed, in strictly increasing seq.
fn check_exactly_once_in_order(who: &str, view: &View, bodies: &[String]) {
    for body in bodies {
        let count = view.lines.iter().filter(|l| &l.body == body).count();
        assert_eq!(count, 1, "{who}: {body:?} shown {count} times: {view:#?}");
    }
    let seqs: Vec<u64> = view.lines.iter().filter_map(|l| l.seq).collect();
    assert_eq!(
        seqs.len(),
        view.lines.len(),
        "{who}: uncommitted lines {view:#?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order {seqs:?}"
    );
    let ids: std::collections::BTreeSet<(&str, &str)> = view
        .lines
        .iter()
        .map(|l| (l.from.as_str(), l.id.as_str()))
        .collect();
    assert_eq!(ids.len(), view.lines.len(), "{who}: a (from, id) twice");
}

#[test]
fn two_pages_chat_through_a_kill9_of_the_primary_without_gap_or_duplicate() {
    let pair = PairFiles::new("");
    let (web_a, web_b) = add_web(&pair);
    let mut a: Daemon = pair.start_a();
    let b: Daemon = pair.start_b();
    b.wait_log("following the primary");
    let driver = Driver::start();
    // Page one from the primary, page two from the backup (which redirects it to a).
    let one = Page::open(&driver, &format!("http://{web_a}/"));
    let two = Page::open(&driver, &format!("http://{web_b}/"));
    one.login("one");
    two.login("two");
    let first = wait_until("page one live", || one.look().live());
    wait_until("page two live", || two.look().live());
    // Both joined: the TCP client's line below reaches both.
    let mut tcp = hello_at(pair.client_a, "tcp", "s-tcp");
    tcp.join("general");

    let mut bodies: Vec<String> = Vec::new();
    for i in 0..5 {
        for (page, name) in [(&one, "one"), (&two, "two")] {
            let body = format!("{name} before {i} <b>not bold</b>");
            page.say(&body);
            bodies.push(body);
        }
    }
    tcp.send_acked("general", "t-1", "tcp before");
    bodies.push("tcp before".into());
    for page in [&one, &two] {
        wait_until("the lines before the kill", || {
            Some(()).filter(|_| page.look().shows_all(&bodies))
        });
    }

    // Lines typed while the primary dies: pending, resent with their ids after the move.
    a.kill9();
    for i in 0..5 {
        for (page, name) in [(&one, "one"), (&two, "two")] {
            let body = format!("{name} across {i}");
            page.say(&body);
            bodies.push(body);
        }
    }
    b.wait_log("promoted to primary");
    if let Ok(path) = std::env::var("PBCHAT_SCREENSHOT") {
        wait_until("page one on b", || {
            Some(()).filter(|_| one.look().shows_all(&bodies))
        });
        one.screenshot(&path);
    }
    let mut views = Vec::new();
    for (page, name) in [(&one, "one"), (&two, "two")] {
        let view = wait_until(&format!("page {name} on b with every line"), || {
            page.look()
                .live()
                .filter(|v| v.epoch > first.epoch && v.shows_all(&bodies))
        });
        assert!(view.reconnects >= 1, "{name}: {view:?}");
        assert_eq!(view.elements_in_bodies, 0, "{name}: a body became HTML");
        views.push(view);
    }
    for (view, name) in views.iter().zip(["one", "two"]) {
        check_exactly_once_in_order(name, view, &bodies);
    }
    let seqs = |v: &View| v.lines.iter().map(|l| l.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&views[0]), seqs(&views[1]), "the pages differ");
    for (page, name) in [(&one, "one"), (&two, "two")] {
        let severe: Vec<String> = page
            .severe_logs()
            .into_iter()
            // The socket to the killed node failing is the fail-over itself, not a fault.
            .filter(|m| !m.contains("WebSocket connection to"))
            .collect();
        assert!(severe.is_empty(), "page {name}: {severe:?}");
    }
}

#[test]
fn history_on_join_and_scrolling_back_show_each_line_once_in_order() {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = common::write_config(&dir, "primary", "", "");
    let web: SocketAddr = ([127, 0, 0, 1], free_port(false)).into();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[web]\nlisten = \"{web}\"\n"));
    std::fs::write(&config, text).unwrap();
    let node = Daemon::start_with(dir, config);
    let mut tcp = node.hello("tcp", "s-tcp");
    tcp.join("general");
    let old: Vec<String> = (0..120).map(|i| format!("old {i}")).collect();
    for (i, body) in old.iter().enumerate() {
        tcp.send_acked("general", &format!("t-{i}"), body);
    }

    let driver = Driver::start();
    let page = Page::open(&driver, &format!("http://{web}/"));
    page.login("reader");
    // The page asks for 50 on join, then 50 more each time the reader reaches the top.
    let joined = wait_until("history on join", || {
        page.look().live().filter(|v| v.shows_all(&old[70..]))
    });
    check_exactly_once_in_order("on join", &joined, &old[70..]);
    assert_eq!(joined.lines.len(), 50, "{joined:#?}");
    page.run(
        "const logs = document.getElementById('logs'); logs.scrollTop = 0;\
         logs.dispatchEvent(new Event('scroll'));",
        json!([]),
    );
    let back = wait_until("a page of scroll-back", || {
        Some(page.look()).filter(|v| v.shows_all(&old[20..]))
    });
    check_exactly_once_in_order("scrolled back", &back, &old[20..]);
    assert_eq!(back.lines.len(), 100, "{back:#?}");
    // A live line after all that goes at the end.
    tcp.send_acked("general", "t-live", "live");
    let live = wait_until("the live line", || {
        Some(page.look()).filter(|v| v.lines.last().is_some_and(|l| l.body == "live"))
    });
    assert_eq!(live.lines.len(), 101);
}

#[test]
fn a_line_typed_into_a_stopped_primary_survives_a_reload_and_commits_once_on_the_backup() {
    let pair = PairFiles::new("");
    let (_, web_b) = add_web(&pair);
    let a: Daemon = pair.start_a();
    let b: Daemon = pair.start_b();
    b.wait_log("following the primary");
    let driver = Driver::start();
    // Loaded from b, the page talks to the primary a.
    let page = Page::open(&driver, &format!("http://{web_b}/"));
    page.login("keeper");
    wait_until("the page live on a", || page.look().live());
    page.say("before");
    wait_until("the first line", || {
        Some(()).filter(|_| page.look().shows_all(&["before".to_string()]))
    });

    common::signal_pid(a.pid(), "STOP");
    page.say("typed while stopped");
    page.run(
        "const input = document.getElementById('input'); input.value = 'a draft';\
         input.dispatchEvent(new Event('input')); window.beforeReload = true;",
        json!([]),
    );
    page.command("refresh", json!({}));
    assert_eq!(
        page.run("return window.beforeReload === undefined;", json!([])),
        true,
        "the page was not reloaded"
    );
    // The reloaded page has the unsent line (pending) and the draft back, then goes to b,
    // which takes over, and resends the line with its id.
    let restored = wait_until("the restored page", || {
        Some(page.look()).filter(|v| v.lines.iter().any(|l| l.body == "typed while stopped"))
    });
    assert_eq!(
        page.run("return document.getElementById('input').value;", json!([])),
        "a draft"
    );
    b.wait_log("promoted to primary");
    let bodies = ["before".to_string(), "typed while stopped".to_string()];
    let view = wait_until("the line committed on b", || {
        page.look().live().filter(|v| v.shows_all(&bodies))
    });
    check_exactly_once_in_order("reloaded", &view, &bodies);
    assert!(restored.lines.len() <= 2, "{restored:#?}");
    common::signal_pid(a.pid(), "CONT");
    // b's log holds it once too.
    let mut reader = hello_at(pair.client_b, "reader", "s-reader");
    let stored: Vec<String> = reader
        .history("general", 10)
        .into_iter()
        .map(|m| m.body.unwrap_or_default())
        .collect();
    assert_eq!(stored, bodies, "b's history");
}
