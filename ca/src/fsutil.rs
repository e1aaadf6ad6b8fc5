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

/// One file of an atomic output set.
pub struct OutFile<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Writes every file into `dir` (created with mode 0700 if missing) or none of them.
/// Each file is written to a hidden temporary name, synced, then all are renamed into place.
/// `dir` itself is removed again on failure if this call created it.
pub fn write_all_or_nothing(dir: &Path, files: &[OutFile<'_>]) -> Result<(), CaError> {
    let created = if dir.exists() {
        false
    } else {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| CaError::io(dir, e))?;
        true
    };
    let mut temps: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| {
        let tag = crate::random::hex(&crate::random::serial()?[..6]);
        for f in files {
            let tmp = dir.join(format!(".{}.{tag}.tmp", f.name));
            temps.push((tmp.clone(), dir.join(f.name)));
            write_new(&tmp, f.contents, f.mode)?;
        }
        for (tmp, dst) in &temps {
            fs::rename(tmp, dst).map_err(|e| CaError::io(dst, e))?;
        }
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &temps {
            let _ = fs::remove_file(tmp);
        }
        if created {
            let _ = fs::remove_dir_all(dir);
        }
    }
    result
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
