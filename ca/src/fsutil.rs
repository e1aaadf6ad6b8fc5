//! File helpers with the guarantees the CA promises: private modes and all-or-nothing output
//! (temporary files renamed into place; on error nothing is left). Bounded reads and the
//! exposed-secret warning are shared with the sidecar ([`mesh_identity::fsutil`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use mesh_identity::fsutil::{exposed_mode_warning, read_bounded};

use crate::error::CaError;

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
    let tag = mesh_identity::random::hex(&mesh_identity::random::serial()?[..6]);
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
