//! The chat client library behind `pbchat-client`: protocol session state, reconnect
//! policy, the network thread, and the pure text helpers of the terminal front end.
//!
//! Only `terminal` touches the terminal, and only when the binary's interactive mode asks;
//! the rest hands the binary typed [`net::Event`]s and takes [`net::Command`]s over bounded
//! channels.
//!
//! Layout:
//! - `session`: PURE state kept across reconnects: rooms with the position of the last
//!   message shown, unacknowledged sends, pending history requests, duplicate skipping.
//! - `liveness`: PURE liveness rule: when a silent node is suspect, and which other node to
//!   ask whether it took over.
//! - `reconnect`: PURE reconnect policy: which server next, backoff with jitter, which
//!   refusals are final.
//! - `frames`: builders of the client frames (JSON lines).
//! - `input`: PURE parsing of typed lines (`/join`, `/history`, …) and message ids.
//! - `editor`: PURE line editing: terminal bytes to keys, keys to one edited line, and the
//!   single row that shows it, scrolled sideways when the line is longer.
//! - `display`: PURE formatting of events for people.
//! - `net`: the network thread: owns the `TcpStream`, drives `session` and `reconnect`.
//! - `state`: the file that remembers, per nick, the session and each room's last message
//!   shown between runs (`$XDG_STATE_HOME/pbchat/<nick>.json`).
//! - `terminal`: raw mode, the terminal's width, stdin on a thread, drawing the edited row
//!   and the lines above it.

pub mod display;
pub mod editor;
pub mod frames;
pub mod input;
pub mod liveness;
pub mod net;
pub mod reconnect;
pub mod session;
pub mod state;
pub mod terminal;

/// Bound of the UI → network command channel. A person types far slower than the network
/// thread drains it; scripted modes send a handful. Full means the network thread is stuck
/// on a write, and blocking the typist then is the honest back-pressure.
pub const COMMANDS_QUEUE_MAX: usize = 256;

/// Bound of the network → UI event channel. When the terminal (or a `--listen` pipe) is
/// slower than the node, the network thread blocks here, stops reading, and the node
/// eventually drops it as `slow_consumer`; the client then resumes with `after`, so a
/// bounded queue loses nothing.
pub const EVENTS_QUEUE_MAX: usize = 1024;

/// The default `--server` list: the client addresses of the two shipped configs
/// (`config/primary.toml`, `config/backup.toml`), primary first.
pub const DEFAULT_SERVERS: [&str; 2] = ["127.0.0.1:7400", "127.0.0.1:7410"];
