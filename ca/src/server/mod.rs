//! `mesh-ca serve`: the CA's HTTPS API. TLS 1.3 with the CA's own SVID
//! (`spiffe://<td>/ns/mesh-system/sa/ca`, issued at start, renewed a third into its life and
//! at once when its serial is revoked); client
//! certificates are optional (enrollment has none yet) and verified fully when presented,
//! revocation included (from the in-memory [`revoked`] set: no store query inside a
//! handshake). Connections are capped, requests bounded in size and time, and callers
//! rate-limited. The API itself is in [`api`].
//!
//! Both listeners (the API and `--metrics-listen`) run mesh-runtime's accept loop and HTTP
//! connection builder; the current TLS config is published on a `watch` (renewal is a pointer
//! swap) and read once per accepted connection. At shutdown accepting stops at once, live
//! connections are closed gracefully (long-polls answer at once) for up to [`DRAIN_GRACE`],
//! then what is left is cut and counted in the `ca.stopped` event.

mod api;
mod revoked;

pub mod metrics;

pub use mesh_runtime::limits::DEFAULT_RATE;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::{SpiffeId, Ttl};
use mesh_runtime::events::{Ca, Event, Events, Recorder, Severity, Sink};
use mesh_runtime::http::HttpLimits;
use mesh_runtime::serve::{accept_loop, AcceptEvent, Budget, Slot, Tasks};
use tokio::net::{TcpListener, TcpStream};
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
/// Events the CA's stdout sink may hold waiting (the sidecar's default `queue_size`).
const EVENT_QUEUE: usize = 8192;
/// How long a stopping CA waits for its queued events to reach stdout's writer.
const EVENT_FLUSH: Duration = Duration::from_secs(2);
/// Time live connections get to finish at shutdown before they are cut.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// What each API connection may send: headers within 5 s and 64 KiB; its lifetime is set per
/// connection once the handshake shows whether it has a certificate.
const API_HTTP: HttpLimits = HttpLimits {
    header_read_timeout: Duration::from_secs(5),
    max_header_bytes: 64 * 1024,
    max_headers: 100,
    keep_alive: true,
    lifetime: None,
};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// TTL of certificates issued through the API (enroll and renew).
    pub cert_ttl: Option<Ttl>,
    /// Requests per second per caller address (bursts of twice that); 0 turns it off.
    pub rate_limit: u32,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The schema of the events on stdout (`--events-format`: json, ecs, ocsf).
    pub events_format: mesh_runtime::events::EventFormat,
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
    /// Revoked serials and identities, what the verifier consults; whatever the server
    /// revokes itself goes in here too ([`revoked::RevokedSet::record`]).
    pub revoked: Arc<revoked::RevokedSet>,
    /// Cancelled when the server begins to stop: long-polls answer at once.
    pub shutdown: CancellationToken,
    /// The CA's events (to stdout), through the same bounded, non-blocking sinks as the
    /// sidecar's: a request never waits for, or fails on, its audit line.
    pub events: Events,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
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
    // The log position first, then the whole log: the follower starts from that position, so
    // an entry committed in between is read twice (harmless), never missed.
    let seq0 = authority.store().revocation_head()?;
    let (seq_tx, seq_rx) = watch::channel(seq0);
    let set = Arc::new(revoked::RevokedSet::load(authority.store())?);
    let revoked: Arc<dyn RevocationCheck> = set.clone();
    let (enroll_queue, queued) = tokio::sync::mpsc::channel(4096);
    let (events, sinks) = Events::start(vec![Sink::Stdout(opts.events_format)], EVENT_QUEUE, Recorder::NONE);
    let shared = Arc::new(Shared {
        authority,
        cert_ttl: opts.cert_ttl,
        revocation_seq: seq_rx,
        limiter: mesh_runtime::limits::RateLimiter::new(opts.rate_limit),
        long_polls: mesh_runtime::limits::PerSource::new(api::MAX_LONG_POLLS_PER_ID, api::MAX_LONG_POLLS),
        enroll_queue,
        revoked: set,
        shutdown: shutdown.clone(),
        events,
    });
    tokio::spawn(api::batcher(shared.clone(), queued));

    let (first, expires, serial) = own_config(&shared, &roots, &revoked)?;
    let own = Arc::new(OwnCertificate {
        serial: std::sync::Mutex::new(serial),
        not_after: std::sync::atomic::AtomicI64::new(expires),
        renew_now: Notify::new(),
    });
    let (config_tx, config) = watch::channel(Arc::new(first));
    tokio::spawn(renew_own_identity(
        shared.clone(),
        roots.clone(),
        revoked.clone(),
        config_tx,
        expires,
        own.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(follow_revocations(shared.clone(), seq_tx, own.clone(), shutdown.clone()));

    let tasks = Tasks::new();
    let mut metrics_loop = None;
    let mut metrics_bound = None;
    if let Some(addr) = opts.metrics_listen {
        let (l, bound) = metrics::bind(addr)
            .await
            .map_err(|e| CaError::Refused(format!("--metrics-listen {addr}: {e}")))?;
        let handle = metrics::install(&api::route_paths())
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
        let events = shared.events.clone();
        let probe = metrics::Probe { shared: shared.clone(), own: own.clone() };
        let serve = metrics::serve(l, handle, probe, tasks.clone(), shutdown.clone(), events);
        metrics_loop = Some(tokio::spawn(serve));
        metrics_bound = Some(bound.to_string());
    }
    let started =
        Ca::Started { listen: local.to_string(), trust_domain: td.to_string(), metrics: metrics_bound };
    shared.events.emit(Event::ca(Severity::Info, started));
    let per_source = if opts.rate_limit == 0 { MAX_CONNECTIONS } else { MAX_UNAUTHENTICATED_PER_SOURCE };
    // Until its handshake shows a client certificate, a connection counts against its
    // source's small budget; over it, the connection is closed unread, freeing the slot.
    let budget = Budget::new(MAX_CONNECTIONS).with_pending(per_source, MAX_CONNECTIONS);
    let anonymous_slots = Arc::new(Semaphore::new(MAX_ANONYMOUS));
    accept_loop(
        listener,
        budget,
        tasks.clone(),
        shutdown.clone(),
        report("api", shared.events.clone()),
        |stream, peer, slot| {
            // The config current at accept: a renewal swaps it for the connections after this one.
            let server_tls = config.borrow().clone();
            connection(shared.clone(), anonymous_slots.clone(), server_tls, stream, peer, slot)
        },
    )
    .await;
    // Stopped accepting (the listener is closed); the metrics listener stops on the same signal.
    if let Some(m) = metrics_loop {
        let _ = m.await;
    }
    let drained = tasks.drain(DRAIN_GRACE).await;
    let stopped = Ca::Stopped {
        connections_open: drained.open.to_string(),
        connections_cut: drained.aborted.to_string(),
    };
    shared.events.emit(Event::ca(Severity::Info, stopped));
    // What is queued reaches stdout's writer before serve returns (main then flushes that).
    shared.events.flush(EVENT_FLUSH).await;
    sinks.abort();
    Ok(())
}

/// How the accept loops' reports become the CA's events (`listener` is api or metrics).
fn report(listener: &'static str, events: Events) -> impl FnMut(AcceptEvent<'_>) + Send {
    move |e| match e {
        AcceptEvent::Failed { error, retry_in } => {
            let what = Ca::AcceptFailed {
                listener,
                reason: error.to_string(),
                retry_in_ms: retry_in.as_millis().to_string(),
            };
            events.emit(Event::ca(Severity::Error, what));
        }
        AcceptEvent::Shed { count, latest } => {
            let what = Ca::ConnectionsShed {
                listener,
                reason: "too_many_unauthenticated",
                count: count.to_string(),
                latest_source: latest.to_string(),
            };
            events.emit(Event::ca(Severity::Warning, what));
        }
    }
}

/// One API connection: the TLS handshake under [`HANDSHAKE_TIMEOUT`], the budgets that depend
/// on whether the caller has a certificate, then HTTP under [`API_HTTP`].
async fn connection(
    shared: Arc<Shared>,
    anonymous_slots: Arc<Semaphore>,
    server_tls: Arc<ServerTls>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let Slot { permit: _permit, mut pending } = slot;
    // `accept` verifies a resumed session's stored chain again (expiry, revocation):
    // the handshake itself does not.
    let (tls, caller) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_tls.accept(stream)).await {
        Ok(Ok(c)) => (c.stream, c.peer.map(api::Caller::from)),
        Ok(Err(tls::HandshakeError::Peer { error, .. })) => {
            let what = Ca::TlsResumptionRefused {
                peer: peer.to_string(),
                reason: tls::tls_failure_reason(&error),
                reason_detail: tls::tls_failure_detail(&error),
            };
            shared.events.emit(Event::ca(Severity::Warning, what));
            return;
        }
        Ok(Err(tls::HandshakeError::Handshake(_))) | Err(_) => return,
    };
    // A caller with a certificate leaves the unauthenticated budget; an anonymous one keeps
    // its unit for as long as the connection lives, which is short, and needs one of the
    // anonymous slots too (none left: closed).
    let (lifetime, _anonymous) = match &caller {
        Some(_) => {
            pending.authenticated();
            (AUTHENTICATED_LIFETIME, None)
        }
        None => match anonymous_slots.try_acquire_owned() {
            Ok(slot) => (ANONYMOUS_LIFETIME, Some(slot)),
            Err(_) => return,
        },
    };
    let stop = shared.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        let (shared, caller) = (shared.clone(), caller.clone());
        async move { Ok::<_, std::convert::Infallible>(api::handle(shared, peer, caller, req).await) }
    });
    HttpLimits { lifetime: Some(lifetime), ..API_HTTP }.serve(tls, &stop, service).await;
}

