//! The authority: a CA directory's layout, creating one (`init`), opening one, and issuing
//! leaf X.509-SVIDs from the CA's own template.
//!
//! A leaf is built only from typed, checked values (identity, TTL within bounds, DNS names);
//! nothing a requester sends is copied into a certificate. Every issued certificate is
//! recorded durably in the store before it is returned.
//!
//! Time comes from the directory's [`Clock`] (the system clock unless a test injects one with
//! [`CaDir::with_clock`] or [`Authority::open_with_clock`]), read once per operation: the
//! leaf's validity, the token and expiry checks and the store's audit times of one operation
//! all use that one reading.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::{SpiffeId, TrustDomain, Ttl, Workload, Zone};
use rcgen::{CertificateParams, Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use mesh_identity::clock::{Clock, SystemClock};
use mesh_identity::profile::{ca_server_id, is_reserved_zone};
use mesh_identity::template::{self, LeafKind, NOT_BEFORE_BACKDATE};

use crate::error::CaError;
use crate::fsutil::{self, OutFile};
use crate::keys::{self, Passphrase};
use crate::settings::{Settings, CA_TTL_CEILING};
use crate::store::{
    self, CertKind, CertRecord, CertStatus, IdentityName, IdentityRecord, NewToken, Redemption,
    Reinstatement, RevokeOutcome, Store, StoreConfig, StoreError, TokenRejection, TokenRevocation,
};
use mesh_identity::pem;
use mesh_identity::token::{Token, MAX_TOKEN_TTL, MAX_TOKEN_USES, TOKEN_ID_LEN};
use mesh_identity::Serial;

/// Names of the files in a CA directory.
const SETTINGS: &str = "ca.toml";
const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root.key.pem";
const INTER_CERT: &str = "intermediate.pem";
const INTER_KEY: &str = "intermediate.key.pem";
const STORE: &str = "store.db";

/// What `init` needs besides the directory and passphrase.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub settings: Settings,
    pub root_ttl: Ttl,
    pub intermediate_ttl: Ttl,
}

/// The public side of a CA directory: settings, certificates and the store. Opening it
/// needs no passphrase (`list`, `bundle`, and later the sidecar's trust bundle).
pub struct CaDir {
    path: PathBuf,
    pub settings: Settings,
    pub root: CertificateDer<'static>,
    pub intermediate: CertificateDer<'static>,
    /// Where every operation on this directory reads the time.
    clock: Arc<dyn Clock>,
}

/// A CA directory opened with its intermediate key: it can issue.
pub struct Authority {
    dir: CaDir,
    issuer: Issuer<'static, KeyPair>,
    /// The intermediate's validity: no leaf starts before or outlives its issuer.
    issuer_not_before: OffsetDateTime,
    issuer_not_after: OffsetDateTime,
    store: Box<dyn Store>,
}

/// A leaf the authority has issued and recorded.
pub struct IssuedLeaf {
    pub id: SpiffeId,
    pub der: CertificateDer<'static>,
    pub serial: Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CaDir {
    /// Opens an initialised CA directory, or says what is missing.
    pub fn open(path: &Path) -> Result<Self, CaError> {
        if !path.is_dir() {
            return Err(CaError::CaDir(format!(
                "{}: no such CA directory (create one with `mesh-ca init --dir {0} --trust-domain ...`)",
                path.display()
            )));
        }
        let settings_path = path.join(SETTINGS);
        if !settings_path.exists() {
            return Err(CaError::CaDir(format!(
                "{}: not a CA directory ({SETTINGS} is missing; run `mesh-ca init` first)",
                path.display()
            )));
        }
        let settings = Settings::load(&settings_path)?;
        let root = pem::read_one_cert(&path.join(ROOT_CERT))?;
        let intermediate = pem::read_one_cert(&path.join(INTER_CERT))?;
        Ok(Self { path: path.to_owned(), settings, root, intermediate, clock: Arc::new(SystemClock) })
    }

    /// The same directory, reading the time from `clock` (tests move it instead of sleeping).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self { clock, ..self }
    }

    /// The clock this directory's operations read.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the certificate store `ca.toml` names (never creating it: a CA without one is
    /// broken).
    pub fn store(&self) -> Result<Box<dyn Store>, CaError> {
        store::open(&self.settings.store.in_dir(&self.path)).map_err(|e| match e {
            StoreError::Missing(what) => CaError::CaDir(what),
            e => e.into(),
        })
    }

    /// The trust bundle: the certificates a peer must trust, as PEM.
    pub fn bundle_pem(&self) -> String {
        pem::cert(&self.root)
    }
}

impl Authority {
    /// Creates a new trust domain in `dir`: root and intermediate keys and certificates, the
    /// settings file and the store. Refuses an existing CA. On error, removes what it made.
    pub fn init(dir: &Path, opts: &InitOptions, pass: Option<&Passphrase>) -> Result<CaDir, CaError> {
        Self::init_with_clock(dir, opts, pass, Arc::new(SystemClock))
    }

