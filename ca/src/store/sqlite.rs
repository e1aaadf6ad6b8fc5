//! The embedded store: one SQLite file in the CA directory, WAL mode with full sync, so a
//! record is on disk before the answer that depends on it is given, and readers (`list`) never
//! block the issuer. Migrations are numbered and tracked with `PRAGMA user_version`.
//!
//! This is the only module that knows rusqlite: its errors become [`StoreError`] kinds here
//! (`From<rusqlite::Error>`), and serials are stored as their lowercase hex text.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mesh_identity::Serial;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    AuditEntry, CertKind, CertRecord, CertStatus, IdentityName, IdentityRecord, NewToken, RedeemOutcome,
    Redemption, Reinstatement, Revocation, RevocationAction, RevocationPage, RevokeOutcome, Store,
    StoreError, TokenInfo, TokenRejection, TokenRevocation,
};

/// Each entry upgrades the schema by one version. Never edit a released entry: add one.
const MIGRATIONS: &[&str] = &[
    // v1: certificates and the audit trail.
    "CREATE TABLE certificates (
        serial      TEXT PRIMARY KEY NOT NULL,
        kind        TEXT NOT NULL CHECK (kind IN ('root', 'intermediate', 'leaf')),
        spiffe_id   TEXT NOT NULL,
        not_before  INTEGER NOT NULL,
        not_after   INTEGER NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
        issued_at   INTEGER NOT NULL
     );
     CREATE INDEX certificates_by_id ON certificates (spiffe_id);
     CREATE TABLE audit (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        at      INTEGER NOT NULL,
        op      TEXT NOT NULL,
        actor   TEXT NOT NULL,
        detail  TEXT NOT NULL
     );",
    // v2: join tokens (only a hash is kept) and the revocation log. `seq` is the version
    // sidecars follow: "anything newer than N?".
    "CREATE TABLE tokens (
        hash        TEXT PRIMARY KEY NOT NULL,
        zone        TEXT NOT NULL,
        workload    TEXT NOT NULL,
        expires_at  INTEGER NOT NULL,
        uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
        created_at  INTEGER NOT NULL
     );
     CREATE TABLE revocations (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        serial      TEXT,
        spiffe_id   TEXT,
        reason      TEXT NOT NULL,
        revoked_at  INTEGER NOT NULL,
        CHECK (serial IS NOT NULL OR spiffe_id IS NOT NULL)
     );",
    // v3: token ids (the hash's first 12 hex characters, as mesh_identity::token::Token::id
    // makes them) and revocation; reinstatements in the revocation log; indexes for the
    // lookups a revocation, a renewal and a redemption make.
    "ALTER TABLE tokens ADD COLUMN id TEXT;
     UPDATE tokens SET id = substr(hash, 1, 12);
     CREATE UNIQUE INDEX tokens_by_id ON tokens (id);
     ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;
     CREATE INDEX tokens_by_identity ON tokens (zone, workload);
     ALTER TABLE revocations ADD COLUMN action TEXT NOT NULL DEFAULT 'revoke'
        CHECK (action IN ('revoke', 'reinstate'));
     CREATE INDEX revocations_by_serial ON revocations (serial);
     CREATE INDEX revocations_by_id ON revocations (spiffe_id, seq);",
];

/// The identity revocation in force for `?1` (a SPIFFE ID): the first after the last
/// reinstatement of that identity. One column, its `seq`.
const STANDING_IDENTITY_REVOCATION: &str = "SELECT r.seq FROM revocations r
     WHERE r.spiffe_id = ?1 AND r.action = 'revoke'
       AND NOT EXISTS (SELECT 1 FROM revocations x
                        WHERE x.spiffe_id = ?1 AND x.action = 'reinstate' AND x.seq > r.seq)
     ORDER BY r.seq LIMIT 1";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Enrollments with a token that matches no row, not yet in the audit table. A guess must
    /// not cost a write and a sync to disk (a flood of them would be a cheap way to load the
    /// CA's disk), so they are counted here and written as one summary row inside the next
    /// transaction the CA commits anyway. Each attempt is also an event line on stdout.
    unknown_tokens: AtomicU64,
    /// When the first of the uncounted unknown tokens arrived (Unix seconds; 0 when none).
    unknown_since: AtomicI64,
    /// When the latest of them arrived: the time of a summary written on drop, when no
    /// caller's `now` is at hand.
    unknown_last: AtomicI64,
}

/// Store files hold every issued certificate, token hash and the audit trail: owner only.
const STORE_FILE_MODE: u32 = 0o600;

