//! The workload's credential in files mode: certificate chain, private key and trust bundle,
//! read and checked together, so a half-written or mismatched set is refused as a whole and
//! the last good one stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::SpiffeId;
use mesh_identity::profile;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;

use crate::tls::{self, Identity, TrustBundle};

/// Bounds each credential file read.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// A loaded, self-consistent credential.
pub struct Credential {
    /// This workload's identity, from its own certificate.
    pub id: SpiffeId,
    pub identity: Identity,
    /// The trust anchors, each bound to the trust domain it vouches for.
    pub bundle: Arc<TrustBundle>,
    /// The leaf's validity, seconds since the epoch (renewal timing, readiness, events).
    pub not_before: i64,
    pub not_after: i64,
    /// When this process obtained it: renewal timing counts from here, because notBefore
    /// is backdated for clock skew and would make "half the lifetime" come too early.
    pub obtained_at: i64,
    pub serial: mesh_identity::Serial,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("{0}")]
    Invalid(String),
    /// The trust bundle is unusable, or has no anchor for the certificate's trust domain.
    #[error("{0}")]
    Bundle(String),
}

fn file_err(path: &Path, what: impl Into<String>) -> CredentialError {
    CredentialError::File { path: path.to_owned(), what: what.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    mesh_identity::fsutil::read_bounded(path, MAX_FILE_LEN).map_err(|e| file_err(path, e.to_string()))
}

impl Credential {
    /// Reads and checks cert, key and bundle: the leaf keeps the SVID profile, chains to the
    /// bundle now, and the key belongs to it.
    pub fn load(cert: &Path, key: &Path, bundle: &Path) -> Result<Self, CredentialError> {
        let chain = mesh_identity::pem::parse_certs(&read(cert)?).map_err(|w| file_err(cert, w))?;
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|_| file_err(key, "holds no PEM private key"))?;
        let anchors = mesh_identity::pem::parse_certs(&read(bundle)?).map_err(|w| file_err(bundle, w))?;
        Self::from_parts(chain, key_der, anchors).map_err(|e| match e {
            CredentialError::Bundle(what) => file_err(bundle, what),
            e => CredentialError::Invalid(format!("{}: {e}", cert.display())),
        })
    }

    /// A credential from its parts: the leaf must keep the SVID profile, chain to an anchor
    /// of its own trust domain in `anchors` now, and belong to `key`.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        anchors: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CredentialError> {
        let leaf = chain.first().ok_or_else(|| CredentialError::Invalid("empty chain".into()))?;
        let parsed = profile::parse(leaf).map_err(|v| CredentialError::Invalid(v.to_string()))?;
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        let serial = mesh_identity::Serial::from_der(parsed.raw_serial());
        let id = profile::check_leaf_parsed(&parsed, None).into_identity().map_err(|v| {
            CredentialError::Invalid(format!(
                "not a valid X.509-SVID: {}",
                v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
            ))
        })?;
        let bundle = TrustBundle::new(id.trust_domain().clone(), anchors)
            .map_err(|e| CredentialError::Bundle(e.to_string()))?;
        let roots =
            bundle.roots_for(id.trust_domain()).map_err(|e| CredentialError::Bundle(e.to_string()))?;
        let end_entity =
            ParsedCertificate::try_from(leaf).map_err(|e| CredentialError::Invalid(e.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &end_entity,
            &roots,
            &chain[1..],
            UnixTime::now(),
            tls::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| CredentialError::Invalid(format!("does not verify against the bundle: {e}")))?;
        let signing_key = tls::provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| CredentialError::Invalid(format!("unusable private key: {e}")))?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing_key).keys_match().map_err(|_| {
            CredentialError::Invalid("the private key does not belong to the certificate".into())
        })?;
        let obtained_at = time::OffsetDateTime::now_utc().unix_timestamp().clamp(not_before, not_after);
        let bundle = Arc::new(bundle);
        Ok(Self { id, identity: Identity { chain, key }, bundle, not_before, not_after, obtained_at, serial })
    }

    /// A copy for rebuilding TLS configs (private keys are not `Clone` on purpose).
    pub fn duplicate(&self) -> Self {
        Self {
            id: self.id.clone(),
            identity: Identity { chain: self.identity.chain.clone(), key: self.identity.key.clone_key() },
            bundle: self.bundle.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            obtained_at: self.obtained_at,
            serial: self.serial.clone(),
        }
    }
}
