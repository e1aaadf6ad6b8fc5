//! The sidecar's assembly, in three steps:
//!
//! - [`prepare`]: parse and validate `sidecar.toml`, read the credential, the bundle, the join
//!   token and the policy, and build the TLS configs: every refusal a start can make before
//!   it touches the network. `mesh-proxy check` is this step plus printing.
//! - [`bind`]: bind every listener, so a port conflict fails the start before anything is
//!   served (or a join token spent); an address in use names its listener.
//! - [`serve`]: start the event sinks, enroll (in enrollment mode), start the accept loops,
//!   the reloader, the renewal and revocation tasks and the admin listener, and serve until
//!   the `shutdown` future resolves: then stop accepting, drain live connections for
//!   `[limits] drain_timeout`, cut what is left, and return.
//!
//! Signals are `main`'s: it passes SIGTERM/SIGINT as the shutdown future and SIGHUP as
//! [`Bound::hangup`]'s trigger, so a whole sidecar also runs in-process (see the tests).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::policy::Policy;
use mesh_identity::client::CaClient;
use mesh_identity::tls::{NothingRevoked, RevocationCheck};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::credentials::Credential;
use crate::enroll::{self, RevocationSet};
use crate::events::{Event, EventKind, Events, Severity};
use crate::outbound::Route;
pub use crate::plan::{IdentityPlan, Plan, PlanError};
use crate::reload::{self, Hangup, TlsShape, Watched};
use crate::state::{Shared, Tls};
use crate::{admin, inbound, listener, outbound};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `sidecar.toml` itself is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no usable certificate, refusing to start: {0}")]
    Credential(String),
    #[error("policy: {0}")]
    Policy(String),
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind { addr: SocketAddr, listener: Listener, source: std::io::Error },
}

/// Which listener: named in bind errors and in `proxy.started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Inbound,
    Outbound(usize),
    Admin,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inbound => f.write_str("inbound"),
            Self::Outbound(i) => write!(f, "outbound[{i}]"),
            Self::Admin => f.write_str("admin"),
        }
    }
}

/// A validated sidecar, nothing bound yet.
pub struct Prepared {
    plan: Plan,
    identity: Start,
    /// The policy as read now; `None` when the file is missing (deny everything).
    policy: Option<Policy>,
    /// Secret files group or others can read, one warning each.
    exposed: Vec<String>,
}

/// What the identity starts from.
enum Start {
    /// Files mode: the credential and the TLS configs built from it.
    Files(Tls),
    /// Enrollment mode: the CA client (checking the CA's own certificate against the
    /// revocation list too) and the list it will fill.
    Enroll {
        source: Arc<enroll::Source>,
        check: Arc<dyn RevocationCheck>,
        set_tx: watch::Sender<Arc<RevocationSet>>,
        set_rx: watch::Receiver<Arc<RevocationSet>>,
    },
}

/// Reads and checks everything a start needs from `config` (see the module doc).
pub fn prepare(config: &Path) -> Result<Prepared, RunError> {
    let plan = crate::plan::load(config)?;
    let shape = TlsShape::of(&plan);
    let exposed = plan.identity.exposed_secrets();
    let (identity, policy) = match &plan.identity {
        IdentityPlan::Files(f) => {
            let cred = Credential::load(&f.cert, &f.key, &f.bundle)
                .map_err(|e| RunError::Credential(e.to_string()))?;
            let tls = Tls::build(cred, &shape, Arc::new(NothingRevoked))
                .map_err(|e| RunError::Credential(format!("{}: {e}", f.bundle.display())))?;
            let (policy, missing) =
                reload::load_policy(&plan.policy, &tls.cred.id).map_err(RunError::Policy)?;
            (Start::Files(tls), (!missing).then_some(policy))
        }
        IdentityPlan::Enroll { ca_address, ca_bundle, token_file } => {
            let anchors = mesh_identity::pem::read_certs(ca_bundle)
                .map_err(|e| RunError::Credential(format!("ca_bundle: {e}")))?;
            let (set_tx, set_rx) = watch::channel(Arc::new(RevocationSet::default()));
            let check: Arc<dyn RevocationCheck> = Arc::new(enroll::Revocations(set_rx.clone()));
            let client = CaClient::new(ca_address.clone(), anchors, check.clone())
                .map_err(|e| RunError::Credential(format!("ca_bundle {}: {e}", ca_bundle.display())))?;
            // Read as every enrollment attempt reads it; the token itself is not kept.
            enroll::read_token(token_file).map_err(RunError::Credential)?;
            // Before any token is spent: a broken policy fails the start here. Its trust
            // domain is checked against the identity once enrolled.
            let policy = match Policy::from_file(&plan.policy) {
                Ok(p) => Some(p),
                Err(_) if !plan.policy.exists() => None,
                Err(e) => return Err(RunError::Policy(e.to_string())),
            };
            let source = Arc::new(enroll::Source { client, token_file: token_file.clone() });
            (Start::Enroll { source, check, set_tx, set_rx }, policy)
        }
    };
    Ok(Prepared { plan, identity, policy, exposed })
}

