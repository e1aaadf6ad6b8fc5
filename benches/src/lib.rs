//! Fixtures the micro-benchmarks share: a real CA made in a temporary directory with
//! `mesh_ca::Authority`, two workload identities issued by it, the sidecar's own rustls configs
//! (`mesh_proxy::tls`), an in-memory handshake pump, generated policies of any size, and an
//! in-memory sidecar pair (outbound splice -> mTLS -> inbound splice -> echo app).
//!
//! Nothing here measures anything; the files in `benches/` do. Every fixture panics with a
//! message on setup failure: a benchmark that cannot set up has nothing to say.

use std::sync::Arc;

use mesh_ca::authority::{Authority, InitOptions};
use mesh_ca::settings::Settings;
use mesh_config::{SpiffeId, TrustDomain, Ttl};
use mesh_proxy::tls::{self, Identity};
use rcgen::KeyPair;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// The identities peers.sh uses too, so micro and load numbers talk about the same shapes.
pub const TRUST_DOMAIN: &str = "example.org";
pub const CLIENT_ID: &str = "spiffe://example.org/ns/a/sa/client";
pub const SERVER_ID: &str = "spiffe://example.org/ns/b/sa/server";

/// A trust domain with an issuing authority and two workloads, as `mesh-ca init` + `issue`
/// would make them (root -> intermediate -> leaf, ECDSA P-256).
pub struct Pki {
    /// Keeps the CA directory alive as long as the fixture.
    _dir: tempfile::TempDir,
    pub authority: Authority,
    pub trust_domain: TrustDomain,
    pub roots: Arc<RootCertStore>,
    /// The same root, bound to the trust domain, as the sidecar's configs take it.
    pub bundle: tls::TrustBundle,
    pub client_id: SpiffeId,
    pub server_id: SpiffeId,
    pub client: Identity,
    pub server: Identity,
    /// A key to issue benchmark leaves for (the CA never sees private keys in real use; the
    /// issuance cost does not depend on whose public key it signs).
    pub spare_key: KeyPair,
}

impl Pki {
    /// A new CA (no passphrase: PBKDF2 would only slow the setup) and two issued identities.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the bench CA");
        let trust_domain: TrustDomain = TRUST_DOMAIN.parse().expect("a valid trust domain");
        let settings = Settings::new(
            trust_domain.clone(),
            Ttl::from_secs(60),
            Ttl::from_secs(86_400),
            Ttl::from_secs(3_600),
        )
        .expect("valid TTL bounds");
        let opts = InitOptions {
            settings,
            root_ttl: Ttl::from_secs(86_400 * 3_650),
            intermediate_ttl: Ttl::from_secs(86_400 * 365),
        };
        let ca_dir = Authority::init(&dir.path().join("ca"), &opts, None).expect("CA init in a temp dir");
        let authority = Authority::open(ca_dir, None).expect("open the CA just made");
        let mut roots = RootCertStore::empty();
        roots.add(authority.dir().root.clone()).expect("the CA's own root is a usable anchor");
        let client_id: SpiffeId = CLIENT_ID.parse().expect("a valid SPIFFE ID");
        let server_id: SpiffeId = SERVER_ID.parse().expect("a valid SPIFFE ID");
        let client = issue_identity(&authority, &client_id);
        let server = issue_identity(&authority, &server_id);
        let spare_key = mesh_identity::keys::generate().expect("P-256 key generation");
        let bundle = tls::TrustBundle::new(trust_domain.clone(), vec![authority.dir().root.clone()])
            .expect("the CA's own root is a usable anchor");
        Self {
            _dir: dir,
            authority,
            trust_domain,
            roots: Arc::new(roots),
            bundle,
            client_id,
            server_id,
            client,
            server,
            spare_key,
        }
    }

    /// The leaf and intermediate a client sidecar presents.
    pub fn client_chain(&self) -> &[CertificateDer<'static>] {
        &self.client.chain
    }

    /// The sidecar's server config (inbound) and client config (outbound), with the builders
    /// `mesh_proxy::state::Tls::build` calls: resumption as shipped (allowed).
    pub fn configs(&self) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        self.configs_with(tls::Resumption::Allowed)
    }

    /// The same configs with `[tls] resumption = false`, so every handshake is a full one
    /// (certificate, signature and chain verification both ways).
    pub fn configs_full_handshake(&self) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        self.configs_with(tls::Resumption::Off)
    }

    fn configs_with(&self, resumption: tls::Resumption) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        // No revocation list: a sidecar that does not follow the CA's (the check is one hash
        // lookup when present).
        let access: Arc<dyn tls::RevocationCheck> = Arc::new(tls::NothingRevoked);
        let settings = tls::ServerSettings {
            client_auth: tls::ClientAuth::Required,
            resumption,
            access: access.clone(),
            alpn: tls::Alpn::mesh(),
        };
        let server = tls::server_config(&self.server, &self.bundle, &settings)
            .expect("server config from a fresh identity");
        let settings = tls::ClientSettings {
            expected: self.server_id.clone(),
            kind: tls::PeerKind::Workload,
            resumption,
            access,
            alpn: tls::Alpn::mesh(),
        };
        let client = tls::client_config(Some(&self.client), &self.bundle, &settings)
            .expect("client config from a fresh identity");
        (server.config().clone(), client.config().clone())
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn issue_identity(authority: &Authority, id: &SpiffeId) -> Identity {
    let key = mesh_identity::keys::generate().expect("P-256 key generation");
    let leaf = authority.issue(id, None, &[], &key, "bench").expect("issue a bench leaf");
    Identity {
        chain: vec![leaf.der, authority.dir().intermediate.clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// Moves every pending TLS byte from `from` to `to` and lets `to` process them.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        if from.write_tls(buf).expect("in-memory writes cannot fail") == 0 {
            break;
        }
    }
    let mut rd: &[u8] = buf;
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("in-memory reads cannot fail");
        to.process_new_packets().expect("both sides are valid mesh identities");
    }
}

