//! File-system and clock helpers: permission bits, directory snapshots, the current time.

use std::path::{Path, PathBuf};

use crate::process::Cmd;

/// The Unix permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

/// Every file below `dir` with its contents, sorted (to prove a directory was left untouched).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                stack.push(p.clone());
                out.push((p.clone(), Vec::new(), mode(&p)));
            } else {
                let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p.clone(), data, mode(&p)));
            }
        }
    }
    out.sort();
    out
}

/// Whether the tests run as root (permission bits do not stop root from writing).
pub fn running_as_root() -> bool {
    Cmd::new("id").arg("-u").run().stdout.trim() == "0"
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> i64 {
    let d =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("the clock is after 1970");
    i64::try_from(d.as_secs()).expect("the clock is before the year 292 billion")
}
