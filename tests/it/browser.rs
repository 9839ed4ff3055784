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

/// A standalone node with `[web]` on a free port; `client_extra` goes under `[client]`,
/// `tail` after everything (an `[auth]` section, say).
fn web_node(client_extra: &str, tail: &str) -> (Daemon, SocketAddr) {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = common::write_config(&dir, "primary", client_extra, "");
    let web: SocketAddr = ([127, 0, 0, 1], free_port(false)).into();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[web]\nlisten = \"{web}\"\n{tail}"));
    std::fs::write(&config, text).unwrap();
    (Daemon::start_with(dir, config), web)
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
               elements_in_bodies: document.querySelectorAll('.line .body *:not(a)').length,\
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

    /// No Content-Security-Policy violation (the page counts them on `<body>`) and no
    /// SEVERE log entry but a socket to a node that went away (a fail-over, not a fault).
    fn assert_clean(&self, who: &str) {
        let csp = self.run(
            "return [document.body.dataset.cspViolations || '0', document.body.dataset.cspLast || ''];",
            json!([]),
        );
        assert_eq!(csp[0], "0", "{who}: CSP violations: {csp}");
        let severe: Vec<String> = self
            .severe_logs()
            .into_iter()
            .filter(|m| !m.contains("WebSocket connection to"))
            .collect();
        assert!(severe.is_empty(), "{who}: {severe:?}");
    }

    /// Presses `keys` together, as a person does (WebDriver actions: real key events).
    fn press(&self, keys: &[&str]) {
        let mut actions: Vec<Value> = keys
            .iter()
            .map(|k| json!({"type": "keyDown", "value": k}))
            .collect();
        actions.extend(
            keys.iter()
                .rev()
                .map(|k| json!({"type": "keyUp", "value": k})),
        );
        self.command(
            "actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }
}

/// WebDriver's codes for the keys the tests press.
const ALT: &str = "\u{E00A}";
const CONTROL: &str = "\u{E009}";
const ARROW_UP: &str = "\u{E013}";
const ARROW_DOWN: &str = "\u{E015}";

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = self.driver.call("DELETE", &path, None);
    }
}

#[derive(Debug, serde::Deserialize)]
struct View {
    state: String,
    /// Elements inside message bodies but links: 0, as bodies are text (`<b>` in one stays text).
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
    // A mention of page one and a link: the screenshot shows both.
    let tcp_line = "one: the notes are at https://example.com/notes";
    tcp.send_acked("general", "t-1", tcp_line);
    bodies.push(tcp_line.into());
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
        page.assert_clean(name);
    }
}

#[test]
fn history_on_join_scroll_back_and_the_unread_line() {
    let (node, web) = web_node("", "");
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
    // The reader was up in the history: an unread line stands above "live". Forty more
    // lines, the reader goes to the bottom, and "jump to first unread" brings it back.
    for i in 0..40 {
        tcp.send_acked("general", &format!("n-{i}"), &format!("new {i}"));
    }
    wait_until("the new lines", || {
        Some(page.look()).filter(|v| v.lines.len() == 141)
    });
    let unread = |scroll: &str| {
        page.run(
            &format!(
                "{scroll}; const logs = document.getElementById('logs');\
                 logs.dispatchEvent(new Event('scroll'));\
                 const marker = logs.querySelector('.unread-line');\
                 const view = logs.getBoundingClientRect(), at = marker.getBoundingClientRect();\
                 return [marker.nextElementSibling.querySelector('.body').textContent,\
                   at.top >= view.top && at.bottom <= view.bottom,\
                   document.getElementById('jump').hidden];"
            ),
            json!([]),
        )
    };
    let at_bottom =
        unread("const l = document.getElementById('logs'); l.scrollTop = l.scrollHeight");
    assert_eq!(
        at_bottom,
        json!(["live", false, false]),
        "marker above, jump shown"
    );
    let jumped = unread("document.getElementById('jump').click()");
    assert_eq!(
        jumped,
        json!(["live", true, true]),
        "marker in view, jump gone"
    );
    page.assert_clean("reader");
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
    page.assert_clean("keeper");
}

