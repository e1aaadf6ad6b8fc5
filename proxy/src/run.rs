//! `mesh-proxy run`: loads the credential and policy (refusing to start without a valid
//! certificate), binds every listener, starts the accept loops, the reloader and the admin
//! listener, then waits for SIGTERM/SIGINT: stop accepting, drain live connections for the
//! grace period, then exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::SpiffeId;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::credentials::Credential;
use crate::events::{Event, Events, Severity, Sink};
use crate::outbound::Route;
use crate::reload::{self, TlsShape, Watched};
use crate::state::{Limits, Shared, Tls};
use crate::{admin, inbound, listener, outbound};

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub files: Watched,
    /// Inbound listen address and the local app's address.
    pub inbound: Option<(SocketAddr, String)>,
    /// Per outbound: listen address, remote sidecar address, expected server identity.
    pub outbound: Vec<(SocketAddr, String, SpiffeId)>,
    pub admin: Option<SocketAddr>,
    pub sinks: Vec<Sink>,
    pub limits: Limits,
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
    let files = plan.files.clone();
    let cred = Credential::load(&files.cert, &files.key, &files.bundle)
        .map_err(|e| RunError::Credential(e.to_string()))?;
    let shape = TlsShape {
        inbound: plan.inbound.is_some(),
        servers: plan.outbound.iter().map(|o| o.2.clone()).collect(),
    };
    let tls =
        Tls::build(cred, shape.inbound, &shape.servers, None).map_err(|e| RunError::Credential(e.to_string()))?;
    let own_id = tls.cred.id.clone();
    let (policy, missing) = reload::load_policy(&files.policy, &own_id).map_err(RunError::Policy)?;

    let (events, writer) = Events::start(plan.sinks.clone());
    let (tls_tx, tls_rx) = watch::channel(Arc::new(tls));
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
    let shared = Arc::new(Shared {
        tls: tls_rx,
        policy: policy_rx,
        events: events.clone(),
        limits: plan.limits,
        conns: Arc::new(Semaphore::new(plan.limits.max_connections)),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        own_addrs: std::sync::OnceLock::new(),
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
                eprintln!("mesh-proxy: WARNING: the admin listener {addr} is not on loopback; anyone who reaches it sees readiness");
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
        tasks.push(tokio::spawn(listener::serve(l, shared.clone(), move |stream, peer, permit| {
            let (sh, fwd) = (sh.clone(), fwd.clone());
            async move {
                inbound::handle(sh, local, fwd, stream, peer).await;
                drop(permit);
            }
        })));
    }
    for (l, local, route) in outbound_listeners {
        let sh = shared.clone();
        tasks.push(tokio::spawn(listener::serve(l, shared.clone(), move |stream, peer, permit| {
            let (sh, route) = (sh.clone(), route.clone());
            async move {
                outbound::handle(sh, local, route, stream, peer).await;
                drop(permit);
            }
        })));
    }
    if let Some(l) = admin_listener {
        tasks.push(tokio::spawn(admin::serve(l, shared.clone())));
    }
    tasks.push(tokio::spawn(reload::run(
        files.clone(),
        shape,
        tls_tx,
        policy_tx,
        events.clone(),
        shared.shutdown.clone(),
    )));

    let mut started = Event::new("proxy.started", Severity::Info).detail(bound.join(" "));
    started.src_id = Some(own_id.to_string());
    events.emit(started);
    if missing {
        events.emit(
            Event::new("policy.reloaded", Severity::Warning)
                .detail(format!("{} is missing: denying everything", files.policy.display())),
        );
    }
    eprintln!("mesh-proxy: {own_id} serving {}", bound.join(" "));

    wait_for_stop().await;
    shared.shutdown.cancel();
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
