//! The CA's durable memory: every certificate it issues is recorded here *before* it is
//! handed out, with an audit record of each operation.
//!
//! A small trait so that a PostgreSQL store can stand beside the embedded SQLite one when
//! several CA replicas share one address; [`open`] picks the backend `ca.toml` names
//! ([`StoreConfig`]). The store knows nothing of X.509 or keys, and no type of a database
//! crate appears outside the backend's own module.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use mesh_identity::Serial;

#[cfg(any(test, feature = "test-util"))]
pub mod contract;
mod sqlite;

pub use sqlite::SqliteStore;

/// Which store a CA uses and where, as `ca.toml`'s `store` names it: `sqlite:PATH` (PATH
/// relative to the CA directory unless absolute). A PostgreSQL URL is reserved for a later
/// build; nothing else is a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// One SQLite file.
    Sqlite(PathBuf),
}

/// The store a CA directory without a `store` line has used all along.
pub const DEFAULT_STORE: &str = "sqlite:store.db";

impl Default for StoreConfig {
    fn default() -> Self {
        Self::Sqlite(PathBuf::from("store.db"))
    }
}

impl StoreConfig {
    /// The same store with a relative path taken from `dir`, the CA directory.
    pub fn in_dir(&self, dir: &Path) -> Self {
        match self {
            Self::Sqlite(p) => Self::Sqlite(dir.join(p)),
        }
    }
}

/// `value` as written in `ca.toml`; the error says what would be valid.
impl FromStr for StoreConfig {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        const SUPPORTED: &str = "the supported store is \"sqlite:PATH\" (PATH relative to the CA directory)";
        if let Some(path) = value.strip_prefix("sqlite:") {
            if path.is_empty() || path.starts_with("//") {
                return Err(format!("{value:?}: write sqlite:PATH with a file path, e.g. {DEFAULT_STORE:?}"));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            // Never echo the URL: it may carry a password.
            return Err(format!("a PostgreSQL store is not in this build yet; {SUPPORTED}"));
        }
        // Only the scheme is echoed, and only its plain characters: the rest may be a secret.
        let Some((scheme, _)) = value.split_once(':') else {
            return Err(format!("no store scheme (scheme:...); {SUPPORTED}"));
        };
        let scheme: String = scheme.chars().take(32).filter(|c| c.is_ascii_alphanumeric()).collect();
        Err(format!("unknown store scheme {scheme:?}; {SUPPORTED}"))
    }
}

/// The form `ca.toml` holds.
impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
        }
    }
}

/// Opens the store `config` names (its paths already resolved, see [`StoreConfig::in_dir`])
/// and brings its schema up to date. Never creates one: a CA without its store is broken
/// ([`StoreError::Missing`]).
pub fn open(config: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match config {
        StoreConfig::Sqlite(path) => Ok(Box::new(SqliteStore::open(path, false)?)),
    }
}

/// Creates the store `config` names, for a new CA (`mesh-ca init`).
pub fn create(config: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match config {
        StoreConfig::Sqlite(path) => Ok(Box::new(SqliteStore::open(path, true)?)),
    }
}

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
    /// Unique across the store (the primary key).
    pub serial: Serial,
    pub kind: CertKind,
    /// SPIFFE ID of the subject (`spiffe://<td>` for CA certificates).
    pub spiffe_id: String,
    /// Validity bounds, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub status: CertStatus,
}

/// How a store failed, in kinds every backend can produce (SQLite today, PostgreSQL later):
/// the backend's own error is turned into one of these where it happens, so nothing above the
/// store depends on a database crate. No variant carries a token or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached, or stayed busy past its timeout: nothing was written, and
    /// the same call may succeed later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write would reuse what must be unique (a certificate serial): nothing was written
    /// and what is stored is unchanged.
    #[error("{0}")]
    Conflict(String),
    /// The store is not there (a CA directory without its store is broken).
    #[error("{0}")]
    Missing(String),
    /// The store's schema is newer than this mesh-ca.
    #[error("the store's schema version {found} is newer than this mesh-ca understands ({supported})")]
    TooNew { found: i64, supported: i64 },
    /// A stored record is not one this mesh-ca wrote.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Any other failure of the backend (I/O, disk full, a refused statement).
    #[error("{0}")]
    Backend(String),
}

/// One entry of the audit trail: what was done, by whom, when (the `now` its write was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the trail, strictly increasing in write order.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    pub op: String,
    pub actor: String,
    pub detail: String,
}