/// The server's current serving certificate, as the revocation follower sees it: when the
/// operator revokes its serial (a stolen serving key), the renewal loop is woken to issue a
/// new one at once, instead of presenting a certificate every sidecar now refuses.
struct OwnCertificate {
    serial: std::sync::Mutex<String>,
    /// Its notAfter (Unix seconds), for the metrics listener's `/ready`.
    not_after: std::sync::atomic::AtomicI64,
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
    let serial = leaf.serial.to_string();
    let identity = Identity {
        chain: vec![leaf.der, shared.authority.dir().intermediate.clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    };
    let settings = tls::ServerSettings {
        client_auth: ClientAuth::Optional,
        resumption: tls::Resumption::Allowed,
        access: revoked.clone(),
        // No application protocol named: whatever a client offers is ignored, as before ALPN.
        alpn: tls::Alpn::none(),
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
    config: watch::Sender<Arc<ServerTls>>,
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
                    config.send_replace(Arc::new(c));
                    *own.serial.lock().unwrap_or_else(|p| p.into_inner()) = serial;
                    issued_at = time::OffsetDateTime::now_utc().unix_timestamp();
                    not_after = expires;
                    own.not_after.store(expires, std::sync::atomic::Ordering::Relaxed);
                    metrics::authority_expiry("server", expires);
                    let what = Ca::OwnCertificateRenewed { not_after: expires.to_string() };
                    shared.events.emit(Event::ca(Severity::Info, what));
                    break;
                }
                Ok(Err(e)) => {
                    let what = Ca::RenewOwnFailed {
                        reason: e.to_string(),
                        retry_in_seconds: Some(backoff.as_secs().to_string()),
                        not_after: Some(not_after.to_string()),
                    };
                    shared.events.emit(Event::ca(Severity::Error, what));
                }
                Err(_) => {
                    let what = Ca::RenewOwnFailed {
                        reason: "the renewal task failed".into(),
                        retry_in_seconds: None,
                        not_after: None,
                    };
                    shared.events.emit(Event::ca(Severity::Error, what));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(OWN_RENEW_MAX_BACKOFF);
        }
    }
}

