//! Third-party scanners against the real endpoints: sslyze, testssl.sh and `openssl s_client`
//! against a sidecar's inbound listener and the `mesh-ca serve` API must find TLS 1.3 only,
//! AEAD suites, strong groups and signatures, no renegotiation, no 0-RTT and nothing rated
//! above LOW beyond the SVID profile's documented properties; pkilint must stay clean on every
//! kind of certificate the CA issues. A deliberately weak `openssl s_server` is scanned by the
//! same checks, which must report it: the proof that they bite.
//!
//! The tools come from `scripts/test` (PyPI: sslyze, pkilint; Debian: testssl.sh). What was
//! run and found is in docs/security-scans.md.

use std::path::Path;
use std::time::Instant;

use mesh_tests::ca_server::{token, Api, CaServer, Csr, Issued};
use mesh_tests::proxy::{App, Mesh, SidecarSpec};
use mesh_tests::scanners::{
    openssl_handshakes, openssl_problems, pkilint, pkilint_problems, served_chain, sslyze, sslyze_problems,
    testssl, testssl_finding, testssl_problems, ClientCert, WeakServer, SVID_BY_DESIGN, TESTSSL_CHECKS,
};
use mesh_tests::{read_pem_certs, write_pem_certs, TestCa};

/// sslyze's scans with a client certificate (SSLv2 is scanned separately: sslyze's legacy
/// OpenSSL cannot load an EC client certificate for its SSLv2 client).
const SSLYZE_COMMANDS: [&str; 12] = [
    "--sslv3",
    "--tlsv1",
    "--tlsv1_1",
    "--tlsv1_2",
    "--tlsv1_3",
    "--elliptic_curves",
    "--reneg",
    "--early_data",
    "--compression",
    "--heartbleed",
    "--openssl_ccs",
    "--robot",
];
/// The scans [`SSLYZE_COMMANDS`] schedules, by their JSON names: each must complete.
const SSLYZE_RESULTS: [&str; 12] = [
    "ssl_3_0_cipher_suites",
    "tls_1_0_cipher_suites",
    "tls_1_1_cipher_suites",
    "tls_1_2_cipher_suites",
    "tls_1_3_cipher_suites",
    "elliptic_curves",
    "session_renegotiation",
    "tls_1_3_early_data",
    "tls_compression",
    "heartbleed",
    "openssl_ccs_injection",
    "robot",
];

/// The 0-RTT check is not vacuous: a ticket came (saying no early data) and was resumed.
#[track_caller]
fn assert_resumed(h: &mesh_tests::scanners::Handshakes) {
    assert!(
        h.session.contains("Max Early Data: 0"),
        "no session ticket was saved:\n{}\n{}",
        h.session,
        h.full
    );
    assert!(h.resumed.stdout.contains("Reused, TLSv1.3"), "the session was not resumed:\n{}", h.resumed);
}

