//! `mesh-proxy run`: loads the credential and policy (refusing to start without a valid
//! certificate), binds every listener, starts the accept loops, the reloader and the admin
//! listener, then waits for SIGTERM/SIGINT: stop accepting, drain live connections for the
//! grace period, then exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::SpiffeId;
use mesh_identity::client::CaClient;
use mesh_identity::tls::{NothingRevoked, RevocationCheck};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::Credential;
use crate::enroll::{self, RevocationSet};
use crate::events::{Event, Events, Severity, Sink};
use crate::outbound::Route;
use crate::reload::{self, CredFiles, TlsShape, Watched};
use crate::state::{Limits, Shared, Tls};
use crate::tls::Resumption;
use crate::{admin, inbound, listener, outbound};

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub policy: PathBuf,
    pub identity: IdentityPlan,
    /// Inbound listen address and the local app's address.
    pub inbound: Option<(SocketAddr, String)>,
    /// Per outbound: listen address, remote sidecar address, expected server identity.
    pub outbound: Vec<(SocketAddr, String, SpiffeId)>,
    pub admin: Option<SocketAddr>,
    pub sinks: Vec<Sink>,
    /// Events each sink may hold waiting before it drops.
    pub event_queue: usize,
    pub limits: Limits,
    /// `[tls] resumption`, for the inbound and every outbound.
    pub resumption: Resumption,
}

/// Where the sidecar's identity comes from.
#[derive(Debug, Clone)]
pub enum IdentityPlan {
    /// Files from `mesh-ca issue`, re-read when they change.
    Files(CredFiles),
    /// Enrollment with `mesh-ca serve`: key in memory, renewed automatically.
    Enroll { ca_address: String, ca_bundle: PathBuf, token_file: PathBuf },
}

impl IdentityPlan {
    /// The secret files this identity reads (the private key, or the join token), each
    /// with what to call it in a warning.
    pub fn secret_files(&self) -> Vec<(&std::path::Path, &'static str)> {
        match self {
            Self::Files(f) => vec![(f.key.as_path(), "key file")],
            Self::Enroll { token_file, .. } => vec![(token_file.as_path(), "token file")],
        }
    }