    /// [`Authority::init`] with the CA certificates' validity starting at `clock`'s now; the
    /// directory returned reads that clock.
    pub fn init_with_clock(
        dir: &Path,
        opts: &InitOptions,
        pass: Option<&Passphrase>,
        clock: Arc<dyn Clock>,
    ) -> Result<CaDir, CaError> {
        if dir.join(SETTINGS).exists() || dir.join(ROOT_CERT).exists() || dir.join(STORE).exists() {
            return Err(CaError::CaDir(format!(
                "{}: already holds a CA; refusing to overwrite it (use another --dir)",
                dir.display()
            )));
        }
        check_ca_ttls(opts)?;
        let created = if dir.exists() {
            let non_empty = fs::read_dir(dir).map_err(|e| CaError::io(dir, e))?.next().is_some();
            if non_empty {
                return Err(CaError::CaDir(format!(
                    "{}: exists and is not empty; init needs a new or empty directory",
                    dir.display()
                )));
            }
            false
        } else {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| CaError::io(dir, e))?;
            true
        };
        // 0700 whatever the umask, and also for a directory that existed before (mkdir and
        // its parents' defaults would leave it 0755): it holds the keys and the store.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| CaError::io(dir, e))?;
        let result = init_files(dir, opts, pass, clock.now());
        if result.is_err() {
            for name in [SETTINGS, ROOT_CERT, ROOT_KEY, INTER_CERT, INTER_KEY] {
                let _ = fs::remove_file(dir.join(name));
            }
            // The store file and the two SQLite adds beside it.
            let StoreConfig::Sqlite(db) = opts.settings.store.in_dir(dir);
            for suffix in ["", "-wal", "-shm"] {
                let mut name = db.clone().into_os_string();
                name.push(suffix);
                let _ = fs::remove_file(name);
            }
            if created {
                let _ = fs::remove_dir_all(dir);
            }
        }
        result?;
        Ok(CaDir::open(dir)?.with_clock(clock))
    }

    /// [`Authority::open`] reading the time from `clock` instead of the directory's.
    pub fn open_with_clock(
        dir: CaDir,
        pass: Option<&Passphrase>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        Self::open(dir.with_clock(clock), pass)
    }

    /// Opens a CA directory for issuing: decrypts the intermediate key. Time is read from the
    /// directory's clock.
    pub fn open(dir: CaDir, pass: Option<&Passphrase>) -> Result<Self, CaError> {
        let key_path = dir.path.join(INTER_KEY);
        let key = keys::read(&key_path, pass)?;
        let inter = mesh_identity::profile::parse(&dir.intermediate)
            .map_err(|v| CaError::bad_file(&dir.path.join(INTER_CERT), &v.to_string()))?;
        if inter.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::bad_file(&key_path, "does not belong to intermediate.pem"));
        }
        let issuer_not_before = inter.validity().not_before.to_datetime();
        let issuer_not_after = inter.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&dir.intermediate, key).map_err(|e| {
            CaError::bad_file(&dir.path.join(INTER_CERT), &format!("unusable as issuer: {e}"))
        })?;
        let store = dir.store()?;
        Ok(Self { dir, issuer, issuer_not_before, issuer_not_after, store })
    }

    pub fn dir(&self) -> &CaDir {
        &self.dir
    }

    pub fn settings(&self) -> &Settings {
        &self.dir.settings
    }

    /// The clock the authority reads (once per operation).
    pub fn clock(&self) -> &dyn Clock {
        self.dir.clock()
    }

    /// Issues and records a leaf X.509-SVID for `id` over `public_key`.
    /// `actor` names who asked, for the audit trail.
    pub fn issue(
        &self,
        id: &SpiffeId,
        ttl: Option<Ttl>,
        dns: &[String],
        public_key: &impl PublicKeyData,
        actor: &str,
    ) -> Result<IssuedLeaf, CaError> {
        let now = self.clock().now();
        if let Some(seq) = identity_record(self.store(), id)?.revoked {
            return Err(CaError::Refused(revoked_identity_refusal(id, seq, "gets no certificate")));
        }
        let (leaf, record) = self.build_leaf(id, ttl, dns, public_key, LeafKind::Workload, now)?;
        self.store.record_issued(&record, actor, now.unix_timestamp())?;
        Ok(leaf)
    }

    /// Issues and records the CA server's own certificate: the CA's identity in the reserved
    /// zone, the maximum leaf TTL, and the CA server marker that no workload certificate has.
    pub fn issue_ca_server(&self, public_key: &impl PublicKeyData) -> Result<IssuedLeaf, CaError> {
        let id = ca_server_id(&self.settings().trust_domain);
        let ttl = Some(self.settings().max_leaf_ttl);
        let now = self.clock().now();
        let (leaf, record) = self.build_leaf(&id, ttl, &[], public_key, LeafKind::CaServer, now)?;
        self.store.record_issued(&record, "serve", now.unix_timestamp())?;
        Ok(leaf)
    }

    /// Enrollment: a join token names the identity, the CSR gives only the key. Spending the
    /// token and recording the certificate happen in one transaction, which also refuses a
    /// revoked identity.
    pub fn enroll(
        &self,
        token: &Token,
        csr: &[u8],
        ttl: Option<Ttl>,
        actor: &str,
    ) -> Result<IssuedLeaf, EnrollError> {
        let public_key = mesh_identity::csr::public_key(csr).map_err(EnrollError::Csr)?;
        let job = EnrollJob { token: token.clone(), public_key, ttl, actor: actor.to_owned() };
        self.enroll_batch(vec![job])
            .pop()
            .unwrap_or_else(|| Err(EnrollError::Ca(CaError::Crypto("empty batch".into()))))
    }

    /// Enrolls a batch with one store transaction (group commit): under load, concurrent
    /// enrollments share one sync to disk instead of paying one each. Results are in order.
    pub fn enroll_batch(&self, jobs: Vec<EnrollJob>) -> Vec<Result<IssuedLeaf, EnrollError>> {
        let n = jobs.len();
        let now = self.clock().now();
        // Per job: the leaf the closure signed, or why it could not.
        let mut signed: Vec<Option<IssuedLeaf>> = (0..n).map(|_| None).collect();
        let mut failed: Vec<Option<CaError>> = (0..n).map(|_| None).collect();
        let td = self.settings().trust_domain.clone();
        let outcomes = {
            let mut batch: Vec<Redemption<'_>> = Vec::with_capacity(n);
            for ((job, leaf_slot), fail_slot) in jobs.iter().zip(signed.iter_mut()).zip(failed.iter_mut()) {
                let td = td.clone();
                batch.push(Redemption {
                    hash: job.token.hash(),
                    actor: job.actor.clone(),
                    issue: Box::new(move |zone, workload| {
                        let id = match (zone.parse(), workload.parse()) {
                            (Ok(z), Ok(w)) => SpiffeId::new(td.clone(), z, w),
                            _ => {
                                *fail_slot = Some(CaError::Refused(format!(
                                    "token names an invalid identity {zone}/{workload}"
                                )));
                                return None;
                            }
                        };
                        match self.build_leaf(&id, job.ttl, &[], &job.public_key, LeafKind::Workload, now) {
                            Ok((leaf, record)) => {
                                *leaf_slot = Some(leaf);
                                Some(record)
                            }
                            Err(e) => {
                                *fail_slot = Some(e);
                                None
                            }
                        }
                    }),
                });
            }
            self.store.redeem_tokens(now.unix_timestamp(), &mut batch)
        };
        let outcomes = match outcomes {
            Ok(o) => o,
            // The transaction failed as a whole: nothing was recorded, so nothing is handed out.
            Err(e) => return (0..n).map(|_| Err(EnrollError::Ca(CaError::Store(e.clone())))).collect(),
        };
        outcomes
            .into_iter()
            .zip(signed.into_iter().zip(failed))
            .map(|(outcome, (leaf, failure))| match outcome {
                Ok(Ok(_)) => leaf
                    .ok_or_else(|| EnrollError::Ca(CaError::Crypto("issued without a certificate".into()))),
                Ok(Err(TokenRejection::IdentityRevoked)) => Err(EnrollError::Revoked),
                Ok(Err(rejection)) => Err(EnrollError::Token(rejection)),
                Err(e) => Err(EnrollError::Ca(failure.unwrap_or(CaError::Store(e)))),
            })
            .collect()
    }

    /// Renewal: the caller proved `id` and `serial` with its current certificate over mutual
    /// TLS; it gets a new certificate for the same identity over a new key. The current
    /// certificate must be on record, active and unexpired now (the authority's clock): an
    /// expired one is refused however the connection was made (a resumed TLS session, for
    /// one, carries no fresh proof of validity).
    pub fn renew(
        &self,
        id: &SpiffeId,
        serial: &Serial,
        csr: &[u8],
        ttl: Option<Ttl>,
        actor: &str,
    ) -> Result<IssuedLeaf, EnrollError> {
        let at = self.clock().now();
        let now = at.unix_timestamp();
        let public_key = mesh_identity::csr::public_key(csr).map_err(EnrollError::Csr)?;
        if self.store_revoked(Some(serial), id).map_err(EnrollError::Ca)? {
            return Err(EnrollError::Revoked);
        }
        // Only certificates this CA issued and recorded renew: a leaf signed with a copied
        // intermediate key, but never recorded, is refused.
        match self.store.certificate(serial).map_err(|e| EnrollError::Ca(e.into()))? {
            Some(rec) if rec.status == CertStatus::Active && rec.spiffe_id == id.to_string() => {
                if rec.not_after < now {
                    return Err(EnrollError::Expired);
                }
            }
            Some(_) => return Err(EnrollError::Revoked),
            None => {
                return Err(EnrollError::Ca(CaError::Refused(format!(
                    "certificate {serial} is not on record at this CA"
                ))))
            }
        }
        let (leaf, record) =
            self.build_leaf(id, ttl, &[], &public_key, LeafKind::Workload, at).map_err(EnrollError::Ca)?;
        self.store.record_issued(&record, actor, now).map_err(|e| EnrollError::Ca(e.into()))?;
        Ok(leaf)
    }

    /// Whether a serial (if given) or the identity is on the revocation list.
    pub fn store_revoked(&self, serial: Option<&Serial>, id: &SpiffeId) -> Result<bool, CaError> {
        Ok(self.store.is_revoked(serial, &id.to_string())?)
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn build_leaf(
        &self,
        id: &SpiffeId,
        ttl: Option<Ttl>,
        dns: &[String],
        public_key: &impl PublicKeyData,
        kind: LeafKind,
        now: OffsetDateTime,
    ) -> Result<(IssuedLeaf, CertRecord), CaError> {
        let settings = self.settings();
        if id.trust_domain() != &settings.trust_domain {
            return Err(CaError::Refused(format!(
                "{id} is not in this CA's trust domain {}",
                settings.trust_domain
            )));
        }
        // The reserved zone holds the CA's own identity, which sidecars trust to hand out
        // certificates: no workload path (issue, enroll, renew) may mint it.
        if kind == LeafKind::Workload && is_reserved_zone(id.zone()) {
            return Err(CaError::Refused(reserved_zone_refusal(id.zone())));
        }
        let ttl = settings.leaf_ttl(ttl)?;
        let not_before = (now - NOT_BEFORE_BACKDATE).max(self.issuer_not_before);
        let mut not_after = now + ttl.as_duration();
        if not_after > self.issuer_not_after {
            not_after = self.issuer_not_after;
            if not_after - now < settings.min_leaf_ttl.as_duration() {
                return Err(CaError::Refused(format!(
                    "the intermediate CA expires at {}; rotate it before issuing more",
                    self.issuer_not_after
                )));
            }
        }
        let serial = mesh_identity::random::serial()?;
        let params = template::leaf(id, dns, &serial, not_before, not_after, kind)
            .map_err(|e| CaError::Refused(e.0))?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Crypto(format!("signing the leaf: {e}")))?;
        let serial = Serial::from_der(&serial);
        let record = CertRecord {
            serial: serial.clone(),
            kind: CertKind::Leaf,
            spiffe_id: id.to_string(),
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
            status: CertStatus::Active,
        };
        Ok((IssuedLeaf { id: id.clone(), der: cert.der().clone(), serial, not_before, not_after }, record))
    }

    /// The chain a workload presents: leaf, then the intermediate.
    pub fn chain_pem(&self, leaf: &CertificateDer<'_>) -> String {
        pem::cert(leaf) + &pem::cert(&self.dir.intermediate)
    }
}

