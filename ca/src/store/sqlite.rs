//! The embedded store: one SQLite file in the CA directory, WAL mode with full sync, so a
//! record is on disk before the answer that depends on it is given, and readers (`list`) never
//! block the issuer. Migrations are numbered and tracked with `PRAGMA user_version`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    CertKind, CertRecord, CertStatus, NewToken, RedeemOutcome, Redemption, Revocation, Store, StoreError,
    TokenInfo, TokenRejection,
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
];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if asked) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        let flags = if create {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let conn = Connection::open_with_flags(path, flags)?;
        // Another mesh-ca process (serve, revoke) may hold the write lock for a moment.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A poisoned lock means a panic mid-call; SQLite's transaction was rolled back, so
        // the connection itself is still consistent.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
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

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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

type CertRow = (String, String, String, i64, i64, String);

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
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
fn insert_cert(tx: &Connection, rec: &CertRecord, actor: &str, op: &str) -> Result<(), StoreError> {
    let exists: Option<i64> = tx
        .query_row("SELECT 1 FROM certificates WHERE serial = ?1", [&rec.serial], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::DuplicateSerial(rec.serial.clone()));
    }
    let at = now();
    tx.execute(
        "INSERT INTO certificates (serial, kind, spiffe_id, not_before, not_after, status, issued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            rec.serial,
            kind_str(rec.kind),
            rec.spiffe_id,
            rec.not_before,
            rec.not_after,
            status_str(rec.status),
            at
        ],
    )?;
    let detail = format!("{} serial={} id={}", kind_str(rec.kind), rec.serial, rec.spiffe_id);
    tx.execute(
        "INSERT INTO audit (at, op, actor, detail) VALUES (?1, ?2, ?3, ?4)",
        params![at, op, actor, detail],
    )?;
    Ok(())
}

const CERT_COLUMNS: &str = "serial, kind, spiffe_id, not_before, not_after, status";

