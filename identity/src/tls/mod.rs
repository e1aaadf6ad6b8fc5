//! The one place that builds rustls configurations, for the sidecar and the CA server alike,
//! from settings structs; the verifiers live in [`verify`], the anchors in [`anchors`].
//!
//! Inbound: TLS 1.3 only, a client certificate is required, the chain must reach an anchor
//! of our trust domain (webpki), and the leaf must keep the X.509-SVID profile in that trust
//! domain. A peer that fails any of it fails the handshake with an alert; nothing reaches the
//! policy. Outbound: the server's chain must reach an anchor of the expected identity's trust
//! domain and its SPIFFE ID must equal the one configured; no DNS name is checked.
//!
//! An access check (revocations, later quarantine) is part of every config: an empty one in
//! files mode, never an `Option` a caller can forget. A resumed session is checked again
//! after its handshake (see [`verify`]): rustls itself does not.
//!
//! Every config names its application protocols by ALPN ([`Alpn`]): sidecars speak
//! `zt-mesh/tcp1` (a peer naming none is taken as speaking it; one naming only others is
//! refused, `unknown_alpn`), the CA API names none. Failure reasons are [`FailureReason`].
//!
//! No 0-RTT (rustls servers accept none by default, and we never enable it), no TLS 1.2, no
//! renegotiation (TLS 1.3 has none). Resumption state lives inside a config: a credential or
//! bundle change builds new configs, so nothing verified under the old bundle resumes.

mod alpn;
mod anchors;
mod reason;
mod verify;

use std::fmt;
use std::sync::Arc;

use mesh_config::SpiffeId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use alpn::{Alpn, Protocol};
pub use anchors::{trust_domain_of, TrustBundle};
pub use reason::{failure_detail, failure_reason, tls_failure_detail, tls_failure_reason, FailureReason};
pub use verify::Peer;

use crate::profile::Violation;
use crate::verified::VerifiedChains;
use verify::{SvidClientVerifier, SvidServerVerifier};

/// A verified peer's certificate broke the SVID profile or named another identity. Carried
/// inside `rustls::Error` so the handshake fails with a proper alert and the event can say why.
#[derive(Debug, Clone)]
pub enum SvidError {
    /// The leaf chains to our bundle but breaks the profile (rule name inside).
    Profile(Vec<Violation>),
    /// Outbound: a valid SVID, but not the identity this outbound must reach.
    WrongIdentity { expected: SpiffeId, got: SpiffeId },
    /// The server has the CA's SPIFFE ID but not the CA server's marker: a workload
    /// certificate for that name, not the CA.
    NotTheCa,
}

impl fmt::Display for SvidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Profile(v) => {
                let rules: Vec<String> = v.iter().map(|v| v.to_string()).collect();
                write!(f, "bad SVID: {}", rules.join("; "))
            }
            Self::WrongIdentity { expected, got } => write!(f, "server is {got}, expected {expected}"),
            Self::NotTheCa => {
                f.write_str("the server presents the CA's SPIFFE ID without the CA server marker: not the CA")
            }
        }
    }
}

impl std::error::Error for SvidError {}

/// Answers "has this certificate, or its identity, been revoked?" during a handshake and
/// when a session resumes. The sidecar answers from the CA's revocation list it follows;
/// the CA from its store.
pub trait RevocationCheck: Send + Sync + fmt::Debug {
    fn is_revoked(&self, serial_hex: &str, id: &SpiffeId) -> bool;
}

/// The access check of a workload that follows no revocation list (files mode).
#[derive(Debug, Default, Clone, Copy)]
pub struct NothingRevoked;

impl RevocationCheck for NothingRevoked {
    fn is_revoked(&self, _serial_hex: &str, _id: &SpiffeId) -> bool {
        false
    }
}

/// Whether a server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Sidecar inbound: no certificate, no connection.
    Required,
    /// CA API: enrollment comes without a certificate; renewal presents one, and a presented
    /// one is verified as strictly as a required one.
    Optional,
}

/// Whether a config lets a returning peer resume its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumption {
    /// Sessions are cached in memory, in the config (never on disk, no ticket keys).
    Allowed,
    /// Every connection is a full handshake with a certificate exchange.
    Off,
}

/// What a client expects of the server beyond its SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A peer sidecar: an X.509-SVID with the expected identity.
    Workload,
    /// The CA API: the CA's identity *and* the CA server marker, which no workload
    /// certificate carries.
    CaServer,
}

/// How a server config treats its peers.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub client_auth: ClientAuth,
    pub resumption: Resumption,
    /// Consulted in every handshake and for every resumed session.
    pub access: Arc<dyn RevocationCheck>,
    /// The application protocols accepted; a client offering only others is refused
    /// (`unknown_alpn`), one offering none speaks the list's last (see [`Alpn`]).
    pub alpn: Alpn,
}

