//! Errors of the identity machinery that touch files or cryptography. Each says who is at
//! fault (a file on disk, or the crypto library); none carries key material. The CA maps them
//! into its own error (and exit codes), the sidecar into its startup errors.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but its contents are not what they must be.
    #[error("{}: {what}", path.display())]
    BadFile { path: PathBuf, what: String },
    /// A cryptographic operation failed (should not happen with valid inputs).
    #[error("crypto: {0}")]
    Crypto(String),
}

impl IdentityError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }

    pub fn bad_file(path: &Path, what: &str) -> Self {
        Self::BadFile { path: path.to_owned(), what: what.to_owned() }
    }
}
