//! Errors of the CA library. Each variant says who is at fault: the operator's input, the
//! passphrase, a file on disk, the store, or cryptography. `main` maps them to exit codes.
//! No variant ever carries key material or a passphrase.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The operator asked for something the CA will not do (bad name, TTL out of range, ...).
    #[error("{0}")]
    Refused(String),
    /// The passphrase is missing, empty or wrong.
    #[error("{0}")]
    Passphrase(String),
    /// A CA directory is missing, incomplete or already initialised.
    #[error("{0}")]
    CaDir(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but its contents are not what they must be.
    #[error("{}: {what}", path.display())]
    BadFile { path: PathBuf, what: String },
    /// The certificate store failed; nothing was handed out.
    #[error("certificate store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A cryptographic operation failed (should not happen with valid inputs).
    #[error("crypto: {0}")]
    Crypto(String),
}

/// File and crypto errors of the shared identity machinery keep their meaning (and exit code).
impl From<mesh_identity::IdentityError> for CaError {
    fn from(e: mesh_identity::IdentityError) -> Self {
        use mesh_identity::IdentityError as E;
        match e {
            E::Io { path, source } => Self::Io { path, source },
            E::BadFile { path, what } => Self::BadFile { path, what },
            E::Crypto(what) => Self::Crypto(what),
        }
    }
}

impl CaError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }

    pub fn bad_file(path: &Path, what: &str) -> Self {
        Self::BadFile { path: path.to_owned(), what: what.to_owned() }
    }

    /// Process exit code: 1 refused by the CA's rules, 3 passphrase, 4 CA directory state,
    /// 5 files and I/O, 6 store, 7 crypto. (2 is clap's usage error.)
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Refused(_) => 1,
            Self::Passphrase(_) => 3,
            Self::CaDir(_) => 4,
            Self::Io { .. } | Self::BadFile { .. } => 5,
            Self::Store(_) => 6,
            Self::Crypto(_) => 7,
        }
    }
}
