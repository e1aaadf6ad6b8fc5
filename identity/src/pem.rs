//! PEM in and out for certificates, with bounded reads.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::IdentityError;

/// A certificate file (chain or bundle) is small; a larger one is refused, not truncated.
pub const MAX_CERT_FILE_LEN: u64 = 1024 * 1024;

/// A certificate as PEM (RFC 7468: base64 in lines of 64 characters, LF line ends).
pub fn cert(der: &CertificateDer<'_>) -> String {
    encode("CERTIFICATE", der.as_ref())
}

/// Any DER document as PEM under `label`.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    // Base64 is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every certificate in a PEM file, in order. No certificate at all is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let raw = crate::fsutil::read_bounded(path, MAX_CERT_FILE_LEN)?;
    parse_certs(&raw).map_err(|what| IdentityError::bad_file(path, &what))
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

pub fn read_one_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let mut certs = read_certs(path)?;
    if certs.len() != 1 {
        return Err(IdentityError::bad_file(
            path,
            &format!("holds {} certificates, expected one", certs.len()),
        ));
    }
    Ok(certs.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_certificates_read_back() {
        for len in [0usize, 1, 47, 48, 49, 300] {
            let der: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let text = encode("CERTIFICATE", &der);
            assert!(text.lines().all(|l| l.len() <= 64), "{text}");
            if len > 0 {
                let back = parse_certs(text.as_bytes()).expect("parses");
                assert_eq!(back[0].as_ref(), der.as_slice());
            }
        }
    }
}
