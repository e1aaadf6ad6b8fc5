//! Outbound: the local app connects in plaintext. Stages: readiness (fail closed) -> egress
//! authorization (this workload -> the configured server identity: a `Permit` or a
//! `Denial`) before any connection is made -> connect to the remote sidecar -> mutual TLS,
//! where the verifier insists on the configured identity and ALPN offers `zt-mesh/tcp1` ->
//! forward under the permit. Nothing is read from the app before the remote is verified, so
//! no request byte can leave for a wrong peer.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::SpiffeId;
use tokio::net::TcpStream;

use crate::authorize::authorize;
use crate::connect::connect;
use crate::handshake::{self, Failure, Handshaken};
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
    if let Some(not_ready) = shared.not_ready() {
        // Fail closed: without a valid own certificate, or (following a CA) without its
        // revocation list, no new connections at all.
        return rec.handshake_failed(not_ready.into());
    }
    rec.src_id(current.cred.id.clone());
    rec.dst_id(route.server.clone());
    rec.dst_addr(route.connect.clone());
    let permit = match authorize(&shared.policy(), &current.cred.id, &route.server) {
        Ok(p) => p,
        Err(denial) => return rec.denied(denial),
    };
    rec.allowed(&permit);
    let tcp = match connect(&shared, &route.connect, limits.connect_timeout).await {
        Ok(s) => s,
        Err(e) => return rec.upstream_failed(e),
    };
    let Some(config) = current.clients.get(route.index).cloned() else {
        return rec.handshake_failed(Failure::NoConfig("outbound"));
    };
    rec.handshake_started();
    let Handshaken { stream: remote, peer, resumed, mode: _ } =
        match handshake::connect_tls(&config, tcp, limits.handshake_timeout).await {
            Ok(h) => h,
            Err(f) => return rec.handshake_failed(f),
        };
    rec.handshake_ok(resumed);
    let stop = stop::watch(&shared, &permit, &peer);
    let (end, counts) = forward::forward(permit, app, remote, limits.idle_timeout, stop).await;
    rec.closed(end, counts);
}