/// One mutual TLS handshake between fresh connections, entirely in memory, including the
/// server's post-handshake tickets (so a resumable session is stored, as in the sidecar).
pub fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (Connection, Connection) {
    let mut c = Connection::Client(
        ClientConnection::new(client.clone(), tls::sni()).expect("client connection from a valid config"),
    );
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server connection"));
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..8 {
        pump(&mut c, &mut s, &mut buf);
        pump(&mut s, &mut c, &mut buf);
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() && !c.wants_write() {
            return (c, s);
        }
    }
    panic!("the in-memory handshake did not finish in 8 flights");
}

/// Policy text with `n` rules (n >= 2) over up to 100 zones, and two requests: `hit` is
/// allowed by a rule in the middle of the file, `miss` matches nothing (deny by default).
pub struct PolicyFixture {
    pub text: String,
    pub hit: (SpiffeId, SpiffeId),
    pub miss: (SpiffeId, SpiffeId),
}

pub fn policy_fixture(n: usize) -> PolicyFixture {
    assert!(n >= 2, "a policy fixture needs at least two rules");
    let zones = n.clamp(2, 100);
    let zone_list: Vec<String> = (0..zones).map(|z| format!("\"z{z}\"")).collect();
    let mut text = format!("trust_domain = \"{TRUST_DOMAIN}\"\nzones = [{}]\n", zone_list.join(", "));
    // One deny, so a decision also consults a non-empty deny set.
    text.push_str("\n[[deny]]\nfrom = \"z0/legacy\"\nto = \"z1\"\n");
    let rule = |i: usize| (format!("z{}/w{}", i % zones, i / zones), format!("z{}", (i * 7 + 3) % zones));
    for i in 0..n - 1 {
        let (from, to) = rule(i);
        text.push_str(&format!("\n[[allow]]\nfrom = \"{from}\"\nto = \"{to}\"\n"));
    }
    let id = |sel: &str, workload: &str| -> SpiffeId {
        let (zone, w) = sel.split_once('/').unwrap_or((sel, workload));
        format!("spiffe://{TRUST_DOMAIN}/ns/{zone}/sa/{w}").parse().expect("a generated valid ID")
    };
    let (from, to) = rule((n - 1) / 2);
    let hit = (id(&from, ""), id(&to, "api"));
    let miss = (id("z1", "nobody"), id("z0", "api"));
    PolicyFixture { text, hit, miss }
}

/// Copies what it reads back to the writer: the "local app" of the in-memory pair.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Buffer of each in-memory pipe: the loopback socket buffers it stands for are larger, but
/// 64 KiB keeps a 16 KiB record (plus framing) moving in one step.
pub const PIPE: usize = 64 * 1024;

/// Capacity of the in-memory "network" between the two sidecars (see `sidecar_pair`).
pub const WIRE: usize = 4 * 1024 * 1024;

/// A sidecar pair in memory, as in production but with tokio duplex pipes for sockets:
/// app -> [outbound splice] -> mTLS -> [inbound splice] -> `app_side`. Returns the app's end
/// and the far (local app) end. Must be called inside a tokio runtime.
pub async fn sidecar_pair(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (DuplexStream, DuplexStream) {
    let idle = std::time::Duration::from_secs(300);
    let (app, outbound_in) = tokio::io::duplex(PIPE);
    // The wire pipe is larger than any transfer a bench makes, so a write never waits for the
    // far side to read: the benches time the proxies' work, not pipe back-pressure.
    let (wire_c, wire_s) = tokio::io::duplex(WIRE);
    let (inbound_out, far) = tokio::io::duplex(PIPE);
    let accept = tokio::spawn(async move {
        tokio_rustls::TlsAcceptor::from(server).accept(wire_s).await.expect("in-memory accept")
    });
    let tls_c = tokio_rustls::TlsConnector::from(client)
        .connect(tls::sni(), wire_c)
        .await
        .expect("in-memory connect");
    let tls_s = accept.await.expect("the accept task does not panic");
    tokio::spawn(async move { splice(outbound_in, tls_c, idle).await });
    tokio::spawn(async move { splice(tls_s, inbound_out, idle).await });
    (app, far)
}

/// `mesh_proxy::forward::splice` as the sidecar calls it for a peer that is never revoked.
pub async fn splice<A, B>(a: A, b: B, idle: std::time::Duration) -> mesh_proxy::forward::End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    mesh_proxy::forward::splice(a, b, idle, std::future::pending::<()>()).await.0
}
