//! The SPIFFE ID parser: `parse_spiffe_uri` (the generic SPIFFE grammar) and
//! `SpiffeId::from_str` (the mesh shape `spiffe://<td>/ns/<zone>/sa/<workload>`), plus the
//! part types and rule selectors built on the same label rules.
//!
//! Properties: no panic on any string; parsing is exact, so whatever parses prints back as
//! the very input, and that text parses to an equal value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_config::identity::parse_spiffe_uri;
use mesh_config::{Selector, SpiffeId, TrustDomain, Workload, Zone};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    if let Ok((td, segments)) = parse_spiffe_uri(s) {
        let mut rebuilt = format!("spiffe://{td}");
        for seg in &segments {
            rebuilt.push('/');
            rebuilt.push_str(seg);
        }
        assert_eq!(rebuilt, s, "parse_spiffe_uri must not normalise");
    }

    match s.parse::<SpiffeId>() {
        Ok(id) => {
            assert_eq!(id.to_string(), s, "SpiffeId Display must give back its input");
            let again: SpiffeId = id.to_string().parse().expect("a displayed SpiffeId parses");
            assert_eq!(again, id);
            let rebuilt = SpiffeId::new(id.trust_domain().clone(), id.zone().clone(), id.workload().clone());
            assert_eq!(rebuilt, id);
            assert!(parse_spiffe_uri(s).is_ok(), "a mesh ID is a SPIFFE ID");
        }
        Err(e) => {
            // Error messages are built from the input: formatting them must not panic either.
            let _ = e.to_string();
        }
    }

    if let Ok(td) = s.parse::<TrustDomain>() {
        assert_eq!(td.to_string(), s);
    }
    if let Ok(z) = s.parse::<Zone>() {
        assert_eq!(z.to_string(), s);
        assert_eq!(s.parse::<Workload>().map(|w| w.to_string()).ok().as_deref(), Some(s));
    }
    if let Ok(sel) = s.parse::<Selector>() {
        assert_eq!(sel.to_string(), s);
        assert_eq!(sel.to_string().parse::<Selector>().ok(), Some(sel));
    }
});