/// One redemption inside an open transaction or savepoint; see `Store::redeem_tokens`.
fn redeem_in(
    conn: &Connection,
    hash: &str,
    now_s: i64,
    actor: &str,
    issue: &mut dyn FnMut(&str, &str) -> Option<CertRecord>,
) -> RedeemOutcome {
    let row: Option<(String, String, i64, i64)> = conn
        .query_row("SELECT zone, workload, expires_at, uses_left FROM tokens WHERE hash = ?1", [hash], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let rejection = match &row {
        None => Some(TokenRejection::Unknown),
        Some((_, _, expires_at, _)) if *expires_at <= now_s => Some(TokenRejection::Expired),
        Some((_, _, _, 0)) => Some(TokenRejection::UsedUp),
        Some(_) => None,
    };
    let reject = |why: TokenRejection, detail: String| -> RedeemOutcome {
        conn.execute(
            "INSERT INTO audit (at, op, actor, detail) VALUES (?1, 'token.rejected', ?2, ?3)",
            params![now(), actor, detail],
        )?;
        Ok(Err(why))
    };
    if let Some(why) = rejection {
        return reject(why, why.as_str().to_owned());
    }
    let Some((zone, workload, _, _)) = row else { return Ok(Err(TokenRejection::Unknown)) };
    let Some(rec) = issue(&zone, &workload) else {
        // Signing failed: nothing is spent or recorded (the savepoint rolls back).
        return Err(StoreError::Corrupt("issuing for a token failed".into()));
    };
    let revoked: Option<i64> = conn
        .query_row("SELECT 1 FROM revocations WHERE spiffe_id = ?1 LIMIT 1", [&rec.spiffe_id], |r| r.get(0))
        .optional()?;
    if revoked.is_some() {
        return reject(TokenRejection::IdentityRevoked, format!("identity_revoked id={}", rec.spiffe_id));
    }
    conn.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = ?1", [hash])?;
    insert_cert(conn, &rec, actor, "token.used")?;
    Ok(Ok(rec))
}

impl Store for SqliteStore {
    fn record_issued(&self, rec: &CertRecord, actor: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_cert(&tx, rec, actor, "cert.issued")?;
        tx.commit()?;
        Ok(())
    }

    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {CERT_COLUMNS} FROM certificates ORDER BY issued_at, rowid"))?;
        let rows = stmt.query_map([], cert_row)?;
        rows.map(|r| cert_record(r?)).collect()
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT zone, workload, uses_left, expires_at, created_at FROM tokens ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenInfo {
                zone: r.get(0)?,
                workload: r.get(1)?,
                uses_left: r.get(2)?,
                expires_at: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"),
                [serial],
                cert_row,
            )
            .optional()?;
        row.map(cert_record).transpose()
    }

    fn create_token(&self, t: &NewToken, actor: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute(
            "INSERT INTO tokens (hash, zone, workload, expires_at, uses_left, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.hash, t.zone, t.workload, t.expires_at, t.uses, at],
        )?;
        let detail =
            format!("zone={} workload={} uses={} expires_at={}", t.zone, t.workload, t.uses, t.expires_at);
        tx.execute(
            "INSERT INTO audit (at, op, actor, detail) VALUES (?1, 'token.created', ?2, ?3)",
            params![at, actor, detail],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn redeem_tokens(
        &self,
        now_s: i64,
        batch: &mut [Redemption<'_>],
    ) -> Result<Vec<RedeemOutcome>, StoreError> {
        let mut conn = self.conn();
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(batch.len());
        for r in batch.iter_mut() {
            // A savepoint per redemption: a failure undoes only its own writes.
            let sp = tx.savepoint()?;
            let res = redeem_in(&sp, &r.hash, now_s, &r.actor, &mut *r.issue);
            if res.is_ok() {
                sp.commit()?;
            }
            out.push(res);
        }
        tx.commit()?;
        Ok(out)
    }

    fn revoke(
        &self,
        serial: Option<&str>,
        spiffe_id: Option<&str>,
        reason: &str,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        tx.execute(
            "INSERT INTO revocations (serial, spiffe_id, reason, revoked_at) VALUES (?1, ?2, ?3, ?4)",
            params![serial, spiffe_id, reason, at],
        )?;
        let seq = tx.last_insert_rowid();
        tx.execute(
            "UPDATE certificates SET status = 'revoked' WHERE serial = ?1 OR spiffe_id = ?2",
            params![serial, spiffe_id],
        )?;
        let detail = format!(
            "seq={seq} serial={} id={} reason={reason}",
            serial.unwrap_or("-"),
            spiffe_id.unwrap_or("-")
        );
        tx.execute(
            "INSERT INTO audit (at, op, actor, detail) VALUES (?1, 'cert.revoked', ?2, ?3)",
            params![at, actor, detail],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, serial, spiffe_id, reason, revoked_at FROM revocations WHERE seq > ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([seq], |r| {
            Ok(Revocation {
                seq: r.get(0)?,
                serial: r.get(1)?,
                spiffe_id: r.get(2)?,
                reason: r.get(3)?,
                revoked_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn is_revoked(&self, serial: &str, spiffe_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let hit: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM revocations WHERE serial = ?1 OR spiffe_id = ?2 LIMIT 1",
                params![serial, spiffe_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(hit.is_some())
    }

    fn audit(&self, op: &str, actor: &str, detail: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (at, op, actor, detail) VALUES (?1, ?2, ?3, ?4)",
            params![now(), op, actor, detail],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(serial: &str) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            kind: CertKind::Leaf,
            spiffe_id: "spiffe://example.org/ns/a/sa/b".into(),
            not_before: 1,
            not_after: 2,
            status: CertStatus::Active,
        }
    }

    #[test]
    fn records_and_refuses_duplicate_serials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("s.db"), true).expect("open");
        store.record_issued(&rec("0a"), "test").expect("first");
        assert!(matches!(store.record_issued(&rec("0a"), "test"), Err(StoreError::DuplicateSerial(_))));
        store.record_issued(&rec("0b"), "test").expect("second");
        let all = store.certificates().expect("list");
        assert_eq!(all.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), ["0a", "0b"]);
        // Reopening keeps the records and does not re-run migrations.
        drop(store);
        let store = SqliteStore::open(&dir.path().join("s.db"), false).expect("reopen");
        assert_eq!(store.certificates().expect("list").len(), 2);
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
}
