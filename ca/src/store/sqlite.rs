//! The embedded store: one SQLite file in the CA directory, WAL mode with full sync, so a
//! record is on disk before the answer that depends on it is given, and readers (`list`) never
//! block the issuer. Migrations are numbered and tracked with `PRAGMA user_version`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{CertKind, CertRecord, CertStatus, Store, StoreError};

/// Each entry upgrades the schema by one version. Never edit a released entry: add one.
/// Tokens and revocations arrive with the CA server; they get tables of their own then.
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

impl Store for SqliteStore {
    fn record_issued(&self, rec: &CertRecord, actor: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM certificates WHERE serial = ?1", [&rec.serial], |r| r.get(0))
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::DuplicateSerial(rec.serial.clone()));
        }
        let status = match rec.status {
            CertStatus::Active => "active",
            CertStatus::Revoked => "revoked",
        };
        let at = now();
        tx.execute(
            "INSERT INTO certificates (serial, kind, spiffe_id, not_before, not_after, status, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![rec.serial, kind_str(rec.kind), rec.spiffe_id, rec.not_before, rec.not_after, status, at],
        )?;
        let detail = format!("{} serial={} id={}", kind_str(rec.kind), rec.serial, rec.spiffe_id);
        tx.execute(
            "INSERT INTO audit (at, op, actor, detail) VALUES (?1, 'cert.issued', ?2, ?3)",
            params![at, actor, detail],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn certificates(&self) -> Result<Vec<CertRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT serial, kind, spiffe_id, not_before, not_after, status
             FROM certificates ORDER BY issued_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (serial, kind, spiffe_id, not_before, not_after, status) = row?;
            let kind = match kind.as_str() {
                "root" => CertKind::Root,
                "intermediate" => CertKind::Intermediate,
                "leaf" => CertKind::Leaf,
                other => return Err(StoreError::Corrupt(format!("certificate {serial} has kind {other:?}"))),
            };
            let status = match status.as_str() {
                "active" => CertStatus::Active,
                "revoked" => CertStatus::Revoked,
                other => {
                    return Err(StoreError::Corrupt(format!("certificate {serial} has status {other:?}")))
                }
            };
            out.push(CertRecord { serial, kind, spiffe_id, not_before, not_after, status });
        }
        Ok(out)
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
