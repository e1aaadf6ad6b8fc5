//! `mesh-ca serve`: the CA's HTTPS API. TLS 1.3 with the CA's own SVID
//! (`spiffe://<td>/ns/mesh-system/sa/ca`, issued at start, renewed a third into its life and
//! at once when its serial is revoked); client
//! certificates are optional (enrollment has none yet) and verified fully when presented,
//! revocation included. Connections are capped, requests bounded in size and time, and
//! callers rate-limited. The API itself is in [`api`].

mod api;

pub mod metrics;

pub use mesh_runtime::limits::DEFAULT_RATE;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use mesh_config::{SpiffeId, Ttl};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::authority::Authority;
use crate::error::CaError;
use mesh_identity::tls::{self, ClientAuth, Identity, RevocationCheck, ServerTls, TrustBundle};

/// Concurrent connections the API serves; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 1024;
/// Connections without a client certificate (still in the handshake, or anonymous callers
/// such as enrollments) one source (an IPv4 address, an IPv6 /64) may hold at once; more are
/// closed as soon as they are accepted. Room for a NAT'd fleet enrolling together; lifted
/// (to the total) with `--rate-limit 0`, the load-test mode.
const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 64;
/// Anonymous connections (through the handshake without a certificate) from all sources
/// together: half the slots, so callers with a certificate (renewals, revocation polls)
/// always have the other half. Connections still in their handshake are not counted here
/// (every caller passes through that stage): only per source, and for at most
/// [`HANDSHAKE_TIMEOUT`].
const MAX_ANONYMOUS: usize = MAX_CONNECTIONS / 2;
/// Time for the TLS handshake, from accept.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an anonymous connection lives (its requests are answered at once: enrollment,
/// bundle, a revocation page; anonymous callers get no long-poll).
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(30);
/// Longest a connection with a client certificate lives: a long-poll and then some.
const AUTHENTICATED_LIFETIME: Duration = Duration::from_secs(api::MAX_WAIT + 30);
/// How often the revocation log is checked for entries written by other processes
/// (`mesh-ca revoke` on the same directory).
const REVOCATION_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// TTL of certificates issued through the API (enroll and renew).
    pub cert_ttl: Option<Ttl>,
    /// Requests per second per caller address (bursts of twice that); 0 turns it off.
    pub rate_limit: u32,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// What request handlers share.
pub(crate) struct Shared {
    pub authority: Authority,
    pub cert_ttl: Option<Ttl>,
    /// The latest revocation log position, refreshed from the store; long-polls wait on it.
    pub revocation_seq: watch::Receiver<i64>,
    pub limiter: mesh_runtime::limits::RateLimiter,
    /// Long-polls waiting now, per caller identity: their own small budget, so that waiting
    /// callers never hold the slots renewals need.
    pub long_polls: Arc<mesh_runtime::limits::PerSource<SpiffeId>>,
    /// Enrollments waiting for the group-commit batcher.
    pub enroll_queue: tokio::sync::mpsc::Sender<api::QueuedEnroll>,
}

