//! Inbound: a peer sidecar connects with mutual TLS. Stages: readiness (fail closed) ->
//! handshake (identity checked inside the verifier, mode from ALPN) -> authorization on the
//! verified identity (a `Permit`, or a `Denial`) -> connect to the local app -> forward under
//! the permit. A refused connection is closed before a byte reaches the app.
//!
//! [`serve`] is the whole path over any transport and any app connector, so it runs in
//! memory in tests; [`handle`] gives it a TCP connection and the configured app address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::authorize::authorize;
use crate::connect::{connect, ConnectError};
use crate::handshake::{self, Failure, Handshaken};
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
    let rec = Outcome::new(&shared, Direction::Inbound, listener, peer);
    // A future does nothing until awaited: the app is connected only past the permit.
    let app = connect(&shared, &forward_to, shared.limits.connect_timeout);
    serve(&shared, rec, stream, forward_to.to_string(), app, move || pending.authenticated()).await;
}

/// The inbound stages on `stream`, recorded in `rec`. `app` connects to the local app at
/// `target`; it is awaited only after an allowing decision. `authenticated` runs once the
/// peer proved its identity (the listener's pending budget takes its slot back).
pub async fn serve<IO, AppIo>(
    shared: &Shared,
    mut rec: Outcome,
    stream: IO,
    target: String,
    app: impl Future<Output = Result<AppIo, ConnectError>>,
    authenticated: impl FnOnce(),
) where
    IO: AsyncRead + AsyncWrite + Unpin,
    AppIo: AsyncRead + AsyncWrite + Unpin,
{
    let limits = shared.limits;
    let current = shared.tls();
    if let Some(not_ready) = shared.not_ready() {
        // Fail closed: without a valid own certificate, or (following a CA) without its
        // revocation list, no new connections at all.
        return rec.handshake_failed(not_ready.into());
    }
    rec.dst_id(current.cred.id.clone());
    let Some(config) = current.server.clone() else {
        return rec.handshake_failed(Failure::NoConfig("inbound"));
    };
    rec.handshake_started();
    let Handshaken { stream: tls_stream, peer, resumed, mode: _ } =
        match handshake::accept(&config, stream, limits.handshake_timeout).await {
            Ok(h) => h,
            Err(f) => return rec.handshake_failed(f),
        };
    rec.handshake_ok(resumed);
    // Authenticated: no longer counted against the source's pending budget.
    authenticated();
    rec.src_id(peer.id.clone());
    let permit = match authorize(&shared.policy(), &peer.id, &current.cred.id) {
        Ok(p) => p,
        Err(denial) => return rec.denied(denial),
    };
    rec.allowed(&permit);
    rec.dst_addr(target);
    let app = match app.await {
        Ok(s) => s,
        Err(e) => return rec.upstream_failed(e),
    };
    let stop = stop::watch(shared, &permit, &peer);
    let (end, counts) =
        forward::forward(permit, tls_stream, app, limits.idle_timeout, stop, rec.meter()).await;
    rec.closed(end, counts);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use mesh_config::policy::Policy;
    use mesh_config::SpiffeId;
    use mesh_identity::testing::TestPki;
    use mesh_runtime::serve::Tasks;
    use serde_json::Value;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::credentials::Credential;
    use crate::events::{Events, Recorder};
    use crate::reload::TlsShape;
    use crate::state::{Limits, Tls};
    use crate::tls::{client_config, Alpn, ClientSettings, ClientTls, NothingRevoked, PeerKind, Resumption};

    pub(crate) use crate::SAMPLE_POLICY as POLICY;
    pub(crate) const LIMIT: Duration = Duration::from_secs(10);

    pub(crate) fn id(s: &str) -> SpiffeId {
        s.parse().expect("a valid SPIFFE ID")
    }

    /// A sidecar's shared state for `own` (files mode; an inbound, and one outbound per
    /// identity in `servers`), following [`POLICY`], with no event sink: events are read
    /// through a subscription. The outbound tests use it too.
    pub(crate) fn sidecar(pki: &TestPki, own: &SpiffeId, servers: Vec<SpiffeId>) -> Shared {
        let ident = pki.identity(own);
        let cred =
            Credential::from_parts(ident.chain, ident.key, vec![pki.root().clone()]).expect("credential");
        let shape = TlsShape { inbound: true, servers, resumption: Resumption::Off };
        let tls = Tls::build(cred, &shape, Arc::new(NothingRevoked)).expect("TLS configs");
        let policy = Policy::from_str_named(POLICY, "policy.toml").expect("policy");
        let (events, _sinks) = Events::start(Vec::new(), 16, Recorder::NONE);
        Shared {
            tls: watch::channel(Arc::new(tls)).1,
            policy: watch::channel(Arc::new(policy)).1,
            events,
            limits: Limits::default(),
            shutdown: CancellationToken::new(),
            tasks: Tasks::new(),
            own_addrs: std::sync::OnceLock::new(),
            revocations: None,
        }
    }

    /// A peer sidecar's client config: `who`, expecting `server`.
    fn peer(pki: &TestPki, who: &SpiffeId, server: &SpiffeId) -> ClientTls {
        let settings = ClientSettings {
            expected: server.clone(),
            kind: PeerKind::Workload,
            resumption: Resumption::Off,
            access: Arc::new(NothingRevoked),
            alpn: Alpn::mesh(),
        };
        client_config(Some(&pki.identity(who)), &pki.bundle, &settings).expect("client config")
    }

    /// Runs [`serve`] on one end of an in-memory pipe while `client` drives the other; the
    /// app is the near end of another pipe, handed out only if `serve` asks for it.
    /// Returns the connection's one event and whether the app was connected.
    async fn one_connection<F, Fut>(shared: &Shared, app: DuplexStream, client: F) -> (Value, bool)
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut events = shared.events.subscribe();
        let (peer_io, sidecar_io) = duplex(64 * 1024);
        let connected = AtomicBool::new(false);
        let app = async {
            connected.store(true, Ordering::SeqCst);
            Ok::<_, ConnectError>(app)
        };
        let rec = Outcome::new(
            shared,
            Direction::Inbound,
            ([127, 0, 0, 1], 15443).into(),
            ([10, 0, 0, 9], 40000).into(),
        );
        tokio::join!(serve(shared, rec, sidecar_io, "127.0.0.1:8080".into(), app, || {}), client(peer_io));
        let e = events.try_recv().expect("the connection's event");
        assert!(events.try_recv().is_none(), "one event per connection");
        (serde_json::to_value(&*e).expect("event JSON"), connected.load(Ordering::SeqCst))
    }

    /// The whole inbound path in memory: handshake (identity and ALPN) -> authorize ->
    /// forward, both ways, with a half-close passed on; one `connection` event.
    #[tokio::test]
    async fn an_allowed_peer_is_handshaken_authorized_and_forwarded() {
        let pki = TestPki::new();
        let (api, web) =
            (id("spiffe://example.org/ns/orders/sa/api"), id("spiffe://example.org/ns/frontend/sa/web"));
        let shared = sidecar(&pki, &api, Vec::new());
        let client = peer(&pki, &web, &api);
        let (app_near, mut app_far) = duplex(64 * 1024);
        let app_side = async move {
            let mut got = [0u8; 4];
            app_far.read_exact(&mut got).await.expect("the app reads the request");
            assert_eq!(&got, b"ping");
            app_far.write_all(b"pong").await.expect("the app answers");
            let mut rest = Vec::new();
            app_far.read_to_end(&mut rest).await.expect("the peer's half-close reaches the app");
            assert!(rest.is_empty(), "{rest:?}");
            app_far.shutdown().await.expect("the app closes");
        };
        let ((), (event, connected)) = tokio::join!(
            app_side,
            one_connection(&shared, app_near, |io| async move {
                let mut h = handshake::connect_tls(&client, io, LIMIT).await.expect("the peer's handshake");
                assert_eq!(h.mode, crate::tls::Protocol::MeshTcp);
                h.stream.write_all(b"ping").await.expect("peer writes");
                h.stream.flush().await.expect("peer flushes");
                let mut got = [0u8; 4];
                h.stream.read_exact(&mut got).await.expect("peer reads the answer");
                assert_eq!(&got, b"pong");
                h.stream.shutdown().await.expect("peer half-closes");
                let mut rest = Vec::new();
                let _ = h.stream.read_to_end(&mut rest).await;
                assert!(rest.is_empty(), "{rest:?}");
            })
        );
        assert!(connected, "the app was connected");
        assert_eq!(event["event"], "connection", "{event}");
        assert_eq!(event["reason"], "closed", "{event}");
        assert_eq!(event["decision"], "allow", "{event}");
        assert_eq!(event["src_id"], web.to_string(), "{event}");
        assert!(event["rule"].as_str().is_some_and(|r| r.starts_with("allow[0]")), "{event}");
        assert_eq!((event["bytes_in"].as_u64(), event["bytes_out"].as_u64()), (Some(4), Some(4)), "{event}");
    }

    /// A verified peer the policy does not allow: one `policy.deny` event, the app is never
    /// connected, and no byte the peer sends reaches the app side.
    #[tokio::test]
    async fn a_denied_peer_never_reaches_the_app() {
        let pki = TestPki::new();
        let api = id("spiffe://example.org/ns/orders/sa/api");
        let charge = id("spiffe://example.org/ns/payments/sa/charge");
        let shared = sidecar(&pki, &api, Vec::new());
        let client = peer(&pki, &charge, &api);
        let (app_near, mut app_far) = duplex(64 * 1024);
        let (event, connected) = one_connection(&shared, app_near, |io| async move {
            // TLS 1.3: the client finishes its handshake before the server has decided.
            let mut h = handshake::connect_tls(&client, io, LIMIT).await.expect("the peer's handshake");
            let _ = h.stream.write_all(b"secret request").await;
            let _ = h.stream.flush().await;
            let mut rest = Vec::new();
            let _ = h.stream.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "the refused peer got bytes back: {rest:?}");
        })
        .await;
        assert!(!connected, "the app was never connected");
        let mut seen = Vec::new();
        app_far.read_to_end(&mut seen).await.expect("the app side ends");
        assert!(seen.is_empty(), "bytes reached the app side: {seen:?}");
        assert_eq!(event["event"], "policy.deny", "{event}");
        assert_eq!(
            (event["decision"].as_str(), event["reason"].as_str()),
            (Some("deny"), Some("no_rule")),
            "{event}"
        );
        assert_eq!(event["src_id"], charge.to_string(), "{event}");
    }
}