impl Prepared {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The credential, in files mode (enrollment gets one only when serving).
    pub fn credential(&self) -> Option<&Credential> {
        match &self.identity {
            Start::Files(tls) => Some(&tls.cred),
            Start::Enroll { .. } => None,
        }
    }

    /// The policy as read; `None` when its file is missing (the sidecar denies everything).
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// One warning per secret file that group or others can read.
    pub fn exposed_secrets(&self) -> &[String] {
        &self.exposed
    }
}

/// The addresses a sidecar listens on (the kernel's choice where the config said port 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addrs {
    pub inbound: Option<SocketAddr>,
    pub outbound: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl Addrs {
    /// Every listener with its address, in the order `proxy.started` lists them.
    pub fn all(&self) -> Vec<(Listener, SocketAddr)> {
        let inbound = self.inbound.map(|a| (Listener::Inbound, a));
        let outbound = self.outbound.iter().enumerate().map(|(i, a)| (Listener::Outbound(i), *a));
        let admin = self.admin.map(|a| (Listener::Admin, a));
        inbound.into_iter().chain(outbound).chain(admin).collect()
    }
}

/// `inbound=ADDR outbound[0]=ADDR admin=ADDR`: how `proxy.started` and the start line on
/// stderr name them.
impl fmt::Display for Addrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (listener, addr)) in self.all().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{listener}={addr}")?;
        }
        Ok(())
    }
}

/// A prepared sidecar with every listener bound, serving nothing yet.
pub struct Bound {
    prepared: Prepared,
    inbound: Option<TcpListener>,
    outbound: Vec<TcpListener>,
    admin: Option<TcpListener>,
    addrs: Addrs,
    hangup: Hangup,
}

impl Bound {
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// Re-reads every followed file now and reopens file sinks when triggered (SIGHUP's job).
    pub fn hangup(&self) -> Hangup {
        self.hangup.clone()
    }
}

async fn listen(addr: SocketAddr, listener: Listener) -> Result<(TcpListener, SocketAddr), RunError> {
    let err = |source| RunError::Bind { addr, listener, source };
    let l = TcpListener::bind(addr).await.map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

/// Binds every listener of `prepared`, before anything is served.
pub async fn bind(prepared: Prepared) -> Result<Bound, RunError> {
    let plan = &prepared.plan;
    let mut addrs = Addrs::default();
    let inbound = match &plan.inbound {
        Some(i) => {
            let (l, local) = listen(i.listen, Listener::Inbound).await?;
            addrs.inbound = Some(local);
            Some(l)
        }
        None => None,
    };
    let mut outbound = Vec::new();
    for (i, o) in plan.outbound.iter().enumerate() {
        let (l, local) = listen(o.listen, Listener::Outbound(i)).await?;
        addrs.outbound.push(local);
        outbound.push(l);
    }
    let admin = match plan.admin {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!("WARNING: the admin listener {addr} is not on loopback; anyone who reaches it sees metrics, identity and config");
            }
            let (l, local) = listen(addr, Listener::Admin).await?;
            addrs.admin = Some(local);
            Some(l)
        }
        None => None,
    };
    Ok(Bound { prepared, inbound, outbound, admin, addrs, hangup: Hangup::default() })
}