impl SqliteStore {
    /// Opens (creating if asked) the store at `path` and brings its schema up to date.
    /// The database and its `-wal` and `-shm` files are mode 0600 whatever the umask: a new
    /// database is created 0600 before SQLite opens it (SQLite gives the files it adds later
    /// the database's mode), and wider modes left by older versions are narrowed on every open.
    pub fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        if !create && !path.exists() {
            return Err(StoreError::Missing(format!("{}: the certificate store is missing", path.display())));
        }
        let flags = if create {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        if create && !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(STORE_FILE_MODE)
                .open(path)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", path.display())))?;
        }
        private_modes(path);
        let conn = Connection::open_with_flags(path, flags)?;
        // Another mesh-ca process (serve, revoke) may hold the write lock for a moment.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn)?;
        private_modes(path);
        Ok(Self {
            conn: Mutex::new(conn),
            unknown_tokens: AtomicU64::new(0),
            unknown_since: AtomicI64::new(0),
            unknown_last: AtomicI64::new(0),
        })
    }

    /// Counts `n` unknown tokens, presented at `now`, for the next summary row (see
    /// `unknown_tokens`).
    fn count_unknown(&self, n: u64, now: i64) {
        if n == 0 {
            return;
        }
        let _ = self.unknown_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.unknown_last.fetch_max(now, Ordering::Relaxed);
        self.unknown_tokens.fetch_add(n, Ordering::Relaxed);
    }

    /// Writes the summary of unknown tokens counted so far inside `tx`, a transaction about
    /// to commit at `now`; returns how many it covers, to forget once the commit succeeded.
    fn summarise_unknown(&self, tx: &Connection, actor: &str, now: i64) -> Result<u64, StoreError> {
        let n = self.unknown_tokens.load(Ordering::Relaxed);
        if n > 0 {
            let since = self.unknown_since.load(Ordering::Relaxed);
            append_audit(tx, now, "token.rejected", actor, &unknown_summary(n, since))?;
        }
        Ok(n)
    }

    /// The summary of `n` unknown tokens is durable: stop counting them.
    fn summarised(&self, n: u64) {
        if n > 0 {
            self.unknown_tokens.fetch_sub(n, Ordering::Relaxed);
            if self.unknown_tokens.load(Ordering::Relaxed) == 0 {
                self.unknown_since.store(0, Ordering::Relaxed);
            }
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-call; SQLite's transaction was rolled back, so
        // the connection itself is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SqliteStore {
    /// A summary of unknown tokens still counted is written on the way out (best effort: a
    /// store that cannot write any more has no audit trail to add it to).
    fn drop(&mut self) {
        if self.unknown_tokens.load(Ordering::Relaxed) == 0 {
            return;
        }
        let conn = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
        let Ok(tx) = conn.unchecked_transaction() else { return };
        let n = self.unknown_tokens.load(Ordering::Relaxed);
        let since = self.unknown_since.load(Ordering::Relaxed);
        let at = self.unknown_last.load(Ordering::Relaxed);
        if append_audit(&tx, at, "token.rejected", "enroll", &unknown_summary(n, since)).is_ok() {
            let _ = tx.commit();
        }
    }
}

/// Narrows the database and its `-wal`/`-shm` files to owner-only where they are wider. Best
/// effort: a file this user cannot chmod is one it does not own, and opening it says why.
fn private_modes(db: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut names = vec![db.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        names.push(s.into());
    }
    for p in names {
        if let Ok(m) = std::fs::metadata(&p) {
            if m.permissions().mode() & 0o077 != 0 {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(STORE_FILE_MODE));
            }
        }
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::TooNew { found: version, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The one way a row enters the audit trail, inside the caller's transaction.
fn append_audit(conn: &Connection, at: i64, op: &str, actor: &str, detail: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO audit (at, op, actor, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![at, op, actor, detail])?;
    Ok(())
}

fn unknown_summary(n: u64, since: i64) -> String {
    format!("unknown count={n} since={since}")
}

fn revocation_detail(seq: i64, serial: Option<&Serial>, spiffe_id: Option<&str>, reason: &str) -> String {
    format!(
        "seq={seq} serial={} id={} reason={reason}",
        serial.map_or("-", Serial::as_str),
        spiffe_id.unwrap_or("-")
    )
}

/// rusqlite's errors as the store's kinds: busy or locked past the timeout, or a file that
/// cannot be opened, is unavailable; a primary-key or unique violation is a conflict; a file
/// that is not a database, or a value of the wrong type, is corrupt.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        use rusqlite::ErrorCode as C;
        let text = e.to_string();
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            match f.code {
                C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen => return Self::Unavailable(text),
                C::ConstraintViolation
                    if matches!(
                        f.extended_code,
                        ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE
                    ) =>
                {
                    return Self::Conflict(text)
                }
                C::NotADatabase | C::DatabaseCorrupt => return Self::Corrupt(text),
                _ => {}
            }
        }
        match e {
            rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
                Self::Corrupt(text)
            }
            _ => Self::Backend(text),
        }
    }
}

