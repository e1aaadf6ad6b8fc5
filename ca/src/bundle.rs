//! The trust bundle in the SPIFFE bundle format (a JWK Set with `use: x509-svid`, per the
//! SPIFFE Trust Domain and Bundle spec), for SPIFFE-aware tools that federate with us.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::error::CaError;

#[derive(Serialize)]
struct Jwk {
    kty: &'static str,
    crv: &'static str,
    x: String,
    y: String,
    #[serde(rename = "use")]
    use_: &'static str,
    x5c: Vec<String>,
}

#[derive(Serialize)]
struct JwkSet {
    keys: Vec<Jwk>,
    spiffe_sequence: u64,
}

/// Renders the trust anchors as a SPIFFE bundle. `sequence` rises whenever the bundle changes.
pub fn spiffe_json(anchors: &[CertificateDer<'_>], sequence: u64) -> Result<String, CaError> {
    let mut keys = Vec::new();
    for der in anchors {
        let cert = mesh_identity::profile::parse(der).map_err(|v| CaError::Crypto(v.to_string()))?;
        let point = cert.public_key().subject_public_key.data.as_ref();
        // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
        if point.len() != 65 || point[0] != 4 {
            return Err(CaError::Crypto("trust anchor key is not an uncompressed P-256 point".into()));
        }
        keys.push(Jwk {
            kty: "EC",
            crv: "P-256",
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..]),
            use_: "x509-svid",
            x5c: vec![STANDARD.encode(der.as_ref())],
        });
    }
    serde_json::to_string_pretty(&JwkSet { keys, spiffe_sequence: sequence })
        .map_err(|e| CaError::Crypto(format!("encoding the bundle: {e}")))
}
