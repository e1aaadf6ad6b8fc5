//! Policy decisions with 10 and 10,000 rules (the index should make them cost the same),
//! loading a policy of each size (what a hot reload pays), and SPIFFE ID parsing (what every
//! handshake pays once per peer certificate).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mesh_benches::policy_fixture;
use mesh_config::policy::{Policy, Request};
use mesh_config::SpiffeId;

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy/decide");
    for n in [10usize, 10_000] {
        let fx = policy_fixture(n);
        let policy = Policy::from_str_named(&fx.text, "policy.toml").expect("generated policy is valid");
        let hit = Request { from: &fx.hit.0, to: &fx.hit.1, http: None };
        let miss = Request { from: &fx.miss.0, to: &fx.miss.1, http: None };
        assert!(policy.decide(&hit).allowed(), "the fixture's hit request must be allowed");
        assert!(!policy.decide(&miss).allowed(), "the fixture's miss request must be denied");
        g.bench_with_input(BenchmarkId::new("allow", n), &hit, |b, r| b.iter(|| policy.decide(black_box(r))));
        g.bench_with_input(BenchmarkId::new("deny_by_default", n), &miss, |b, r| {
            b.iter(|| policy.decide(black_box(r)))
        });
    }
    g.finish();
}

fn load(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy/load");
    g.sample_size(20);
    for n in [10usize, 10_000] {
        let fx = policy_fixture(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &fx.text, |b, t| {
            b.iter(|| Policy::from_str_named(black_box(t), "policy.toml").expect("valid"))
        });
    }
    g.finish();
}

fn spiffe_id(c: &mut Criterion) {
    let s = "spiffe://example.org/ns/payments/sa/charge";
    c.bench_function("spiffe_id/parse", |b| b.iter(|| black_box(s).parse::<SpiffeId>().expect("valid")));
}

criterion_group!(benches, decide, load, spiffe_id);
criterion_main!(benches);
