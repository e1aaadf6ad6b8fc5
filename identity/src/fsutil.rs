//! File reads with the guarantees both binaries promise: bounded reads (a larger file is
//! refused, never truncated), and a warning for secret files others can read.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use crate::error::IdentityError;

/// Reads at most `max` bytes; a larger file is refused rather than truncated.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, IdentityError> {
    let file = File::open(path).map_err(|e| IdentityError::io(path, e))?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf).map_err(|e| IdentityError::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(IdentityError::bad_file(path, &format!("is larger than {max} bytes")));
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
