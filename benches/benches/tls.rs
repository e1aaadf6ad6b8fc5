//! One mutual TLS 1.3 handshake pair in memory with the sidecar's own rustls configs
//! (`mesh_proxy::tls::server_config` / `client_config`, SPIFFE checks inside the verifiers):
//! full handshakes (resumption off on both sides) and resumed ones (configs as shipped),
//! client and server CPU together. No sockets, no runtime: the crypto and verification floor.
//! `full_aes128_sha256` is an experiment: the shipped configs negotiate AES-256-GCM-SHA384
//! (rustls's default order) and have no knob for it.

use criterion::{criterion_group, criterion_main, Criterion};
use mesh_benches::{handshake, Pki};

fn handshakes(c: &mut Criterion) {
    let pki = Pki::new();
    let mut g = c.benchmark_group("mtls_handshake");
    let (server, client) = pki.configs_full_handshake();
    g.bench_function("full", |b| b.iter(|| handshake(&server, &client)));
    // Experiment: the same full handshake with AES-128-GCM-SHA256 negotiated (see lib.rs).
    let (server, client) = pki.configs_full_handshake_aes128();
    let (c, _) = handshake(&server, &client);
    assert_eq!(
        c.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    g.bench_function("full_aes128_sha256", |b| b.iter(|| handshake(&server, &client)));
    let (server, client) = pki.configs();
    handshake(&server, &client); // stores tickets, so the next ones resume
    let (c, _) = handshake(&server, &client);
    assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "the shipped configs resume");
    g.bench_function("resumed", |b| b.iter(|| handshake(&server, &client)));
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
