//! Reading a small file that must be private to its owner (the pair's secret, the users
//! file): the permission check and the size bound, in one place.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Permission bits for group and others; any of them set makes a secret file unsafe.
const GROUP_OTHER_MODE_BITS: u32 = 0o077;

#[derive(Debug)]
pub enum PrivateFileError {
    Read(std::io::Error),
    /// Group or others may read or write it; `mode` is its permission bits.
    Permissions {
        mode: u32,
    },
    /// Longer than the caller's bound.
    TooLarge,
    NotUtf8,
}

/// The text of `path`, refused when group or others have any permission on it or when it
/// holds more than `max_bytes`.
pub fn read_private_text(path: &Path, max_bytes: u64) -> Result<String, PrivateFileError> {
    let mut handle = File::open(path).map_err(PrivateFileError::Read)?;
    // The mode is checked on the open handle, so it is the file that is read.
    let metadata = handle.metadata().map_err(PrivateFileError::Read)?;
    let mode = metadata.mode() & 0o7777;
    if mode & GROUP_OTHER_MODE_BITS != 0 {
        return Err(PrivateFileError::Permissions { mode });
    }
    let mut bytes = Vec::new();
    // `take` also bounds a file that grows after the check, or reports no length.
    handle
        .by_ref()
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(PrivateFileError::Read)?;
    if bytes.len() as u64 > max_bytes {
        return Err(PrivateFileError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| PrivateFileError::NotUtf8)
}
