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

/// A join token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Lowercase hex SHA-256 of the token string.
    pub hash: String,
    pub zone: String,
    pub workload: String,
    /// Seconds since the epoch after which the token is refused.
    pub expires_at: i64,
    pub uses: u32,
}

/// A join token as `list` shows it: what it is for and how much is left, never its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub zone: String,
    pub workload: String,
    pub uses_left: i64,
    pub expires_at: i64,
    pub created_at: i64,
}

/// Why a token was not accepted. The caller learns only "rejected": these are for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
    UsedUp,
    /// The token is fine but the identity it names has been revoked; nothing is spent.
    IdentityRevoked,
}

impl TokenRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
            Self::IdentityRevoked => "identity_revoked",
        }
    }
}

/// One token redemption of a batch. `issue` runs under the store's lock: it must not call
/// the store.
pub struct Redemption<'a> {
    /// SHA-256 (hex) of the presented token.
    pub hash: String,
    /// Who asked, for the audit trail.
    pub actor: String,
    pub issue: IssueFn<'a>,
}

/// Signs a certificate for (zone, workload) inside a redemption; `None` when it cannot.
pub type IssueFn<'a> = Box<dyn FnMut(&str, &str) -> Option<CertRecord> + 'a>;

/// What became of one redemption.
pub type RedeemOutcome = Result<Result<CertRecord, TokenRejection>, StoreError>;

/// One entry of the revocation log: a single certificate, or every certificate of an identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Revocation {
    /// Position in the log; sidecars ask for everything after the last one they saw.
    pub seq: i64,
    pub serial: Option<String>,
    pub spiffe_id: Option<String>,
    pub reason: String,
    pub revoked_at: i64,
}

/// One page of the compacted revocation log (see [`Store::revocation_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationPage {
    pub entries: Vec<Revocation>,
    /// The log position this page covers up to (entries at or before it that are not in
    /// `entries` were compacted away); ask for `since=<this>` next. Never below `since`.
    pub sequence: i64,
    /// More entries follow `sequence` already: ask again at once rather than waiting.
    pub more: bool,
}

/// The operations the CA needs from its store. Every write is durable when it returns.
pub trait Store: Send + Sync {
    /// Records an issued certificate and its audit entry in one transaction.
    fn record_issued(&self, rec: &CertRecord, actor: &str) -> Result<(), StoreError>;
    /// Every certificate, oldest first.
    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Every join token (never its hash), oldest first.
    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;
    /// Appends an audit entry for an operation that issued nothing.
    fn audit(&self, op: &str, actor: &str, detail: &str) -> Result<(), StoreError>;
    /// Stores a new join token (its hash).
    fn create_token(&self, token: &NewToken, actor: &str) -> Result<(), StoreError>;
    /// Redeems a batch of tokens in one transaction (group commit: one sync to disk for the
    /// whole batch), each redemption isolated in a savepoint. For each: checks the token, calls
    /// its `issue` with the token's zone and workload, and if that yields a certificate for an
    /// identity that is not revoked, spends one use and records the certificate. Redemptions
    /// of one token serialise on the write lock and within the batch: a one-use token is
    /// spent exactly once. Nothing is durable, or returned as issued, before the commit.
    fn redeem_tokens(&self, now: i64, batch: &mut [Redemption<'_>])
        -> Result<Vec<RedeemOutcome>, StoreError>;
    /// Revokes one certificate (`serial`) or every certificate of an identity (`spiffe_id`),
    /// past and future. Returns the new log position.
    fn revoke(
        &self,
        serial: Option<&str>,
        spiffe_id: Option<&str>,
        reason: &str,
        actor: &str,
    ) -> Result<i64, StoreError>;
    /// Log entries after `seq`, oldest first: the whole log, compacted entries included (for
    /// `list` and the audit). Sidecars are served [`Store::revocation_page`] instead.
    fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError>;
    /// Revokes many targets (each `(serial, spiffe_id)` as [`Store::revoke`] takes them) in one
    /// transaction: all are logged, or none. Returns the first and last new log positions.
    fn revoke_batch(
        &self,
        targets: &[(Option<&str>, Option<&str>)],
        reason: &str,
        actor: &str,
    ) -> Result<(i64, i64), StoreError>;
    /// The latest log position (0 for an empty log), compacted entries included.
    fn revocation_head(&self) -> Result<i64, StoreError>;
    /// At most `limit` entries after `since`, oldest first, as sidecars are served them:
    /// compacted, i.e. without serial revocations whose certificate expired before `now` (an
    /// expired certificate is refused anyway; identity revocations are always served).
    /// `sequence` in the answer covers the compacted entries too, so it only ever grows.
    fn revocation_page(&self, since: i64, now: i64, limit: usize) -> Result<RevocationPage, StoreError>;
    /// Whether a certificate, or its whole identity, has been revoked.
    fn is_revoked(&self, serial: &str, spiffe_id: &str) -> Result<bool, StoreError>;
    /// The certificate with this serial, if the CA issued it.
    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError>;
}
