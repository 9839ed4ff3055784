//! What `pbchat-client` remembers between runs, per nick: its session id and, per room, the
//! position of the last message shown, so that a restarted client resumes each room with
//! `after` and shows neither a gap nor a repeat.
//!
//! The file is `<dir>/<nick>-<hash of the server list>.json` (`dir` is `$XDG_STATE_HOME/pbchat`, by default
//! `~/.local/state/pbchat`), written whole to a temporary file and renamed over the old
//! one, so a crash leaves the old state or the new, never half of one. This module reads
//! and writes that file; when to write is the binary's choice.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::client::session::Position;
use crate::wire::client::{check_nick, check_printable, check_room, SESSION_CHARS_MAX};

/// Rooms remembered per nick. The node's default `client.max_rooms_per_client` is 100; a
/// client that joined more than this over time forgets the rooms it saw least recently.
pub const STATE_ROOMS_MAX: usize = 128;

/// The largest state file read: 128 rooms of at most 64 characters with two 20-digit
/// numbers each is under 20 KiB; anything much larger is not ours.
pub const STATE_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The file's format version; another one is ignored (a fresh start), never misread.
const STATE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {STATE_FILE_BYTES_MAX} bytes; not a pbchat-client state file")]
    TooLarge { path: String },
    #[error("{path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// A room's place: the last message shown, and when it was last updated (a counter, not a
/// clock: the largest is the most recent), for forgetting the stalest room first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMark {
    pub seq: u64,
    pub epoch: Option<u64>,
    pub touched: u64,
}

/// One nick's state, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub nick: String,
    pub session: String,
    pub rooms: BTreeMap<String, RoomMark>,
    /// The `touched` of the latest update.
    pub clock: u64,
}

impl State {
    pub fn new(nick: &str, session: &str) -> State {
        State {
            version: STATE_VERSION,
            nick: nick.to_string(),
            session: session.to_string(),
            rooms: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Where to resume `room`: after its last message shown.
    pub fn position(&self, room: &str) -> Option<Position> {
        self.rooms.get(room).map(|mark| Position {
            seq: mark.seq,
            epoch: mark.epoch,
        })
    }

    /// Records that the message at `position` of `room` was shown, the latest of the live
    /// stream (which the session delivers in order, without duplicates; after a fail-over
    /// to a history that parted, a lower seq in a newer epoch is the latest). True when that
    /// changed the state (a state to write).
    pub fn shown(&mut self, room: &str, position: Position) -> bool {
        if self.position(room) == Some(position) {
            return false;
        }
        self.clock += 1;
        self.rooms.insert(
            room.to_string(),
            RoomMark {
                seq: position.seq,
                epoch: position.epoch,
                touched: self.clock,
            },
        );
        while self.rooms.len() > STATE_ROOMS_MAX {
            let stalest = self
                .rooms
                .iter()
                .min_by_key(|(_, mark)| mark.touched)
                .map(|(room, _)| room.clone())
                .expect("more than STATE_ROOMS_MAX rooms");
            self.rooms.remove(&stalest);
        }
        true
    }

    fn check(&self, nick: &str) -> Result<(), String> {
        if self.version != STATE_VERSION {
            return Err(format!(
                "format version {} (expected {STATE_VERSION})",
                self.version
            ));
        }
        if self.nick != nick {
            return Err(format!("holds nick {:?}, not {nick:?}", self.nick));
        }
        check_nick(&self.nick).map_err(|e| e.to_string())?;
        check_printable("session", &self.session, SESSION_CHARS_MAX).map_err(|e| e.to_string())?;
        if self.rooms.len() > STATE_ROOMS_MAX {
            return Err(format!("more than {STATE_ROOMS_MAX} rooms"));
        }
        for room in self.rooms.keys() {
            check_room(room).map_err(|e| format!("room {room:?}: {e}"))?;
        }
        Ok(())
    }
}

/// The default directory: `$XDG_STATE_HOME/pbchat`, else `$HOME/.local/state/pbchat`;
/// `None` when neither variable is set (nothing is remembered then).
pub fn default_dir() -> Option<PathBuf> {
    let nonempty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(state) = nonempty("XDG_STATE_HOME") {
        return Some(PathBuf::from(state).join("pbchat"));
    }
    nonempty("HOME").map(|home| PathBuf::from(home).join(".local/state/pbchat"))
}

/// The state file of `nick` talking to `servers` in `dir`: `<nick>-<hash>.json`, the hash
/// (FNV-1a, stable across builds) of the server list, so that positions in one pair's
/// history are never used with another pair's. A nick holds only letters, digits, `_` and
/// `-`, so the name is a safe file name.
pub fn path(dir: &Path, nick: &str, servers: &[String]) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in servers.join(" ").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    dir.join(format!("{nick}-{hash:016x}.json"))
}

/// The state stored at `path` for `nick`; `Ok(None)` when there is none yet.
pub fn load(path: &Path, nick: &str) -> Result<Option<State>, StateError> {
    let name = || path.display().to_string();
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: name(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    file.take(STATE_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StateError::Io {
            path: name(),
            source,
        })?;
    if bytes.len() as u64 > STATE_FILE_BYTES_MAX {
        return Err(StateError::TooLarge { path: name() });
    }
    let state: State = serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
        path: name(),
        problem: e.to_string(),
    })?;
    state.check(nick).map_err(|problem| StateError::Invalid {
        path: name(),
        problem,
    })?;
    Ok(Some(state))
}

