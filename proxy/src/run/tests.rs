//! A whole sidecar in-process: `prepare -> bind -> serve` on 127.0.0.1 ephemeral ports, with
//! files from a [`TestPki`] in a temporary directory, a real TCP echo app behind the inbound,
//! and a real mTLS client (`mesh_identity::tls::client_config`) in front of it. The shutdown
//! is a future the test resolves; what the drain does to a live connection is observed on
//! that connection and in the events file.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::SpiffeId;
use mesh_identity::testing::TestPki;
use mesh_identity::tls::{self, Alpn, ClientSettings, NothingRevoked, PeerKind, Resumption};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::{bind, prepare, serve};

/// Bound on every wait: generous, two busy cores.
const DEADLINE: Duration = Duration::from_secs(20);

use crate::SAMPLE_POLICY as POLICY;

fn id(s: &str) -> SpiffeId {
    s.parse().expect("a valid SPIFFE ID")
}

/// Writes `<dir>/{cert,key,bundle}.pem` for `identity`, as `mesh-ca issue` would.
fn write_identity(dir: &Path, pki: &TestPki, identity: &tls::Identity) {
    use std::os::unix::fs::OpenOptionsExt;
    let chain: String = identity.chain.iter().map(mesh_identity::pem::cert).collect();
    std::fs::write(dir.join("cert.pem"), chain).expect("writing cert.pem");
    let key = mesh_identity::pem::encode("PRIVATE KEY", identity.key.secret_der());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("key.pem"))
        .expect("creating key.pem");
    std::io::Write::write_all(&mut f, key.as_bytes()).expect("writing key.pem");
    std::fs::write(dir.join("bundle.pem"), mesh_identity::pem::cert(pki.root())).expect("writing bundle.pem");
}

/// An echo app on 127.0.0.1:0: every connection gets back what it sends.
async fn echo_app() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the app");
    let addr = l.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Polls `path` (bounded) until a line of it holds `needle`.
async fn wait_line(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "no {needle} in {}:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sidecar for orders/api in a temporary directory with `drain_timeout`, serving in a task
/// until `stop` is sent; the client config of frontend/web that may call it.
struct InProcess {
    dir: tempfile::TempDir,
    inbound: std::net::SocketAddr,
    client: tls::ClientTls,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), super::RunError>>,
}

impl InProcess {
    async fn start(drain_timeout: &str) -> Self {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().expect("a temporary directory");
        write_identity(dir.path(), &pki, &pki.identity(&id("spiffe://example.org/ns/orders/sa/api")));
        std::fs::write(dir.path().join("policy.toml"), POLICY).expect("writing policy.toml");
        let app = echo_app().await;
        let config = format!(
            "policy = \"policy.toml\"\n\n[identity]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nbundle = \"bundle.pem\"\n\n\
             [inbound]\nlisten = \"127.0.0.1:0\"\nforward = \"{app}\"\n\n\
             [limits]\ndrain_timeout = \"{drain_timeout}\"\n\n[events]\nsink = [\"file:events.log\"]\n"
        );
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, config).expect("writing sidecar.toml");

        let bound = bind(prepare(&path).expect("a valid sidecar")).await.expect("bound");
        let inbound = bound.addrs().inbound.expect("an inbound listener");
        assert_ne!(inbound.port(), 0, "the kernel's port is reported");
        let (tx, rx) = oneshot::channel();
        let served = tokio::spawn(serve(bound, async move {
            let _ = rx.await;
        }));
        let settings = ClientSettings {
            expected: id("spiffe://example.org/ns/orders/sa/api"),
            kind: PeerKind::Workload,
            resumption: Resumption::Off,
            access: Arc::new(NothingRevoked),
            alpn: Alpn::mesh(),
        };
        let web = pki.identity(&id("spiffe://example.org/ns/frontend/sa/web"));
        let client = tls::client_config(Some(&web), &pki.bundle, &settings).expect("a client config");
        let sc = Self { dir, inbound, client, stop: Some(tx), served };
        wait_line(&sc.events(), "proxy.started").await;
        sc
    }

    fn events(&self) -> std::path::PathBuf {
        self.dir.path().join("events.log")
    }

    /// A verified mTLS connection through the sidecar to the app, one echo checked.
    async fn connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.inbound).await.expect("connecting to the inbound");
        let mut s = tokio::time::timeout(DEADLINE, self.client.connect(tcp))
            .await
            .expect("the handshake ends in time")
            .expect("the sidecar proves orders/api")
            .stream;
        assert_eq!(roundtrip(&mut s, b"hello").await.as_deref(), Some(&b"hello"[..]));
        s
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().expect("shut down once").send(());
    }

    async fn served(&mut self) -> Result<(), super::RunError> {
        let served = tokio::time::timeout(DEADLINE, &mut self.served).await;
        served.expect("serve returns").expect("serve did not panic")
    }
}

/// Sends `data` and reads as many bytes back; `None` if the connection ended first.
async fn roundtrip(s: &mut tokio_rustls::client::TlsStream<TcpStream>, data: &[u8]) -> Option<Vec<u8>> {
    s.write_all(data).await.ok()?;
    let mut back = vec![0; data.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back)).await.expect("an answer in time").ok()?;
    Some(back)
}

/// During the drain a live connection keeps working, new ones are refused, and `serve`
/// returns once the last connection has ended, before the (long) drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_live_connections_then_serve_returns() {
    let mut sc = InProcess::start("600s").await;
    let mut live = sc.connect().await;
    sc.shutdown();
    wait_line(&sc.events(), "proxy.stopping").await;
    // The listener closes: a connection is refused (once the accept loop has seen the stop).
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(sc.inbound).await.is_ok() {
        assert!(Instant::now() < deadline, "the inbound still takes connections while draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(roundtrip(&mut live, b"still here").await.as_deref(), Some(&b"still here"[..]));
    assert!(!sc.served.is_finished(), "serve returned with a connection still open");
    live.shutdown().await.expect("closing our side");
    let mut rest = Vec::new();
    let _ =
        tokio::time::timeout(DEADLINE, live.read_to_end(&mut rest)).await.expect("the sidecar closes too");
    let events = sc.events();
    sc.served().await.expect("serve ends cleanly");
    let text = std::fs::read_to_string(&events).expect("the events file");
    assert!(text.contains("\"connection\""), "the drained connection got its event:\n{text}");
    assert!(!text.contains("proxy.drain_timeout"), "the drain timed out:\n{text}");
}

/// A connection still open when the drain timeout passes is cut: the client sees its end and
/// `serve` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_what_the_drain_timeout_leaves_open() {
    let mut sc = InProcess::start("200ms").await;
    let mut live = sc.connect().await;
    sc.shutdown();
    let events = sc.events();
    sc.served().await.expect("serve ends cleanly");
    wait_line(&events, "proxy.drain_timeout").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, live.read(&mut buf)).await.expect("the cut is seen in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection is still open after serve returned: {read:?}");
}
