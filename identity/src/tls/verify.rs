//! The verifiers that put the SPIFFE identity check *inside* the handshake, and the check a
//! resumed session gets after it.
//!
//! rustls does not verify a certificate again when a TLS 1.3 session resumes: the peer's
//! chain stored with the session is taken as it was. Every resumption also hands out fresh
//! tickets, so without a check of our own a peer that made one full handshake could resume
//! forever, past its certificate's expiry, a revocation or a bundle change. So the stored
//! chain of a resumed session goes through the same checks again, at the current time,
//! against the current config's anchors and access check ([`super::ServerTls::peer`],
//! [`super::ClientTls::peer`]); a failure closes the connection before a byte is forwarded.

use std::sync::Arc;

use mesh_config::{SpiffeId, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme,
};

use super::{PeerKind, RevocationCheck, SvidError};
use crate::profile;
use crate::serial::Serial;
use crate::verified::{ChainKey, Verified, VerifiedChains};

/// A peer whose chain passed every check: its identity and certificate serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: SpiffeId,
    pub serial: Serial,
}

pub(super) fn svid_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// What both verifiers check of a peer's chain, in order: the chain itself (`verify_chain`:
/// path to our anchors, signatures, validity, EKU), the leaf's SVID profile in trust domain
/// `td`, then the access check (revocation).
///
/// The first two are skipped for a chain `memo` already verified under this config, while
/// it is still inside its validity window (see [`crate::verified`]); revocation is checked
/// every time.
pub(super) fn verify_peer(
    memo: &VerifiedChains,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    td: &TrustDomain,
    access: &dyn RevocationCheck,
    verify_chain: impl FnOnce() -> Result<(), rustls::Error>,
) -> Result<Peer, rustls::Error> {
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
            (Serial::from_der(cert.raw_serial()), id)
        }
    };
    if access.is_revoked(&serial, &id) {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(Peer { id, serial })
}

/// The serial and identity in a certificate the handshake has just verified. The verifier
/// ran the whole profile check; this only reads the URI SAN (not the profile check again).
pub(super) fn peer_of(end_entity: &CertificateDer<'_>) -> Option<Peer> {
    let cert = profile::parse(end_entity).ok()?;
    let id = match profile::uri_sans(&cert).ok()?.as_slice() {
        [uri] => uri.parse().ok()?,
        _ => return None,
    };
    Some(Peer { id, serial: Serial::from_der(cert.raw_serial()) })
}

#[derive(Debug)]
pub(super) struct SvidClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) trust_domain: TrustDomain,
    pub(super) access: Arc<dyn RevocationCheck>,
    pub(super) memo: VerifiedChains,
}

impl SvidClientVerifier {
    pub(super) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Peer, rustls::Error> {
        let chain = || self.inner.verify_client_cert(end_entity, intermediates, now).map(|_| ());
        let (td, access) = (&self.trust_domain, self.access.as_ref());
        verify_peer(&self.memo, end_entity, intermediates, now, td, access, chain)
    }
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
        self.verify(end_entity, intermediates, now)?;
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
pub(super) struct SvidServerVerifier {
    pub(super) roots: Arc<RootCertStore>,
    pub(super) expected: SpiffeId,
    pub(super) kind: PeerKind,
    pub(super) algs: WebPkiSupportedAlgorithms,
    pub(super) access: Arc<dyn RevocationCheck>,
    pub(super) memo: VerifiedChains,
}

impl SvidServerVerifier {
    pub(super) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Peer, rustls::Error> {
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
        let (td, access) = (self.expected.trust_domain(), self.access.as_ref());
        let got = verify_peer(&self.memo, end_entity, intermediates, now, td, access, chain)?;
        if got.id != self.expected {
            return Err(svid_error(SvidError::WrongIdentity {
                expected: self.expected.clone(),
                got: got.id,
            }));
        }
        // The CA server is told apart from a workload by more than its SAN: a marker only
        // the CA puts in its own certificate (see `profile::is_ca_server`).
        if self.kind == PeerKind::CaServer {
            let marked = profile::parse(end_entity).map(|c| profile::is_ca_server(&c)).unwrap_or(false);
            if !marked {
                return Err(svid_error(SvidError::NotTheCa));
            }
        }
        Ok(got)
    }
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
        self.verify(end_entity, intermediates, now)?;
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
