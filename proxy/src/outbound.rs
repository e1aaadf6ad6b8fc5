//! Outbound: the local app connects in plaintext. Stages: readiness (fail closed) -> egress
//! authorization (this workload -> the configured server identity: a `Permit` or a
//! `Denial`) before any connection is made -> connect to the remote sidecar -> mutual TLS,
//! where the verifier insists on the configured identity and ALPN offers `zt-mesh/tcp1` ->
//! forward under the permit. Nothing is read from the app before the remote is verified, so
//! no request byte can leave for a wrong peer.
//!
//! [`serve`] is the whole path over any app stream and any remote connector, so it runs in
//! memory in tests; [`handle`] gives it the app's TCP connection and the route's address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_config::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::authorize::authorize;
use crate::connect::{connect, ConnectError};
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

/// One outbound connection from the local app, from accept to close.
pub async fn handle(
    shared: Arc<Shared>,
    listener: SocketAddr,
    route: Arc<Route>,
    app: TcpStream,
    peer: SocketAddr,
) {
    let rec = Outcome::new(&shared, Direction::Outbound, listener, peer);
    // A future does nothing until awaited: the remote is connected only past the permit.
    let remote = connect(&shared, &route.connect, shared.limits.connect_timeout);
    serve(&shared, rec, &route, app, remote).await;
}

/// The outbound stages for the app's connection `app`, recorded in `rec`. `remote` connects
/// to the remote sidecar; it is awaited only after an allowing decision, and `app` is read
/// only once the remote proved `route.server`.
pub async fn serve<App, RemoteIo>(
    shared: &Shared,
    mut rec: Outcome,
    route: &Route,
    app: App,
    remote: impl Future<Output = Result<RemoteIo, ConnectError>>,
) where
    App: AsyncRead + AsyncWrite + Unpin,
    RemoteIo: AsyncRead + AsyncWrite + Unpin,
{
    rec.outbound(route.index);
    let limits = shared.limits;
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
    let tcp = match remote.await {
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
    let stop = stop::watch(shared, &permit, &peer);
    let (end, counts) = forward::forward(permit, app, remote, limits.idle_timeout, stop, rec.meter()).await;
    rec.closed(end, counts);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use mesh_config::SpiffeId;
    use mesh_identity::testing::TestPki;
    use serde_json::Value;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::inbound::tests::{id, sidecar, LIMIT};
    use crate::tls::{
        server_config, Alpn, ClientAuth, NothingRevoked, Resumption, ServerSettings, ServerTls,
    };

    /// A remote sidecar's server config for `who`.
    fn remote(pki: &TestPki, who: &SpiffeId) -> ServerTls {
        let settings = ServerSettings {
            client_auth: ClientAuth::Required,
            resumption: Resumption::Off,
            access: Arc::new(NothingRevoked),
            alpn: Alpn::mesh(),
        };
        server_config(&pki.identity(who), &pki.bundle, &settings).expect("server config")
    }

    /// Runs [`serve`] for the app end `app` of the route to `server`, the remote being the
    /// near end of another pipe, handed out only if `serve` asks for it, while `far` drives
    /// the remote's end. Returns the one event and whether the remote was connected.
    async fn one_connection<F, Fut>(
        shared: &Shared,
        server: &SpiffeId,
        app: DuplexStream,
        far: F,
    ) -> (Value, bool)
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut events = shared.events.subscribe();
        let route = Route { index: 0, connect: "10.0.0.7:15443".into(), server: server.clone() };
        let (near, remote_io) = duplex(64 * 1024);
        let connected = AtomicBool::new(false);
        let remote = async {
            connected.store(true, Ordering::SeqCst);
            Ok::<_, ConnectError>(near)
        };
        let rec = Outcome::new(
            shared,
            Direction::Outbound,
            ([127, 0, 0, 1], 15001).into(),
            ([127, 0, 0, 1], 40000).into(),
        );
        tokio::join!(serve(shared, rec, &route, app, remote), far(remote_io));
        let e = events.try_recv().expect("the connection's event");
        assert!(events.try_recv().is_none(), "one event per connection");
        (serde_json::to_value(&*e).expect("event JSON"), connected.load(Ordering::SeqCst))
    }

    /// The whole outbound path in memory: egress authorized -> remote connected -> TLS with
    /// the configured identity (offering zt-mesh/tcp1) -> the app's bytes forwarded.
    #[tokio::test]
    async fn an_allowed_egress_reaches_the_verified_remote() {
        let pki = TestPki::new();
        let (web, api) =
            (id("spiffe://example.org/ns/frontend/sa/web"), id("spiffe://example.org/ns/orders/sa/api"));
        let shared = sidecar(&pki, &web, vec![api.clone()]);
        let server = remote(&pki, &api);
        let (app, mut app_far) = duplex(64 * 1024);
        let app_side = async move {
            app_far.write_all(b"ping").await.expect("the app writes");
            app_far.shutdown().await.expect("the app half-closes");
            let mut back = Vec::new();
            app_far.read_to_end(&mut back).await.expect("the app reads");
            assert_eq!(back, b"pong");
        };
        let ((), (event, connected)) = tokio::join!(
            app_side,
            one_connection(&shared, &api, app, |io| async move {
                let mut h = handshake::accept(&server, io, LIMIT).await.expect("the remote's handshake");
                assert_eq!((h.peer.id.clone(), h.mode), (web.clone(), crate::tls::Protocol::MeshTcp));
                let mut got = Vec::new();
                h.stream.read_to_end(&mut got).await.expect("the remote reads to the half-close");
                assert_eq!(got, b"ping");
                h.stream.write_all(b"pong").await.expect("the remote answers");
                h.stream.shutdown().await.expect("the remote closes");
            })
        );
        assert!(connected);
        assert_eq!(
            (event["event"].as_str(), event["reason"].as_str()),
            (Some("connection"), Some("closed")),
            "{event}"
        );
        assert_eq!((event["bytes_in"].as_u64(), event["bytes_out"].as_u64()), (Some(4), Some(4)), "{event}");
    }

    /// Egress the policy does not allow: refused before any connection is made.
    #[tokio::test]
    async fn a_denied_egress_never_connects() {
        let pki = TestPki::new();
        let web = id("spiffe://example.org/ns/frontend/sa/web");
        let charge = id("spiffe://example.org/ns/payments/sa/charge");
        let shared = sidecar(&pki, &web, vec![charge.clone()]);
        let (app, mut app_far) = duplex(64 * 1024);
        app_far.write_all(b"secret request").await.expect("the app writes");
        let (event, connected) = one_connection(&shared, &charge, app, |mut io| async move {
            let mut got = Vec::new();
            let _ = io.read_to_end(&mut got).await;
            assert!(got.is_empty(), "bytes left for the remote: {got:?}");
        })
        .await;
        assert!(!connected, "the remote was never connected");
        assert_eq!(
            (event["event"].as_str(), event["reason"].as_str()),
            (Some("policy.deny"), Some("no_rule")),
            "{event}"
        );
        assert_eq!(event["dst_id"], charge.to_string(), "{event}");
    }
}