#[track_caller]
fn assert_clean(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// Prints the figures the docs quote (visible with `--nocapture`).
fn summary(what: &str, sly: &serde_json::Value, ts: &[serde_json::Value]) {
    let suites: Vec<&str> = sly["scan_result"]["tls_1_3_cipher_suites"]["result"]["accepted_cipher_suites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["cipher_suite"]["name"].as_str())
        .collect();
    let curves: Vec<&str> = sly["scan_result"]["elliptic_curves"]["result"]["supported_curves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut by_sev = std::collections::BTreeMap::<&str, usize>::new();
    for f in ts {
        *by_sev.entry(f["severity"].as_str().unwrap_or("?")).or_default() += 1;
    }
    let above_low: Vec<String> = ts
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    println!(
        "{what}: sslyze TLS 1.3 suites {suites:?}, groups {curves:?}; testssl groups {:?}, severities {by_sev:?}, accepted above LOW {above_low:#?}",
        testssl_finding(ts, "PFS_ECDHE_curves")
    );
}

#[test]
fn a_sidecar_inbound_passes_sslyze_testssl_and_openssl() {
    let t0 = Instant::now();
    let mesh = Mesh::new();
    let server = mesh.identity("orders", "api");
    let client = mesh.identity("frontend", "web");
    let policy = mesh.write_file(
        "policy.toml",
        "trust_domain = \"example.org\"\nzones = [\"frontend\", \"orders\"]\n\n[[allow]]\nfrom = \"frontend\"\nto = \"orders\"\n",
    );
    let app = App::start();
    // A short idle timeout ends the openssl probe's `-ign_eof` connection soon after the echo.
    let spec = SidecarSpec::new("scanned", &server, &policy).inbound(app.addr).limit("idle_timeout", "1s");
    let sc = mesh.sidecar(spec);
    let addr = sc.inbound.expect("the sidecar has an inbound listener");
    let cc = ClientCert { chain: client.cert(), key: client.key() };
    let out = mesh.path("scans");
    std::fs::create_dir_all(&out).expect("creating the scan directory");

    // Without a client certificate: sslyze sees the handshake up to the CertificateRequest
    // (reports client auth REQUIRED) and scans SSLv2, which it cannot do with one.
    let bare = sslyze(addr, None, &["--sslv2", "--tlsv1_3"], &out.join("sslyze-nocert.json"));
    assert_eq!(bare["connectivity_result"]["client_auth_requirement"], "REQUIRED", "{bare}");
    assert_clean(
        "sslyze without a client certificate",
        &sslyze_problems(&bare, &["ssl_2_0_cipher_suites", "tls_1_3_cipher_suites"]),
    );

    // With one: complete handshakes, every other scan.
    let sly = sslyze(addr, Some(&cc), &SSLYZE_COMMANDS, &out.join("sslyze.json"));
    assert_clean("sslyze with a client certificate", &sslyze_problems(&sly, &SSLYZE_RESULTS));

    let h = openssl_handshakes(addr, Some(&cc), &server.bundle(), b"ping\n", &out.join("openssl"));
    assert_clean("openssl s_client", &openssl_problems(&h));
    assert_resumed(&h);
    assert!(
        h.full.stdout.contains("ping"),
        "the probe's handshake was complete (the echo came back):\n{}",
        h.full
    );

    let ts = testssl(addr, Some(&server.bundle()), &TESTSSL_CHECKS, &out.join("testssl.json"));
    assert_clean("testssl.sh", &testssl_problems(&ts, &TESTSSL_CHECKS, &SVID_BY_DESIGN));
    summary("sidecar inbound", &sly, &ts);
    println!("sidecar inbound scans took {:?}", t0.elapsed());
}

#[test]
fn the_ca_api_passes_sslyze_testssl_and_openssl() {
    let t0 = Instant::now();
    let ca = TestCa::init_unencrypted();
    let (leaf_dir, _) = ca.issue_ok("frontend", "web", "client", &[]);
    let server = CaServer::start(&ca, &[]);
    let cc = ClientCert { chain: leaf_dir.join("cert.pem"), key: leaf_dir.join("key.pem") };
    let out = ca.path("scans");
    std::fs::create_dir_all(&out).expect("creating the scan directory");

    // The CA asks for a client certificate but does not require one (enrollment has none).
    // sslyze without one gives up on it (its probe writes one byte and waits for an answer
    // the HTTP server never sends), so it presents one here; SSLv2 is left to testssl.sh.
    let sly = sslyze(server.addr, Some(&cc), &SSLYZE_COMMANDS, &out.join("sslyze.json"));
    assert_clean("sslyze", &sslyze_problems(&sly, &SSLYZE_RESULTS));

    let request = b"GET /v1/bundle HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n";
    let h = openssl_handshakes(server.addr, Some(&cc), &server.bundle, request, &out.join("openssl"));
    assert_clean("openssl s_client", &openssl_problems(&h));
    assert_resumed(&h);
    assert!(h.full.stdout.contains("HTTP/1.1 200"), "the probe's request was answered:\n{}", h.full);

    let ts = testssl(server.addr, Some(&server.bundle), &TESTSSL_CHECKS, &out.join("testssl.json"));
    assert_clean("testssl.sh", &testssl_problems(&ts, &TESTSSL_CHECKS, &SVID_BY_DESIGN));
    summary("CA API", &sly, &ts);

    println!("CA API scans took {:?}", t0.elapsed());
}

/// The CA server's own certificate, as served (it is issued when serve starts).
/// (Its CA server marker was first a 2.25.<UUID> OID, whose 128-bit arc pkilint could not
/// decode, as Go's encoding/asn1 cannot either; it is now id-kp-cmcCA.)
#[test]
fn the_ca_servers_own_certificate_passes_pkilint() {
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &[]);
    let request = b"GET /v1/bundle HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n";
    let h = openssl_handshakes(server.addr, None, &server.bundle, request, &ca.path("openssl"));
    let chain = served_chain(&h);
    assert!(chain.len() >= 2, "the CA served its certificate and intermediate:\n{}", h.full);
    let own = ca.path("ca-server.pem");
    std::fs::write(&own, &chain[0]).expect("writing the CA server's certificate");
    let id = format!("spiffe://{}/ns/mesh-system/sa/ca", ca.trust_domain);
    let lint = pkilint(&own, None);
    assert_clean("pkilint on the CA server's certificate", &pkilint_problems(&lint, &id));
    let pair = pkilint(&own, Some(&ca.dir.join("intermediate.pem")));
    assert_clean("pkilint on the CA server's certificate and its issuer", &pkilint_problems(&pair, &id));
}

/// Lints `leaf` (the first certificate of `file`) alone and against `issuer`.
fn lint_leaf(kind: &str, file: &Path, issuer: &Path, id: &str) {
    let leaf = file.with_extension("leaf.pem");
    write_pem_certs(&leaf, &read_pem_certs(file)[..1]);
    let alone = pkilint(&leaf, None);
    assert_clean(&format!("pkilint on {kind}"), &pkilint_problems(&alone, id));
    let pair = pkilint(&leaf, Some(issuer));
    assert_clean(&format!("pkilint on {kind} and its issuer"), &pkilint_problems(&pair, id));
    println!("pkilint {kind}: {} findings, all accepted: {alone:?}", alone.len());
}

#[test]
fn pkilint_is_clean_on_every_certificate_kind_the_ca_issues() {
    let ca = TestCa::init_unencrypted();
    let td_id = format!("spiffe://{}", ca.trust_domain);
    let (root, inter) = (ca.dir.join("root.pem"), ca.dir.join("intermediate.pem"));
    let lint = pkilint(&root, None);
    assert_clean("pkilint on the root", &pkilint_problems(&lint, &td_id));
    println!("pkilint root: {lint:?}");
    let lint = pkilint(&inter, None);
    assert_clean("pkilint on the intermediate", &pkilint_problems(&lint, &td_id));
    let pair = pkilint(&inter, Some(&root));
    assert_clean("pkilint on the intermediate and the root", &pkilint_problems(&pair, &td_id));
    println!("pkilint intermediate: {lint:?}");

    let id = |z: &str, w: &str| format!("spiffe://{}/ns/{z}/sa/{w}", ca.trust_domain);
    let (plain, _) = ca.issue_ok("orders", "api", "plain", &[]);
    lint_leaf("an issued leaf", &plain.join("cert.pem"), &inter, &id("orders", "api"));
    let dns = ["--dns", "api.orders.example.org", "--dns", "orders.internal.example"];
    let (named, _) = ca.issue_ok("orders", "named", "named", &dns);
    lint_leaf("an issued leaf with --dns", &named.join("cert.pem"), &inter, &id("orders", "named"));

    let server = CaServer::start(&ca, &[]);
    let t = token(&ca, "payments", "charge", "5m", 1);
    let csr = Csr::p256(ca.tmp.path(), "enroll");
    let api: Api = server.api();
    let issued = Issued::save(api.enroll(&t, &csr).assert_issued(), &csr, &ca.path("enrolled"));
    lint_leaf("an enrolled leaf", &issued.cert(), &inter, &id("payments", "charge"));

    // The checks bite: a certificate with serial 0 and no key usage on a CA is an ERROR.
    let bad_dir = ca.path("bad");
    std::fs::create_dir_all(&bad_dir).expect("creating a directory");
    let bad = bad_dir.join("bad.pem");
    mesh_tests::Cmd::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "1", "-subj", "/CN=bad", "-set_serial", "0", "-keyout"])
        .arg(bad_dir.join("bad.key"))
        .arg("-out")
        .arg(&bad)
        .run()
        .assert_ok();
    let problems = pkilint_problems(&pkilint(&bad, None), &td_id);
    assert!(
        problems.iter().any(|p| p.contains("pkix.certificate_serial_number_out_of_range")),
        "pkilint must flag serial 0: {problems:?}"
    );
}