/// A join token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// What operators name the token by (`mesh-ca token list`, `token revoke ID`): the first
    /// [`mesh_identity::token::TOKEN_ID_LEN`] hex characters of `hash`. Unique in the store.
    pub id: String,
    /// Lowercase hex SHA-256 of the token string.
    pub hash: String,
    pub zone: String,
    pub workload: String,
    /// Seconds since the epoch after which the token is refused.
    pub expires_at: i64,
    pub uses: u32,
}

/// A join token as `list` shows it: what it is for and how much is left, never its value
/// (nor its hash: the id is a prefix of the hash too short to find the token by).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub zone: String,
    pub workload: String,
    pub uses_left: i64,
    pub expires_at: i64,
    pub created_at: i64,
    /// When `mesh-ca token revoke` (or a reinstatement of its identity) took it out of use.
    pub revoked_at: Option<i64>,
}

/// What a token can still do at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    Expired,
    UsedUp,
    Revoked,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
            Self::Revoked => "revoked",
        }
    }
}

impl TokenInfo {
    /// Its status at `now`, in the order redemption checks them: revoked, expired, used up.
    pub fn status(&self, now: i64) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if self.expires_at <= now {
            TokenStatus::Expired
        } else if self.uses_left <= 0 {
            TokenStatus::UsedUp
        } else {
            TokenStatus::Active
        }
    }
}

/// What [`Store::revoke_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRevocation {
    /// Revoked now.
    Revoked(TokenInfo),
    /// Revoked before; nothing changed.
    AlreadyRevoked(TokenInfo),
    /// No token has that id.
    Unknown,
}

/// An identity as the store keys it: the SPIFFE ID of its certificates and revocations, and
/// the zone and workload its join tokens name.
#[derive(Debug, Clone, Copy)]
pub struct IdentityName<'a> {
    pub spiffe_id: &'a str,
    pub zone: &'a str,
    pub workload: &'a str,
}

/// What the store knows of one identity (see [`Store::identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityRecord {
    /// Leaf certificates ever recorded for it.
    pub certificates: u64,
    /// Join tokens ever created for it (spent, expired and revoked ones included).
    pub tokens: u64,
    /// The identity revocation in force (its log position), if one is: none was ever made,
    /// or the last was lifted by a reinstatement.
    pub revoked: Option<i64>,
}

/// What revoking one target did (see [`Store::revoke_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// A new log entry, at this position.
    Revoked(i64),
    /// The target was revoked already, by the entry at this position (the serial's own, or
    /// its identity's): nothing was written.
    AlreadyRevoked(i64),
}

impl RevokeOutcome {
    /// The log position that revokes the target, new or old.
    pub fn seq(self) -> i64 {
        match self {
            Self::Revoked(s) | Self::AlreadyRevoked(s) => s,
        }
    }
}

/// What [`Store::reinstate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reinstatement {
    /// The reinstatement's own log position.
    pub seq: i64,
    /// The identity revocation it lifted.
    pub lifted: i64,
    /// Unexpired certificates of the identity that now have a serial entry of their own, so
    /// they stay revoked.
    pub certificates: u64,
    /// Join tokens of the identity it revoked (every one not already revoked).
    pub tokens: u64,
}

/// Why a token was not accepted. The caller learns only "rejected": these are for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
    UsedUp,
    /// The token is fine but the identity it names has been revoked; nothing is spent.
    IdentityRevoked,
    /// The token itself was revoked (`mesh-ca token revoke`).
    Revoked,
}

impl TokenRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
            Self::IdentityRevoked => "identity_revoked",
            Self::Revoked => "revoked",
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

/// One entry of the revocation log: a single certificate, or every certificate of an
/// identity, revoked; or an identity revocation lifted (`action` `Reinstate`, `spiffe_id`
/// set, no serial).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Revocation {
    /// Position in the log; sidecars ask for everything after the last one they saw.
    pub seq: i64,
    pub serial: Option<Serial>,
    pub spiffe_id: Option<String>,
    pub reason: String,
    pub revoked_at: i64,
    pub action: RevocationAction,
}

/// What a log entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationAction {
    Revoke,
    /// Lifts the identity revocations of `spiffe_id` before it. The identity's certificates
    /// from before stay revoked: the reinstatement wrote a serial entry for each unexpired
    /// one ahead of itself, so a follower applying the log in order never accepts them.
    Reinstate,
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

