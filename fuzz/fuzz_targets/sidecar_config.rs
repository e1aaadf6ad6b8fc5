//! The sidecar config parser: `SidecarConfig::from_str_named` on arbitrary text (identity
//! modes, listener addresses, SPIFFE IDs of servers, event sink URLs, durations, limits).
//!
//! Properties: no panic; every refusal names the file; an accepted config resolves its
//! relative paths under the base directory it was given, and its endpoints and sink URLs
//! print back to text that parses to the same value.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesh_config::{Endpoint, EventSink, HttpsUrl, IdentitySource, SidecarConfig};

const NAME: &str = "sidecar.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = Path::new("/etc/mesh");
    let config = match SidecarConfig::from_str_named(text, NAME, base) {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(e.file(), NAME, "errors name the file");
            let _ = e.to_string();
            return;
        }
    };
    let _ = format!("{config:?}");
    assert!(config.policy.is_absolute(), "policy path resolved: {:?}", config.policy);
    match &config.identity {
        IdentitySource::Files { cert, key, bundle } => {
            assert!(cert.is_absolute() && key.is_absolute() && bundle.is_absolute());
        }
        _ => {}
    }
    assert!(!config.events.is_empty(), "there is always a sink");
    for out in &config.outbound {
        let text = out.connect.to_string();
        assert_eq!(text.parse::<Endpoint>().ok().as_ref(), Some(&out.connect), "{text}");
    }
    for sink in &config.events {
        let _ = sink.to_string();
        if let EventSink::Https(url) = sink {
            let text = url.to_string();
            assert_eq!(text.parse::<HttpsUrl>().ok().as_ref(), Some(url), "{text}");
        }
    }
});