/// How a client config treats the one server it talks to.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The identity the server must present.
    pub expected: SpiffeId,
    pub kind: PeerKind,
    pub resumption: Resumption,
    /// Consulted in every handshake and for every resumed session.
    pub access: Arc<dyn RevocationCheck>,
    /// The application protocols offered; a server that picks none speaks the list's last
    /// (see [`Alpn`]), one that picks another is refused by rustls.
    pub alpn: Alpn,
}

/// The provider every config uses: aws-lc-rs, TLS 1.3 suites only, AES-128-GCM first.
///
/// AES-128-GCM leads (as in Mozilla's "modern" profile) because its SHA-256 transcript hash
/// and key schedule cost less than AES-256-GCM's SHA-384: 12–15% less CPU per handshake,
/// measured. Both suites stay on offer; the client's order decides.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.retain(|s| s.version() == &rustls::version::TLS13);
    p.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(p)
}

/// The workload's own credential, as rustls needs it.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the trust bundle is unusable: {0}")]
    Bundle(String),
    #[error("the certificate and key are unusable: {0}")]
    Credential(String),
}

/// Why a connection made through [`ServerTls::accept`] or [`ClientTls::connect`] failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The TLS handshake itself failed (the verifier refused the peer, a timeout inside the
    /// transport, garbage, no application protocol in common): see [`FailureReason::of_io`].
    Handshake(std::io::Error),
    /// The handshake finished, but the peer's chain does not pass now: a resumed session's
    /// stored chain that has expired or been revoked since (see [`FailureReason::of`]).
    Peer { resumed: bool, error: rustls::Error },
}

/// A finished handshake whose peer passed every check, now.
pub struct Connected<S> {
    pub stream: S,
    /// `None` only on a server with [`ClientAuth::Optional`] whose client sent no certificate.
    pub peer: Option<Peer>,
    /// Whether the handshake resumed an earlier session (and was verified again).
    pub resumed: bool,
    /// The negotiated mode: the ALPN protocol agreed, or, for a peer that named none, the
    /// last (oldest) protocol of the config's list; `None` for a config without ALPN
    /// ([`Alpn::none`]).
    pub protocol: Option<Protocol>,
}

/// Whether a finished connection resumed a session. Anything but a full handshake counts as
/// resumed, so an unexpected kind is verified again rather than trusted.
fn resumed(kind: Option<HandshakeKind>) -> bool {
    !matches!(kind, Some(HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest))
}

/// A server config and the verifier inside it, so that a finished handshake can be asked
/// for its peer, checked again when the session was resumed. Connections are made with
/// [`ServerTls::accept`], which always runs that check.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    verifier: Arc<SvidClientVerifier>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("trust_domain", &self.verifier.trust_domain).finish()
    }
}

impl ServerTls {
    /// The rustls config, for benchmarks and in-memory tests. A connection made straight
    /// from it skips the check of a resumed session: serve with [`ServerTls::accept`].
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The server side of a handshake on `io`, then [`ServerTls::peer`]: nothing is read
    /// from a peer that fails either.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<Connected<tokio_rustls::server::TlsStream<IO>>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream =
            TlsAcceptor::from(self.config.clone()).accept(io).await.map_err(HandshakeError::Handshake)?;
        let conn = stream.get_ref().1;
        let resumed = resumed(conn.handshake_kind());
        let protocol = alpn::mode(&self.config.alpn_protocols, conn.alpn_protocol());
        match self.peer(conn) {
            Ok(peer) => Ok(Connected { stream, peer, resumed, protocol }),
            Err(error) => Err(HandshakeError::Peer { resumed, error }),
        }
    }

    /// The peer of a finished handshake, `None` when it presented no certificate (allowed
    /// only with [`ClientAuth::Optional`]). A full handshake verified the chain inside it; a
    /// resumed session's stored chain is verified now, as if presented anew.
    pub fn peer(&self, conn: &ServerConnection) -> Result<Option<Peer>, rustls::Error> {
        self.peer_at(conn, UnixTime::now())
    }

    /// [`Self::peer`] at a given time (tests).
    pub fn peer_at(&self, conn: &ServerConnection, now: UnixTime) -> Result<Option<Peer>, rustls::Error> {
        let Some((end_entity, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
            return Ok(None);
        };
        if resumed(conn.handshake_kind()) {
            return self.verifier.verify(end_entity, intermediates, now).map(Some);
        }
        verify::peer_of(end_entity)
            .map(Some)
            .ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }
}

/// A client config and the verifier inside it (see [`ServerTls`]). Connections are made
/// with [`ClientTls::connect`], which always runs the check of a resumed session.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    verifier: Arc<SvidServerVerifier>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").field("expected", &self.verifier.expected).finish()
    }
}

