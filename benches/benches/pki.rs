//! Certificate work: the SVID profile check of a peer leaf (`mesh_identity::profile::check_leaf`),
//! the whole peer-chain verification the inbound verifier does (webpki path validation to the
//! bundle, then the profile check), and the CA signing a leaf (`Authority::issue`, which also
//! records it durably in SQLite) next to signing alone, to show where issuance time goes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_benches::Pki;
use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;

fn verify(c: &mut Criterion) {
    let pki = Pki::new();
    let chain = pki.client_chain().to_vec();
    let td = pki.trust_domain.clone();
    c.bench_function("svid/check_leaf", |b| {
        b.iter(|| {
            let r = mesh_identity::profile::check_leaf(black_box(&chain[0]), Some(&td));
            assert!(r.violations.is_empty());
            r
        })
    });
    // The same verifier composition as proxy/src/tls.rs `SvidClientVerifier`: webpki first,
    // then the SVID profile (that type is private; this replays its two calls).
    let webpki = WebPkiClientVerifier::builder_with_provider(pki.roots.clone(), mesh_proxy::tls::provider())
        .build()
        .expect("a verifier over the bench bundle");
    let now = UnixTime::now();
    c.bench_function("svid/verify_peer_chain", |b| {
        b.iter(|| {
            webpki.verify_client_cert(black_box(&chain[0]), &chain[1..], now).expect("a valid chain");
            mesh_identity::profile::check_leaf(&chain[0], Some(&td)).into_identity().expect("a valid SVID")
        })
    });
}

fn issue(c: &mut Criterion) {
    let pki = Pki::new();
    let id = pki.client_id.clone();
    let mut g = c.benchmark_group("ca");
    g.sample_size(20);
    g.bench_function("issue_durable", |b| {
        b.iter(|| pki.authority.issue(black_box(&id), None, &[], &pki.spare_key, "bench").expect("issue"))
    });
    // Signing alone: a leaf of the same shape signed by an in-memory issuer, no store.
    let issuer_key = mesh_identity::keys::generate().expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let issuer = rcgen::Issuer::new(ca, &issuer_key);
    g.bench_function("sign_only", |b| {
        b.iter(|| {
            let mut p = rcgen::CertificateParams::default();
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&[7u8; 16]));
            p.subject_alt_names =
                vec![rcgen::SanType::URI(mesh_benches::CLIENT_ID.try_into().expect("an ASCII URI"))];
            p.is_ca = rcgen::IsCa::ExplicitNoCa;
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages =
                vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.signed_by(&pki.spare_key, &issuer).expect("sign")
        })
    });
    g.finish();
}

criterion_group!(benches, verify, issue);
criterion_main!(benches);
