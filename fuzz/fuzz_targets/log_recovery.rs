//! cargo-fuzz target: the checks are in `pbchat::fuzzing::log_recovery`, shared with the
//! corpus regression test (`tests/it/fuzz_corpus.rs`).
#![no_main]

use std::path::Path;

/// A directory on tmpfs when there is one: recovery fsyncs what it cut, and a fuzzer runs it
/// thousands of times a second.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (dir, fresh) = (scratch(), scratch());
    pbchat::fuzzing::log_recovery::check(data, dir.path(), fresh.path());
});
