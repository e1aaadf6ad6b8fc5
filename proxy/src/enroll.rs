//! Enrollment mode: the sidecar's identity comes from `mesh-ca serve`. The private key is
//! made here, in memory, and never written anywhere; only CSRs leave the process.
//!
//! - `enroll`: the join token (read from its file once per attempt, never logged) buys the
//!   first certificate.
//! - `maintain`: renews at about half the lifetime (with jitter, so a fleet does not renew in
//!   step) with a fresh key each time; on failure retries with capped exponential backoff while
//!   the certificate is valid; past expiry the sidecar is not ready and refuses handshakes
//!   (fail closed), and keeps trying: renewal cannot work with an expired certificate, so it
//!   re-enrolls with the token file (a token with uses left, or a new token put there).
//! - `follow_revocations`: long-polls the CA's revocation log; handshakes consult the set
//!   inside the verifier, configs are rebuilt so no session resumes past a revocation, and
//!   open connections from a revoked peer are closed by their handlers. A reinstatement
//!   entry takes its identity out of the set (its old certificates came as serial entries).
//! - Revoked itself: when the log names this sidecar's own certificate or identity, or the CA
//!   refuses it as revoked (a 403 `revoked`, or the handshake's `certificate_revoked` alert),
//!   the sidecar is in a permanent, named state: not ready (`own_certificate_revoked`), one
//!   `cert.revoked_self` event, no renewal and no poll failures reported; it only tries,
//!   every [`MAX_BACKOFF`], to enroll again with the token file (a new token, after
//!   `mesh-ca reinstate` or for a new identity), and leaves the state once that works.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::SpiffeId;
use mesh_identity::client::{CaClient, ClientError};
use mesh_identity::tls::{RevocationCheck, TrustBundle};
use mesh_identity::token::Token;
use rustls::pki_types::PrivateKeyDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::credentials::Credential;
use crate::events::{Event, EventKind, Events, Severity};
use crate::reload::TlsShape;
use crate::state::Tls;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one revocation long-poll waits at the CA.
const REVOCATION_WAIT: Duration = Duration::from_secs(30);

/// Where the identity comes from.
pub struct Source {
    pub client: CaClient,
    pub token_file: PathBuf,
}

/// Serials and identities the CA has revoked, and whether that list is complete enough to
/// serve on: until every page has been loaded once, or while the CA's answers cannot be
/// read, the sidecar is not ready (see [`RevocationSet::not_ready`]).
#[derive(Debug, Default, Clone)]
pub struct RevocationSet {
    serials: HashSet<mesh_identity::Serial>,
    ids: HashSet<SpiffeId>,
    /// Every page up to the CA's head has been loaded at least once.
    loaded: bool,
    /// Why the list cannot be loaded right now, when it cannot.
    problem: Option<String>,
    /// This sidecar's own certificate is revoked: how it was learnt.
    own_revoked: Option<String>,
}

impl RevocationSet {
    pub fn contains(&self, serial: &str, id: &SpiffeId) -> bool {
        self.serials.contains(serial) || self.ids.contains(id)
    }

    /// Entries held (serials and identities).
    pub fn len(&self) -> usize {
        self.serials.len() + self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why a sidecar following this list must not serve, if it must not.
    pub fn not_ready(&self) -> Option<crate::handshake::NotReady> {
        use crate::handshake::NotReady;
        if self.own_revoked.is_some() {
            return Some(NotReady::OwnCertificateRevoked);
        }
        match (&self.problem, self.loaded) {
            (Some(p), _) => Some(NotReady::RevocationsUnavailable { problem: p.clone() }),
            (None, false) => Some(NotReady::RevocationsLoading),
            (None, true) => None,
        }
    }

    /// Whether the first load has ended, one way or the other (loaded, or failed once).
    pub fn settled(&self) -> bool {
        self.loaded || self.problem.is_some() || self.own_revoked.is_some()
    }

    /// Whether this sidecar's own certificate is known to be revoked.
    pub fn own_revoked(&self) -> bool {
        self.own_revoked.is_some()
    }
}

/// Whether the CA refused a call because the caller's certificate (or identity) is revoked:
/// a `revoked` answer, or a handshake the CA ended with the `certificate_revoked` alert
/// (rustls names it `CertificateRevoked` in the error the client sees).
fn says_revoked(e: &ClientError) -> bool {
    match e {
        ClientError::Refused { code, .. } => code == "revoked",
        ClientError::Unreachable(what) | ClientError::Protocol(what) => what.contains("CertificateRevoked"),
    }
}

/// The state's one event: what is revoked, how the sidecar learnt it, and what it does now.
fn revoked_self_event(c: &Credential, how: &str) -> Event {
    Event::new(EventKind::CertRevokedSelf, Severity::Error)
        .reason("revoked", format!("this sidecar's certificate is revoked ({how})"))
        .src_id(c.id.to_string())
        .detail(format!(
            "serial {}: not ready; renewal stops, and enrollment with the token file is retried every \
             {}s (put a new token there after `mesh-ca reinstate`)",
            c.serial,
            MAX_BACKOFF.as_secs()
        ))
}

/// Revoked: renewal can never work again, so only re-enrollment is tried, at the backoff
/// cap and without an event per attempt (the state was told once). `None` at shutdown.
async fn reenroll_revoked(src: &Source, shutdown: &CancellationToken) -> Option<Credential> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MAX_BACKOFF) => {}
            _ = shutdown.cancelled() => return None,
        }
        match enroll(src).await {
            Ok(c) => return Some(c),
            Err(e) => tracing::debug!("revoked sidecar: enrolling again failed: {e}"),
        }
    }
}