/// What the store knows of `id`.
fn identity_record(store: &dyn Store, id: &SpiffeId) -> Result<IdentityRecord, CaError> {
    let spiffe_id = id.to_string();
    let name =
        IdentityName { spiffe_id: &spiffe_id, zone: id.zone().as_str(), workload: id.workload().as_str() };
    Ok(store.identity(&name)?)
}

/// Why `issue` or `token create` will not serve a revoked identity, and how to undo it.
fn revoked_identity_refusal(id: &SpiffeId, seq: i64, what: &str) -> String {
    format!(
        "{id} is revoked (#{seq}) and {what}; if that revocation was a mistake, lift it with \
         `mesh-ca reinstate --zone {} --workload {}` (its old certificates stay revoked)",
        id.zone(),
        id.workload()
    )
}

fn reserved_zone_refusal(zone: &Zone) -> String {
    format!("zone {zone} is reserved for the CA's own identity; choose another zone for workloads")
}

/// Why an enrollment or renewal was refused. Token rejections are deliberately vague to the
/// caller (the audit has the detail).
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Csr(mesh_identity::csr::CsrError),
    #[error("the join token is not valid")]
    Token(TokenRejection),
    #[error("the certificate or its identity is revoked")]
    Revoked,
    #[error("the certificate has expired; an expired certificate cannot renew (enroll again)")]
    Expired,
    #[error("{0}")]
    Ca(CaError),
}