/// Follows the revocation log, including entries other processes wrote: each new entry goes
/// into the verifier's set, then the log's latest position is published.
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
            // The verifier's set first, then the position long-polls wait on: a sidecar told
            // of a revocation finds the CA already refusing that certificate.
            shared.revoked.record(&entries);
            if let Some(last) = entries.last() {
                for r in &entries {
                    // A reinstatement is not a revocation (`mesh-ca reinstate` reports it and
                    // the store audits it).
                    if r.action == crate::store::RevocationAction::Reinstate {
                        continue;
                    }
                    let what = Ca::CertRevoked {
                        serial: r.serial.as_ref().map_or_else(|| "-".to_owned(), |s| s.to_string()),
                        spiffe_id: r.spiffe_id.as_ref().map_or_else(|| "-".to_owned(), |s| s.to_string()),
                        reason: r.reason.clone(),
                    };
                    shared.events.emit(Event::ca(Severity::Warning, what));
                    let mine = r
                        .serial
                        .as_deref()
                        .is_some_and(|s| s == own.serial.lock().unwrap_or_else(|p| p.into_inner()).as_str());
                    if mine {
                        let serial = r.serial.as_deref().unwrap_or("-");
                        let what = Ca::OwnCertificateRevoked { serial: serial.to_string() };
                        shared.events.emit(Event::ca(Severity::Warning, what));
                        own.renew_now.notify_one();
                    }
                }
                tx.send_replace(last.seq);
            }
        }
    }
}