/// With `[auth]` tokens the page asks for the token when the node refuses the hello, and
/// the token travels only in `hello`: neither the page's URL nor anything it fetched
/// names it.
#[test]
fn token_login_asks_for_the_token_and_never_puts_it_in_a_url() {
    const TOKEN: &str = "tok-5e1f-never-in-a-url";
    let dir = tempfile::tempdir().unwrap().keep();
    let users = dir.join("users");
    let hashed = common::pbchatd()
        .args(["--hash-token", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(TOKEN.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(hashed.status.success(), "{hashed:?}");
    std::fs::write(&users, &hashed.stdout).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let auth = format!(
        "\n[auth]\nmode = \"token\"\nusers_file = \"{}\"\nfailure_delay_ms = 0\n",
        users.display()
    );
    let (_node, web) = web_node("", &auth);
    let driver = Driver::start();
    let page = Page::open(&driver, &format!("http://{web}/"));
    page.login("alice");
    let asked = wait_until("the page asking for a token", || {
        let facts = page.run(
            "return [document.getElementById('conn').dataset.state,\
               document.getElementById('login').hidden,\
               document.activeElement && document.activeElement.id];",
            json!([]),
        );
        (facts[0] == "unauthorized").then_some(facts)
    });
    assert_eq!(asked, json!(["unauthorized", false, "token"]));
    page.run(
        "document.getElementById('token').value = arguments[0];\
         document.getElementById('login').requestSubmit();",
        json!([TOKEN]),
    );
    wait_until("the page live with the token", || page.look().live());
    page.say("signed in");
    wait_until("the line committed", || {
        Some(()).filter(|_| page.look().shows_all(&["signed in".to_string()]))
    });
    let urls = page.run(
        "return [location.href].concat(performance.getEntries().map((e) => e.name));",
        json!([]),
    );
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    assert!(
        urls.len() >= 2,
        "the page and /config.json at least: {urls:?}"
    );
    for url in &urls {
        assert!(!url.contains(TOKEN), "the token in a URL: {url}");
    }
    page.assert_clean("alice");
}

/// A tab the browser freezes (no script runs at all, harsher than a hidden tab's one timer
/// a minute) stays in its room past the node's idle timeout: the node's WebSocket pings
/// are answered by the browser, not by the page's script. Chromium's
/// `Page.setWebLifecycleState` freezes it (`visibilityState` itself is not emulated).
/// When the page resumes, Chromium ends that socket (1001 to the node); the page then
/// reconnects once and goes on without a gap or a duplicate.
#[test]
fn a_frozen_tab_stays_in_its_room_past_the_idle_timeout() {
    const IDLE_MS: u64 = 2000;
    let (node, web) = web_node(&format!("idle_timeout_ms = {IDLE_MS}"), "");
    let driver = Driver::start();
    let page = Page::open(&driver, &format!("http://{web}/"));
    page.login("sleeper");
    wait_until("the page live", || page.look().live());
    let mut watcher = node.hello("watcher", "s-watcher");
    let joined = watcher.join("general");
    assert!(
        joined
            .members
            .unwrap_or_default()
            .contains(&"sleeper".into()),
        "the page is in the room"
    );
    let lifecycle = |state: &str| {
        page.command(
            "goog/cdp/execute",
            json!({"cmd": "Page.setWebLifecycleState", "params": {"state": state}}),
        )
    };
    lifecycle("frozen");
    // Three idle timeouts: the node would have closed a silent connection twice over. The
    // watcher pings to stay open itself and sees every presence change in the room.
    let until = Instant::now() + Duration::from_millis(3 * IDLE_MS);
    let mut token = 0;
    while Instant::now() < until {
        token += 1;
        watcher.send(json!({"type": "ping", "token": token}));
        loop {
            let frame = watcher.recv();
            assert!(
                !(frame.kind == "presence" && frame.nick.as_deref() == Some("sleeper")),
                "the frozen page's connection ended: {frame:?}"
            );
            if frame.kind == "pong" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(IDLE_MS / 4));
    }
    lifecycle("active");
    watcher.send_acked("general", "w-1", "while you slept");
    let view = wait_until("the line on the woken, live page", || {
        page.look()
            .live()
            .filter(|v| v.shows_all(&["while you slept".to_string()]))
    });
    assert!(view.reconnects <= 1, "{view:?}");
    check_exactly_once_in_order("woken", &view, &["while you slept".to_string()]);
    page.assert_clean("sleeper");
}

/// The page's basics beyond the chat itself, through real key presses and a real node:
/// links as anchors (and `javascript:` left as text), /who, an unknown command kept off
/// the wire, folded joins, the date separator, the unread line, a notification for a
/// mention once the user turned them on, Alt+Up/Down and Ctrl+K, and a phone-width window
/// without sideways scrolling.
#[test]
fn links_commands_folds_unread_line_keys_and_phone_width() {
    let (node, web) = web_node("", "");
    let driver = Driver::start();
    let page = Page::open(&driver, &format!("http://{web}/"));
    page.login("reader");
    wait_until("the page live", || page.look().live());
    let mut tcp = node.hello("tcp", "s-tcp");
    tcp.join("general");
    let mut guests: Vec<_> = (0..4)
        .map(|i| {
            let mut guest = node.hello(&format!("guest{i}"), &format!("s-guest{i}"));
            guest.join("general");
            guest
        })
        .collect();
    let link_body = "see https://example.com/a?b=1. not javascript:alert(1) <b>x</b>";
    tcp.send_acked("general", "t-1", link_body);
    wait_until("the link line", || {
        Some(()).filter(|_| page.look().shows_all(&[link_body.to_string()]))
    });
    let facts = page.run(
        "const log = document.querySelector('.log[data-room=\"general\"]');\
         const line = Array.from(log.querySelectorAll('.line')).pop();\
         const folds = Array.from(log.querySelectorAll('.presence:not([hidden])'), (f) => f.textContent);\
         return {anchors: Array.from(line.querySelectorAll('.body a'), (a) =>\
             [a.getAttribute('href'), a.rel, a.textContent]),\
           elements: line.querySelectorAll('.body *').length, folds,\
           days: log.querySelectorAll('.day').length,\
           first_is_day: log.querySelector('.day, .line') === log.querySelector('.day')};",
        json!([]),
    );
    assert_eq!(
        facts["anchors"],
        json!([[
            "https://example.com/a?b=1",
            "noopener noreferrer",
            "https://example.com/a?b=1"
        ]]),
        "{facts}"
    );
    assert_eq!(facts["elements"], 1, "only the anchor: {facts}");
    assert_eq!(
        facts["folds"],
        json!(["tcp, guest0 and 3 others joined"]),
        "{facts}"
    );
    // A leave after the line starts a fold of its own below it.
    drop(guests.pop());
    wait_until("the leave folded below the line", || {
        let folds = page.run(
            "return Array.from(document.querySelectorAll('.log[data-room=\"general\"] > *'))\
               .filter((e) => e.matches('.presence:not([hidden]), .line')).slice(-2)\
               .map((e) => e.className + ':' + e.textContent);",
            json!([]),
        );
        (folds[1] == "presence:guest3 left").then_some(())
    });
    assert_eq!(
        (facts["days"].clone(), facts["first_is_day"].clone()),
        (json!(1), json!(true))
    );

    page.say("/who");
    page.say("/nonsense here");
    page.say("//slash");
    let notes = wait_until("the command answers", || {
        let notes = page.run(
            "return Array.from(document.querySelectorAll('.note[data-kind]'),\
               (n) => [n.dataset.kind, n.textContent]);",
            json!([]),
        );
        (notes.as_array().map_or(0, Vec::len) >= 2).then_some(notes)
    });
    assert_eq!(notes[0][0], "who", "{notes}");
    for nick in ["reader", "tcp", "guest0", "guest1", "guest2"] {
        assert!(notes[0][1].as_str().unwrap().contains(nick), "{notes}");
    }
    assert_eq!(notes[1][0], "error", "{notes}");
    wait_until("the escaped slash line", || {
        Some(()).filter(|_| page.look().shows_all(&["/slash".to_string()]))
    });
    // A client outside the room: its history answer holds no live copies.
    let stored: Vec<String> = node
        .hello("auditor", "s-auditor")
        .history("general", 10)
        .into_iter()
        .map(|m| m.body.unwrap_or_default())
        .collect();
    assert_eq!(stored, [link_body, "/slash"], "a command went out as text");

    // A second room; Alt+Up goes back to general, Alt+Down forth, Ctrl+K to the room box.
    page.say("/join second");
    let current = || {
        page.run(
            "return document.querySelector('nav button[aria-current=\"true\"]').dataset.room;",
            json!([]),
        )
    };
    wait_until("second shown", || (current() == "second").then_some(()));
    // Notifications: granted as a person's click on the prompt would, then asked for by a
    // click on the page's button; each one the page raises is counted.
    page.command(
        "goog/cdp/execute",
        json!({"cmd": "Browser.grantPermissions",
               "params": {"permissions": ["notifications"], "origin": format!("http://{web}")}}),
    );
    page.run(
        "window.raised = [];\
         window.Notification = class extends window.Notification {\
           constructor(title, options) { super(title, options); window.raised.push(title); } };\
         document.getElementById('notify').click();",
        json!([]),
    );
    wait_until("notifications on", || {
        let on = page.run(
            "return document.getElementById('notify').dataset.notify;",
            json!([]),
        );
        (on == "on").then_some(())
    });
    tcp.send_acked("general", "t-2", "reader: while away");
    let away = wait_until("general's unread count", || {
        let facts = page.run(
            "const log = document.querySelector('.log[data-room=\"general\"]');\
             const marker = log.querySelector('.unread-line');\
             const next = marker && marker.nextElementSibling;\
             return [document.querySelector('nav button[data-room=\"general\"]').dataset.unread,\
               next && next.querySelector('.body').textContent];",
            json!([]),
        );
        (facts[0] == "1").then_some(facts)
    });
    assert_eq!(away[1], "reader: while away", "the unread line precedes it");
    let raised = page.run("return window.raised;", json!([]));
    assert_eq!(
        raised,
        json!(["tcp in general"]),
        "one notification, for the mention"
    );
    page.press(&[ALT, ARROW_UP]);
    wait_until("general by Alt+Up", || {
        (current() == "general").then_some(())
    });
    page.press(&[ALT, ARROW_DOWN]);
    wait_until("second by Alt+Down", || {
        (current() == "second").then_some(())
    });
    let marker_gone = page.run(
        "return document.querySelectorAll('.log[data-room=\"general\"] .unread-line').length;",
        json!([]),
    );
    assert_eq!(
        marker_gone, 0,
        "leaving general after seeing it clears its unread line"
    );
    page.press(&[CONTROL, "k"]);
    let focused = page.run("return document.activeElement.id;", json!([]));
    assert_eq!(focused, "join");

    page.command("window/rect", json!({"width": 375, "height": 700}));
    let fits = wait_until("the phone-width layout", || {
        let fits = page.run(
            "const input = document.getElementById('input').getBoundingClientRect();\
             return [window.innerWidth <= 420, document.documentElement.scrollWidth <= window.innerWidth,\
               input.right <= window.innerWidth && input.width > 100 && input.bottom <= window.innerHeight];",
            json!([]),
        );
        (fits[0] == true).then_some(fits)
    });
    assert_eq!(fits, json!([true, true, true]));
    page.assert_clean("reader");
}