/// Serves until `shutdown` resolves, then drains (see the module doc). `Ok` also when the
/// shutdown came before enrollment succeeded.
pub async fn serve(bound: Bound, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let Bound { prepared, inbound: inbound_l, outbound: outbound_l, admin: admin_l, addrs, hangup } = bound;
    let Prepared { plan, identity, policy, exposed } = prepared;
    let mut shutdown = std::pin::pin!(shutdown);
    let stop = CancellationToken::new();
    let prometheus = crate::metrics::install();
    let (events, writer) = Events::start(plan.sinks.clone(), plan.event_queue, crate::metrics::RECORDER);
    // A key or token others can read is a credential others may already have: say so.
    for warning in exposed {
        events
            .emit(Event::new(EventKind::ConfigSecretExposed, Severity::Warning).reason("file_mode", warning));
    }
    let shape = TlsShape::of(&plan);
    let (tls, policy, missing, follow) = match identity {
        Start::Files(tls) => {
            let own = tls.cred.id.trust_domain().clone();
            let missing = policy.is_none();
            (tls, policy.unwrap_or_else(|| Policy::deny_all(own)), missing, None)
        }
        Start::Enroll { source, check, set_tx, set_rx } => {
            // No certificate, no connection: fail closed until the CA has enrolled us.
            let enrolled = tokio::select! {
                c = enroll::enroll_until_done(&source, &events, &stop) => c,
                () = &mut shutdown => None,
            };
            let Some(cred) = enrolled else {
                events.flush(Duration::from_secs(2)).await;
                writer.abort();
                return Ok(());
            };
            let tls =
                Tls::build(cred, &shape, check.clone()).map_err(|e| RunError::Credential(e.to_string()))?;
            // Read again, now against the identity the CA gave us.
            let (policy, missing) =
                reload::load_policy(&plan.policy, &tls.cred.id).map_err(RunError::Policy)?;
            (tls, policy, missing, Some((source, check, set_tx, set_rx)))
        }
    };
    let own_id = tls.cred.id.clone();
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
        shutdown: stop.clone(),
        tasks: Default::default(),
        own_addrs: std::sync::OnceLock::new(),
        revocations: follow.as_ref().map(|(_, _, _, rx)| rx.clone()),
    });
    let _ = shared.own_addrs.set(addrs.all().into_iter().map(|(_, a)| a).collect());
    let servers: Vec<_> = plan.outbound.iter().map(|o| o.server.clone()).collect();
    crate::metrics::register(&own_id, &shared.policy(), &servers);

    let mut tasks = Vec::new();
    if let (Some(l), Some(i), Some(local)) = (inbound_l, &plan.inbound, addrs.inbound) {
        let fwd = Arc::<str>::from(i.forward.to_string());
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
    for (i, ((l, o), local)) in
        outbound_l.into_iter().zip(&plan.outbound).zip(addrs.outbound.clone()).enumerate()
    {
        let route = Arc::new(Route { index: i, connect: o.connect.to_string(), server: o.server.clone() });
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
    if let Some(l) = admin_l {
        let policy_file = plan.policy.clone();
        let admin =
            admin::Admin { metrics: prometheus.clone(), config: admin::config_json(&plan), policy_file };
        tasks.push(tokio::spawn(admin::serve(l, shared.clone(), Arc::new(admin))));
    }
    if let Some(handle) = prometheus {
        tasks.push(tokio::spawn(crate::metrics::upkeep(handle, stop.clone())));
    }
    if let Some((source, check, set_tx, _)) = follow {
        let shape = Arc::new(shape.clone());
        tasks.push(tokio::spawn(enroll::maintain(
            source.clone(),
            shape.clone(),
            tls_tx.clone(),
            check.clone(),
            events.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(enroll::follow_revocations(
            source,
            shape,
            tls_tx.clone(),
            set_tx,
            check,
            events.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(reload::run(
        files.clone(),
        shape,
        tls_tx,
        policy_tx,
        events.clone(),
        hangup,
        stop.clone(),
    )));

    // Announce the start once the first revocation load has ended either way: loaded (and
    // ready), or failed (not ready, and the admin port says why). Listeners already refuse
    // connections until the list is loaded.
    let mut stopping = false;
    if let Some(mut rx) = shared.revocations.clone() {
        tokio::select! {
            _ = rx.wait_for(|s| s.settled()) => {}
            () = &mut shutdown => stopping = true,
        }
    }
    let mut started = Event::new(EventKind::ProxyStarted, Severity::Info).detail(addrs.to_string());
    started = started.src_id(own_id.to_string());
    events.emit(started);
    if missing {
        events.emit(
            Event::new(EventKind::PolicyReloaded, Severity::Warning)
                .detail(format!("{} is missing: denying everything", files.policy.display())),
        );
    }
    tracing::info!("{own_id} serving {addrs}");

    if !stopping {
        shutdown.await;
    }
    // Nothing is accepted from here on; live connections have the grace period, then are cut.
    stop.cancel();
    shared.tasks.close();
    let grace = plan.limits.drain_timeout;
    let live = shared.tasks.len();
    let stopping = format!("draining {live} connection(s) for up to {}s", grace.as_secs());
    events.emit(Event::new(EventKind::ProxyStopping, Severity::Info).detail(stopping));
    let drained = shared.tasks.drain(grace).await;
    if drained.aborted > 0 {
        let cut = format!("{} connection(s) still open; closed them", drained.aborted);
        events.emit(Event::new(EventKind::ProxyDrainTimeout, Severity::Warning).detail(cut));
    }
    for t in tasks {
        t.abort();
    }
    events.flush(Duration::from_secs(2)).await;
    writer.abort();
    Ok(())
}

#[cfg(test)]
#[path = "run/tests.rs"]
mod tests;
