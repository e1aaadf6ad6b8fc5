//! Issue 6, CA side: `mesh-ca serve --metrics-listen` exposes the CA's own metrics, parsed by
//! Prometheus's own Python client parser, and they move with what the API does.

use mesh_tests::ca_server::{token, CaServer, Csr};
use mesh_tests::monitoring::scrape;
use mesh_tests::TestCa;
use serde_json::json;

#[test]
fn ca_metrics_count_issuances_refusals_and_show_authority_expiry() {
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();

    let before = scrape(metrics);
    assert_eq!(before.sum("mesh_ca_certificates_issued_total", &[("via", "enroll")]), 0.0);
    for cert in ["root", "intermediate"] {
        let expiry = before.sum("mesh_ca_authority_expiry_timestamp_seconds", &[("cert", cert)]);
        assert!(expiry > 1.7e9, "{cert} expiry gauge is {expiry}");
    }

    let api = server.api();
    let dir = ca.tmp.path();
    let good = Csr::p256(dir, "good");
    let tok = token(&ca, "orders", "api", "15m", 2);
    assert_eq!(api.enroll(&tok, &good).status, Some(200));
    assert_eq!(api.enroll(&tok, &Csr::p256(dir, "second")).status, Some(200));
    assert_eq!(api.enroll(&tok, &Csr::p256(dir, "third")).status, Some(403), "the token is used up");
    let bad = api.post("/v1/enroll", &json!({"token": tok, "csr": "garbage"}), None);
    assert_eq!(bad.status, Some(400));

    let after = scrape(metrics);
    assert_eq!(after.sum("mesh_ca_certificates_issued_total", &[("via", "enroll")]), 2.0);
    assert_eq!(after.sum("mesh_ca_requests_refused_total", &[("reason", "token_rejected")]), 1.0);
    assert_eq!(after.sum("mesh_ca_requests_refused_total", &[("reason", "csr_malformed")]), 1.0);
    assert_eq!(after.type_of("mesh_ca_issue_duration_seconds"), Some("histogram"));
    // Only the two issued certificates are timed; the refusals are not.
    assert_eq!(after.sum("mesh_ca_issue_duration_seconds_count", &[]), 2.0);
    // Labels stay bounded: no identity or serial ever becomes a label value.
    for s in &after.samples {
        for v in s.labels.values() {
            assert!(!v.contains("spiffe://") && v.len() < 40, "unbounded label value {v:?} on {}", s.name);
        }
    }
}
