//! One mutual TLS 1.3 handshake pair in memory with the sidecar's own rustls configs
//! (`mesh_proxy::tls::server_config` / `client_config`, SPIFFE checks inside the verifiers):
//! full handshakes (`[tls] resumption = false`) and resumed ones (the default),
//! client and server CPU together. No sockets, no runtime: the crypto and verification floor.
//! The shipped provider negotiates TLS_AES_128_GCM_SHA256 (see `mesh_identity::tls::provider`).

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_benches::{handshake, Pki};

fn handshakes(c: &mut Criterion) {
    let pki = Pki::new();
    let mut g = c.benchmark_group("mtls_handshake");
    let (server, client) = pki.configs_full_handshake();
    g.bench_function("full", |b| b.iter(|| handshake(&server, &client)));
    let (c, _) = handshake(&server, &client);
    assert_eq!(
        c.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        "the shipped provider offers AES-128-GCM first"
    );
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let (server, client) = pki.configs();
    handshake(&server, &client); // stores tickets, so the next ones resume
    let (c, _) = handshake(&server, &client);
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "the shipped configs resume");
    g.bench_function("resumed", |b| b.iter(|| handshake(&server, &client)));
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
