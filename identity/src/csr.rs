//! Certificate signing requests from workloads. The CA takes exactly one thing from a CSR:
//! the public key, after the CSR's signature proves the requester holds the private key.
//! Every name, extension and attribute a CSR asks for is ignored: the certificate comes from
//! the CA's own template and the identity from the token or the caller's certificate.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer;

/// A CSR is a few hundred bytes; anything past this is refused unread.
pub const MAX_CSR_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is larger than {MAX_CSR_LEN} bytes")]
    TooLarge,
    #[error("the CSR is not a PEM or DER PKCS#10 request")]
    Malformed,
    #[error("the CSR's signature does not verify (no proof of possession of the key)")]
    BadSignature,
    #[error("the CSR's key is not ECDSA P-256, the only key type the mesh issues for")]
    WeakOrUnsupportedKey,
}

impl CsrError {
    /// A stable short code for API errors and events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "csr_too_large",
            Self::Malformed => "csr_malformed",
            Self::BadSignature => "csr_bad_signature",
            Self::WeakOrUnsupportedKey => "csr_weak_key",
        }
    }
}

/// The public key from a CSR whose signature verified.
pub fn public_key(csr: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CsrError> {
    if csr.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge);
    }
    let der = if csr.starts_with(b"-----BEGIN") {
        // One PEM document and nothing after it but whitespace.
        let (rest, pem) = parse_x509_pem(csr).map_err(|_| CsrError::Malformed)?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::Malformed);
        }
        if !rest.iter().all(u8::is_ascii_whitespace) {
            return Err(CsrError::Malformed);
        }
        pem.contents
    } else {
        csr.to_vec()
    };
    let (rest, req) = X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let spki = &req.certification_request_info.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrError::WeakOrUnsupportedKey);
    }
    req.verify_signature().map_err(|_| CsrError::BadSignature)?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| CsrError::WeakOrUnsupportedKey)
}

/// Builds a CSR for `key`, as a sidecar does (no names: the CA ignores them anyway).
pub fn request_for(key: &rcgen::KeyPair) -> Result<String, String> {
    let params = rcgen::CertificateParams::default();
    params.serialize_request(key).and_then(|r| r.pem()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_p256_csr_and_refuses_tampering() {
        let key = crate::keys::generate().expect("key");
        let pem = request_for(&key).expect("csr");
        assert!(public_key(pem.as_bytes()).is_ok());
        let mut der = parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        let last = der.len() - 1;
        der[last] ^= 1; // flips a bit of the signature
        assert_eq!(public_key(&der).err(), Some(CsrError::BadSignature));
        assert_eq!(public_key(b"garbage").err(), Some(CsrError::Malformed));
        let trailing = format!("{pem}-----BEGIN CERTIFICATE-----\n");
        assert_eq!(public_key(trailing.as_bytes()).err(), Some(CsrError::Malformed));
        assert_eq!(public_key(&vec![0u8; MAX_CSR_LEN + 1]).err(), Some(CsrError::TooLarge));
    }

    #[test]
    fn refuses_other_key_types() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let pem = request_for(&key).expect("csr");
        assert_eq!(public_key(pem.as_bytes()).err(), Some(CsrError::WeakOrUnsupportedKey));
    }
}
