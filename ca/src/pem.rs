//! PEM in and out for certificates, with bounded reads.

use std::path::Path;

use pkcs8::der::pem::LineEnding;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::CaError;

/// A certificate file (chain or bundle) is small; a larger one is refused, not truncated.
pub const MAX_CERT_FILE_LEN: u64 = 1024 * 1024;

pub fn cert(der: &CertificateDer<'_>) -> String {
    // Encoding bytes as PEM cannot fail for a label of plain ASCII.
    pkcs8::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der.as_ref()).unwrap_or_default()
}

/// Every certificate in a PEM file, in order. No certificate at all is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let raw = crate::fsutil::read_bounded(path, MAX_CERT_FILE_LEN)?;
    parse_certs(&raw).map_err(|what| CaError::bad_file(path, &what))
}

/// Parses PEM text holding one or more certificates; the error says what is wrong.
pub fn parse_certs(raw: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

pub fn read_one_cert(path: &Path) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = read_certs(path)?;
    if certs.len() != 1 {
        return Err(CaError::bad_file(path, &format!("holds {} certificates, expected one", certs.len())));
    }
    Ok(certs.remove(0))
}
