//! The CA API's request bodies, read as the server reads them: JSON into `EnrollRequest` and
//! `RenewRequest` (unknown fields refused), then the join token through
//! `Token::from_presented` and the CSR through `csr::public_key`.
//!
//! Properties: no panic; a body that parses serialises back to JSON that parses to the same
//! request; a token is accepted only with its prefix, trimmed and within the length limit,
//! and its stored hash is 64 lowercase hex digits.
//!
//! Not covered: the `GET /v1/revocations` query string is parsed inside the request handler,
//! which needs a running CA; it is exercised by the CA's API tests instead.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_identity::csr;
use mesh_identity::api::{EnrollRequest, RenewRequest};
use mesh_identity::token::{Token, MAX_TOKEN_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<EnrollRequest>(data) {
        let text = serde_json::to_vec(&req).expect("a parsed request serialises");
        let again: EnrollRequest = serde_json::from_slice(&text).expect("serialised request parses");
        assert_eq!((&again.token, &again.csr), (&req.token, &req.csr));
        token(&req.token);
        let _ = csr::public_key(req.csr.as_bytes());
    }
    if let Ok(req) = serde_json::from_slice::<RenewRequest>(data) {
        let text = serde_json::to_vec(&req).expect("a parsed request serialises");
        let again: RenewRequest = serde_json::from_slice(&text).expect("serialised request parses");
        assert_eq!(again.csr, req.csr);
        let _ = csr::public_key(req.csr.as_bytes());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        token(s);
    }
});

fn token(presented: &str) {
    let Some(t) = Token::from_presented(presented) else { return };
    assert_eq!(t.expose(), presented.trim());
    assert!(t.expose().len() <= MAX_TOKEN_LEN);
    assert!(!format!("{t:?}").contains(t.expose()), "Debug never shows the secret");
    let h = t.hash();
    assert_eq!(h.len(), 64);
    assert!(h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}
