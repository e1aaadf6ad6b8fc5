//! Outbound: the local app connects in plaintext. Stages: egress decision (this workload ->
//! the configured server identity) before any connection is made -> connect to the remote
//! sidecar -> mutual TLS, where the verifier insists on the configured identity -> forward.
//! Nothing is read from the app before the remote is verified, so no request byte can leave
//! for a wrong peer.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::policy::Request;
use mesh_config::SpiffeId;
use rustls::HandshakeKind;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::connect::connect;
use crate::outcome::{Direction, Outcome};
use crate::state::Shared;
use crate::tls;
use crate::{enroll, forward};

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
    if !shared.ready() {
        // Fail closed: an expired own certificate means no new connections at all.
        return rec
            .handshake_failed("own_certificate_expired", "this sidecar has no valid certificate".into());
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
    let remote =
        match timeout(limits.handshake_timeout, TlsConnector::from(config).connect(tls::sni(), tcp)).await {
            Err(_) => return rec.handshake_failed("timeout", "handshake timed out".into()),
            Ok(Err(e)) => return rec.handshake_failed(tls::failure_reason(&e), tls::failure_detail(&e)),
            Ok(Ok(s)) => s,
        };
    rec.handshake_ok(remote.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed));
    let stop = match remote
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::peer_serial_and_identity)
    {
        Some((serial, id)) => enroll::revoked(shared.revocations.clone(), serial, id),
        None => return rec.handshake_failed("bad_svid", "verified server has no identity".into()),
    };
    let (end, counts) = forward::splice(app, remote, limits.idle_timeout, stop).await;
    rec.closed(end, counts);
}
