//! CSR decoding: `csr::public_key`, the one thing the CA takes from an enrollment or renewal
//! request. Input is a PEM or DER PKCS#10 request.
//!
//! Properties: no panic; inputs over the size limit are refused before any parsing; a DER
//! request is judged the same whether it arrives as DER or wrapped in PEM.

#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mesh_identity::csr::{self, CsrError, MAX_CSR_LEN};

fuzz_target!(|data: &[u8]| {
    let result = csr::public_key(data);
    if data.len() > MAX_CSR_LEN {
        assert_eq!(result.as_ref().err(), Some(&CsrError::TooLarge));
        return;
    }
    if let Err(e) = &result {
        let _ = (e.code(), e.to_string());
    }
    if data.starts_with(b"-----BEGIN") {
        return;
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    let b64 = STANDARD.encode(data);
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    if pem.len() > MAX_CSR_LEN {
        return;
    }
    let wrapped = csr::public_key(pem.as_bytes());
    match (&result, &wrapped) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("DER {:?} but PEM {:?}", result.map(|_| ()), wrapped.map(|_| ())),
    }
});