/// A serial as stored (its lowercase hex text), read back.
fn serial_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Serial> {
    let text: String = r.get(i)?;
    text.parse()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

fn serial_column_opt(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<Serial>> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => serial_column(r, i).map(Some),
    }
}

fn kind_str(k: CertKind) -> &'static str {
    match k {
        CertKind::Root => "root",
        CertKind::Intermediate => "intermediate",
        CertKind::Leaf => "leaf",
    }
}

fn status_str(s: CertStatus) -> &'static str {
    match s {
        CertStatus::Active => "active",
        CertStatus::Revoked => "revoked",
    }
}

type CertRow = (Serial, String, String, i64, i64, String);

/// One revocation log entry, from `SELECT seq, serial, spiffe_id, reason, revoked_at, action`.
fn revocation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Revocation> {
    let action: String = r.get(5)?;
    let action = match action.as_str() {
        "revoke" => RevocationAction::Revoke,
        "reinstate" => RevocationAction::Reinstate,
        _ => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                5,
                rusqlite::types::Type::Text,
                format!("revocation action {action:?}").into(),
            ))
        }
    };
    Ok(Revocation {
        seq: r.get(0)?,
        serial: serial_column_opt(r, 1)?,
        spiffe_id: r.get(2)?,
        reason: r.get(3)?,
        revoked_at: r.get(4)?,
        action,
    })
}

/// The identity revocation in force for `spiffe_id`, if any.
fn standing(conn: &Connection, spiffe_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn.prepare_cached(STANDING_IDENTITY_REVOCATION)?.query_row([spiffe_id], |r| r.get(0)).optional()?)
}

/// The entry revoking `serial` itself, if any.
fn serial_revocation(conn: &Connection, serial: &Serial) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT seq FROM revocations WHERE serial = ?1 AND action = 'revoke' ORDER BY seq LIMIT 1",
        )?
        .query_row([serial.as_str()], |r| r.get(0))
        .optional()?)
}

/// A token row, from `SELECT id, zone, workload, uses_left, expires_at, created_at, revoked_at`.
fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
        zone: r.get(1)?,
        workload: r.get(2)?,
        uses_left: r.get(3)?,
        expires_at: r.get(4)?,
        created_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