/// The handshake-time view of the revocation set.
#[derive(Debug)]
pub struct Revocations(pub watch::Receiver<Arc<RevocationSet>>);

impl RevocationCheck for Revocations {
    fn is_revoked(&self, serial_hex: &str, id: &SpiffeId) -> bool {
        self.0.borrow().contains(serial_hex, id)
    }
}

pub(crate) fn read_token(path: &std::path::Path) -> Result<Token, String> {
    let raw = mesh_identity::fsutil::read_bounded(path, 4096).map_err(|e| format!("token_file: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| format!("token_file {}: not text", path.display()))?;
    Token::from_presented(&text)
        .ok_or_else(|| format!("token_file {}: does not hold a join token", path.display()))
}

/// The credential in a CA answer, checked as the operator's configuration demands: the
/// chain must verify against the configured `ca_bundle` (`anchors`), its identity must be
/// a workload of the CA's trust domain (never the CA's reserved zone) and, for a renewal,
/// the identity the sidecar already has. The sidecar then trusts `anchors` only: whatever
/// trust bundle the answer carried is never adopted.
fn credential(
    issued: mesh_identity::client::Issued,
    key: &mesh_identity::keys::KeyPair,
    anchors: &TrustBundle,
    renewing: Option<&SpiffeId>,
) -> Result<Credential, String> {
    let cred = Credential::from_parts(
        issued.chain,
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        anchors.ders().cloned().collect(),
    )
    .map_err(|e| format!("certificate from the CA: {e}"))?;
    // No trust-domain check here: `from_parts` binds the anchors to the leaf's own trust
    // domain, and the CA bundle's roots name only the CA's, so a leaf of another trust
    // domain has already been refused ("no anchor ... for trust domain").
    if mesh_identity::profile::is_reserved_zone(cred.id.zone()) {
        return Err(format!("certificate from the CA is for {}, the CA's own reserved zone", cred.id));
    }
    if let Some(current) = renewing {
        if &cred.id != current {
            return Err(format!("renewal answered with {}, but this sidecar is {current}", cred.id));
        }
    }
    Ok(cred)
}

/// One enrollment attempt with the token file.
pub async fn enroll(src: &Source) -> Result<Credential, ClientError> {
    let token = read_token(&src.token_file).map_err(ClientError::Protocol)?;
    let key = mesh_identity::keys::generate().map_err(|e| ClientError::Protocol(e.to_string()))?;
    let csr = mesh_identity::csr::request_for(&key).map_err(ClientError::Protocol)?;
    let issued = src.client.enroll(&token, csr).await?;
    credential(issued, &key, src.client.bundle(), None).map_err(ClientError::Protocol)
}

async fn renew(src: &Source, current: &Credential) -> Result<Credential, ClientError> {
    let key = mesh_identity::keys::generate().map_err(|e| ClientError::Protocol(e.to_string()))?;
    let csr = mesh_identity::csr::request_for(&key).map_err(ClientError::Protocol)?;
    let issued = src.client.renew(&current.identity, csr).await?;
    credential(issued, &key, src.client.bundle(), Some(&current.id)).map_err(ClientError::Protocol)
}

/// Enrolls, retrying with backoff until it works or `shutdown`. Each failure is an event.
pub async fn enroll_until_done(
    src: &Source,
    events: &Events,
    shutdown: &CancellationToken,
) -> Option<Credential> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match enroll(src).await {
            Ok(c) => {
                events.emit(cert_event(EventKind::CertEnrolled, Severity::Info, &c));
                return Some(c);
            }
            Err(e) => events.emit(
                Event::new(EventKind::CertEnrollFailed, Severity::Error).reason(reason(&e), e.to_string()),
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn reason(e: &ClientError) -> &'static str {
    match e {
        ClientError::Unreachable(_) => "ca_unreachable",
        ClientError::Refused { .. } => "ca_refused",
        ClientError::Protocol(_) => "ca_protocol",
    }
}

fn cert_event(name: EventKind, severity: Severity, c: &Credential) -> Event {
    let mut e = Event::new(name, severity).detail(format!("serial {} valid until {}", c.serial, c.not_after));
    e = e.src_id(c.id.to_string());
    e
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// When to renew: half the remaining lifetime when it was obtained, plus or minus a tenth.
fn renew_at(c: &Credential) -> i64 {
    let life = (c.not_after - c.obtained_at).max(2);
    let mut r = [0u8; 2];
    let jitter = match mesh_identity::random::fill(&mut r) {
        Ok(()) => (u16::from_le_bytes(r) as f64 / u16::MAX as f64) * 0.2 - 0.1,
        Err(_) => 0.0,
    };
    c.obtained_at + (life as f64 * (0.5 + jitter)) as i64
}

/// Keeps the credential fresh for as long as the sidecar runs.
pub async fn maintain(
    src: Arc<Source>,
    shape: Arc<TlsShape>,
    tls_tx: watch::Sender<Arc<Tls>>,
    revoked: Arc<dyn RevocationCheck>,
    events: Events,
    shutdown: CancellationToken,
) {
    loop {
        let current = tls_tx.borrow().clone();
        let wait = (renew_at(&current.cred) - now()).max(0) as u64;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            _ = shutdown.cancelled() => return,
        }
        let mut backoff = Duration::from_secs(1);
        let mut expired_told = false;
        let fresh = loop {
            if revoked.is_revoked(current.cred.serial.as_str(), &current.cred.id) {
                // Known revoked from the log (follow_revocations told it): no renewal.
                match reenroll_revoked(&src, &shutdown).await {
                    Some(c) => break (EventKind::CertEnrolled, c),
                    None => return,
                }
            }
            let expired = now() >= current.cred.not_after;
            let attempt = if expired {
                if !expired_told {
                    events.emit(cert_event(EventKind::CertExpired, Severity::Error, &current.cred));
                    expired_told = true;
                }
                enroll(&src).await.map(|c| (EventKind::CertEnrolled, c))
            } else {
                renew(&src, &current.cred).await.map(|c| (EventKind::CertRenewed, c))
            };
            match attempt {
                Ok(ok) => break ok,
                Err(e) if !expired && says_revoked(&e) => {
                    // The CA refuses this certificate as revoked: permanent. The event is
                    // follow_revocations' (it owns readiness and learns it from the same
                    // refusal or from the log).
                    match reenroll_revoked(&src, &shutdown).await {
                        Some(c) => break (EventKind::CertEnrolled, c),
                        None => return,
                    }
                }
                Err(e) => {
                    let mut ev = Event::new(EventKind::CertRenewFailed, Severity::Warning)
                        .reason(reason(&e), e.to_string());
                    ev = ev.src_id(current.cred.id.to_string());
                    events.emit(ev.detail(format!("retrying in {}s", backoff.as_secs())));
                }
            }
            // Near expiry, retry more often (half the time left each time) so that a CA that
            // comes back just before expiry is caught while renewal still works.
            let left_ms = ((current.cred.not_after - now()) * 1000).max(0) as u64;
            let pause =
                if expired { backoff } else { backoff.min(Duration::from_millis((left_ms / 2).max(200))) };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        let (name, cred) = fresh;
        let event = cert_event(name, Severity::Info, &cred);
        match Tls::build(cred, &shape, revoked.clone()) {
            Ok(tls) => {
                tls_tx.send_replace(Arc::new(tls));
                events.emit(event);
            }
            Err(e) => events.emit(
                Event::new(EventKind::CertRenewFailed, Severity::Error).reason("tls_config", e.to_string()),
            ),
        }
    }
}

/// Follows the CA's revocation log for as long as the sidecar runs. Pages are followed at
/// once while the CA says `more`; long-polls start only once caught up. Until the first full
/// load, and whenever the CA's answers cannot be read or are refused, the set says so (the
/// sidecar is not ready) and an error event says why; an unreachable CA after the first load
/// is only a warning: the sidecar keeps serving on what it knows, as it does for renewal.
pub async fn follow_revocations(
    src: Arc<Source>,
    shape: Arc<TlsShape>,
    tls_tx: watch::Sender<Arc<Tls>>,
    set_tx: watch::Sender<Arc<RevocationSet>>,
    revoked: Arc<dyn RevocationCheck>,
    events: Events,
    shutdown: CancellationToken,
) {
    let mut set = RevocationSet::clone(&set_tx.borrow());
    let mut since = 0;
    let mut more = true;
    let mut backoff = Duration::from_secs(1);
    // Entries added since the TLS configs were last rebuilt.
    let mut added = false;
    let (started, mut pages) = (std::time::Instant::now(), 0u64);
    loop {
        let current = tls_tx.borrow().clone();
        let wait = if more || !set.loaded { Duration::ZERO } else { REVOCATION_WAIT };
        let answer = tokio::select! {
            r = src.client.revocations(Some(&current.cred.identity), since, wait) => r,
            _ = shutdown.cancelled() => return,
        };
        let page = match answer {
            Ok(page) => page,
            Err(e) if set.own_revoked.is_some() || says_revoked(&e) => {
                // Revoked itself: the CA will refuse every call with this certificate. Told
                // once; polled again at the backoff cap (a re-enrolled credential succeeds).
                if set.own_revoked.is_none() {
                    set.own_revoked = Some("the CA refused it as revoked".into());
                    set_tx.send_replace(Arc::new(set.clone()));
                    events.emit(revoked_self_event(&current.cred, "the CA refused it as revoked"));
                }
                // Or at once when `maintain` enrolled again: the new credential's first
                // answer ends the state.
                let mut renewed = tls_tx.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(MAX_BACKOFF) => {}
                    _ = renewed.changed() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            Err(e) => {
                let fatal = !set.loaded || !matches!(e, ClientError::Unreachable(_));
                if fatal {
                    set.problem = Some(e.to_string());
                    set_tx.send_replace(Arc::new(set.clone()));
                    events.emit(
                        Event::new(EventKind::RevocationsUnavailable, Severity::Error)
                            .reason(reason(&e), e.to_string())
                            .detail(format!(
                                "not ready until the revocation list loads; retrying in {}s",
                                backoff.as_secs()
                            )),
                    );
                } else {
                    events.emit(
                        Event::new(EventKind::RevocationsPollFailed, Severity::Warning)
                            .reason(reason(&e), e.to_string()),
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        pages += 1;
        since = page.sequence.max(since);
        more = page.more;
        let quiet = !set.loaded; // the first load is one summary event, not one per entry
        let mut changed = set.problem.take().is_some();
        for r in page.revoked {
            if let Some(id) = r.reinstated.as_deref().and_then(|i| i.parse::<SpiffeId>().ok()) {
                // Lifted: its old certificates came as serial entries ahead of this one.
                (added, changed) = (added | set.ids.remove(&id), true);
                continue;
            }
            let mut e = Event::new(EventKind::CertRevoked, Severity::Warning);
            if let Some(s) = r.serial {
                e = e.detail(format!("serial {s}"));
                set.serials.insert(s);
            }
            if let Some(id) = r.spiffe_id.and_then(|i| i.parse::<SpiffeId>().ok()) {
                e = e.src_id(id.to_string());
                set.ids.insert(id);
            }
            if !quiet {
                events.emit(e.reason("revoked", r.reason));
            }
            (added, changed) = (true, true);
        }
        if !more && !set.loaded {
            set.loaded = true;
            changed = true;
            events.emit(Event::new(EventKind::RevocationsLoaded, Severity::Info).detail(format!(
                "{} revocation(s) up to #{since} in {pages} page(s), {} ms",
                set.len(),
                started.elapsed().as_millis()
            )));
        }
        // This sidecar's own certificate: revoked by an entry just read, or, once revoked,
        // replaced by a re-enrolled one the set does not hold.
        let cur = tls_tx.borrow().clone();
        let own = set.contains(cur.cred.serial.as_str(), &cur.cred.id);
        if own && set.own_revoked.is_none() {
            set.own_revoked = Some("named in the CA's revocation log".into());
            events.emit(revoked_self_event(&cur.cred, "named in the CA's revocation log"));
            changed = true;
        } else if !own && set.own_revoked.is_some() {
            set.own_revoked = None;
            changed = true;
        }
        if changed {
            set_tx.send_replace(Arc::new(set.clone()));
        }
        if added && !more {
            added = false;
            // New configs: sessions cached under the old ones cannot be resumed. Built from
            // the credential current now (a renewal may have landed during the long-poll),
            // under the watch's lock.
            tls_tx.send_modify(|t| {
                if let Ok(tls) = Tls::build(t.cred.duplicate(), &shape, revoked.clone()) {
                    *t = Arc::new(tls);
                }
            });
        }
    }
}

/// Resolves when `serial` or `id` is revoked; never, when the sidecar does not follow a CA.
pub async fn revoked(
    rx: Option<watch::Receiver<Arc<RevocationSet>>>,
    serial: mesh_identity::Serial,
    id: SpiffeId,
) {
    if let Some(mut rx) = rx {
        if rx.wait_for(|s| s.contains(&serial, &id)).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use mesh_identity::testing::{TestLeaf, TestPki};

    use super::*;

    fn answer(ca: &TestPki, leaf: TestLeaf) -> mesh_identity::client::Issued {
        mesh_identity::client::Issued {
            chain: vec![leaf.der, ca.intermediate().clone()],
            serial: leaf.serial,
        }
    }

    /// Revoked itself: a named state that outranks every other reason not to be ready, and
    /// the refusals that put a sidecar in it (a `revoked` answer, the handshake's alert), not
    /// a network failure or another refusal.
    #[test]
    fn a_revoked_sidecar_is_not_ready_as_such_and_only_revoked_refusals_say_so() {
        let set = RevocationSet { own_revoked: Some("test".into()), ..Default::default() };
        assert_eq!(set.not_ready(), Some(crate::handshake::NotReady::OwnCertificateRevoked));
        assert!(set.settled() && set.own_revoked());
        let text = set.not_ready().map(|n| n.to_string()).unwrap_or_default();
        assert_eq!(text, "this sidecar's certificate is revoked");
        let refused =
            |code: &str| ClientError::Refused { status: 403, code: code.into(), reason: String::new() };
        assert!(says_revoked(&refused("revoked")));
        assert!(!says_revoked(&refused("token_rejected")));
        let alert = ClientError::Unreachable("io: received fatal alert: CertificateRevoked".into());
        assert!(says_revoked(&alert));
        assert!(!says_revoked(&ClientError::Unreachable("connection refused".into())));
    }

    /// What a sidecar accepts from a CA answer is decided by its own configuration: the chain
    /// must verify against the configured `ca_bundle`, the trust it keeps is that bundle and
    /// nothing else, the CA's reserved zone is never adopted, and a renewal keeps its identity.
    #[test]
    fn a_ca_answer_is_checked_against_the_configured_bundle_and_adds_no_anchor() {
        let (ours, rogue) = (TestPki::new(), TestPki::new());
        let configured = ours.bundle.clone();
        let id: SpiffeId = "spiffe://example.org/ns/orders/sa/api".parse().expect("id");

        let key = mesh_identity::keys::generate().expect("key");
        let good = answer(&ours, ours.leaf(&id, &key));
        let cred = credential(good, &key, &configured, None).expect("our CA's answer is accepted");
        let anchors: Vec<_> = cred.bundle.ders().collect();
        assert_eq!(anchors, vec![ours.root()], "the sidecar trusts exactly the configured bundle");

        // Signed by another CA of the same trust domain (a CA answer carrying its own root):
        // it does not chain to the configured bundle, so it is refused.
        let forged = answer(&rogue, rogue.leaf(&id, &key));
        let e = credential(forged, &key, &configured, None).err().unwrap_or_default();
        assert!(e.contains("does not verify against the bundle"), "{e}");

        // The CA's own identity is never a sidecar's.
        let own = answer(&ours, ours.ca_server_leaf(&key));
        let e = credential(own, &key, &configured, None).err().unwrap_or_default();
        assert!(e.contains("reserved zone"), "{e}");

        // A renewal that answers with another identity.
        let other: SpiffeId = "spiffe://example.org/ns/orders/sa/other".parse().expect("id");
        let swapped = answer(&ours, ours.leaf(&other, &key));
        let e = credential(swapped, &key, &configured, Some(&id)).err().unwrap_or_default();
        assert!(e.contains("but this sidecar is"), "{e}");
    }
}