impl CaDir {
    /// Creates a join token for `zone/workload`; returns the secret, which is shown once.
    pub fn create_token(
        &self,
        zone: &Zone,
        workload: &Workload,
        ttl: Ttl,
        uses: u32,
    ) -> Result<Token, CaError> {
        if is_reserved_zone(zone) {
            return Err(CaError::Refused(reserved_zone_refusal(zone)));
        }
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(CaError::Refused(format!("--uses {uses} must lie within 1..={MAX_TOKEN_USES}")));
        }
        if ttl > MAX_TOKEN_TTL {
            return Err(CaError::Refused(format!(
                "--ttl {ttl} is longer than a join token may live ({MAX_TOKEN_TTL})"
            )));
        }
        self.settings.check_token(ttl, uses)?;
        let store = self.store()?;
        let id = SpiffeId::new(self.settings.trust_domain.clone(), zone.clone(), workload.clone());
        if let Some(seq) = identity_record(store.as_ref(), &id)?.revoked {
            return Err(CaError::Refused(revoked_identity_refusal(&id, seq, "gets no join token")));
        }
        let token = Token::generate()?;
        let now = self.clock.unix();
        // Checked although the TTL is bounded above: an expiry that wrapped would be in the past
        // (a token refused at once) or, worse, far in the future.
        let expires_at = i64::try_from(ttl.as_secs())
            .ok()
            .and_then(|s| now.checked_add(s))
            .ok_or_else(|| CaError::Refused(format!("--ttl {ttl} is out of range")))?;
        store.create_token(
            &NewToken {
                id: token.id(),
                hash: token.hash(),
                zone: zone.to_string(),
                workload: workload.to_string(),
                expires_at,
                uses,
            },
            "cli",
            now,
        )?;
        Ok(token)
    }

    /// Revokes a certificate by serial, or every certificate of an identity. Returns what was
    /// done: a new log position, or the one that revoked the target already (nothing is
    /// written then). A serial the CA never issued is refused, and so is a CA certificate:
    /// sidecars check the revocation list against leaves only, so an entry for the root or
    /// intermediate would be reported as done and change nothing. Those are taken out of
    /// service by rotation (README, "Rotating the intermediate or root"). An identity the CA
    /// never issued a certificate or a join token for is refused unless `force`: a typo would
    /// otherwise ban a name nobody meant.
    pub fn revoke(&self, target: &RevokeTarget, reason: &str, force: bool) -> Result<RevokeOutcome, CaError> {
        let mut out = self.revoke_many(std::slice::from_ref(target), reason, force)?;
        out.pop().ok_or_else(|| CaError::Refused("nothing to revoke".into()))
    }

    /// Revokes every target in one transaction: all of them, or (on any refusal) none.
    /// Targets are checked as [`CaDir::revoke`] checks them; one outcome per target, in order
    /// (a target revoked already, or named twice, is [`RevokeOutcome::AlreadyRevoked`]).
    pub fn revoke_many(
        &self,
        targets: &[RevokeTarget],
        reason: &str,
        force: bool,
    ) -> Result<Vec<RevokeOutcome>, CaError> {
        if targets.is_empty() {
            return Err(CaError::Refused("nothing to revoke".into()));
        }
        let store = self.store()?;
        let now = self.clock.unix();
        let ids: Vec<Option<String>> = targets
            .iter()
            .map(|t| match t {
                RevokeTarget::Identity(id) => Some(id.to_string()),
                RevokeTarget::Serial(_) => None,
            })
            .collect();
        let mut rows = Vec::with_capacity(targets.len());
        for (t, id) in targets.iter().zip(&ids) {
            match t {
                RevokeTarget::Serial(serial) => match store.certificate(serial)? {
                    None => {
                        return Err(CaError::Refused(format!(
                            "--serial {serial}: this CA issued no such certificate; nothing was revoked"
                        )))
                    }
                    Some(c) if c.kind != CertKind::Leaf => {
                        return Err(CaError::Refused(ca_cert_refusal(serial, c.kind)))
                    }
                    Some(_) => rows.push((Some(serial), None)),
                },
                // Every certificate the CA server will ever present has this identity, and
                // an identity revocation stands until someone notices and reinstates it:
                // revoking it would cut every sidecar off from the CA. A stolen serving key
                // is revoked by its serial.
                RevokeTarget::Identity(i) if is_reserved_zone(i.zone()) => {
                    return Err(CaError::Refused(format!(
                        "{i} is the CA server's own identity; revoking it would cut every sidecar off \
                         from the CA for good, so nothing was revoked. To take a stolen CA serving key \
                         out of service, revoke its serial (mesh-ca list shows it): the CA then \
                         issues itself a new certificate at once"
                    )))
                }
                RevokeTarget::Identity(i) => {
                    if !force {
                        let known = identity_record(store.as_ref(), i)?;
                        if known.certificates == 0 && known.tokens == 0 && known.revoked.is_none() {
                            return Err(CaError::Refused(format!(
                                "{i} has never had a certificate or a join token at this CA (a typo?); \
                                 nothing was revoked. `mesh-ca list` shows the identities it knows; to \
                                 revoke this one before it exists, add --force"
                            )));
                        }
                    }
                    rows.push((None, id.as_deref()))
                }
            }
        }
        Ok(store.revoke_batch(&rows, reason, "cli", now)?)
    }

    /// Lifts the revocation of `zone/workload` (audited): it may be issued certificates and
    /// join tokens again. Its certificates and tokens from before stay revoked (see
    /// [`Store::reinstate`]). `None` when it is not revoked (nothing changed).
    pub fn reinstate(
        &self,
        zone: &Zone,
        workload: &Workload,
        reason: &str,
    ) -> Result<Option<Reinstatement>, CaError> {
        let id = SpiffeId::new(self.settings.trust_domain.clone(), zone.clone(), workload.clone());
        let spiffe_id = id.to_string();
        let name = IdentityName { spiffe_id: &spiffe_id, zone: zone.as_str(), workload: workload.as_str() };
        Ok(self.store()?.reinstate(&name, reason, "cli", self.clock.unix())?)
    }

    /// Takes the join token `id` (as `mesh-ca token list` shows it) out of use (audited).
    /// Refuses an id that is malformed or names no token.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRevocation, CaError> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() != TOKEN_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CaError::Refused(format!(
                "{id:?} is not a token id ({TOKEN_ID_LEN} hex characters, as `mesh-ca token list` shows them)"
            )));
        }
        match self.store()?.revoke_token(&id, "cli", self.clock.unix())? {
            TokenRevocation::Unknown => Err(CaError::Refused(format!(
                "no join token has the id {id}; `mesh-ca token list` shows them"
            ))),
            other => Ok(other),
        }
    }
}

