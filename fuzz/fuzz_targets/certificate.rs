//! Certificate bytes -> identity and X.509-SVID profile: `profile::parse`, `check_leaf`,
//! `check_leaf_parsed`, `check_ca_parsed`, `profile::uri_sans` (what the sidecar reads from a
//! verified peer), `tls::trust_domain_of` and `TrustBundle::new` (how an anchor is bound to its
//! trust domain) and `inspect::inspect` (the CLI's report). Input is one DER certificate, or
//! PEM text holding a chain.
//!
//! Properties: no panic; the ways of reading a certificate's identity agree: the profile
//! check's identity is exactly the single URI SAN parsed as a `SpiffeId` (what the TLS
//! layer's `peer_of` takes after a handshake), and a certificate the profile accepts carries
//! that identity; an anchor is bound to the trust domain its SAN names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_identity::tls::{self, TrustBundle};
use mesh_ca::inspect;
use mesh_identity::{pem, profile};
use mesh_config::{SpiffeId, TrustDomain};
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"-----BEGIN") {
        if let Ok(chain) = pem::parse_certs(data) {
            for der in chain.iter().take(4) {
                check_one(der);
            }
            if let Ok(report) = inspect::inspect(&chain) {
                let _ = report.to_text();
            }
            let local: TrustDomain = "example.org".parse().expect("literal trust domain");
            let _ = TrustBundle::new(local, chain.into_iter().take(4).collect());
        }
        return;
    }
    check_one(&CertificateDer::from(data));
});

fn check_one(der: &CertificateDer<'_>) {
    let report = profile::check_leaf(der, None);
    let Ok(cert) = profile::parse(der) else {
        assert!(report.id.is_none() && !report.violations.is_empty());
        assert!(tls::trust_domain_of(der).is_none());
        return;
    };
    // What the TLS layer reads from a verified peer (`tls::verify::peer_of`, not public).
    let peer: Option<SpiffeId> = match profile::uri_sans(&cert).ok().as_deref() {
        Some([uri]) => uri.parse().ok(),
        _ => None,
    };
    assert_eq!(peer, report.id, "the sidecar's reading and the profile check disagree");

    let parsed = profile::check_leaf_parsed(&cert, None);
    assert_eq!(parsed.id, report.id);
    assert_eq!(parsed.violations, report.violations);
    if let Some(id) = &report.id {
        // Checked against its own trust domain, no trust-domain rule can fire.
        let own = profile::check_leaf_parsed(&cert, Some(id.trust_domain()));
        assert!(own.violations.iter().all(|v| v.rule != "trust-domain"));
    }
    for v in profile::check_ca_parsed(&cert, None) {
        let _ = v.to_string();
    }
    for v in &report.violations {
        let _ = v.to_string();
    }
    if let Ok(id) = report.into_identity() {
        assert_eq!(Some(&id), peer.as_ref());
    }
    if let Some(td) = tls::trust_domain_of(der) {
        // An anchor naming td vouches for td: a bundle of it alone is valid for td, or the
        // certificate is not usable as an anchor at all.
        match TrustBundle::new(td.clone(), vec![der.clone().into_owned()]) {
            Ok(b) => {
                assert_eq!(b.local(), &td);
                assert!(b.roots_for(&td).is_ok());
            }
            Err(e) => assert!(e.to_string().contains("unusable trust anchor"), "{e}"),
        }
    }
    if let Ok(r) = inspect::inspect(std::slice::from_ref(der)) {
        let _ = r.to_text();
    }
}
