//! `mesh-ca bundle`: PEM and SPIFFE (JWKS) trust bundles.

use std::path::Path;

use base64::Engine as _;
use mesh_tests::*;

use super::json;

/// The uncompressed EC point (0x04 || X || Y) of a P-256 certificate's key, via openssl.
fn p256_point(cert: &Path) -> Vec<u8> {
    let pem = openssl_cert_pubkey(cert);
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = base64::engine::general_purpose::STANDARD.decode(b64).expect("SPKI base64");
    assert_eq!(spki.len(), 91, "not a P-256 SubjectPublicKeyInfo");
    let point = spki[26..].to_vec();
    assert_eq!(point[0], 0x04, "not an uncompressed point");
    point
}

#[test]
fn bundle_pem_and_spiffe_formats_carry_the_root() {
    let ca = TestCa::init_unencrypted();
    let root_pem = ca.dir.join("root.pem");
    let root_der = read_pem_certs(&root_pem);

    let default = ca.cmd("bundle").run();
    default.assert_ok();
    let pem = ca.cmd("bundle").args(["--format", "pem"]).run();
    pem.assert_ok();
    assert_eq!(default.stdout, pem.stdout, "the default format is not pem");
    let written = ca.path("bundle.pem");
    std::fs::write(&written, &pem.stdout).expect("write");
    assert_eq!(read_pem_certs(&written), root_der, "bundle pem is not the root certificate");

    let o = ca.cmd("bundle").args(["--format", "spiffe"]).run();
    let doc = json(o.assert_ok());
    let keys = doc["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "{o}");
    let k = &keys[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["use"], "x509-svid");
    let x5c = k["x5c"].as_array().expect("x5c array");
    assert_eq!(x5c.len(), 1);
    let der = base64::engine::general_purpose::STANDARD
        .decode(x5c[0].as_str().expect("x5c entry is a string"))
        .expect("x5c is standard padded base64 (RFC 7517 4.7)");
    assert_eq!(der.as_slice(), root_der[0].as_ref(), "x5c[0] is not the root's DER");
    let point = p256_point(&root_pem);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(k["x"].as_str(), Some(b64url.encode(&point[1..33]).as_str()), "x is not the root key's X");
    assert_eq!(k["y"].as_str(), Some(b64url.encode(&point[33..65]).as_str()), "y is not the root key's Y");
    assert!(doc["spiffe_sequence"].is_u64(), "spiffe_sequence missing or not a number:\n{o}");

    ca.cmd("bundle").args(["--format", "jwks"]).run().assert_error_naming(&["--format", "jwks"]);
}