/// Why `revoke` will not take a CA certificate: what it is, that nothing happened, and what
/// to do instead.
fn ca_cert_refusal(serial: &Serial, kind: CertKind) -> String {
    let what = if kind == CertKind::Root { "the root" } else { "the intermediate" };
    format!(
        "--serial {serial} is {what} CA certificate, which the revocation list cannot take out of \
         service; nothing was revoked. Rotate it instead: see \"Rotating the intermediate or root\" \
         in the README"
    )
}

/// One enrollment of a batch: a token and the key from an already checked CSR.
pub struct EnrollJob {
    pub token: Token,
    pub public_key: rcgen::SubjectPublicKeyInfo,
    pub ttl: Option<Ttl>,
    pub actor: String,
}

/// What `revoke` takes out of service.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One certificate ([`RevokeTarget::serial`] makes one from what was typed).
    Serial(Serial),
    Identity(SpiffeId),
}

impl RevokeTarget {
    /// The certificate with the serial `typed`, written as `list` shows it or as other tools
    /// print it (see [`Serial::parse`]).
    pub fn serial(typed: &str) -> Result<Self, CaError> {
        Serial::parse(typed)
            .map(Self::Serial)
            .map_err(|_| CaError::Refused(format!("--serial {typed}: not a hexadecimal serial number")))
    }
}

/// Refuses CA lifetimes beyond [`CA_TTL_CEILING`] (before anything is created), and an
/// intermediate that would outlive its root.
fn check_ca_ttls(opts: &InitOptions) -> Result<(), CaError> {
    for (flag, ttl) in [("--root-ttl", opts.root_ttl), ("--intermediate-ttl", opts.intermediate_ttl)] {
        if ttl > CA_TTL_CEILING {
            return Err(CaError::Refused(format!(
                "{flag} {ttl} is longer than the longest CA lifetime, {CA_TTL_CEILING} (50 years)"
            )));
        }
    }
    if opts.intermediate_ttl > opts.root_ttl {
        return Err(CaError::Refused("--intermediate-ttl must not exceed --root-ttl".into()));
    }
    Ok(())
}

fn ca_params(
    td: &TrustDomain,
    cn: &str,
    ttl: Ttl,
    path_len: u8,
    now: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    // Checked: `check_ca_ttls` bounds the TTL, and this keeps a caller that skipped it from
    // panicking in `time`'s arithmetic.
    let not_after = time::Duration::try_from(ttl.as_duration())
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| CaError::Refused(format!("a CA lifetime of {ttl} ends past the year 9999")))?;
    template::ca(td, cn, &mesh_identity::random::serial()?, now - NOT_BEFORE_BACKDATE, not_after, path_len)
        .map_err(|e| CaError::Refused(e.0))
}

