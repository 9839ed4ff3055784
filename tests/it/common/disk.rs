//! File systems of a test's own, for tests that fill or freeze a node's disk: a small ext4
//! image on a loop device, mounted where the node keeps its data. Needs root (CI runs as
//! root) plus util-linux and e2fsprogs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this process may mount file systems. Outside CI a test without root prints
/// `skipped: ...` and returns; under CI (`CI` set, as .ci/run does) it fails instead, since a
/// skip there would hide a fault.
pub fn root_or_skip(test: &str) -> bool {
    let uid = Command::new("id").arg("-u").output().unwrap().stdout;
    if String::from_utf8_lossy(&uid).trim() == "0" {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (mount), and CI runs as root"
    );
    eprintln!("skipped: {test} needs root to mount a file system");
    false
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (the disk tests need util-linux and e2fsprogs)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 64 MiB ext4 file system mounted at `at`. Unmounted (and its image deleted) on drop.
pub struct LoopMount {
    image: PathBuf,
    pub at: PathBuf,
}

impl LoopMount {
    pub fn new(at: &Path) -> LoopMount {
        let image = at.with_extension("img");
        run_ok("truncate", &["-s", "64M", image.to_str().unwrap()]);
        run_ok("mkfs.ext4", &["-q", image.to_str().unwrap()]);
        std::fs::create_dir_all(at).unwrap();
        run_ok(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), at.to_str().unwrap()],
        );
        LoopMount {
            image,
            at: at.to_path_buf(),
        }
    }

    /// Bytes an unprivileged process may still use there (`df`'s "avail", statvfs's
    /// f_bavail: what pbchatd's log checks).
    pub fn free_bytes(&self) -> u64 {
        let out = run_ok("df", &["-B1", "--output=avail", self.at.to_str().unwrap()]);
        let line = out.lines().nth(1).expect("df prints a value");
        line.trim().parse().unwrap()
    }

    /// A file at `path` (on this file system) taking `bytes` of its room.
    pub fn fill(&self, path: &Path, bytes: u64) {
        run_ok(
            "fallocate",
            &["-l", &bytes.to_string(), path.to_str().unwrap()],
        );
    }

    /// The disk stops answering until the returned guard is dropped: writes and fsyncs
    /// block until thawed, as on a hung disk.
    pub fn freeze(&self) -> Frozen<'_> {
        run_ok("fsfreeze", &["--freeze", self.at.to_str().unwrap()]);
        Frozen(self)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Lazy: a process that still has files open there does not keep the device.
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.at);
    }
}

/// A frozen file system; thawed on drop, before anything tries to stop a process blocked
/// on it (such a process cannot exit until then).
pub struct Frozen<'a>(&'a LoopMount);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.0.at)
            .status();
    }
}
