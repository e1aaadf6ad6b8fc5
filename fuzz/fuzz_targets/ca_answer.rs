//! The enrollment client's decoding of the CA's answers, step by step as `client::CaClient`
//! does it: an enroll or renew answer as JSON `IssuedBody`, then its chain PEM through
//! `pem::parse_certs` (the client's `parse_issued` is private, so the target runs the same two
//! public steps); a page of `RevocationsBody` read as the sidecar reads it (identities parsed
//! as `SpiffeId`); an `ErrorBody`. The certificates of a decoded chain then go through the
//! profile check and the anchor binding (`tls::trust_domain_of`, `TrustBundle::new`).
//!
//! Properties: no panic; a decoded chain is non-empty; revoked identities that parse print
//! back as sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_identity::api::{ErrorBody, IssuedBody, RevocationsBody};
use mesh_identity::tls::{self, TrustBundle};
use mesh_identity::{pem, profile};
use mesh_config::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = serde_json::from_slice::<IssuedBody>(data) {
        let _ = answer.spiffe_id.parse::<SpiffeId>();
        if let Ok(chain) = pem::parse_certs(answer.cert_chain.as_bytes()) {
            assert!(!chain.is_empty());
            let leaf = profile::check_leaf(&chain[0], None);
            if let Some(td) = chain.iter().skip(1).take(4).find_map(tls::trust_domain_of) {
                let _ = TrustBundle::new(td, chain.iter().skip(1).take(4).cloned().collect());
            }
            for ca in chain.iter().skip(1).take(4) {
                let _ = profile::check_ca(ca, leaf.id.as_ref().map(|id| id.trust_domain()));
            }
        }
        // The answer's bundle is never adopted; it must still not hurt to read.
        if let Ok(bundle) = pem::parse_certs(answer.bundle.as_bytes()) {
            let local: TrustDomain = "example.org".parse().expect("literal trust domain");
            let _ = TrustBundle::new(local, bundle.into_iter().take(4).collect());
        }
    }
    if let Ok(page) = serde_json::from_slice::<RevocationsBody>(data) {
        for r in &page.revoked {
            if let Some(id) = r.spiffe_id.as_deref().and_then(|i| i.parse::<SpiffeId>().ok()) {
                assert_eq!(Some(id.to_string().as_str()), r.spiffe_id.as_deref());
            }
        }
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(data) {
        let _ = (e.error.len(), e.reason.len());
    }
});