/// Writes `state` to `path` atomically: a temporary file beside it (owner-only: the session
/// id lets anyone resume as this client), then a rename. The directory is made (0700) when
/// missing.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| StateError::Io { path: p, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let temporary = path.with_extension("json.tmp");
    let mut text = serde_json::to_vec(state).expect("a State serializes");
    text.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(&text).map_err(io(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64, epoch: u64) -> Position {
        Position {
            seq,
            epoch: Some(epoch),
        }
    }

    #[test]
    fn the_latest_message_shown_is_the_place() {
        let mut state = State::new("alice", "s1");
        assert!(state.shown("r", at(3, 1)));
        assert!(!state.shown("r", at(3, 1)));
        assert!(state.shown("r", at(4, 1)));
        assert_eq!(state.position("r"), Some(at(4, 1)));
        // A fail-over to a history that parted at 2.
        assert!(state.shown("r", at(3, 2)));
        assert_eq!(state.position("r"), Some(at(3, 2)));
        assert_eq!(state.position("other"), None);
    }

    #[test]
    fn the_stalest_room_is_forgotten_beyond_the_bound() {
        let mut state = State::new("alice", "s1");
        for i in 0..=STATE_ROOMS_MAX {
            state.shown(&format!("r{i}"), at(1, 1));
        }
        assert_eq!(state.rooms.len(), STATE_ROOMS_MAX);
        assert_eq!(state.position("r0"), None);
        assert!(state.position(&format!("r{STATE_ROOMS_MAX}")).is_some());
    }

    #[test]
    fn saves_and_loads_and_refuses_another_nick_or_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(
            &dir.path().join("pbchat"),
            "alice",
            &["127.0.0.1:7400".into()],
        );
        assert_ne!(file, path(dir.path(), "alice", &["127.0.0.1:7410".into()]));
        assert!(load(&file, "alice").unwrap().is_none());
        let mut state = State::new("alice", "s1");
        state.shown("general", at(7, 2));
        save(&file, &state).unwrap();
        assert_eq!(load(&file, "alice").unwrap(), Some(state));
        assert!(load(&file, "bob")
            .unwrap_err()
            .to_string()
            .contains("not \"bob\""));
        std::fs::write(&file, "{").unwrap();
        assert!(matches!(
            load(&file, "alice"),
            Err(StateError::Invalid { .. })
        ));
        std::fs::write(&file, vec![b' '; STATE_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(matches!(
            load(&file, "alice"),
            Err(StateError::TooLarge { .. })
        ));
    }
}