/// Revocation answers for the server's own verifier, straight from the store. A store error
/// counts as revoked: fail closed.
#[derive(Debug)]
struct StoreRevocations(Arc<std::sync::OnceLock<Arc<Shared>>>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl RevocationCheck for StoreRevocations {
    fn is_revoked(&self, serial_hex: &str, id: &SpiffeId) -> bool {
        match self.0.get() {
            Some(s) => s.authority.store_revoked(Some(serial_hex), id).unwrap_or(true),
            None => true,
        }
    }
}

/// Serves until `shutdown` is cancelled. Prints the bound address on stdout first.
pub async fn serve(
    authority: Authority,
    opts: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), CaError> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| CaError::Refused(format!("--listen {}: {e}", opts.listen)))?;
    let local = listener.local_addr().map_err(|e| CaError::Refused(format!("--listen: {e}")))?;
    let td = authority.settings().trust_domain.clone();
    let roots = Arc::new(
        TrustBundle::new(td.clone(), vec![authority.dir().root.clone()])
            .map_err(|e| CaError::Crypto(format!("root certificate: {e}")))?,
    );
    let seq0 = authority.store().revocation_head()?;
    let (seq_tx, seq_rx) = watch::channel(seq0);
    let cell = Arc::new(std::sync::OnceLock::new());
    let revoked: Arc<dyn RevocationCheck> = Arc::new(StoreRevocations(cell.clone()));
    let (enroll_queue, queued) = tokio::sync::mpsc::channel(4096);
    let shared = Arc::new(Shared {
        authority,
        cert_ttl: opts.cert_ttl,
        revocation_seq: seq_rx,
        limiter: mesh_runtime::limits::RateLimiter::new(opts.rate_limit),
        long_polls: mesh_runtime::limits::PerSource::new(api::MAX_LONG_POLLS_PER_ID, api::MAX_LONG_POLLS),
        enroll_queue,
    });
    tokio::spawn(api::batcher(shared.clone(), queued));
    let _ = cell.set(shared.clone());

    let (first, expires, serial) = own_config(&shared, &roots, &revoked)?;
    let own = Arc::new(OwnCertificate { serial: std::sync::Mutex::new(serial), renew_now: Notify::new() });
    let config = Arc::new(RwLock::new(first));
    tokio::spawn(renew_own_identity(
        shared.clone(),
        roots.clone(),
        revoked.clone(),
        config.clone(),
        expires,
        own.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(follow_revocations(shared.clone(), seq_tx, own, shutdown.clone()));

    let mut started = vec![("listen", local.to_string()), ("trust_domain", td.to_string())];
    if let Some(addr) = opts.metrics_listen {
        let (l, bound) = metrics::bind(addr)
            .await
            .map_err(|e| CaError::Refused(format!("--metrics-listen {addr}: {e}")))?;
        let handle = metrics::install()
            .ok_or_else(|| CaError::Refused("metrics recorder already installed".into()))?;
        for (name, der) in
            [("root", &shared.authority.dir().root), ("intermediate", &shared.authority.dir().intermediate)]
        {
            if let Ok(c) = mesh_identity::profile::parse(der) {
                metrics::authority_expiry(name, c.validity().not_after.timestamp());
            }
        }
        // The server's own certificate, renewed by `renew_own_identity` (which updates it).
        metrics::authority_expiry("server", expires);
        tokio::spawn(metrics::serve(l, handle, shutdown.clone()));
        started.push(("metrics", bound.to_string()));
    }
    let fields: Vec<(&str, &str)> = started.iter().map(|(k, v)| (*k, v.as_str())).collect();
    api::event("ca.started", &fields);
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = if opts.rate_limit == 0 { MAX_CONNECTIONS } else { MAX_UNAUTHENTICATED_PER_SOURCE };
    let unauthenticated = mesh_runtime::limits::PerSource::new(per_source, MAX_CONNECTIONS);
    let anonymous_slots = Arc::new(Semaphore::new(MAX_ANONYMOUS));
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => p.map_err(|_| CaError::Refused("shutting down".into()))?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        // Until its handshake shows a client certificate, a connection counts against its
        // source's small budget; over it, the connection is closed unread, freeing the slot.
        let Some(anonymous) = unauthenticated.try_hold(mesh_runtime::limits::SourceKey::of(peer.ip())) else {
            drop(stream);
            continue;
        };
        let server_tls = config.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone());
        let (shared, anonymous_slots) = (shared.clone(), anonymous_slots.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // `accept` verifies a resumed session's stored chain again (expiry, revocation):
            // the handshake itself does not.
            let (tls, caller) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_tls.accept(stream)).await
            {
                Ok(Ok(c)) => (c.stream, c.peer.map(api::Caller::from)),
                Ok(Err(tls::HandshakeError::Peer { error, .. })) => {
                    let peer = peer.to_string();
                    let reason = tls::tls_failure_reason(&error);
                    let detail = tls::tls_failure_detail(&error);
                    api::event(
                        "tls.resumption_refused",
                        &[("peer", &peer), ("reason", reason), ("reason_detail", &detail)],
                    );
                    return;
                }
                Ok(Err(tls::HandshakeError::Handshake(_))) | Err(_) => return,
            };
            // A caller with a certificate leaves the unauthenticated budget; an anonymous one
            // keeps its unit for as long as the connection lives, which is short, and needs
            // one of the anonymous slots too (none left: closed).
            let (lifetime, _anonymous) = match &caller {
                Some(_) => (AUTHENTICATED_LIFETIME, None),
                None => match anonymous_slots.try_acquire_owned() {
                    Ok(slot) => (ANONYMOUS_LIFETIME, Some((anonymous, slot))),
                    Err(_) => return,
                },
            };
            let service = hyper::service::service_fn(move |req| {
                let (shared, caller) = (shared.clone(), caller.clone());
                async move { Ok::<_, std::convert::Infallible>(api::handle(shared, peer, caller, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(lifetime, conn).await;
        });
    }
}

/// The server's current serving certificate, as the revocation follower sees it: when the
/// operator revokes its serial (a stolen serving key), the renewal loop is woken to issue a
/// new one at once, instead of presenting a certificate every sidecar now refuses.
struct OwnCertificate {
    serial: std::sync::Mutex<String>,
    renew_now: Notify,
}

/// Issues the server's own certificate (recorded like any other, with the CA server
/// marker) and builds its config. Returns the config, the certificate's notAfter and serial.
fn own_config(
    shared: &Shared,
    roots: &TrustBundle,
    revoked: &Arc<dyn RevocationCheck>,
) -> Result<(ServerTls, i64, String), CaError> {
    let key = crate::keys::generate()?;
    let leaf = shared.authority.issue_ca_server(&key)?;
    let not_after = leaf.not_after.unix_timestamp();
    let serial = leaf.serial.clone();
    let identity = Identity {
        chain: vec![leaf.der, shared.authority.dir().intermediate.clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    let settings = tls::ServerSettings {
        client_auth: ClientAuth::Optional,
        resumption: tls::Resumption::Allowed,
        access: revoked.clone(),
    };
    let config =
        tls::server_config(&identity, roots, &settings).map_err(|e| CaError::Crypto(e.to_string()))?;
    Ok((config, not_after, serial))
}

/// Longest pause between attempts to renew the server's own certificate after a failure.
const OWN_RENEW_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When to renew the server's own certificate: a third into its lifetime, so that two
/// thirds of it are left for retries if the store or the disk is failing.
fn own_renew_at(issued_at: i64, not_after: i64) -> i64 {
    issued_at + (not_after - issued_at).max(3) / 3
}

/// Re-issues the server's certificate a third into its lifetime; live connections keep
/// theirs. A failed attempt is retried with capped exponential backoff until one succeeds
/// (an expired server certificate would stop enrollment, renewal and revocation for the
/// whole mesh); every failure is an event, and the expiry is a metric.
async fn renew_own_identity(
    shared: Arc<Shared>,
    roots: Arc<TrustBundle>,
    revoked: Arc<dyn RevocationCheck>,
    config: Arc<RwLock<ServerTls>>,
    mut not_after: i64,
    own: Arc<OwnCertificate>,
    shutdown: CancellationToken,
) {
    let mut issued_at = time::OffsetDateTime::now_utc().unix_timestamp();
    loop {
        let wait =
            (own_renew_at(issued_at, not_after) - time::OffsetDateTime::now_utc().unix_timestamp()).max(0);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => {}
            _ = own.renew_now.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let sh = shared.clone();
            let (r, v) = (roots.clone(), revoked.clone());
            let attempt = tokio::task::spawn_blocking(move || own_config(&sh, &r, &v)).await;
            match attempt {
                Ok(Ok((c, expires, serial))) => {
                    *config.write().unwrap_or_else(|p| p.into_inner()) = c;
                    *own.serial.lock().unwrap_or_else(|p| p.into_inner()) = serial;
                    issued_at = time::OffsetDateTime::now_utc().unix_timestamp();
                    not_after = expires;
                    metrics::authority_expiry("server", expires);
                    api::event("ca.own_certificate_renewed", &[("not_after", &expires.to_string())]);
                    break;
                }
                Ok(Err(e)) => api::event(
                    "ca.renew_own_failed",
                    &[
        // No application protocol named: whatever a client offers is ignored, as before ALPN.
        alpn: tls::Alpn::none(),
                        ("reason", &e.to_string()),
                        ("retry_in_seconds", &backoff.as_secs().to_string()),
                        ("not_after", &not_after.to_string()),
                    ],
                ),
                Err(_) => api::event("ca.renew_own_failed", &[("reason", "the renewal task failed")]),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(OWN_RENEW_MAX_BACKOFF);
        }
    }
}

/// Publishes the revocation log's latest position, including entries other processes wrote.
async fn follow_revocations(
    shared: Arc<Shared>,
    tx: watch::Sender<i64>,
    own: Arc<OwnCertificate>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REVOCATION_POLL) => {}
            _ = shutdown.cancelled() => return,
        }
        let after = *tx.borrow();
        let sh = shared.clone();
        let latest = tokio::task::spawn_blocking(move || sh.authority.store().revocations_since(after)).await;
        if let Ok(Ok(entries)) = latest {
            if let Some(last) = entries.last() {
                for r in &entries {
                    api::event(
                        "cert.revoked",
                        &[
                            ("serial", r.serial.as_deref().unwrap_or("-")),
                            ("spiffe_id", r.spiffe_id.as_deref().unwrap_or("-")),
                            ("reason", &r.reason),
                        ],
                    );
                    let mine = r
                        .serial
                        .as_deref()
                        .is_some_and(|s| s == own.serial.lock().unwrap_or_else(|p| p.into_inner()).as_str());
                    if mine {
                        let serial = r.serial.as_deref().unwrap_or("-");
                        api::event("ca.own_certificate_revoked", &[("serial", serial)]);
                        own.renew_now.notify_one();
                    }
                }
                tx.send_replace(last.seq);
            }
        }
    }
}
