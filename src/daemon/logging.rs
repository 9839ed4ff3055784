//! Diagnostics: one line per event, to stderr (with a UTC timestamp and the node id) or to
//! the local syslog socket; and [`Throttle`], which keeps a repeated warning from flooding.
//!
//! Under systemd, when stderr is the journal's stream (`JOURNAL_STREAM`, systemd.exec(5)),
//! a line starts with its sd-daemon priority (`<4>` for a warning, sd-daemon(3)) instead of
//! a timestamp: the journal stamps each line itself and files it at that priority, so
//! `journalctl -p warning` finds the warnings.
//!
//! This module formats and writes log lines; it decides nothing about what to log.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{LogTarget, SyslogFacility};

type SyslogWriter = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// After a failed write to syslog, reconnect at most this often (lines in between go to
/// stderr), so a stopped syslog daemon costs one connect attempt per second, not per line.
const SYSLOG_RETRY: Duration = Duration::from_secs(1);

struct Syslog {
    path: std::path::PathBuf,
    formatter: syslog::Formatter3164,
    /// `None` after a failed write, until a reconnect succeeds.
    writer: Option<SyslogWriter>,
    last_attempt: Instant,
}

enum Sink {
    Stderr,
    Syslog(Mutex<Syslog>),
}

struct Logger {
    /// The binary's name in each stderr line and as the syslog identity.
    program: &'static str,
    node_id: String,
    sink: Sink,
    /// Stderr is the journal's stream: lines carry `<N>` priorities and no timestamp.
    journal: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Sink::Syslog(syslog) = &self.sink {
            let message = format!("[{}] {}", self.node_id, record.args());
            let mut syslog = syslog.lock().unwrap_or_else(|e| e.into_inner());
            if syslog.write(record.level(), &message) {
                return;
            }
        }
        self.to_stderr(record.level(), record.args());
    }

    fn flush(&self) {}
}

