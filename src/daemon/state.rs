//! The node's durable state beside the log: its epoch history, and the data-dir lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::epochs::EpochHistory;

const EPOCHS_FILE: &str = "epochs";
const LOCK_FILE: &str = "lock";

/// Why the data dir's state could not be read or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("data dir {}: cannot create: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {} is in use by another pbchatd (lock {} is held)", dir.display(), lock.display())]
    InUse { dir: PathBuf, lock: PathBuf },
    /// `step` is what failed on `path`: open, lock, read, write.
    #[error("{}: cannot {step}: {source}", path.display())]
    File {
        path: PathBuf,
        step: &'static str,
        source: std::io::Error,
    },
    /// The epochs file at `line` (from 1) is not what pbchatd writes.
    #[error("{}:{line}: {problem}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

impl StateError {
    fn file(path: &Path, step: &'static str) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError::File { path, step, source }
    }
}

/// Holds the data dir's lock for the life of the process, so two daemons never share it.
pub struct DirLock {
    _file: File,
}

pub fn lock_data_dir(dir: &Path) -> Result<DirLock, StateError> {
    fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StateError::file(&path, "open"))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(StateError::InUse {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(fs::TryLockError::Error(e)) => Err(StateError::file(&path, "lock")(e)),
    }
}

/// The persisted epoch state: the history and the highest epoch ever seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epochs {
    pub history: EpochHistory,
    pub seen: u64,
}

/// Reads the epoch state; `None` when the data dir has none yet (a new node).
pub fn load_epochs(dir: &Path) -> Result<Option<Epochs>, StateError> {
    let path = dir.join(EPOCHS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::file(&path, "read")(e)),
    };
    let parse_error = |n: usize, problem: String| StateError::Parse {
        path: path.clone(),
        line: n + 1,
        problem,
    };
    let mut spans = Vec::new();
    let mut seen = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(value) = line.strip_prefix("seen ") {
            seen = value
                .trim()
                .parse()
                .map_err(|_| parse_error(n, format!("expected `seen EPOCH`, found {line:?}")))?;
            continue;
        }
        let parsed = line
            .split_once(' ')
            .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.trim().parse::<u64>().ok()?)));
        let Some(span) = parsed else {
            let problem = format!("expected `EPOCH FIRST_SEQ`, found {line:?}");
            return Err(parse_error(n, problem));
        };
        if let Some(&(epoch, start)) = spans.last() {
            if span.0 <= epoch || span.1 < start {
                let problem = format!(
                    "epoch {} starting at {} does not follow epoch {epoch} at {start}",
                    span.0, span.1
                );
                return Err(parse_error(n, problem));
            }
        }
        spans.push(span);
    }
    let history = EpochHistory::from_spans(spans);
    Ok(Some(Epochs {
        seen: seen.max(history.current()),
        history,
    }))
}

/// Writes the history atomically: temp file, fsync, rename, fsync of the directory.
pub fn save_epochs(dir: &Path, history: &EpochHistory, seen: u64) -> Result<(), StateError> {
    let path = dir.join(EPOCHS_FILE);
    let tmp: PathBuf = dir.join(format!("{EPOCHS_FILE}.tmp"));
    let mut text = String::from("# epoch first_seq: written by pbchatd, do not edit\n");
    text.push_str(&format!("seen {seen}\n"));
    for (epoch, start) in history.spans() {
        text.push_str(&format!("{epoch} {start}\n"));
    }
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(StateError::file(&path, "write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_and_bad_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_epochs(dir.path()).unwrap(), None);
        let history = EpochHistory::from_spans(vec![(1, 1), (4, 90)]);
        save_epochs(dir.path(), &history, 5).unwrap();
        assert_eq!(
            load_epochs(dir.path()).unwrap(),
            Some(Epochs { history, seen: 5 })
        );
        // A backup that never followed anyone has no spans, only what it saw.
        save_epochs(dir.path(), &EpochHistory::default(), 0).unwrap();
        let empty = load_epochs(dir.path()).unwrap().unwrap();
        assert_eq!((empty.history.current(), empty.seen), (0, 0));
        fs::write(dir.path().join(EPOCHS_FILE), "1 1\n3 x\n").unwrap();
        let err = load_epochs(dir.path()).unwrap_err().to_string();
        assert!(err.contains("epochs:2"), "{err}");
    }

    #[test]
    fn a_second_lock_on_the_same_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).err().unwrap().to_string();
        assert!(err.contains("in use"), "{err}");
    }
}