    /// One warning per secret file that group or others can read (see
    /// `mesh_identity::fsutil::exposed_mode_warning`).
    pub fn exposed_secrets(&self) -> Vec<String> {
        self.secret_files()
            .into_iter()
            .filter_map(|(path, what)| mesh_identity::fsutil::exposed_mode_warning(path, what))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no usable certificate, refusing to start: {0}")]
    Credential(String),
    #[error("policy: {0}")]
    Policy(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: String, source: std::io::Error },
}

/// Binds `addr` and returns the listener with the address it actually got (port 0 picks one).
async fn bind(addr: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), RunError> {
    let err = |source| RunError::Bind { addr, what: what.to_owned(), source };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

pub async fn run(plan: Plan) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_stop().await;
            shutdown.cancel();
        }
    });
    let prometheus = crate::metrics::install();
    let (events, writer) = Events::start(plan.sinks.clone(), plan.event_queue);
    // A key or token others can read is a credential others may already have: say so.
    for warning in plan.identity.exposed_secrets() {
        events.emit(Event::new("config.secret_exposed", Severity::Warning).reason("file_mode", warning));
    }
    let shape = TlsShape::of(&plan);
    let (set_tx, set_rx) = watch::channel(Arc::new(RevocationSet::default()));
    let (cred, source, revoked) = match &plan.identity {
        IdentityPlan::Files(f) => {
            let cred = Credential::load(&f.cert, &f.key, &f.bundle)
                .map_err(|e| RunError::Credential(e.to_string()))?;
            let nothing: Arc<dyn RevocationCheck> = Arc::new(NothingRevoked);
            (cred, None, nothing)
        }
        IdentityPlan::Enroll { ca_address, ca_bundle, token_file } => {
            let anchors = mesh_identity::pem::read_certs(ca_bundle)
                .map_err(|e| RunError::Credential(format!("ca_bundle: {e}")))?;
            // The CA's certificate is checked against the revocation list too.
            let check: Arc<dyn RevocationCheck> = Arc::new(enroll::Revocations(set_rx.clone()));
            let client = CaClient::new(ca_address.clone(), anchors, check.clone())
                .map_err(|e| RunError::Credential(e.to_string()))?;
            let source = Arc::new(enroll::Source { client, token_file: token_file.clone() });
            // No certificate, no listener: fail closed until the CA has enrolled us.
            let Some(cred) = enroll::enroll_until_done(&source, &events, &shutdown).await else {
                events.flush(Duration::from_secs(2)).await;
                return Ok(());
            };
            (cred, Some(source), check)
        }
    };
    let tls = Tls::build(cred, &shape, revoked.clone()).map_err(|e| RunError::Credential(e.to_string()))?;
    let own_id = tls.cred.id.clone();
    let (policy, missing) = reload::load_policy(&plan.policy, &own_id).map_err(RunError::Policy)?;
    let files = Watched {
        policy: plan.policy.clone(),
        credential: match &plan.identity {
            IdentityPlan::Files(f) => Some(f.clone()),
            IdentityPlan::Enroll { .. } => None,
        },
    };

    let (tls_tx, tls_rx) = watch::channel(Arc::new(tls));
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
    let shared = Arc::new(Shared {
        tls: tls_rx,
        policy: policy_rx,
        events: events.clone(),
        limits: plan.limits,
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        own_addrs: std::sync::OnceLock::new(),
        revocations: matches!(plan.identity, IdentityPlan::Enroll { .. }).then_some(set_rx),
    });

    // Bind everything before serving anything, so a port conflict fails the start cleanly.
    let mut bound = Vec::new();
    let inbound_listener = match &plan.inbound {
        Some((addr, fwd)) => {
            let (l, local) = bind(*addr, "inbound").await?;
            bound.push(format!("inbound={local}"));
            Some((l, local, Arc::<str>::from(fwd.as_str())))
        }
        None => None,
    };
    let mut outbound_listeners = Vec::new();
    for (i, (addr, connect, server)) in plan.outbound.iter().enumerate() {
        let (l, local) = bind(*addr, &format!("outbound[{i}]")).await?;
        bound.push(format!("outbound[{i}]={local}"));
        outbound_listeners.push((
            l,
            local,
            Arc::new(Route { index: i, connect: connect.clone(), server: server.clone() }),
        ));
    }
    let admin_listener = match plan.admin {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                mesh_runtime::output::stderr().line(&format!("mesh-proxy: WARNING: the admin listener {addr} is not on loopback; anyone who reaches it sees metrics, identity and config"));
            }
            let (l, local) = bind(addr, "admin").await?;
            bound.push(format!("admin={local}"));
            Some(l)
        }
        None => None,
    };

    let own: Vec<SocketAddr> = bound.iter().filter_map(|b| b.split_once('=')?.1.parse().ok()).collect();
    let _ = shared.own_addrs.set(own);
    let mut tasks = Vec::new();
    if let Some((l, local, fwd)) = inbound_listener {
        let sh = shared.clone();
        // Budgets per listener: a flood on the inbound cannot take the outbounds' or the
        // admin's slots; and on the inbound, unauthenticated connections are capped per source.
        let budget = Arc::new(Semaphore::new(plan.limits.max_connections));
        let pending = listener::pending_table(plan.limits.max_pending_per_source, plan.limits.max_pending);
        tasks.push(tokio::spawn(listener::serve(
            l,
            shared.clone(),
            budget,
            Some(pending),
            move |stream, peer, slot| {
                let (sh, fwd) = (sh.clone(), fwd.clone());
                async move {
                    let listener::Slot { permit, pending } = slot;
                    inbound::handle(sh, local, fwd, stream, peer, pending).await;
                    drop(permit);
                }
            },
        )));
    }
    for (l, local, route) in outbound_listeners {
        let sh = shared.clone();
        let budget = Arc::new(Semaphore::new(plan.limits.max_connections));
        tasks.push(tokio::spawn(listener::serve(
            l,
            shared.clone(),
            budget,
            None,
            move |stream, peer, slot| {
                let (sh, route) = (sh.clone(), route.clone());
                async move {
                    outbound::handle(sh, local, route, stream, peer).await;
                    drop(slot);
                }
            },
        )));
    }
    if let Some(l) = admin_listener {
        let policy_file = plan.policy.clone();
        let admin =
            admin::Admin { metrics: prometheus.clone(), config: admin::config_json(&plan), policy_file };
        tasks.push(tokio::spawn(admin::serve(l, shared.clone(), Arc::new(admin))));
    }
    if let Some(handle) = prometheus {
        tasks.push(tokio::spawn(crate::metrics::upkeep(handle, shutdown.clone())));
    }
    let first_load = shared.revocations.clone();
    if let Some(source) = source {
        let check = revoked.clone();
        let shape = Arc::new(shape.clone());
        tasks.push(tokio::spawn(enroll::maintain(
            source.clone(),
            shape.clone(),
            tls_tx.clone(),
            check.clone(),
            events.clone(),
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(enroll::follow_revocations(
            source,
            shape,
            tls_tx.clone(),
            set_tx,
            check,
            events.clone(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(reload::run(
        files.clone(),
        shape,
        tls_tx,
        policy_tx,
        events.clone(),
        shared.shutdown.clone(),
    )));

    // Announce the start once the first revocation load has ended either way: loaded (and
    // ready), or failed (not ready, and the admin port says why). Listeners already refuse
    // connections until the list is loaded.
    if let Some(mut rx) = first_load {
        tokio::select! {
            _ = rx.wait_for(|s| s.settled()) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    let mut started = Event::new("proxy.started", Severity::Info).detail(bound.join(" "));
    started.src_id = Some(own_id.to_string());
    events.emit(started);
    if missing {
        events.emit(
            Event::new("policy.reloaded", Severity::Warning)
                .detail(format!("{} is missing: denying everything", files.policy.display())),
        );
    }
    mesh_runtime::output::stderr().line(&format!("mesh-proxy: {own_id} serving {}", bound.join(" ")));

    shutdown.cancelled().await;
    shared.tracker.close();
    let live = shared.tracker.len();
    events.emit(
        Event::new("proxy.stopping", Severity::Info).detail(format!(
            "draining {live} connection(s) for up to {}s",
            plan.limits.drain_timeout.as_secs()
        )),
    );
    if tokio::time::timeout(plan.limits.drain_timeout, shared.tracker.wait()).await.is_err() {
        events.emit(
            Event::new("proxy.drain_timeout", Severity::Warning)
                .detail(format!("{} connection(s) still open; closing them", shared.tracker.len())),
        );
    }
    for t in tasks {
        t.abort();
    }
    events.flush(Duration::from_secs(2)).await;
    writer.abort();
    Ok(())
}

async fn wait_for_stop() {
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let next = |s: &mut Option<tokio::signal::unix::Signal>| {
        let mut s = s.take();
        async move {
            match s.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        _ = next(&mut term) => {}
        _ = next(&mut int) => {}
    }
}