fn ca_record(der: &CertificateDer<'_>, kind: CertKind, td: &TrustDomain) -> Result<CertRecord, CaError> {
    let cert = mesh_identity::profile::parse(der).map_err(|v| CaError::Crypto(v.to_string()))?;
    Ok(CertRecord {
        serial: Serial::from_der(cert.raw_serial()),
        kind,
        spiffe_id: td.id_uri(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        status: CertStatus::Active,
    })
}

fn init_files(
    dir: &Path,
    opts: &InitOptions,
    pass: Option<&Passphrase>,
    now: OffsetDateTime,
) -> Result<(), CaError> {
    let td = &opts.settings.trust_domain;
    check_ca_ttls(opts)?;
    let root_key = keys::generate()?;
    let root_params = ca_params(td, &format!("{td} zt-mesh root CA"), opts.root_ttl, 1, now)?;
    let root = root_params.self_signed(&root_key).map_err(|e| CaError::Crypto(format!("root: {e}")))?;
    let root_issuer = Issuer::new(root_params, &root_key);
    let inter_key = keys::generate()?;
    let inter = ca_params(td, &format!("{td} zt-mesh intermediate CA"), opts.intermediate_ttl, 0, now)?
        .signed_by(&inter_key, &root_issuer)
        .map_err(|e| CaError::Crypto(format!("intermediate: {e}")))?;

    let store = store::create(&opts.settings.store.in_dir(dir))?;
    let at = now.unix_timestamp();
    store.record_issued(&ca_record(root.der(), CertKind::Root, td)?, "init", at)?;
    store.record_issued(&ca_record(inter.der(), CertKind::Intermediate, td)?, "init", at)?;
    drop(store);

    let root_key_pem = keys::to_pem(&root_key, pass)?;
    let inter_key_pem = keys::to_pem(&inter_key, pass)?;
    fsutil::write_all_or_nothing(
        dir,
        &[
            OutFile { name: ROOT_CERT, contents: root.pem().as_bytes(), mode: 0o644 },
            OutFile { name: INTER_CERT, contents: inter.pem().as_bytes(), mode: 0o644 },
            OutFile { name: ROOT_KEY, contents: root_key_pem.as_bytes(), mode: 0o600 },
            OutFile { name: INTER_KEY, contents: inter_key_pem.as_bytes(), mode: 0o600 },
        ],
    )?;
    // Written last: its presence is what marks the directory as a complete CA.
    fsutil::write_new(&dir.join(SETTINGS), opts.settings.to_toml().as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_identity::clock::ManualClock;
    use mesh_identity::profile;

    /// example.org: leaves of 1 minute to a day (1 hour by default), CA certificates of ten
    /// years and one.
    fn test_options() -> InitOptions {
        let td: TrustDomain = "example.org".parse().expect("td");
        let settings = Settings::new(td, Ttl::from_secs(60), Ttl::from_secs(86400), Ttl::from_secs(3600))
            .expect("settings");
        InitOptions {
            settings,
            root_ttl: Ttl::from_secs(86400 * 3650),
            intermediate_ttl: Ttl::from_secs(86400 * 365),
        }
    }

    fn new_ca(dir: &Path) -> Authority {
        let ca = Authority::init(dir, &test_options(), None).expect("init");
        Authority::open(ca, None).expect("open")
    }

    /// A CA whose every operation reads `clock`, standing at the wall clock's present second
    /// when created (the CA certificates start there).
    fn ca_with_clock(dir: &Path) -> (Authority, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at_system_now());
        let made = Authority::init_with_clock(dir, &test_options(), None, clock.clone()).expect("init");
        // Reopened from disk as the server does, with the clock injected at open.
        drop(made);
        let ca = Authority::open_with_clock(CaDir::open(dir).expect("open dir"), None, clock.clone())
            .expect("open");
        (ca, clock)
    }

    fn secs(n: i64) -> time::Duration {
        time::Duration::seconds(n)
    }

    fn csr() -> String {
        mesh_identity::csr::request_for(&keys::generate().expect("key")).expect("csr")
    }

    /// A join token is good until one second before its expiry and refused from its expiry on,
    /// at the authority's clock; the refused enrollment spends nothing and records nothing.
    #[test]
    fn a_token_expires_at_the_clocks_time_and_an_expired_one_spends_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ca, clock) = ca_with_clock(&tmp.path().join("ca"));
        let (z, w): (Zone, Workload) =
            ("payments".parse().expect("zone"), "charge".parse().expect("workload"));
        let created = clock.unix();
        let early = ca.dir().create_token(&z, &w, Ttl::from_secs(60), 1).expect("token");
        let late = ca.dir().create_token(&z, &w, Ttl::from_secs(60), 1).expect("token");
        let tokens = ca.store().tokens().expect("tokens");
        assert!(tokens.iter().all(|t| t.expires_at == created + 60 && t.created_at == created), "{tokens:?}");

        clock.advance(secs(59));
        let leaf = ca.enroll(&early, csr().as_bytes(), None, "test").expect("valid one second before expiry");
        assert_eq!(leaf.not_before, clock.now() - NOT_BEFORE_BACKDATE);

        clock.advance(secs(1));
        let e = ca.enroll(&late, csr().as_bytes(), None, "test").map(|l| l.serial);
        assert!(matches!(e, Err(EnrollError::Token(TokenRejection::Expired))), "{e:?}");
        let uses: Vec<i64> = ca.store().tokens().expect("tokens").iter().map(|t| t.uses_left).collect();
        assert_eq!(uses.iter().filter(|&&u| u == 1).count(), 1, "the expired token kept its use: {uses:?}");
        assert_eq!(ca.store().certificates().expect("list").len(), 2 + 1, "only the first enrollment issued");
    }

    /// Renewal checks the current certificate's notAfter against the authority's clock:
    /// however the caller's TLS session was made, an expired certificate buys no new one.
    #[test]
    fn renewal_refuses_a_certificate_past_its_not_after_at_the_clocks_time() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ca, clock) = ca_with_clock(&tmp.path().join("ca"));
        let id: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("id");
        let key = keys::generate().expect("key");
        let leaf = ca.issue(&id, Some(Ttl::from_secs(120)), &[], &key, "test").expect("issue");
        clock.set(leaf.not_after);
        let renewed =
            ca.renew(&id, &leaf.serial, csr().as_bytes(), None, "test").expect("renews at notAfter");
        assert_eq!(renewed.id, id);
        assert_eq!(
            renewed.not_before,
            leaf.not_after - NOT_BEFORE_BACKDATE,
            "the new leaf starts at the clock"
        );
        clock.advance(secs(1));
        let e = ca.renew(&id, &leaf.serial, csr().as_bytes(), None, "test").map(|l| l.serial);
        assert!(matches!(e, Err(EnrollError::Expired)), "{e:?}");
    }

    /// Every path that issues takes the leaf's validity from the clock: here a day after the
    /// CA was made, which a wall-clock read would miss by that day.
    #[test]
    fn leaf_validity_follows_the_clock() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ca, clock) = ca_with_clock(&tmp.path().join("ca"));
        clock.advance(secs(86400));
        let now = clock.now();
        let id: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("id");
        let key = keys::generate().expect("key");
        let issued = ca.issue(&id, Some(Ttl::from_secs(600)), &[], &key, "test").expect("issue");
        let token = ca
            .dir()
            .create_token(
                &"payments".parse().expect("zone"),
                &"charge".parse().expect("workload"),
                Ttl::from_secs(60),
                1,
            )
            .expect("token");
        let enrolled =
            ca.enroll(&token, csr().as_bytes(), Some(Ttl::from_secs(600)), "test").expect("enroll");
        let renewed = ca
            .renew(&id, &issued.serial, csr().as_bytes(), Some(Ttl::from_secs(600)), "test")
            .expect("renew");
        let own = ca.issue_ca_server(&key).expect("the CA's own certificate");
        for (what, leaf, ttl) in [
            ("issue", &issued, 600),
            ("enroll", &enrolled, 600),
            ("renew", &renewed, 600),
            ("own", &own, 86400),
        ] {
            assert_eq!(leaf.not_before, now - NOT_BEFORE_BACKDATE, "{what}");
            assert_eq!(leaf.not_after, now + secs(ttl), "{what}");
            let parsed = profile::parse(&leaf.der).expect("parse");
            assert_eq!(
                parsed.validity().not_before.timestamp(),
                (now - NOT_BEFORE_BACKDATE).unix_timestamp(),
                "{what}"
            );
            assert_eq!(parsed.validity().not_after.timestamp(), (now + secs(ttl)).unix_timestamp(), "{what}");
            let rec = ca.store().certificate(&leaf.serial).expect("read").expect("recorded");
            assert_eq!(
                (rec.not_before, rec.not_after),
                (parsed.validity().not_before.timestamp(), parsed.validity().not_after.timestamp()),
                "{what}"
            );
        }
    }

    /// Near the intermediate's end a leaf is cut to end with it, and once less than the
    /// shortest leaf TTL is left the CA refuses ("rotate it") rather than issue a stub.
    #[test]
    fn issuing_stops_when_the_intermediate_is_about_to_expire() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ca, clock) = ca_with_clock(&tmp.path().join("ca"));
        let inter = profile::parse(&ca.dir().intermediate).expect("intermediate");
        let inter_end = inter.validity().not_after.to_datetime();
        let id: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("id");
        let key = keys::generate().expect("key");

        clock.set(inter_end - secs(2 * 3600));
        let cut = ca.issue(&id, Some(Ttl::from_secs(86400)), &[], &key, "test").expect("issued, cut short");
        assert_eq!(cut.not_after, inter_end);

        clock.set(inter_end - secs(61));
        ca.issue(&id, Some(Ttl::from_secs(60)), &[], &key, "test").expect("a minimum-TTL leaf still fits");
        clock.advance(secs(2));
        let e = ca.issue(&id, Some(Ttl::from_secs(60)), &[], &key, "test").map(|l| l.serial);
        assert!(
            matches!(&e, Err(CaError::Refused(m)) if m.contains("rotate it before issuing more")),
            "{e:?}"
        );
        let e = ca.renew(&id, &cut.serial, csr().as_bytes(), None, "test").map(|l| l.serial);
        assert!(matches!(&e, Err(EnrollError::Ca(CaError::Refused(m))) if m.contains("rotate it")), "{e:?}");
    }

    /// The CA's own identity: refused to workloads by every path, and the CA server's own
    /// certificate carries the marker no workload certificate has.
    #[test]
    fn the_reserved_zone_is_the_cas_alone_and_only_its_certificate_is_marked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = new_ca(&tmp.path().join("ca"));
        let key = keys::generate().expect("key");
        let ca_id = ca_server_id(&ca.settings().trust_domain);
        let e = ca.issue(&ca_id, None, &[], &key, "test").map(|l| l.serial);
        assert!(matches!(e, Err(CaError::Refused(ref r)) if r.contains("reserved")), "{e:?}");
        let other: SpiffeId = "spiffe://example.org/ns/mesh-system/sa/anything".parse().expect("id");
        assert!(ca.issue(&other, None, &[], &key, "test").is_err());
        let zone: Zone = mesh_identity::profile::RESERVED_ZONE.parse().expect("zone");
        let workload: Workload = "ca".parse().expect("workload");
        assert!(ca.dir().create_token(&zone, &workload, Ttl::from_secs(60), 1).is_err());

        let own = ca.issue_ca_server(&key).expect("the CA's own certificate");
        assert_eq!(own.id, ca_id);
        let parsed = profile::parse(&own.der).expect("parse");
        assert!(profile::is_ca_server(&parsed), "the CA server certificate has the marker");
        let report = profile::check_leaf(&own.der, Some(ca_id.trust_domain()));
        assert!(report.violations.is_empty(), "still a valid X.509-SVID: {:?}", report.violations);
        let workload_id: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("id");
        let leaf = ca.issue(&workload_id, None, &[], &key, "test").expect("issue");
        assert!(
            !profile::is_ca_server(&profile::parse(&leaf.der).expect("parse")),
            "a workload is not marked"
        );
    }

    #[test]
    fn issues_profiled_unique_leaves_and_records_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = new_ca(&tmp.path().join("ca"));
        assert!(profile::check_ca(&ca.dir().root, None).is_empty());
        assert!(profile::check_ca(&ca.dir().intermediate, None).is_empty());
        let id: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("id");
        let key = keys::generate().expect("key");
        let mut serials = std::collections::HashSet::new();
        // Thousands of issuances: serials never repeat (the store would refuse a repeat too).
        for _ in 0..2000 {
            let leaf = ca.issue(&id, None, &[], &key, "test").expect("issue");
            assert!(serials.insert(leaf.serial));
        }
        let leaf =
            ca.issue(&id, Some(Ttl::from_secs(120)), &["charge.local".into()], &key, "test").expect("issue");
        let report = profile::check_leaf(&leaf.der, Some(id.trust_domain()));
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.id.as_ref(), Some(&id));
        assert_eq!((leaf.not_after - leaf.not_before).whole_seconds(), 180);
        assert_eq!(ca.dir().store().expect("store").certificates().expect("list").len(), 2 + 2001);
    }

    #[test]
    fn refuses_out_of_range_ttl_foreign_domain_and_bad_dns() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = new_ca(&tmp.path().join("ca"));
        let key = keys::generate().expect("key");
        let id: SpiffeId = "spiffe://example.org/ns/a/sa/b".parse().expect("id");
        let other: SpiffeId = "spiffe://other.org/ns/a/sa/b".parse().expect("id");
        assert!(matches!(ca.issue(&id, Some(Ttl::from_secs(59)), &[], &key, "t"), Err(CaError::Refused(_))));
        assert!(matches!(
            ca.issue(&id, Some(Ttl::from_secs(86401)), &[], &key, "t"),
            Err(CaError::Refused(_))
        ));
        assert!(matches!(ca.issue(&other, None, &[], &key, "t"), Err(CaError::Refused(_))));
        assert!(matches!(ca.issue(&id, None, &["*.x.org".into()], &key, "t"), Err(CaError::Refused(_))));
        assert_eq!(ca.dir().store().expect("store").certificates().expect("list").len(), 2);
    }

    #[test]
    fn init_refuses_an_existing_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let _ca = new_ca(&dir);
        let before = fs::read(dir.join(ROOT_CERT)).expect("root");
        let td: TrustDomain = "example.org".parse().expect("td");
        let settings = Settings::new(td, Ttl::from_secs(60), Ttl::from_secs(86400), Ttl::from_secs(3600))
            .expect("settings");
        let opts =
            InitOptions { settings, root_ttl: Ttl::from_secs(86400), intermediate_ttl: Ttl::from_secs(3600) };
        assert!(matches!(Authority::init(&dir, &opts, None), Err(CaError::CaDir(_))));
        assert_eq!(fs::read(dir.join(ROOT_CERT)).expect("root"), before);
    }

    #[test]
    fn revoke_refuses_ca_certificates_and_logs_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = new_ca(&tmp.path().join("ca"));
        let store = ca.dir().store().expect("store");
        for rec in store.certificates().expect("list") {
            assert_ne!(rec.kind, CertKind::Leaf);
            let e = ca
                .dir()
                .revoke(&RevokeTarget::Serial(rec.serial.clone()), "test", true)
                .expect_err("refused");
            assert!(matches!(&e, CaError::Refused(m) if m.contains("Rotat")), "{e}");
        }
        assert!(store.revocations_since(0).expect("log").is_empty());
        assert!(store.certificates().expect("list").iter().all(|c| c.status == CertStatus::Active));
    }

    #[test]
    fn init_refuses_huge_ca_ttls_without_panicking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let td: TrustDomain = "example.org".parse().expect("td");
        let settings = Settings::new(td, Ttl::from_secs(60), Ttl::from_secs(86400), Ttl::from_secs(3600))
            .expect("settings");
        for (root, inter) in
            [(u64::MAX / 4, 3600), (u64::MAX / 4, u64::MAX / 4), (CA_TTL_CEILING.as_secs() + 1, 3600)]
        {
            let opts = InitOptions {
                settings: settings.clone(),
                root_ttl: Ttl::from_secs(root),
                intermediate_ttl: Ttl::from_secs(inter),
            };
            let dir = tmp.path().join("ca");
            assert!(matches!(Authority::init(&dir, &opts, None), Err(CaError::Refused(_))));
            assert!(!dir.exists(), "a refused init left {}", dir.display());
        }
        // The arithmetic itself is checked too, for a caller that skips the bound.
        let td: TrustDomain = "example.org".parse().expect("td");
        assert!(ca_params(&td, "x", Ttl::from_secs(u64::MAX / 4), 0, OffsetDateTime::now_utc()).is_err());
    }

    /// `ca.toml` names the store: `init` writes the default, a directory from before the
    /// line opens as before, a moved store is found where the line says, and a scheme this
    /// build does not have is refused before anything is opened.
    #[test]
    fn the_store_is_where_ca_toml_says() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        drop(new_ca(&dir));
        let settings = dir.join(SETTINGS);
        let written = fs::read_to_string(&settings).expect("ca.toml");
        assert!(written.contains("store = \"sqlite:store.db\""), "{written}");
        let without: String =
            written.lines().filter(|l| !l.starts_with("store")).map(|l| format!("{l}\n")).collect();

        fs::write(&settings, &without).expect("write");
        assert_eq!(
            CaDir::open(&dir).expect("open").store().expect("store").certificates().expect("list").len(),
            2
        );

        fs::rename(dir.join(STORE), dir.join("moved.db")).expect("move the store");
        let e = CaDir::open(&dir).expect("open").store().map(|_| ()).expect_err("the default is gone");
        assert!(matches!(&e, CaError::CaDir(m) if m.contains("missing")), "{e}");
        assert!(!dir.join(STORE).exists(), "opening never creates a store");
        fs::write(&settings, format!("{without}store = \"sqlite:moved.db\"\n")).expect("write");
        assert_eq!(
            CaDir::open(&dir).expect("open").store().expect("store").certificates().expect("list").len(),
            2
        );

        fs::write(&settings, format!("{without}store = \"postgres://ca:pw@db/ca\"\n")).expect("write");
        let e = CaDir::open(&dir).map(|_| ()).expect_err("no PostgreSQL in this build");
        assert!(matches!(&e, CaError::BadFile { what, .. } if what.contains("not in this build yet")), "{e}");
        assert_eq!(e.exit_code(), 5);
    }

    /// An identity never seen needs `force`; a repeat names the entry that revokes it; a
    /// revoked identity is issued nothing until reinstated, and then only new things work.
    #[test]
    fn revocation_rules_force_repeats_refusals_and_reinstatement() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = new_ca(&tmp.path().join("ca"));
        let (z, w): (Zone, Workload) =
            ("payments".parse().expect("zone"), "charge".parse().expect("workload"));
        let id = SpiffeId::new(ca.settings().trust_domain.clone(), z.clone(), w.clone());
        let target = RevokeTarget::Identity(id.clone());
        let e = ca.dir().revoke(&target, "t", false).expect_err("never seen");
        assert!(
            matches!(&e, CaError::Refused(m) if m.contains(&id.to_string()) && m.contains("--force")),
            "{e}"
        );
        assert!(ca.store().revocations_since(0).expect("log").is_empty());

        let key = keys::generate().expect("key");
        let old = ca.issue(&id, None, &[], &key, "test").expect("issue");
        let seq = match ca.dir().revoke(&target, "t", false).expect("known now") {
            RevokeOutcome::Revoked(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(ca.dir().revoke(&target, "t", false).expect("repeat"), RevokeOutcome::AlreadyRevoked(seq));
        let by_serial = RevokeTarget::Serial(old.serial.clone());
        assert_eq!(
            ca.dir().revoke(&by_serial, "t", false).expect("repeat"),
            RevokeOutcome::AlreadyRevoked(seq)
        );

        let e = ca.issue(&id, None, &[], &key, "test").map(|l| l.serial).expect_err("revoked");
        assert!(
            matches!(&e, CaError::Refused(m) if m.contains("mesh-ca reinstate --zone payments --workload charge")),
            "{e}"
        );
        let e = ca.dir().create_token(&z, &w, Ttl::from_secs(60), 1).map(|_| ()).expect_err("revoked");
        assert!(matches!(&e, CaError::Refused(m) if m.contains(&format!("is revoked (#{seq})"))), "{e}");

        let r = ca.dir().reinstate(&z, &w, "mistake").expect("reinstate").expect("was revoked");
        assert_eq!((r.lifted, r.certificates), (seq, 1));
        assert_eq!(ca.dir().reinstate(&z, &w, "again").expect("reinstate"), None);
        let new = ca.issue(&id, None, &[], &key, "test").expect("issued again");
        assert!(ca.store_revoked(Some(&old.serial), &id).expect("check"), "the old one stays revoked");
        assert!(!ca.store_revoked(Some(&new.serial), &id).expect("check"));
        ca.dir().create_token(&z, &w, Ttl::from_secs(60), 1).expect("a token again");
    }

    #[test]
    fn token_ttl_and_uses_are_bounded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = new_ca(&tmp.path().join("ca"));
        let (z, w): (Zone, Workload) = ("a".parse().expect("zone"), "b".parse().expect("workload"));
        let day = Ttl::from_secs(86400);
        for (ttl, uses) in
            [(Ttl::from_secs(u64::MAX / 2), 1), (Ttl::from_secs(31 * 86400), 1), (day, 0), (day, 1001)]
        {
            assert!(matches!(ca.dir().create_token(&z, &w, ttl, uses), Err(CaError::Refused(_))));
        }
        ca.dir().create_token(&z, &w, MAX_TOKEN_TTL, MAX_TOKEN_USES).expect("the bounds themselves");
        assert_eq!(ca.dir().store().expect("store").tokens().expect("tokens").len(), 1);
    }
}
