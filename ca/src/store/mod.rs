//! The CA's durable memory: every certificate it issues is recorded here *before* it is
//! handed out, with an audit record of each operation.
//!
//! A small trait so that a PostgreSQL store can stand beside the embedded SQLite one when
//! several CA replicas share one address. The store knows nothing of X.509 or keys.

mod sqlite;

pub use sqlite::SqliteStore;

/// What kind of certificate a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    Root,
    Intermediate,
    Leaf,
}

/// Whether a certificate may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Active,
    Revoked,
}

/// One issued certificate as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex serial; unique across the store (the primary key).
    pub serial: String,
    pub kind: CertKind,
    /// SPIFFE ID of the subject (`spiffe://<td>` for CA certificates).
    pub spiffe_id: String,
    /// Validity bounds, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub status: CertStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Db(#[from] rusqlite::Error),
    #[error("serial {0} is already recorded; refusing to reuse it")]
    DuplicateSerial(String),
    #[error("the store's schema version {found} is newer than this mesh-ca understands ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The operations the CA needs from its store. Every write is durable when it returns.
pub trait Store: Send + Sync {
    /// Records an issued certificate and its audit entry in one transaction.
    fn record_issued(&self, rec: &CertRecord, actor: &str) -> Result<(), StoreError>;
    /// Every certificate, oldest first.
    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Appends an audit entry for an operation that issued nothing.
    fn audit(&self, op: &str, actor: &str, detail: &str) -> Result<(), StoreError>;
}