#[test]
fn the_same_checks_fail_a_weak_openssl_server() {
    let t0 = Instant::now();
    let weak = WeakServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");

    let sly = sslyze(weak.addr, None, &SSLYZE_COMMANDS, &dir.path().join("sslyze.json"));
    let p = sslyze_problems(&sly, &SSLYZE_RESULTS);
    for needle in [
        "tls_1_0_cipher_suites: accepted",
        "tls_1_1_cipher_suites: accepted",
        "tls_1_2_cipher_suites: accepted",
    ] {
        assert!(p.iter().any(|x| x.contains(needle)), "sslyze checks must report {needle}: {p:#?}");
    }

    let h = openssl_handshakes(weak.addr, None, &weak.cert, b"ping\n", &dir.path().join("openssl"));
    let p = openssl_problems(&h);
    for needle in ["a TLS 1.2 handshake succeeded", "bytes of early data", "SHA1"] {
        assert!(
            p.iter().any(|x| x.contains(needle)),
            "openssl checks must report {needle}: {p:#?}\n{}",
            h.full
        );
    }

    // Protocols and cipher categories only: enough to trip the protocol, category and
    // severity rules, at a fraction of the full scan's time.
    let checks = ["-p", "-s"];
    let ts = testssl(weak.addr, None, &checks, &dir.path().join("testssl.json"));
    let p = testssl_problems(&ts, &checks, &SVID_BY_DESIGN);
    for needle in
        ["TLS1_2: offered", "TLS1: offered", "cipherlist_AVERAGE: offered", "CRITICAL cipherlist_aNULL"]
    {
        assert!(p.iter().any(|x| x.contains(needle)), "testssl checks must report {needle}: {p:#?}");
    }
    println!("negative control took {:?}; testssl problems: {p:#?}", t0.elapsed());
}