const TOKEN_COLUMNS: &str = "id, zone, workload, uses_left, expires_at, created_at, revoked_at";

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRow> {
    Ok((serial_column(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn cert_record(row: CertRow) -> Result<CertRecord, StoreError> {
    let (serial, kind, spiffe_id, not_before, not_after, status) = row;
    let kind = match kind.as_str() {
        "root" => CertKind::Root,
        "intermediate" => CertKind::Intermediate,
        "leaf" => CertKind::Leaf,
        other => return Err(StoreError::Corrupt(format!("certificate {serial} has kind {other:?}"))),
    };
    let status = match status.as_str() {
        "active" => CertStatus::Active,
        "revoked" => CertStatus::Revoked,
        other => return Err(StoreError::Corrupt(format!("certificate {serial} has status {other:?}"))),
    };
    Ok(CertRecord { serial, kind, spiffe_id, not_before, not_after, status })
}

/// Inserts a certificate row and its audit entry inside an open transaction.
fn insert_cert(tx: &Connection, rec: &CertRecord, actor: &str, op: &str, at: i64) -> Result<(), StoreError> {
    let exists: Option<i64> = tx
        .query_row("SELECT 1 FROM certificates WHERE serial = ?1", [rec.serial.as_str()], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::Conflict(format!(
            "serial {} is already recorded; refusing to reuse it",
            rec.serial
        )));
    }
    tx.execute(
        "INSERT INTO certificates (serial, kind, spiffe_id, not_before, not_after, status, issued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            rec.serial.as_str(),
            kind_str(rec.kind),
            rec.spiffe_id,
            rec.not_before,
            rec.not_after,
            status_str(rec.status),
            at
        ],
    )?;
    let detail = format!("{} serial={} id={}", kind_str(rec.kind), rec.serial, rec.spiffe_id);
    append_audit(tx, at, op, actor, &detail)
}

/// A certificate's columns; its status reads `revoked` while its identity is revoked too (a
/// certificate recorded as the identity was being revoked, or by a mesh-ca from before
/// `issue` refused revoked identities, is not shown as active).
const CERT_COLUMNS: &str = "c.serial, c.kind, c.spiffe_id, c.not_before, c.not_after,
    CASE WHEN c.status = 'revoked' OR EXISTS (
        SELECT 1 FROM revocations r WHERE r.spiffe_id = c.spiffe_id AND r.action = 'revoke'
           AND NOT EXISTS (SELECT 1 FROM revocations x WHERE x.spiffe_id = c.spiffe_id
                            AND x.action = 'reinstate' AND x.seq > r.seq))
    THEN 'revoked' ELSE c.status END";

/// One redemption inside an open transaction or savepoint; see `Store::redeem_tokens`.
fn redeem_in(
    conn: &Connection,
    hash: &str,
    now_s: i64,
    actor: &str,
    issue: &mut dyn FnMut(&str, &str) -> Option<CertRecord>,
) -> RedeemOutcome {
    let row: Option<(String, String, i64, i64, Option<i64>)> = conn
        .query_row(
            "SELECT zone, workload, expires_at, uses_left, revoked_at FROM tokens WHERE hash = ?1",
            [hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let rejection = match &row {
        None => Some(TokenRejection::Unknown),
        Some((_, _, _, _, Some(_))) => Some(TokenRejection::Revoked),
        Some((_, _, expires_at, _, _)) if *expires_at <= now_s => Some(TokenRejection::Expired),
        Some((_, _, _, 0, _)) => Some(TokenRejection::UsedUp),
        Some(_) => None,
    };
    let reject = |why: TokenRejection, detail: String| -> RedeemOutcome {
        append_audit(conn, now_s, "token.rejected", actor, &detail)?;
        Ok(Err(why))
    };
    match rejection {
        // Counted by the caller for a summary row: an unknown token writes nothing.
        Some(TokenRejection::Unknown) => return Ok(Err(TokenRejection::Unknown)),
        Some(why) => return reject(why, why.as_str().to_owned()),
        None => {}
    }
    let Some((zone, workload, _, _, _)) = row else { return Ok(Err(TokenRejection::Unknown)) };
    let Some(rec) = issue(&zone, &workload) else {
        // Signing failed: nothing is spent or recorded (the savepoint rolls back).
        return Err(StoreError::Corrupt("issuing for a token failed".into()));
    };
    if standing(conn, &rec.spiffe_id)?.is_some() {
        return reject(TokenRejection::IdentityRevoked, format!("identity_revoked id={}", rec.spiffe_id));
    }
    conn.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = ?1", [hash])?;
    insert_cert(conn, &rec, actor, "token.used", now_s)?;
    Ok(Ok(rec))
}

impl Store for SqliteStore {
    fn record_issued(&self, rec: &CertRecord, actor: &str, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_cert(&tx, rec, actor, "cert.issued", now)?;
        let summarised = self.summarise_unknown(&tx, "enroll", now)?;
        tx.commit()?;
        self.summarised(summarised);
        Ok(())
    }

    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {CERT_COLUMNS} FROM certificates c ORDER BY c.issued_at, c.rowid"))?;
        let rows = stmt.query_map([], cert_row)?;
        rows.map(|r| cert_record(r?)).collect()
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, rowid"))?;
        let rows = stmt.query_map([], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_token(&self, id: &str, actor: &str, now: i64) -> Result<TokenRevocation, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = tx
            .query_row(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"), [id], token_row)
            .optional()?;
        let Some(mut info) = found else { return Ok(TokenRevocation::Unknown) };
        if info.revoked_at.is_some() {
            return Ok(TokenRevocation::AlreadyRevoked(info));
        }
        tx.execute("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1", params![id, now])?;
        let detail = format!("id={id} zone={} workload={}", info.zone, info.workload);
        append_audit(&tx, now, "token.revoked", actor, &detail)?;
        tx.commit()?;
        info.revoked_at = Some(now);
        Ok(TokenRevocation::Revoked(info))
    }

    fn identity(&self, name: &IdentityName<'_>) -> Result<IdentityRecord, StoreError> {
        let conn = self.conn();
        let certificates: i64 = conn.query_row(
            "SELECT COUNT(*) FROM certificates WHERE spiffe_id = ?1 AND kind = 'leaf'",
            [name.spiffe_id],
            |r| r.get(0),
        )?;
        let tokens: i64 = conn.query_row(
            "SELECT COUNT(*) FROM tokens WHERE zone = ?1 AND workload = ?2",
            [name.zone, name.workload],
            |r| r.get(0),
        )?;
        Ok(IdentityRecord {
            certificates: certificates.max(0) as u64,
            tokens: tokens.max(0) as u64,
            revoked: standing(&conn, name.spiffe_id)?,
        })
    }

    fn certificate(&self, serial: &Serial) -> Result<Option<CertRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates c WHERE c.serial = ?1"),
                [serial.as_str()],
                cert_row,
            )
            .optional()?;
        row.map(cert_record).transpose()
    }

    fn create_token(&self, t: &NewToken, actor: &str, now: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO tokens (id, hash, zone, workload, expires_at, uses_left, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![t.id, t.hash, t.zone, t.workload, t.expires_at, t.uses, now],
        )?;
        let detail = format!(
            "id={} zone={} workload={} uses={} expires_at={}",
            t.id, t.zone, t.workload, t.uses, t.expires_at
        );
        append_audit(&tx, now, "token.created", actor, &detail)?;
        tx.commit()?;
        Ok(())
    }

    fn redeem_tokens(
        &self,
        now_s: i64,
        batch: &mut [Redemption<'_>],
    ) -> Result<Vec<RedeemOutcome>, StoreError> {
        let mut conn = self.conn();
        // Tokens that match no row are answered from a read, before any write transaction:
        // a guessed or stale token costs no write and no sync to disk (see `unknown_tokens`).
        let mut out: Vec<Option<RedeemOutcome>> = Vec::with_capacity(batch.len());
        {
            let mut known = conn.prepare_cached("SELECT 1 FROM tokens WHERE hash = ?1")?;
            for r in batch.iter() {
                out.push(if known.exists([&r.hash])? {
                    None
                } else {
                    Some(Ok(Err(TokenRejection::Unknown)))
                });
            }
        }
        let unknown = out.iter().filter(|o| o.is_some()).count();
        self.count_unknown(unknown as u64, now_s);
        if unknown < batch.len() {
            let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (r, slot) in batch.iter_mut().zip(out.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                // A savepoint per redemption: a failure undoes only its own writes.
                let sp = tx.savepoint()?;
                let res = redeem_in(&sp, &r.hash, now_s, &r.actor, &mut *r.issue);
                if res.is_ok() {
                    sp.commit()?;
                }
                if matches!(res, Ok(Err(TokenRejection::Unknown))) {
                    self.count_unknown(1, now_s);
                }
                *slot = Some(res);
            }
            let summarised = self.summarise_unknown(&tx, "enroll", now_s)?;
            tx.commit()?;
            self.summarised(summarised);
        }
        Ok(out.into_iter().map(|o| o.unwrap_or(Ok(Err(TokenRejection::Unknown)))).collect())
    }

    fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, serial, spiffe_id, reason, revoked_at, action FROM revocations
              WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([seq], revocation_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_batch(
        &self,
        targets: &[(Option<&Serial>, Option<&str>)],
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Vec<RevokeOutcome>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(targets.len());
        {
            let mut log = tx.prepare(
                "INSERT INTO revocations (serial, spiffe_id, reason, revoked_at) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut mark = tx.prepare("UPDATE certificates SET status = 'revoked' WHERE serial = ?1")?;
            let mut mark_id =
                tx.prepare("UPDATE certificates SET status = 'revoked' WHERE spiffe_id = ?1")?;
            let mut owner = tx.prepare("SELECT spiffe_id FROM certificates WHERE serial = ?1")?;
            for &(serial, spiffe_id) in targets {
                // Revoked already: by the serial's own entry, or by its identity's.
                let before = match (serial, spiffe_id) {
                    (Some(s), None) => match serial_revocation(&tx, s)? {
                        Some(seq) => Some(seq),
                        None => match owner.query_row([s.as_str()], |r| r.get::<_, String>(0)).optional()? {
                            Some(id) => standing(&tx, &id)?,
                            None => None,
                        },
                    },
                    (None, Some(id)) => standing(&tx, id)?,
                    (Some(s), Some(id)) => match (serial_revocation(&tx, s)?, standing(&tx, id)?) {
                        (Some(_), Some(seq)) => Some(seq),
                        _ => None,
                    },
                    // The table refuses an entry naming nothing.
                    (None, None) => None,
                };
                if let Some(seq) = before {
                    out.push(RevokeOutcome::AlreadyRevoked(seq));
                    continue;
                }
                log.execute(params![serial.map(Serial::as_str), spiffe_id, reason, now])?;
                let seq = tx.last_insert_rowid();
                if let Some(s) = serial {
                    mark.execute([s.as_str()])?;
                }
                if let Some(id) = spiffe_id {
                    mark_id.execute([id])?;
                }
                append_audit(
                    &tx,
                    now,
                    "cert.revoked",
                    actor,
                    &revocation_detail(seq, serial, spiffe_id, reason),
                )?;
                out.push(RevokeOutcome::Revoked(seq));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    fn reinstate(
        &self,
        name: &IdentityName<'_>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<Reinstatement>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(lifted) = standing(&tx, name.spiffe_id)? else { return Ok(None) };
        // The old certificates first, each by its serial (no identity with it: a follower
        // would read an entry naming both as an identity revocation), so that a follower
        // applying the log in order never holds the identity lifted and these not revoked.
        let serials: Vec<Serial> = {
            let mut stmt = tx.prepare(
                "SELECT c.serial FROM certificates c
                  WHERE c.spiffe_id = ?1 AND c.not_after > ?2
                    AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.serial = c.serial AND r.action = 'revoke')
                  ORDER BY c.issued_at, c.rowid",
            )?;
            let rows = stmt.query_map(params![name.spiffe_id, now], |r| serial_column(r, 0))?;
            rows.collect::<Result<_, _>>()?
        };
        let kept = format!("issued before the reinstatement of revocation #{lifted}");
        for s in &serials {
            tx.execute(
                "INSERT INTO revocations (serial, spiffe_id, reason, revoked_at) VALUES (?1, NULL, ?2, ?3)",
                params![s.as_str(), kept, now],
            )?;
            let seq = tx.last_insert_rowid();
            append_audit(&tx, now, "cert.revoked", actor, &revocation_detail(seq, Some(s), None, &kept))?;
        }
        tx.execute("UPDATE certificates SET status = 'revoked' WHERE spiffe_id = ?1", [name.spiffe_id])?;
        let tokens = tx.execute(
            "UPDATE tokens SET revoked_at = ?3 WHERE zone = ?1 AND workload = ?2 AND revoked_at IS NULL",
            params![name.zone, name.workload, now],
        )?;
        tx.execute(
            "INSERT INTO revocations (serial, spiffe_id, reason, revoked_at, action)
             VALUES (NULL, ?1, ?2, ?3, 'reinstate')",
            params![name.spiffe_id, reason, now],
        )?;
        let seq = tx.last_insert_rowid();
        let detail = format!(
            "seq={seq} id={} lifted={lifted} certificates={} tokens={tokens} reason={reason}",
            name.spiffe_id,
            serials.len()
        );
        append_audit(&tx, now, "identity.reinstated", actor, &detail)?;
        tx.commit()?;
        Ok(Some(Reinstatement { seq, lifted, certificates: serials.len() as u64, tokens: tokens as u64 }))
    }

    fn revocation_head(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| r.get(0))?)
    }

    fn revocation_page(&self, since: i64, now: i64, limit: usize) -> Result<RevocationPage, StoreError> {
        let conn = self.conn();
        // The head first, and only entries up to it: an entry committed between the two
        // queries is left for the next page instead of being skipped over.
        let head: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| r.get(0))?;
        let limit = limit.max(1);
        // A serial whose certificate is unknown to the store is kept: compaction never
        // drops what it cannot prove expired.
        let mut stmt = conn.prepare_cached(
            "SELECT r.seq, r.serial, r.spiffe_id, r.reason, r.revoked_at, r.action
               FROM revocations r LEFT JOIN certificates c ON c.serial = r.serial
              WHERE r.seq > ?1 AND r.seq <= ?2
                AND (r.action = 'reinstate'
                     OR (r.spiffe_id IS NOT NULL AND NOT EXISTS (
                           SELECT 1 FROM revocations x
                            WHERE x.spiffe_id = r.spiffe_id AND x.action = 'reinstate' AND x.seq > r.seq))
                     OR (r.spiffe_id IS NULL AND (c.not_after IS NULL OR c.not_after > ?3)))
              ORDER BY r.seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![since, head, now, (limit + 1) as i64], revocation_row)?;
        let mut entries: Vec<Revocation> = rows.collect::<Result<_, _>>()?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let sequence = match (more, entries.last()) {
            (true, Some(last)) => last.seq,
            _ => head.max(since),
        };
        Ok(RevocationPage { entries, sequence, more })
    }

    fn is_revoked(&self, serial: Option<&Serial>, spiffe_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        if let Some(s) = serial {
            if serial_revocation(&conn, s)?.is_some() {
                return Ok(true);
            }
        }
        Ok(standing(&conn, spiffe_id)?.is_some())
    }

    fn audit(&self, op: &str, actor: &str, detail: &str, now: i64) -> Result<(), StoreError> {
        append_audit(&self.conn(), now, op, actor, detail)
    }

    fn audit_since(&self, seq: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT seq, at, op, actor, detail FROM audit WHERE seq > ?1 ORDER BY seq")?;
        let rows = stmt.query_map([seq], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                at: r.get(1)?,
                op: r.get(2)?,
                actor: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tests here write at (Unix seconds).
    const NOW: i64 = 1_700_000_000;

    fn rec(serial: &str) -> CertRecord {
        CertRecord {
            serial: serial.parse().expect("a hex serial"),
            kind: CertKind::Leaf,
            spiffe_id: "spiffe://example.org/ns/a/sa/b".into(),
            not_before: 1,
            not_after: 2,
            status: CertStatus::Active,
        }
    }

    /// The contract every backend must pass, on file-backed SQLite stores.
    #[test]
    fn sqlite_passes_the_store_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opened = std::cell::Cell::new(0);
        super::super::contract::store_contract(&|| {
            opened.set(opened.get() + 1);
            let path = dir.path().join(format!("contract-{}.db", opened.get()));
            Box::new(SqliteStore::open(&path, true).expect("open"))
        });
    }

    #[test]
    fn records_survive_reopening_and_a_missing_store_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        let store = SqliteStore::open(&db, true).expect("open");
        store.record_issued(&rec("0a"), "test", NOW).expect("first");
        store.record_issued(&rec("0b"), "test", NOW).expect("second");
        // Reopening keeps the records and does not re-run migrations.
        drop(store);
        let store = SqliteStore::open(&db, false).expect("reopen");
        let all = store.certificates().expect("list");
        assert_eq!(all.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["0a", "0b"]);
        let missing = dir.path().join("none.db");
        assert!(matches!(SqliteStore::open(&missing, false), Err(StoreError::Missing(_))));
        assert!(!missing.exists(), "opening never creates a store");
    }

    #[test]
    fn sqlite_errors_become_backend_neutral_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db"), true).expect("open");
        let dup = store.conn().execute(
            "INSERT INTO tokens (hash, zone, workload, expires_at, uses_left, created_at) VALUES ('h', 'a', 'b', 1, 1, 1), ('h', 'a', 'b', 1, 1, 1)",
            [],
        );
        let e = StoreError::from(dup.expect_err("a duplicate primary key"));
        assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
        let check = store.conn().execute(
            "INSERT INTO tokens (hash, zone, workload, expires_at, uses_left, created_at) VALUES ('i', 'a', 'b', 1, -1, 1)",
            [],
        );
        assert!(matches!(StoreError::from(check.expect_err("a CHECK")), StoreError::Backend(_)));
        std::fs::write(dir.path().join("junk.db"), [0x55u8; 4096]).expect("write");
        let e =
            SqliteStore::open(&dir.path().join("junk.db"), false).map(|_| ()).expect_err("not a database");
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    }

    /// A store.db made by the mesh-ca before token ids and reinstatements (schema v2) opens
    /// and is migrated: its tokens get their ids (the hash's first 12 hex characters, as
    /// `Token::id` makes them) and can be revoked, its revocations read as revocations and
    /// stay in force, and a certificate of a revoked identity reads revoked.
    #[test]
    fn a_store_of_schema_v2_is_migrated_and_keeps_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v2.db");
        let token = mesh_identity::token::Token::generate().expect("token");
        {
            let conn = Connection::open(&path).expect("open");
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).expect("v1, v2");
            }
            conn.pragma_update(None, "user_version", 2).expect("pragma");
            conn.execute(
                "INSERT INTO tokens (hash, zone, workload, expires_at, uses_left, created_at)
                 VALUES (?1, 'a', 'b', ?2, 3, ?3)",
                params![token.hash(), NOW + 600, NOW],
            )
            .expect("a v2 token");
            conn.execute(
                "INSERT INTO certificates (serial, kind, spiffe_id, not_before, not_after, status, issued_at)
                 VALUES ('0c', 'leaf', 'spiffe://example.org/ns/a/sa/c', 1, ?1, 'active', 1)",
                [NOW + 600],
            )
            .expect("a v2 certificate");
            conn.execute(
                "INSERT INTO revocations (serial, spiffe_id, reason, revoked_at)
                 VALUES (NULL, 'spiffe://example.org/ns/a/sa/c', 'old', 1)",
                [],
            )
            .expect("a v2 identity revocation");
        }
        let store = SqliteStore::open(&path, false).expect("a v2 store opens");
        let version: i64 =
            store.conn().pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let tokens = store.tokens().expect("tokens");
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].id, token.id(), "the migrated id is the one Token::id gives");
        assert_eq!(tokens[0].revoked_at, None);
        let log = store.revocations_since(0).expect("log");
        assert_eq!(log[0].action, RevocationAction::Revoke);
        assert!(store.is_revoked(None, "spiffe://example.org/ns/a/sa/c").expect("check"));
        assert_eq!(store.certificates().expect("list")[0].status, CertStatus::Revoked);
        assert!(matches!(store.revoke_token(&token.id(), "test", NOW), Ok(TokenRevocation::Revoked(_))));
        let mut batch = [redemption(&token.hash(), "0d")];
        let out = store.redeem_tokens(NOW, &mut batch).expect("redeem");
        assert_eq!(out, [Ok(Err(TokenRejection::Revoked))]);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("pragma");
        drop(conn);
        assert!(matches!(SqliteStore::open(&path, false), Err(StoreError::TooNew { found: 99, .. })));
    }

    fn audit_rows(store: &SqliteStore) -> Vec<(String, String)> {
        let conn = store.conn();
        let mut stmt = conn.prepare("SELECT op, detail FROM audit ORDER BY seq").expect("prepare");
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    }

    fn redemption(hash: &str, serial: &str) -> Redemption<'static> {
        let serial = serial.to_owned();
        Redemption {
            hash: hash.into(),
            actor: "test".into(),
            issue: Box::new(move |_, _| Some(rec(&serial))),
        }
    }

    #[test]
    fn unknown_tokens_write_nothing_and_are_summarised_with_the_next_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        let store = SqliteStore::open(&db, true).expect("open");
        let token = NewToken {
            id: "aa".repeat(6),
            hash: "aa".repeat(32),
            zone: "a".into(),
            workload: "b".into(),
            expires_at: i64::MAX,
            uses: 1,
        };
        store.create_token(&token, "test", NOW).expect("token");
        let wal = std::fs::read(dir.path().join("s.db-wal")).expect("wal");
        let audit = audit_rows(&store);

        let mut batch: Vec<_> = (0..5).map(|i| redemption(&format!("{i:064x}"), "01")).collect();
        let out = store.redeem_tokens(NOW, &mut batch).expect("redeem");
        assert!(out.iter().all(|o| matches!(o, Ok(Err(TokenRejection::Unknown)))), "{out:?}");
        assert_eq!(
            std::fs::read(dir.path().join("s.db-wal")).expect("wal"),
            wal,
            "unknown tokens wrote to the WAL"
        );
        assert_eq!(std::fs::read(&db).expect("db").len(), std::fs::metadata(&db).expect("db").len() as usize);
        assert_eq!(audit_rows(&store), audit, "unknown tokens wrote audit rows");

        // A real redemption, in a batch with one more unknown token: durable as before, and the
        // six unknown ones are summarised in the same commit.
        let mut batch = vec![redemption(&token.hash, "02"), redemption(&"bb".repeat(32), "03")];
        let out = store.redeem_tokens(NOW, &mut batch).expect("redeem");
        assert!(matches!(out[0], Ok(Ok(_))) && matches!(out[1], Ok(Err(TokenRejection::Unknown))), "{out:?}");
        let after = audit_rows(&store);
        assert!(after.iter().any(|(op, _)| op == "token.used"), "{after:?}");
        let summaries: Vec<_> = after
            .iter()
            .filter(|(op, d)| op == "token.rejected" && d.starts_with("unknown count="))
            .collect();
        assert_eq!(summaries.len(), 1, "{after:?}");
        assert!(summaries[0].1.starts_with("unknown count=6 "), "{after:?}");
        // Spent, expired and used-up tokens are real tokens: their rejections stay durable.
        let mut batch = vec![redemption(&token.hash, "04")];
        let out = store.redeem_tokens(NOW, &mut batch).expect("redeem");
        assert!(matches!(out[0], Ok(Err(TokenRejection::UsedUp))), "{out:?}");
        assert!(audit_rows(&store).iter().any(|(op, d)| op == "token.rejected" && d == "used_up"));
    }

    #[test]
    fn unknown_tokens_still_counted_are_summarised_on_drop_at_the_time_they_came() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        let store = SqliteStore::open(&db, true).expect("open");
        let mut batch: Vec<_> = (0..2).map(|i| redemption(&format!("{i:064x}"), "01")).collect();
        store.redeem_tokens(NOW + 5, &mut batch).expect("redeem");
        assert!(store.audit_since(0).expect("audit").is_empty(), "nothing written yet");
        drop(store);
        let trail = SqliteStore::open(&db, false).expect("reopen").audit_since(0).expect("audit");
        let got: Vec<_> = trail.iter().map(|e| (e.at, e.op.as_str(), e.detail.as_str())).collect();
        let detail = format!("unknown count=2 since={}", NOW + 5);
        assert_eq!(got, [(NOW + 5, "token.rejected", detail.as_str())]);
    }

    #[test]
    fn store_files_are_owner_only_whatever_they_were() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("s.db");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let store = SqliteStore::open(&db, true).expect("open");
        store.record_issued(&rec("0a"), "test", NOW).expect("record");
        for f in ["s.db", "s.db-wal", "s.db-shm"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
        drop(store);
        // A store an older mesh-ca left world-readable is narrowed when opened.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _store = SqliteStore::open(&db, false).expect("reopen");
        for f in ["s.db", "s.db-wal", "s.db-shm"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
    }
}
