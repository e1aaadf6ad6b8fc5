//! Inbound: a peer sidecar connects with mutual TLS. Stages: handshake (identity checked
//! inside the verifier) -> policy decision on the verified identity -> connect to the local
//! app -> forward. A refused connection is closed before a byte reaches the app.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::policy::Request;
use rustls::HandshakeKind;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::connect::connect;
use crate::outcome::{Direction, Outcome};
use crate::state::Shared;
use crate::tls;
use crate::{enroll, forward};

/// One inbound connection, from accept to close.
pub async fn handle(
    shared: Arc<Shared>,
    listener: SocketAddr,
    forward_to: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let limits = shared.limits;
    let mut rec = Outcome::new(&shared, Direction::Inbound, listener, peer);
    let current = shared.tls();
    if !shared.ready() {
        // Fail closed: an expired own certificate means no new connections at all.
        return rec
            .handshake_failed("own_certificate_expired", "this sidecar has no valid certificate".into());
    }
    rec.dst_id(current.cred.id.clone());
    let Some(config) = current.server.clone() else {
        return rec.handshake_failed("no_config", "inbound has no TLS config".into());
    };
    rec.handshake_started();
    let tls_stream = match timeout(limits.handshake_timeout, TlsAcceptor::from(config).accept(stream)).await {
        Err(_) => return rec.handshake_failed("timeout", "handshake timed out".into()),
        Ok(Err(e)) => return rec.handshake_failed(tls::failure_reason(&e), tls::failure_detail(&e)),
        Ok(Ok(s)) => s,
    };
    rec.handshake_ok(tls_stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed));
    // The verifier accepted this chain and profile, so the identity is there.
    let Some((peer_serial, peer_id)) = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::peer_serial_and_identity)
    else {
        return rec.handshake_failed("bad_svid", "verified peer has no identity".into());
    };
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
    let stop = enroll::revoked(shared.revocations.clone(), peer_serial, peer_id);
    let (end, counts) = forward::splice(tls_stream, app, limits.idle_timeout, stop).await;
    rec.closed(end, counts);
}