impl ClientTls {
    /// The rustls config, for benchmarks and in-memory tests. A connection made straight
    /// from it skips the check of a resumed session: connect with [`ClientTls::connect`].
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The client side of a handshake on `io`, then [`ClientTls::peer`]: nothing is sent to
    /// a server that fails either.
    pub async fn connect<IO>(
        &self,
        io: IO,
    ) -> Result<Connected<tokio_rustls::client::TlsStream<IO>>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = TlsConnector::from(self.config.clone())
            .connect(sni(), io)
            .await
            .map_err(HandshakeError::Handshake)?;
        let conn = stream.get_ref().1;
        let resumed = resumed(conn.handshake_kind());
        let protocol = alpn::mode(&self.config.alpn_protocols, conn.alpn_protocol());
        match self.peer(conn) {
            Ok(peer) => Ok(Connected { stream, peer: Some(peer), resumed, protocol }),
            Err(error) => Err(HandshakeError::Peer { resumed, error }),
        }
    }

    /// The server of a finished handshake: verified inside a full handshake, verified again
    /// now when the session was resumed (expected identity and CA marker included).
    pub fn peer(&self, conn: &ClientConnection) -> Result<Peer, rustls::Error> {
        self.peer_at(conn, UnixTime::now())
    }

    /// [`Self::peer`] at a given time (tests).
    pub fn peer_at(&self, conn: &ClientConnection, now: UnixTime) -> Result<Peer, rustls::Error> {
        let Some((end_entity, intermediates)) = conn.peer_certificates().and_then(|c| c.split_first()) else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        if resumed(conn.handshake_kind()) {
            return self.verifier.verify(end_entity, intermediates, now);
        }
        verify::peer_of(end_entity).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }
}

/// Server config for a sidecar inbound listener or the CA API, for peers of the bundle's
/// local trust domain.
pub fn server_config(
    id: &Identity,
    bundle: &TrustBundle,
    settings: &ServerSettings,
) -> Result<ServerTls, TlsConfigError> {
    let provider = provider();
    let roots = bundle.roots_for(bundle.local())?;
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    let builder = match settings.client_auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let webpki = builder.build().map_err(|e| TlsConfigError::Bundle(e.to_string()))?;
    let verifier = Arc::new(SvidClientVerifier {
        inner: webpki,
        trust_domain: bundle.local().clone(),
        access: settings.access.clone(),
        memo: VerifiedChains::default(),
    });
    // No ticketer is configured: resumption is stateful, held in this config's session cache,
    // so a credential or bundle change (which builds a new config) ends every resumable session.
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsConfigError::Credential(e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsConfigError::Credential(e.to_string()))?;
    if settings.resumption == Resumption::Off {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    // rustls refuses a client whose offer shares nothing with this list (alert
    // no_application_protocol, `Error::NoApplicationProtocol`), and ignores the offer when
    // the list is empty.
    cfg.alpn_protocols = settings.alpn.wire();
    Ok(ServerTls { config: Arc::new(cfg), verifier })
}

/// Client config for one outbound, or for talking to the CA: it accepts only a server
/// presenting `settings.expected`, chained to an anchor of that identity's trust domain.
/// Without `id` no client certificate is offered (enrollment).
pub fn client_config(
    id: Option<&Identity>,
    bundle: &TrustBundle,
    settings: &ClientSettings,
) -> Result<ClientTls, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(SvidServerVerifier {
        roots: bundle.roots_for(settings.expected.trust_domain())?,
        expected: settings.expected.clone(),
        kind: settings.kind,
        algs: provider.signature_verification_algorithms,
        access: settings.access.clone(),
        memo: VerifiedChains::default(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsConfigError::Credential(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut cfg = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| TlsConfigError::Credential(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    if settings.resumption == Resumption::Off {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    // rustls refuses a server that picks a protocol not offered; one that picks none is
    // accepted (an older sidecar), and speaks the list's last protocol.
    cfg.alpn_protocols = settings.alpn.wire();
    Ok(ClientTls { config: Arc::new(cfg), verifier })
}

/// Client config for an ordinary HTTPS server outside the mesh (an event collector): the
/// web PKI's rules, with `roots` as trust anchors and the DNS name or IP address checked.
/// Collectors are third-party servers, so TLS 1.2 is accepted here (and only here) with
/// rustls's safe defaults; no client certificate is offered.
pub fn web_client_config(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Bundle(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The SNI an outbound sends. Identity is checked by SPIFFE ID, not by name, so this is a
/// fixed placeholder that reveals nothing about the workload.
pub fn sni() -> ServerName<'static> {
    ServerName::try_from("mesh.invalid").expect("a static valid DNS name")
}

#[cfg(test)]
mod tests;
