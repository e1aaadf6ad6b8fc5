//! Inbound: a peer sidecar connects with mutual TLS. Stages: handshake (identity checked
//! inside the verifier) -> policy decision on the verified identity -> connect to the local
//! app -> forward. A refused connection is closed before a byte reaches the app.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::policy::Request;
use tokio::net::TcpStream;

use crate::connect::connect;
use crate::handshake::{self, Handshaken};
use crate::outcome::{Direction, Outcome};
use crate::state::Shared;
use crate::{forward, stop};

/// One inbound connection, from accept to close.
pub async fn handle(
    shared: Arc<Shared>,
    listener: SocketAddr,
    forward_to: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    mut pending: crate::listener::Pending,
) {
    let limits = shared.limits;
    let mut rec = Outcome::new(&shared, Direction::Inbound, listener, peer);
    let current = shared.tls();
    if let Some((reason, why)) = shared.not_ready() {
        // Fail closed: without a valid own certificate, or (following a CA) without its
        // revocation list, no new connections at all.
        return rec.handshake_failed(reason, why);
    }
    rec.dst_id(current.cred.id.clone());
    let Some(config) = current.server.clone() else {
        return rec.handshake_failed("no_config", "inbound has no TLS config".into());
    };
    rec.handshake_started();
    let Handshaken { stream: tls_stream, peer, resumed } =
        match handshake::accept(&config, stream, limits.handshake_timeout).await {
            Ok(h) => h,
            Err(f) => return rec.handshake_failed(f.reason, f.detail),
        };
    rec.handshake_ok(resumed);
    // Authenticated: no longer counted against the source's pending budget.
    pending.authenticated();
    let (peer_serial, peer_id) = (peer.serial, peer.id);
    rec.src_id(peer_id.clone());
    let decision = shared.policy().decide(&Request { from: &peer_id, to: &current.cred.id, http: None });
    if !decision.allowed() {
        return rec.denied(&decision);
    }
    rec.allowed(&decision);
    rec.dst_addr(forward_to.to_string());
    let app = match connect(&shared, &forward_to, limits.connect_timeout).await {
        Ok(s) => s,
        Err((reason, detail)) => return rec.upstream_failed(reason, detail),
    };
    let stop = stop::watch(&shared, Direction::Inbound, peer_serial, peer_id, current.cred.id.clone());
    let (end, counts) = forward::splice(tls_stream, app, limits.idle_timeout, stop).await;
    rec.closed(end, counts);
}
