//! File helpers with the guarantees the CA promises: bounded reads, private modes, and
//! all-or-nothing output (temporary files renamed into place; on error nothing is left).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::CaError;

/// Reads at most `max` bytes; a larger file is refused rather than truncated.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, CaError> {
    let file = File::open(path).map_err(|e| CaError::io(path, e))?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf).map_err(|e| CaError::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(CaError::bad_file(path, &format!("is larger than {max} bytes")));
    }
    Ok(buf)
}

/// The warning for a secret file (a key, a passphrase or token file) that group or others can
/// read: one line naming what it is (`what`, e.g. "key file"), the file, its mode and the fix;
/// None when it is private (or cannot be examined, in which case reading it reports the error).
/// Pure, so any binary can print it its own way.
pub fn exposed_mode_warning(path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "warning: {what} {} is readable by group or others (mode {mode:04o}); run chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// Prints [`exposed_mode_warning`] on stderr as `mesh-ca: warning: ...`, if there is one. A
/// failing stderr is ignored: a warning must never stop the CA.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if let Some(w) = exposed_mode_warning(path, what) {
        let _ = writeln!(std::io::stderr(), "mesh-ca: {w}");
    }
}

/// One file of an atomic output set.
pub struct OutFile<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Writes every file into `dir` (created with mode 0700 if missing) or none of them.
/// Each file is written to a hidden temporary name and synced; a file it replaces is kept
/// under a backup name (a hard link, so the old version never disappears); then all are
/// renamed into place. On any failure, renames already made are undone, backups restored,
/// temporaries removed, and `dir` removed again if this call created it.
pub fn write_all_or_nothing(dir: &Path, files: &[OutFile<'_>]) -> Result<(), CaError> {
    let created = if dir.exists() {
        false
    } else {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| CaError::io(dir, e))?;
        true
    };
    let mut steps: Vec<Step> = Vec::new();
    let result = write_steps(dir, files, &mut steps);
    if result.is_err() {
        for step in steps.iter().rev() {
            step.undo();
        }
        if created {
            let _ = fs::remove_dir_all(dir);
        }
    } else {
        for step in &steps {
            if let Some(b) = &step.backup {
                let _ = fs::remove_file(b);
            }
        }
    }
    result
}

/// One file's progress, so a failure can be rolled back exactly as far as it got.
struct Step {
    tmp: PathBuf,
    dst: PathBuf,
    backup: Option<PathBuf>,
    renamed: bool,
}

impl Step {
    fn undo(&self) {
        if self.renamed {
            match &self.backup {
                Some(b) => {
                    let _ = fs::rename(b, &self.dst);
                }
                None => {
                    let _ = fs::remove_file(&self.dst);
                }
            }
        } else {
            let _ = fs::remove_file(&self.tmp);
            if let Some(b) = &self.backup {
                let _ = fs::remove_file(b);
            }
        }
    }
}

fn write_steps(dir: &Path, files: &[OutFile<'_>], steps: &mut Vec<Step>) -> Result<(), CaError> {
    let tag = crate::random::hex(&crate::random::serial()?[..6]);
    for f in files {
        let dst = dir.join(f.name);
        let tmp = dir.join(format!(".{}.{tag}.tmp", f.name));
        steps.push(Step { tmp: tmp.clone(), dst, backup: None, renamed: false });
        write_new(&tmp, f.contents, f.mode)?;
    }
    for step in steps.iter_mut() {
        if step.dst.is_file() {
            let backup = step.tmp.with_extension("bak");
            fs::hard_link(&step.dst, &backup).map_err(|e| CaError::io(&step.dst, e))?;
            step.backup = Some(backup);
        }
    }
    for step in steps.iter_mut() {
        fs::rename(&step.tmp, &step.dst).map_err(|e| CaError::io(&step.dst, e))?;
        step.renamed = true;
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `path` exclusively with `mode` (set at creation, so the contents are never
/// readable with a wider mode), writes and syncs it.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CaError::io(path, e))?;
    f.write_all(contents).map_err(|e| CaError::io(path, e))?;
    f.sync_all().map_err(|e| CaError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_leaves_old_files_and_no_new_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        fs::write(dir.join("a"), b"old a").expect("write");
        // "c" is a directory: the last rename fails after "a" and "b" were renamed.
        fs::create_dir(dir.join("c")).expect("mkdir");
        let files = [
            OutFile { name: "a", contents: b"new a", mode: 0o600 },
            OutFile { name: "b", contents: b"new b", mode: 0o600 },
            OutFile { name: "c", contents: b"new c", mode: 0o600 },
        ];
        assert!(write_all_or_nothing(dir, &files).is_err());
        assert_eq!(fs::read(dir.join("a")).expect("a"), b"old a");
        assert!(!dir.join("b").exists());
        let names: Vec<_> = fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 2, "only a and c remain: {names:?}");
    }

    #[test]
    fn warns_about_group_or_other_readable_secrets_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("key.pem");
        fs::write(&p, b"k").expect("write");
        for (mode, warns) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true), (0o644, true)] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
            let w = exposed_mode_warning(&p, "key file");
            assert_eq!(w.is_some(), warns, "mode {mode:o}: {w:?}");
            if let Some(w) = w {
                assert!(
                    w.contains(&format!("{mode:04o}")) && w.contains("chmod 600") && w.contains("key.pem")
                );
                assert_eq!(w.lines().count(), 1);
            }
        }
        assert!(exposed_mode_warning(&tmp.path().join("missing"), "key file").is_none());
    }

    #[test]
    fn success_replaces_and_cleans_up() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("out");
        let files = [OutFile { name: "a", contents: b"1", mode: 0o600 }];
        write_all_or_nothing(&dir, &files).expect("first");
        let files = [OutFile { name: "a", contents: b"2", mode: 0o600 }];
        write_all_or_nothing(&dir, &files).expect("second");
        assert_eq!(fs::read(dir.join("a")).expect("a"), b"2");
        assert_eq!(fs::read_dir(&dir).expect("ls").count(), 1);
    }
}
