//! Outbound: the local app connects in plaintext. Stages: egress decision (this workload ->
//! the configured server identity) before any connection is made -> connect to the remote
//! sidecar -> mutual TLS, where the verifier insists on the configured identity -> forward.
//! Nothing is read from the app before the remote is verified, so no request byte can leave
//! for a wrong peer.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::policy::Request;
use mesh_config::SpiffeId;
use tokio::net::TcpStream;

use crate::connect::connect;
use crate::handshake::{self, Handshaken};
use crate::outcome::{Direction, Outcome};
use crate::state::Shared;
use crate::{forward, stop};

/// What one `[[outbound]]` needs at connection time.
pub struct Route {
    /// Index into the per-outbound client configs.
    pub index: usize,
    pub connect: String,
    pub server: SpiffeId,
}

pub async fn handle(
    shared: Arc<Shared>,
    listener: SocketAddr,
    route: Arc<Route>,
    app: TcpStream,
    peer: SocketAddr,
) {
    let limits = shared.limits;
    let mut rec = Outcome::new(&shared, Direction::Outbound, listener, peer);
    let current = shared.tls();
    if let Some((reason, why)) = shared.not_ready() {
        // Fail closed: without a valid own certificate, or (following a CA) without its
        // revocation list, no new connections at all.
        return rec.handshake_failed(reason, why);
    }
    rec.src_id(current.cred.id.clone());
    rec.dst_id(route.server.clone());
    rec.dst_addr(route.connect.clone());
    let decision = shared.policy().decide(&Request { from: &current.cred.id, to: &route.server, http: None });
    if !decision.allowed() {
        return rec.denied(&decision);
    }
    rec.allowed(&decision);
    let tcp = match connect(&shared, &route.connect, limits.connect_timeout).await {
        Ok(s) => s,
        Err((reason, detail)) => return rec.upstream_failed(reason, detail),
    };
    let Some(config) = current.clients.get(route.index).cloned() else {
        return rec.handshake_failed("no_config", "outbound has no TLS config".into());
    };
    rec.handshake_started();
    let Handshaken { stream: remote, peer, resumed } =
        match handshake::connect_tls(&config, tcp, limits.handshake_timeout).await {
            Ok(h) => h,
            Err(f) => return rec.handshake_failed(f.reason, f.detail),
        };
    rec.handshake_ok(resumed);
    let stop = stop::watch(&shared, Direction::Outbound, peer.serial, peer.id, current.cred.id.clone());
    let (end, counts) = forward::splice(app, remote, limits.idle_timeout, stop).await;
    rec.closed(end, counts);
}
