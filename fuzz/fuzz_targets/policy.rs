//! The policy file parser: `Policy::from_str_named` on arbitrary text (TOML syntax, unknown
//! keys, zones, selectors, duplicate rules, HTTP conditions).
//!
//! Properties: no panic; every refusal names the file; an accepted policy answers
//! `decide` for identities built from its own zones without panicking, and a caller from
//! another trust domain is always denied.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_config::{HttpAttrs, Policy, Reason, Request, SpiffeId, TrustDomain, Workload};

const NAME: &str = "policy.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let policy = match Policy::from_str_named(text, NAME) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.file(), NAME, "errors name the file");
            let _ = e.to_string();
            return;
        }
    };
    let td = policy.trust_domain().clone();
    let names: [Workload; 2] =
        ["web".parse().expect("literal label"), "charge".parse().expect("literal label")];
    // Bounded: a huge zone list must not turn one input into millions of decisions.
    let ids: Vec<SpiffeId> = policy
        .zones()
        .iter()
        .take(8)
        .flat_map(|z| names.iter().map(move |w| (z.clone(), w.clone())))
        .map(|(z, w)| SpiffeId::new(td.clone(), z, w))
        .collect();
    let http = [
        None,
        Some(HttpAttrs { method: "GET", path: "/" }),
        Some(HttpAttrs { method: "POST", path: "/a/b" }),
    ];
    for from in &ids {
        for to in &ids {
            for h in http {
                let d = policy.decide(&Request { from, to, http: h });
                let _ = d.to_string();
                assert_eq!(d.allowed(), d.reason() == Reason::AllowRule);
            }
        }
    }
    let other: TrustDomain = if td.as_str() == "other.test" { "else.test" } else { "other.test" }
        .parse()
        .expect("literal trust domain");
    if let Some(to) = ids.first() {
        let from = SpiffeId::new(other, to.zone().clone(), to.workload().clone());
        let d = policy.decide(&Request { from: &from, to, http: None });
        assert!(!d.allowed(), "a foreign trust domain is never allowed");
    }
});