/// The operations the CA needs from its store. Every write is durable when it returns, and
/// takes the time it happens at (`now`, Unix seconds) from its caller: the store never reads
/// a clock, so replicas and tests agree on what time a record carries.
/// [`contract::store_contract`] is what every backend must pass.
pub trait Store: Send + Sync {
    /// Records an issued certificate and its audit entry in one transaction. A serial already
    /// recorded is refused with [`StoreError::Conflict`], leaving the first record as it was.
    fn record_issued(&self, rec: &CertRecord, actor: &str, now: i64) -> Result<(), StoreError>;
    /// Every certificate, oldest first. A certificate whose identity is revoked reads as
    /// revoked, whatever its row says.
    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Every join token (never its hash), oldest first.
    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError>;
    /// Takes the token with this id out of use (audited `token.revoked`): its redemptions are
    /// refused as [`TokenRejection::Revoked`]. A token revoked before is left as it was.
    fn revoke_token(&self, id: &str, actor: &str, now: i64) -> Result<TokenRevocation, StoreError>;
    /// What the store knows of one identity: certificates, tokens, the revocation in force.
    fn identity(&self, name: &IdentityName<'_>) -> Result<IdentityRecord, StoreError>;
    /// Appends an audit entry for an operation that issued nothing.
    fn audit(&self, op: &str, actor: &str, detail: &str, now: i64) -> Result<(), StoreError>;
    /// The audit trail after position `seq`, oldest first.
    fn audit_since(&self, seq: i64) -> Result<Vec<AuditEntry>, StoreError>;
    /// Stores a new join token (its hash).
    fn create_token(&self, token: &NewToken, actor: &str, now: i64) -> Result<(), StoreError>;
    /// Redeems a batch of tokens in one transaction (group commit: one sync to disk for the
    /// whole batch), each redemption isolated in a savepoint. For each: checks the token
    /// (unknown, expired at `now`, used up), calls its `issue` with the token's zone and
    /// workload, and if that yields a certificate for an identity that is not revoked, spends
    /// one use and records the certificate. Redemptions of one token serialise on the write
    /// lock and within the batch: a one-use token is spent exactly once, however many callers
    /// race. Nothing is durable, or returned as issued, before the commit.
    fn redeem_tokens(&self, now: i64, batch: &mut [Redemption<'_>])
        -> Result<Vec<RedeemOutcome>, StoreError>;
    /// Revokes one certificate (`serial`) or every certificate of an identity (`spiffe_id`),
    /// past and future (until a reinstatement). Returns the log position that revokes it: a
    /// new one, or, when it was revoked already, that one (nothing is written then).
    fn revoke(
        &self,
        serial: Option<&Serial>,
        spiffe_id: Option<&str>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.revoke_batch(&[(serial, spiffe_id)], reason, actor, now)?
            .pop()
            .map(RevokeOutcome::seq)
            .ok_or_else(|| StoreError::Backend("a revocation of one target had no outcome".into()))
    }
    /// Log entries after `seq`, oldest first: the whole log, compacted entries included (for
    /// `list` and the audit). Sidecars are served [`Store::revocation_page`] instead.
    fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError>;
    /// Revokes many targets (each `(serial, spiffe_id)` as [`Store::revoke`] takes them) in one
    /// transaction: all are logged, or none. A target revoked already (a serial with its own
    /// entry or whose identity is revoked, an identity revoked and not reinstated since, or
    /// an earlier target of the same batch) is not logged again: its outcome names the entry
    /// that revokes it. One outcome per target, in order.
    fn revoke_batch(
        &self,
        targets: &[(Option<&Serial>, Option<&str>)],
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Vec<RevokeOutcome>, StoreError>;
    /// Lifts the identity revocation in force for `name`, in one transaction (audited
    /// `identity.reinstated`): every unexpired certificate of the identity gets a serial
    /// entry of its own and is marked revoked, every join token for it is revoked, and then
    /// a `Reinstate` entry is logged. `None` (and nothing written) when the identity is not
    /// revoked.
    fn reinstate(
        &self,
        name: &IdentityName<'_>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<Reinstatement>, StoreError>;
    /// The latest log position (0 for an empty log), compacted entries included.
    fn revocation_head(&self) -> Result<i64, StoreError>;
    /// At most `limit` entries after `since`, oldest first, as sidecars are served them:
    /// compacted, i.e. without serial revocations whose certificate expired before `now` (an
    /// expired certificate is refused anyway) and without identity revocations a later
    /// reinstatement lifted (the reinstatement and the serial entries it wrote say all a
    /// follower needs). Identity revocations in force and reinstatements are always served.
    /// `sequence` in the answer covers the compacted entries too, so it only ever grows.
    fn revocation_page(&self, since: i64, now: i64, limit: usize) -> Result<RevocationPage, StoreError>;
    /// Whether a certificate (if a serial is given) has been revoked, or its whole identity is
    /// (and has not been reinstated since).
    fn is_revoked(&self, serial: Option<&Serial>, spiffe_id: &str) -> Result<bool, StoreError>;
    /// The certificate with this serial, if the CA issued it.
    fn certificate(&self, serial: &Serial) -> Result<Option<CertRecord>, StoreError>;
}