impl Logger {
    fn to_stderr(&self, level: log::Level, args: &std::fmt::Arguments) {
        let line = if self.journal {
            journal_lines(level, &format!("[{}] {}", self.node_id, args))
        } else {
            format!(
                "{} {:<5} {}[{}]: {}\n",
                utc_now(),
                level,
                self.program,
                self.node_id,
                args
            )
        };
        // One write per line keeps lines whole when threads log at once.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The sd-daemon priority prefix of a level (syslog's numbers, sd-daemon(3)).
fn priority(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// `message` for the journal's stream: every line of it prefixed with the priority (the
/// journal files each line on its own, and a line without a prefix as "info").
fn journal_lines(level: log::Level, message: &str) -> String {
    let mut text = String::with_capacity(message.len() + 8);
    for line in message.lines() {
        text.push_str(priority(level));
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Whether stderr is connected to systemd's journal: `JOURNAL_STREAM` (`DEVICE:INODE`,
/// systemd.exec(5)) names stderr's own device and inode. The variable alone is not enough:
/// a child of a service inherits it with its stderr redirected elsewhere (a pipe, a file).
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    // A duplicate of fd 2, so that `File` can fstat it and close only the duplicate.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => meta.dev() == device && meta.ino() == inode,
        Err(_) => false,
    }
}

/// Writes an error that ends the program (before or instead of the logger: a bad config at
/// start) to stderr as `program: message`; under the journal at priority "err".
pub fn print_error(program: &str, message: &str) {
    let text = format!("{program}: {message}");
    let text = if stderr_is_journal() {
        journal_lines(log::Level::Error, &text)
    } else {
        text + "\n"
    };
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

impl Syslog {
    /// True when the line went to syslog.
    fn write(&mut self, level: log::Level, message: &str) -> bool {
        if self.writer.is_none() && self.last_attempt.elapsed() >= SYSLOG_RETRY {
            self.last_attempt = Instant::now();
            self.writer = syslog::unix_custom(self.formatter.clone(), &self.path).ok();
        }
        let Some(writer) = &mut self.writer else {
            return false;
        };
        let sent = match level {
            log::Level::Error => writer.err(message),
            log::Level::Warn => writer.warning(message),
            log::Level::Info => writer.info(message),
            log::Level::Debug | log::Level::Trace => writer.debug(message),
        };
        if sent.is_err() {
            self.writer = None;
            self.last_attempt = Instant::now();
            return false;
        }
        true
    }
}

fn facility(facility: SyslogFacility) -> syslog::Facility {
    use syslog::Facility as F;
    match facility {
        SyslogFacility::User => F::LOG_USER,
        SyslogFacility::Daemon => F::LOG_DAEMON,
        SyslogFacility::Local0 => F::LOG_LOCAL0,
        SyslogFacility::Local1 => F::LOG_LOCAL1,
        SyslogFacility::Local2 => F::LOG_LOCAL2,
        SyslogFacility::Local3 => F::LOG_LOCAL3,
        SyslogFacility::Local4 => F::LOG_LOCAL4,
        SyslogFacility::Local5 => F::LOG_LOCAL5,
        SyslogFacility::Local6 => F::LOG_LOCAL6,
        SyslogFacility::Local7 => F::LOG_LOCAL7,
    }
}

/// Where [`init`] sends lines.
pub struct Target<'a> {
    pub target: LogTarget,
    pub facility: SyslogFacility,
    /// The local syslog socket (`/dev/log`).
    pub syslog_socket: &'a Path,
}

/// Logs to stderr only (tools and tests).
pub fn init(node_id: &str, level: log::LevelFilter) {
    init_as("pbchatd", node_id, level);
}

/// Logs to stderr only, as `program` (a binary other than pbchatd, e.g. `pbchat-witness`:
/// under systemd its unit's SyslogIdentifier= names the journal's lines the same).
pub fn init_as(program: &'static str, node_id: &str, level: log::LevelFilter) {
    install(
        program,
        node_id,
        level,
        Target {
            target: LogTarget::Stderr,
            facility: SyslogFacility::Daemon,
            syslog_socket: Path::new("/dev/log"),
        },
    );
}

/// Installs the logger once; later calls only change the level (as on reload). When syslog
/// cannot be reached at start, lines go to stderr and one warning says why.
pub fn init_with(node_id: &str, level: log::LevelFilter, target: Target) {
    install("pbchatd", node_id, level, target);
}

fn install(program: &'static str, node_id: &str, level: log::LevelFilter, target: Target) {
    let mut fallback = None;
    let logger = LOGGER.get_or_init(|| {
        let sink = match target.target {
            LogTarget::Stderr => Sink::Stderr,
            LogTarget::Syslog => {
                let formatter = syslog::Formatter3164 {
                    facility: facility(target.facility),
                    hostname: None,
                    process: program.into(),
                    pid: std::process::id(),
                };
                match syslog::unix_custom(formatter.clone(), target.syslog_socket) {
                    Ok(writer) => Sink::Syslog(Mutex::new(Syslog {
                        path: target.syslog_socket.to_path_buf(),
                        formatter,
                        writer: Some(writer),
                        last_attempt: Instant::now(),
                    })),
                    Err(e) => {
                        fallback = Some(format!(
                            "logging.target = \"syslog\": cannot reach {}: {e}; logging to stderr instead",
                            target.syslog_socket.display()
                        ));
                        Sink::Stderr
                    }
                }
            }
        };
        Logger {
            program,
            node_id: node_id.to_string(),
            sink,
            journal: stderr_is_journal(),
        }
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
    if let Some(warning) = fallback {
        log::warn!("{warning}");
    }
}

/// Keeps one kind of repeated warning (per connection, per datagram, per accept) from
/// flooding the log: at most `burst` lines per `window`; what it held back is counted and
/// reported on the next line it lets through.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    /// Lines let through in the current window.
    lines: u32,
    /// Lines held back since the last line let through.
    suppressed: u64,
}

impl Throttle {
    pub const fn new(burst: u32, window: Duration) -> Self {
        Throttle {
            window,
            burst,
            window_start: None,
            lines: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were held back before it, to be
    /// mentioned in it); `None` when this one is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window)
        {
            self.window_start = Some(now);
            self.lines = 0;
        }
        if self.lines >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The text a throttled line ends with: empty, or how many like it were not logged.
pub fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more like this were not logged)")
    }
}

/// Wall-clock milliseconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_seconds(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::{Duration, Instant};

    #[test]
    fn journal_lines_carry_the_priority_on_every_line() {
        assert_eq!(
            super::journal_lines(log::Level::Warn, "[a] peer lost"),
            "<4>[a] peer lost\n"
        );
        assert_eq!(
            super::journal_lines(log::Level::Error, "one\ntwo"),
            "<3>one\n<3>two\n"
        );
        assert_eq!(super::journal_lines(log::Level::Info, "x"), "<6>x\n");
        assert_eq!(super::journal_lines(log::Level::Debug, "x"), "<7>x\n");
    }

    #[test]
    fn throttle_lets_a_burst_through_then_counts() {
        let mut t = Throttle::new(2, Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow(start), Some(0));
        assert_eq!(t.allow(start), Some(0));
        assert_eq!(t.allow(start), None);
        assert_eq!(t.allow(start), None);
        assert_eq!(t.allow(start + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn utc_seconds_formats() {
        assert_eq!(super::utc_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::utc_seconds(20_417 * 86_400_000 + 61_500),
            "2025-11-25T00:01:01Z"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
