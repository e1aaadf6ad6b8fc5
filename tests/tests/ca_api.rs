//! End-to-end tests of the CA's HTTPS API (`mesh-ca serve`): a real server process on a
//! throwaway CA, driven by a client written in Python (`ssl`, `http.client`, `cryptography`;
//! tests/py/ca_client.py) that shares no code with mesh-ca. What it issues is judged by
//! `tests/py/svid_check.py`, `openssl verify`, rustls-webpki and `mesh-ca inspect`.
//!
//! Every refusal is checked three ways: the HTTP status and `{"error", "reason"}` body (or the
//! TLS alert where the contract refuses inside the handshake), the server's event, and the
//! store: `mesh-ca list --json` holds no new certificate afterwards. Each test also shows the
//! same client succeeding where it should, so a refusal is never an artefact of the client.

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_tests::ca_server::*;
use mesh_tests::*;
use serde_json::{json, Value};

const TD: &str = "example.org";
const API_ID: &str = "spiffe://example.org/ns/orders/sa/api";
const CHARGE_ID: &str = "spiffe://example.org/ns/payments/sa/charge";
const WEB_ID: &str = "spiffe://example.org/ns/frontend/sa/web";
/// The lifetime the test servers give certificates (`--cert-ttl`).
const CERT_TTL_S: i64 = 600;

/// A CA (unencrypted keys: the Python client signs expired leaves with its intermediate) and
/// its server.
struct Served {
    ca: TestCa,
    server: CaServer,
    api: Api,
}

fn served() -> Served {
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &["--cert-ttl", "10m"]);
    let api = server.api();
    Served { ca, server, api }
}

impl Served {
    fn tmp(&self) -> &Path {
        self.ca.tmp.path()
    }

    /// Leaves in the store, without the server's own.
    fn leaves(&self) -> Vec<Value> {
        workload_leaves(&self.ca)
    }

    fn token(&self, zone: &str, workload: &str) -> String {
        token(&self.ca, zone, workload, "15m", 1)
    }

    /// Enrolls `zone/workload` with a fresh one-use token and a plain P-256 CSR; saves the
    /// certificate under `<tmp>/<name>`.
    fn enroll(&self, zone: &str, workload: &str, name: &str) -> Issued {
        let t = self.token(zone, workload);
        let csr = Csr::p256(self.tmp(), name);
        let r = self.api.enroll(&t, &csr);
        let body = r.assert_issued();
        Issued::save(body, &csr, &self.ca.path(name))
    }

    /// Renews with `cert` and a fresh P-256 CSR; saves the new certificate under `<tmp>/<name>`.
    fn renew(&self, cert: &Issued, name: &str) -> Issued {
        let csr = Csr::p256(self.tmp(), name);
        let r = self.api.renew(&cert.cert(), &cert.key(), &csr);
        let body = r.assert_issued();
        Issued::save(body, &csr, &self.ca.path(name))
    }

    /// Panics unless the store holds exactly `before` workload leaves.
    #[track_caller]
    fn assert_nothing_issued(&self, before: usize, after_what: &str) {
        let now = self.leaves();
        assert_eq!(now.len(), before, "{after_what}: the store gained a certificate: {now:#?}");
    }
}

/// What `ca_client.py describe` reads from the first certificate of a PEM file.
fn describe(path: &Path) -> Value {
    let p = path.display().to_string();
    ca_client(&["describe", &p])
}

/// Runs svid_check.py (with the chain and against intermediate.pem), `openssl verify` for both
/// purposes, rustls-webpki and `mesh-ca inspect` on an issued certificate; each must accept it
/// as an X.509-SVID for `id`.
fn assert_valid_svid(ca: &TestCa, cert: &Issued, id: &str) {
    let py = svid_check("leaf", Some(TD), None, &[&cert.cert()]);
    assert!(py.success(), "svid_check rejects the issued chain:\n{py}");
    let py = svid_check("leaf", Some(TD), Some(&ca.dir.join("intermediate.pem")), &[&cert.leaf()]);
    assert!(py.success(), "svid_check rejects the leaf against intermediate.pem:\n{py}");
    let bundle = cert.dir.join("bundle.pem");
    for purpose in ["sslserver", "sslclient"] {
        let o = openssl_verify(&cert.leaf(), &bundle, Some(&cert.dir.join("chain-rest.pem")), purpose);
        assert!(o.success() && o.stdout.contains(": OK"), "openssl verify ({purpose}) rejects it:\n{o}");
    }
    let chain = read_pem_certs(&cert.cert());
    assert_eq!(chain.len(), 2, "cert_chain must be the leaf then the intermediate");
    if let Err(e) = webpki_verify(&chain, &read_pem_certs(&bundle), None) {
        panic!("rustls-webpki rejects the issued certificate: {e}");
    }
    let o = Cmd::mesh_ca().args(["inspect", "--json"]).arg(cert.cert()).run();
    o.assert_ok();
    let v: Value = serde_json::from_str(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(v["spiffe_id"], id, "inspect:\n{o}");
    assert_eq!(v["is_ca"], false, "inspect:\n{o}");
    assert_eq!(v["profile"]["ok"], true, "inspect:\n{o}");
    assert_eq!(norm(v["serial"].as_str().unwrap_or("")), cert.serial, "inspect's serial vs the API's");
}

/// Asserts that a certificate carries only what the CA's template puts in a leaf: exactly the
/// one URI SAN `id`, no DNS names, cA=false, digitalSignature only, both EKUs, the server's
/// TTL (plus the 60 s backdate), and the key of `csr`.
fn assert_from_template(cert: &Issued, id: &str, csr: &Csr) {
    let d = describe(&cert.leaf());
    assert_eq!(d["uris"], json!([id]), "exactly one URI SAN, the token's identity: {d}");
    assert_eq!(d["dns"], json!([]), "no DNS SAN (the CSR's are ignored): {d}");
    assert_eq!(d["ca"], false, "cA=false whatever the CSR asked: {d}");
    assert_eq!(d["key_usage"], json!(["digital_signature"]), "digitalSignature only: {d}");
    assert_eq!(d["eku"], json!(["serverAuth", "clientAuth"]), "{d}");
    let not_after = d["not_after"].as_i64().expect("not_after");
    let not_before = d["not_before"].as_i64().expect("not_before");
    assert_eq!(not_after - not_before, CERT_TTL_S + 60, "validity = --cert-ttl + the backdate: {d}");
    assert!(not_after <= now_unix() + CERT_TTL_S, "validity beyond --cert-ttl: {d}");
    assert_eq!(not_after, cert.not_after, "the body's not_after vs the certificate's");
    assert!(
        !d["extensions"].as_array().is_some_and(|a| a.iter().any(|o| o == "2.5.29.16")),
        "the CSR's PrivateKeyUsagePeriod was copied: {d}"
    );
    assert_eq!(d["public_key"], csr.public_key.as_str(), "the certificate is not for the CSR's key");
    assert_eq!(norm(d["serial"].as_str().unwrap_or("")), cert.serial, "serial vs the API's");
}

// ---------------------------------------------------------------------------------------------
// 1. Enrollment and renewal work, from the CA's template only
// ---------------------------------------------------------------------------------------------

#[test]
fn enroll_issues_the_tokens_identity_from_the_cas_template_whatever_the_csr_asks() {
    let s = served();
    assert!(s.leaves().is_empty(), "a fresh CA has no workload leaves");
    let t = s.token("orders", "api");
    // A CSR for another identity, with DNS names, CA powers and a ten-year usage period.
    let csr = Csr::make(
        s.tmp(),
        "greedy",
        &[
            "--uri",
            CHARGE_ID,
            "--dns",
            "charge.payments.svc",
            "--dns",
            "evil.example.com",
            "--cn",
            CHARGE_ID,
            "--ca",
            "--long-validity",
        ],
    );
    let r = s.api.enroll(&t, &csr);
    let body = r.assert_issued().clone();
    assert_eq!(body["spiffe_id"], API_ID, "the identity comes from the token: {body}");
    let cert = Issued::save(&body, &csr, &s.ca.path("api"));
    assert_valid_svid(&s.ca, &cert, API_ID);
    assert_from_template(&cert, API_ID, &csr);

    // The bundle in the answer and at /v1/bundle is `mesh-ca bundle`.
    let bundle = std::fs::read_to_string(&s.server.bundle).expect("bundle.pem");
    assert_eq!(body["bundle"], bundle.as_str(), "the answer's bundle is not the CA's");
    let b = s.api.request("GET", "/v1/bundle", &[]);
    assert_eq!(b.status, Some(200), "{b:?}");
    assert_eq!(b.json["bundle"], bundle.as_str(), "{b:?}");
    assert!(b.json["sequence"].is_u64(), "{b:?}");

    // Recorded: one new leaf, for orders/api with that serial; nothing for payments/charge.
    let leaves = s.leaves();
    assert_eq!(leaves.len(), 1, "{leaves:#?}");
    assert_eq!(leaves[0]["spiffe_id"], API_ID);
    assert_eq!(norm(leaves[0]["serial"].as_str().unwrap_or("")), cert.serial);
    assert_eq!(leaves[0]["status"], "active");
    assert!(store_certs(&s.ca).iter().all(|c| c["spiffe_id"] != CHARGE_ID), "payments/charge was issued");

    // Audit events; the token and the CSR never appear in what the server prints.
    let used = s.server.wait_event("token.used", |e| e["event"] == "token.used");
    assert_eq!(used["spiffe_id"], API_ID, "{used}");
    let issued = s.server.wait_event("cert.issued", |e| e["event"] == "cert.issued");
    assert_eq!(issued["spiffe_id"], API_ID, "{issued}");
    assert_eq!(norm(issued["serial"].as_str().unwrap_or("")), cert.serial, "{issued}");
    let all = s.server.transcript();
    assert!(!all.contains(&t) && !all.contains(&t[5..]), "the token appears in the server output:\n{all}");
    let csr_body: String = csr.pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!all.contains(&csr_body[..40]), "the CSR appears in the server output");
    assert!(s.server.not_json().is_empty(), "stdout lines that are not JSON:\n{all}");
}

#[test]
fn renew_gives_the_callers_identity_a_new_certificate_for_a_new_key() {
    let s = served();
    let first = s.enroll("orders", "api", "first");
    // The renewal CSR asks for payments/charge and CA powers: ignored, as at enrollment.
    let csr = Csr::make(s.tmp(), "second", &["--uri", CHARGE_ID, "--dns", "x.example.com", "--ca"]);
    let r = s.api.renew(&first.cert(), &first.key(), &csr);
    let body = r.assert_issued().clone();
    assert_eq!(body["spiffe_id"], API_ID, "{body}");
    let second = Issued::save(&body, &csr, &s.ca.path("second"));
    assert_ne!(second.serial, first.serial, "a renewal is a new certificate");
    assert_valid_svid(&s.ca, &second, API_ID);
    assert_from_template(&second, API_ID, &csr);
    let old_key = describe(&first.leaf())["public_key"].clone();
    assert_ne!(old_key, csr.public_key.as_str(), "the renewal must be for the new key");

    // The renewed certificate renews in turn.
    let third = s.renew(&second, "third");
    assert_eq!(third.spiffe_id, API_ID);
    let serials: Vec<String> = s.leaves().iter().map(|c| norm(c["serial"].as_str().unwrap_or(""))).collect();
    for c in [&first, &second, &third] {
        assert!(serials.contains(&c.serial), "{} is not in the store: {serials:?}", c.serial);
    }
    assert_eq!(serials.len(), 3);
    let renewed = s.server.named("cert.renewed");
    assert_eq!(renewed.len(), 2, "one cert.renewed per renewal:\n{}", s.server.transcript());
    assert_eq!(norm(renewed[0]["previous_serial"].as_str().unwrap_or("")), first.serial, "{renewed:?}");
    assert_eq!(norm(renewed[0]["serial"].as_str().unwrap_or("")), second.serial, "{renewed:?}");
    assert!(store_certs(&s.ca).iter().all(|c| c["spiffe_id"] != CHARGE_ID), "payments/charge was issued");
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals (THREATS.md, "CA"): a 4xx with a reason, and nothing issued
// ---------------------------------------------------------------------------------------------

#[test]
fn enroll_refuses_bad_signatures_weak_keys_and_malformed_csrs() {
    let s = served();
    // One one-use token for every refusal: a refused CSR must not spend it.
    let t = s.token("orders", "api");
    let dir = s.tmp();
    let cases: Vec<(&str, Csr, &str)> = vec![
        (
            "a flipped signature bit",
            Csr::make(dir, "tampered", &["--tamper", "signature"]),
            "csr_bad_signature",
        ),
        (
            "someone else's key (no proof of possession)",
            Csr::make(dir, "swapped", &["--tamper", "key"]),
            "csr_bad_signature",
        ),
        ("RSA-2048", Csr::make(dir, "rsa2048", &["--key-type", "rsa2048"]), "csr_weak_key"),
        ("RSA-1024", Csr::make(dir, "rsa1024", &["--key-type", "rsa1024"]), "csr_weak_key"),
        ("P-384", Csr::make(dir, "p384", &["--key-type", "p384"]), "csr_weak_key"),
        ("Ed25519", Csr::make(dir, "ed25519", &["--key-type", "ed25519"]), "csr_weak_key"),
    ];
    for (what, csr, code) in &cases {
        let r = s.api.enroll(&t, csr);
        assert!(r.status != Some(200), "{what}: issued anyway: {r:?}");
        r.assert_refused(400, code);
    }
    let good = Csr::p256(dir, "good");
    let cert_pem = std::fs::read_to_string(s.ca.dir.join("root.pem")).expect("root.pem");
    let not_csrs: Vec<(&str, String, &str)> = vec![
        ("garbage", "hello, I am a CSR".into(), "csr_malformed"),
        ("empty", String::new(), "csr_malformed"),
        ("a certificate instead", cert_pem, "csr_malformed"),
        ("a truncated CSR", good.pem[..good.pem.len() / 2].to_owned(), "csr_malformed"),
        ("trailing garbage after the DER", der_with_trailing_byte(&good.pem), "csr_malformed"),
        ("20 KiB", "A".repeat(20 * 1024), "csr_too_large"),
    ];
    for (what, csr, code) in &not_csrs {
        let r = s.api.post("/v1/enroll", &json!({"token": t, "csr": csr}), None);
        assert!(r.status != Some(200), "{what}: issued anyway: {r:?}");
        r.assert_refused(400, code);
    }
    s.assert_nothing_issued(0, "CSR refusals");
    let refused = s.server.named("enroll.refused");
    assert_eq!(
        refused.len(),
        cases.len() + not_csrs.len(),
        "one enroll.refused per refusal:\n{}",
        s.server.transcript()
    );

    // The control: the same token, unspent, with a good CSR.
    let r = s.api.enroll(&t, &good);
    assert_eq!(r.assert_issued()["spiffe_id"], API_ID);
    assert_eq!(s.leaves().len(), 1);
}

/// A CSR's PEM with one byte appended to its DER.
fn der_with_trailing_byte(pem: &str) -> String {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = base64::engine::general_purpose::STANDARD.decode(b64).expect("CSR PEM is base64");
    der.push(0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", lines.join("\n"))
}

#[test]
fn garbage_and_oversized_bodies_unknown_paths_methods_and_floods_are_refused() {
    let s = served();
    let t = s.token("orders", "api");
    let good = Csr::p256(s.tmp(), "good");
    let files = s.ca.path("bodies");
    std::fs::create_dir_all(&files).expect("mkdir");
    let body_file = |name: &str, bytes: &[u8]| {
        let p = files.join(name);
        std::fs::write(&p, bytes).expect("writing a body");
        p.display().to_string()
    };
    let valid = json!({"token": t, "csr": good.pem}).to_string();
    let with_extra = json!({"token": t, "csr": good.pem, "spiffe_id": CHARGE_ID}).to_string();
    let wrong_type = json!({"token": 5, "csr": good.pem}).to_string();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{not json".to_vec()),
        ("empty", Vec::new()),
        ("an array", b"[]".to_vec()),
        ("no csr", json!({"token": t}).to_string().into_bytes()),
        ("an unknown field (asking for an identity)", with_extra.into_bytes()),
        ("a number for the token", wrong_type.into_bytes()),
        ("truncated", valid.as_bytes()[..valid.len() - 3].to_vec()),
        ("not UTF-8", b"{\"token\": \"\xff\xfe\", \"csr\": \"x\"}".to_vec()),
    ];
    for (i, (what, bytes)) in bad.iter().enumerate() {
        let f = body_file(&format!("bad{i}.json"), bytes);
        let r = s.api.request("POST", "/v1/enroll", &["--body-file", &f]);
        assert!(r.status != Some(200), "{what}: issued anyway: {r:?}");
        r.assert_refused(400, "bad_json");
    }
    // Renewal bodies too (over mTLS with a real certificate, so only the body is at fault).
    let cert = {
        let t2 = s.token("frontend", "web");
        let c = Csr::p256(s.tmp(), "web");
        Issued::save(s.api.enroll(&t2, &c).assert_issued(), &c, &s.ca.path("web"))
    };
    let before = s.leaves().len();
    let (cp, kp) = (cert.cert().display().to_string(), cert.key().display().to_string());
    for body in ["{", "{\"csr\": 1}", "{\"csr\": \"x\", \"token\": \"y\"}"] {
        let r = s.api.request("POST", "/v1/renew", &["--cert", &cp, "--key", &kp, "--json", body]);
        r.assert_refused(400, "bad_json");
    }

    // The body limit is 64 KiB: one byte over is 413, exactly 64 KiB is read (and its
    // oversized CSR refused).
    let pad = |total: usize| {
        let head = format!("{{\"token\":\"{t}\",\"csr\":\"");
        let fill = total - head.len() - 2;
        format!("{head}{}\"}}", "A".repeat(fill)).into_bytes()
    };
    let f = body_file("over.json", &pad(64 * 1024 + 1));
    s.api.request("POST", "/v1/enroll", &["--body-file", &f]).assert_refused(413, "body_too_large");
    let f = body_file("huge.json", &pad(1024 * 1024));
    s.api.request("POST", "/v1/enroll", &["--body-file", &f]).assert_refused(413, "body_too_large");
    let f = body_file("at-limit.json", &pad(64 * 1024));
    s.api.request("POST", "/v1/enroll", &["--body-file", &f]).assert_refused(400, "csr_too_large");

    // A known path with another method: 405, and `Allow` names the one it takes.
    let r = s.api.request("GET", "/v1/enroll", &[]);
    r.assert_refused(405, "method_not_allowed");
    assert_eq!(r.allow.as_deref(), Some("POST"), "{r:?}");
    let r = s.api.request("DELETE", "/v1/bundle", &[]);
    r.assert_refused(405, "method_not_allowed");
    assert_eq!(r.allow.as_deref(), Some("GET"), "{r:?}");
    s.api.request("GET", "/v2/enroll", &[]).assert_refused(404, "not_found");
    s.api.request("GET", "/", &[]).assert_refused(404, "not_found");
    assert_eq!(s.leaves().len(), before, "refused bodies issued something: {:#?}", s.leaves());

    // The token is still unspent: the refusals above never reached it.
    assert_eq!(s.api.enroll(&t, &good).assert_issued()["spiffe_id"], API_ID);

    // A flood from one address: 50 requests/s with a burst of 100, then 429. What the limiter
    // may allow depends on how long the flood took, so the bound is derived from that time
    // (measured around the whole client run, so it can only be generous), not from a speed
    // this machine is assumed to have; 1,000 requests outrun the refill unless each took 18 ms.
    let flood = Instant::now();
    let r = s.api.request("GET", "/v1/bundle", &["--repeat", "1000"]);
    let allowed_at_most = 100 + 50 * flood.elapsed().as_secs_f64().ceil() as usize;
    let ok = r.statuses.iter().filter(|s| **s == 200).count();
    let limited = r.statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, 1000, "only 200 and 429 expected: {:?}", r.statuses);
    assert!(
        ok >= 50 && ok <= allowed_at_most && limited > 0,
        "{ok} allowed (at most {allowed_at_most}), {limited} rate-limited"
    );
    assert_eq!(r.statuses[0], 200);
    // The reported reply is the first refused one (later ones may pass again after a refill).
    r.assert_refused(429, "rate_limited");
    println!("rate limit: {ok} of 1000 back-to-back requests allowed, {limited} refused with 429");
}

#[test]
fn enroll_refuses_unknown_used_expired_and_malformed_tokens_alike() {
    let s = served();
    // Made first, so that its one second has passed when it is used.
    let expired = token(&s.ca, "orders", "api", "1s", 5);
    let created = now_unix();
    let used = s.token("orders", "api");
    let first = Csr::p256(s.tmp(), "first");
    assert_eq!(s.api.enroll(&used, &first).assert_issued()["spiffe_id"], API_ID);
    let before = s.leaves().len();

    let unknown = {
        // Well formed, never created.
        let real = s.token("orders", "api");
        let mut b = real.into_bytes();
        let last = b.len() - 1;
        b[last] = if b[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).expect("ascii")
    };
    // Wait (at most the token's 1 s lifetime plus one second of rounding) for expiry.
    while now_unix() < created + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let csr = Csr::p256(s.tmp(), "csr");
    let mut reasons = Vec::new();
    for (what, tok) in [
        ("used up", used.as_str()),
        ("unknown", unknown.as_str()),
        ("expired", expired.as_str()),
        ("malformed", "not-a-token"),
        ("empty", ""),
        ("too long", &format!("ztm1_{}", "a".repeat(300))),
    ] {
        let r = s.api.enroll(tok, &csr);
        assert!(r.status != Some(200), "{what} token: issued anyway: {r:?}");
        r.assert_refused(403, "token_rejected");
        reasons.push(r.json["reason"].clone());
    }
    // The caller learns nothing about why (the audit has it).
    assert!(reasons.windows(2).all(|w| w[0] == w[1]), "refusal texts differ by cause: {reasons:?}");
    s.assert_nothing_issued(before, "token refusals");
    let rejected = s.server.named("token.rejected");
    assert_eq!(rejected.len(), 6, "one token.rejected per refusal:\n{}", s.server.transcript());
}

#[test]
fn token_rejected_events_name_the_reason() {
    let s = served();
    let expired = token(&s.ca, "orders", "api", "1s", 1);
    let created = now_unix();
    let used = s.token("orders", "api");
    let csr = Csr::p256(s.tmp(), "csr");
    s.api.enroll(&used, &csr).assert_issued();
    s.api.enroll(&used, &csr).assert_refused(403, "token_rejected");
    s.api.enroll("ztm1_neverissued", &csr).assert_refused(403, "token_rejected");
    s.api.enroll("garbage", &csr).assert_refused(403, "token_rejected");
    let revoked = s.token("payments", "charge");
    revoke(&s.ca, &["--zone", "payments", "--workload", "charge"]).assert_ok();
    s.api.enroll(&revoked, &csr).assert_refused(403, "revoked");
    while now_unix() < created + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    s.api.enroll(&expired, &csr).assert_refused(403, "token_rejected");
    let reasons: Vec<String> = s
        .server
        .named("token.rejected")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        reasons,
        ["used_up", "unknown", "malformed", "identity_revoked", "expired"],
        "token.rejected reasons (contract: unknown/expired/used_up/malformed/identity_revoked):\n{}",
        s.server.transcript()
    );
}

#[test]
fn renewal_is_refused_without_a_certificate_and_with_a_revoked_expired_or_foreign_one() {
    let s = served();
    let csr = Csr::p256(s.tmp(), "renew");

    // No client certificate: 401.
    let r = s.api.post("/v1/renew", &json!({"csr": csr.pem}), None);
    r.assert_refused(401, "no_client_certificate");

    // Two certificates of one identity; revoking one serial takes out only that one.
    let a = s.enroll("orders", "api", "a");
    let b = s.renew(&a, "b");
    let before = s.leaves().len();
    let o = revoke(&s.ca, &["--serial", &a.serial, "--reason", "key-compromise"]);
    o.assert_ok();
    let r = s.api.renew(&a.cert(), &a.key(), &csr);
    assert!(
        r.tls_alert() && r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("revoked"))
            || r.status == Some(403) && r.code() == "revoked",
        "renewal with a revoked certificate: expected a certificate_revoked alert or 403 revoked, got {r:?}"
    );
    println!("renew with a revoked certificate: {}", r.error.clone().unwrap_or_else(|| r.text.clone()));
    s.assert_nothing_issued(before, "renewal with a revoked certificate");

    // Expired: made with the CA's own intermediate key, validity over an hour ago.
    let (expired, _) = outside_leaf(&s.ca, "orders", "api", "expired", "--expired");
    let r = s.api.renew(&expired.join("cert.pem"), &expired.join("key.pem"), &csr);
    assert!(
        r.tls_alert() && r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("expired")),
        "renewal with an expired certificate: expected a certificate_expired alert, got {r:?}"
    );
    println!("renew with an expired certificate: {}", r.error.clone().unwrap_or_default());
    s.assert_nothing_issued(before, "renewal with an expired certificate");

    // Foreign: another CA, same trust domain name, same identity.
    let (foreign, _) = outside_leaf(&s.ca, "orders", "api", "foreign", "--foreign");
    let r = s.api.renew(&foreign.join("cert.pem"), &foreign.join("key.pem"), &csr);
    assert!(
        r.tls_alert() && r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("unknown ca")),
        "renewal with a foreign CA's certificate: expected an unknown_ca alert, got {r:?}"
    );
    println!("renew with a foreign certificate: {}", r.error.clone().unwrap_or_default());
    s.assert_nothing_issued(before, "renewal with a foreign certificate");

    // A valid certificate with a weak or forged CSR: the CSR is refused.
    for (flags, code) in [
        (&["--key-type", "rsa2048"][..], "csr_weak_key"),
        (&["--key-type", "p384"][..], "csr_weak_key"),
        (&["--tamper", "signature"][..], "csr_bad_signature"),
    ] {
        let bad = Csr::make(s.tmp(), &format!("bad-{code}-{}", flags[1]), flags);
        s.api.renew(&b.cert(), &b.key(), &bad).assert_refused(400, code);
    }
    s.assert_nothing_issued(before, "renewal with bad CSRs");
    assert!(s.server.named("renew.refused").len() >= 3, "renew.refused events:\n{}", s.server.transcript());

    // The control: the other certificate of the same identity still renews.
    let c = s.renew(&b, "c");
    assert_eq!(c.spiffe_id, API_ID);
    assert_eq!(s.leaves().len(), before + 1);
}

// ---------------------------------------------------------------------------------------------
// 3. A one-use token raced by many enrollments
// ---------------------------------------------------------------------------------------------

#[test]
fn a_token_raced_by_twenty_enrollments_yields_exactly_its_uses() {
    let s = served();
    for uses in [1u32, 3] {
        let before = s.leaves();
        let t = token(&s.ca, "orders", "api", "15m", uses);
        let (url, bundle) = (s.server.url.clone(), s.server.bundle.display().to_string());
        let v = ca_client(&["race", "--url", &url, "--bundle", &bundle, "--token", &t, "--n", "20"]);
        let results = v["results"].as_array().expect("results").clone();
        assert_eq!(results.len(), 20);
        let ok: Vec<&Value> = results.iter().filter(|r| r["status"] == 200).collect();
        let rejected =
            results.iter().filter(|r| r["status"] == 403 && r["json"]["error"] == "token_rejected").count();
        assert_eq!(ok.len(), uses as usize, "{uses}-use token raced by 20: {results:#?}");
        assert_eq!(rejected, 20 - uses as usize, "the others: 403 token_rejected: {results:#?}");
        let after = s.leaves();
        assert_eq!(after.len(), before.len() + uses as usize, "new leaves in the store: {after:#?}");
        for r in ok {
            let serial = norm(r["json"]["serial"].as_str().unwrap_or(""));
            assert!(
                after.iter().any(|c| norm(c["serial"].as_str().unwrap_or("")) == serial),
                "{serial} answered but not recorded"
            );
            assert_eq!(r["json"]["spiffe_id"], API_ID);
        }
        println!("{uses}-use token raced by 20 concurrent enrollments: {uses} issued, {rejected} refused");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Revocation while the server runs
// ---------------------------------------------------------------------------------------------

#[test]
fn a_revoked_identity_can_neither_renew_nor_enroll_and_long_polls_hear_of_it() {
    let s = served();
    let a = s.enroll("orders", "api", "a");
    let b = s.renew(&a, "b");
    let web = s.enroll("frontend", "web", "web");

    let r = s.api.request("GET", "/v1/revocations?since=0", &[]);
    assert_eq!(r.status, Some(200), "{r:?}");
    assert_eq!(r.json["revoked"], json!([]), "{r:?}");
    let since = r.json["sequence"].as_i64().expect("sequence");

    // A long-poll, started (and seen to be waiting) before the revocation. Only a caller with
    // a certificate waits (anonymous long-polls are answered at once): the web sidecar's.
    let mut args = s.api.spawn_args("GET", &format!("/v1/revocations?since={since}&wait=30"));
    let (cert, key) = (web.cert().display().to_string(), web.key().display().to_string());
    args.splice(1..1, ["--cert".to_owned(), cert, "--key".to_owned(), key]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let poll = ca_client_spawn("long-poll", &refs);
    poll.wait_lines("the long-poll request sent", |l| l.iter().any(|l| l.contains("\"sent\"")).then_some(()));
    let early =
        poll.wait_lines_for(Duration::from_secs(1), |l| l.iter().find(|l| l.contains("\"status\"")).cloned());
    assert!(early.is_none(), "the long-poll answered before anything was revoked: {early:?}");

    let before = s.leaves().len();
    // Made before the revocation: `token create` refuses a revoked identity (issue 12).
    let fresh = s.token("orders", "api");
    let o = revoke(&s.ca, &["--zone", "orders", "--workload", "api", "--reason", "compromised"]);
    o.assert_ok();
    let revoked_at = Instant::now();
    let line = poll
        .wait_lines_for(Duration::from_secs(35), |l| l.iter().find(|l| l.contains("\"status\"")).cloned())
        .unwrap_or_else(|| panic!("the long-poll never answered\n{}", poll.transcript()));
    let heard = revoked_at.elapsed();
    let v: Value = serde_json::from_str(&line).expect("the long-poll's answer is JSON");
    assert_eq!(v["status"], 200, "{v}");
    let entries = v["json"]["revoked"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "the long-poll returns the new entry: {v}");
    assert_eq!(entries[0]["spiffe_id"], API_ID, "{v}");
    assert_eq!(entries[0]["reason"], "compromised", "{v}");
    assert!(entries[0]["seq"].as_i64().is_some_and(|q| q > since), "{v}");
    assert!(entries[0]["revoked_at"].is_i64(), "{v}");
    assert_eq!(v["json"]["sequence"], entries[0]["seq"], "{v}");
    println!("long-poll returned the revocation {heard:?} after `mesh-ca revoke` exited");

    // Neither certificate of the identity renews.
    let csr = Csr::p256(s.tmp(), "again");
    for c in [&a, &b] {
        let r = s.api.renew(&c.cert(), &c.key(), &csr);
        assert!(
            r.tls_alert() && r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("revoked"))
                || r.status == Some(403) && r.code() == "revoked",
            "renewal by a revoked identity: expected a certificate_revoked alert or 403 revoked, got {r:?}"
        );
    }
    // A token made for it before the revocation is refused at enrollment.
    s.api.enroll(&fresh, &csr).assert_refused(403, "revoked");
    s.assert_nothing_issued(before, "renew/enroll of a revoked identity");

    // The list from the start shows it; the store marks both certificates revoked.
    let r = s.api.request("GET", "/v1/revocations?since=0", &[]);
    let all = r.json["revoked"].as_array().cloned().unwrap_or_default();
    assert!(all.iter().any(|e| e["spiffe_id"] == API_ID), "{r:?}");
    for c in [&a, &b] {
        let rec = s.leaves().into_iter().find(|x| norm(x["serial"].as_str().unwrap_or("")) == c.serial);
        assert_eq!(rec.as_ref().map(|r| r["status"].clone()), Some(json!("revoked")), "{rec:?}");
    }
    let ev = s.server.wait_event("cert.revoked", |e| e["event"] == "cert.revoked");
    assert_eq!(ev["spiffe_id"], API_ID, "{ev}");

    // Other identities are unaffected.
    let w2 = s.renew(&web, "web2");
    assert_eq!(w2.spiffe_id, WEB_ID);
    assert_eq!(s.enroll("frontend", "web", "web3").spiffe_id, WEB_ID);
}

// ---------------------------------------------------------------------------------------------
// 5. Durability: kill -9 in the middle of a burst
// ---------------------------------------------------------------------------------------------

#[test]
fn every_certificate_a_client_received_survives_kill_dash_nine() {
    let ca = TestCa::init_unencrypted();
    let t = token(&ca, "orders", "api", "15m", 1_000);
    let mut received: Vec<String> = Vec::new();
    for round in 0..3 {
        let mut server = CaServer::start(&ca, &["--cert-ttl", "10m"]);
        let (url, bundle) = (server.url.clone(), server.bundle.display().to_string());
        let burst = ca_client_spawn(
            "burst",
            &["burst", "--url", &url, "--bundle", &bundle, "--token", &t, "--threads", "4", "--max", "250"],
        );
        let want = 10 + 5 * round;
        burst.wait_lines("enrollments under way", |l| {
            (l.iter().filter(|l| l.contains("\"status\": 200")).count() >= want).then_some(())
        });
        server.kill9();
        let mut burst = burst;
        burst.wait_exit(DEADLINE);
        let lines = burst.stdout();
        let answers: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let ok: Vec<String> = answers
            .iter()
            .filter(|a| a["status"] == 200)
            .map(|a| norm(a["serial"].as_str().unwrap_or("")))
            .collect();
        let cut = answers.iter().filter(|a| a["status"].is_null()).count();
        let other: Vec<&Value> =
            answers.iter().filter(|a| !a["status"].is_null() && a["status"] != 200).collect();
        assert!(other.iter().all(|a| a["status"] == 429), "unexpected answers: {other:?}");
        assert!(cut > 0, "no request was cut off by the kill: {lines:?}");
        println!("round {round}: {} certificates received, {cut} requests cut off by kill -9", ok.len());
        received.extend(ok);
    }

    // A clean restart on the same directory, with every received certificate on record.
    let server = CaServer::start(&ca, &["--cert-ttl", "10m"]);
    let leaves = workload_leaves(&ca);
    let stored: Vec<String> = leaves.iter().map(|c| norm(c["serial"].as_str().unwrap_or(""))).collect();
    let missing: Vec<&String> = received.iter().filter(|s| !stored.contains(s)).collect();
    assert!(missing.is_empty(), "answered with 200 but not in the store: {missing:?}");
    assert!(stored.len() >= received.len());
    assert!(leaves.iter().all(|c| c["spiffe_id"] == API_ID && c["status"] == "active"), "{leaves:#?}");
    println!("{} certificates received over 3 kills, {} in the store", received.len(), stored.len());
    // And it serves: the same token enrolls again.
    let csr = Csr::p256(ca.tmp.path(), "after");
    let r = server.api().enroll(&t, &csr);
    assert_eq!(r.assert_issued()["spiffe_id"], API_ID);
    assert!(server.proc.stderr().iter().all(|l| l.trim().is_empty()), "{}", server.transcript());
}

// ---------------------------------------------------------------------------------------------
// The server's own identity
// ---------------------------------------------------------------------------------------------

#[test]
fn the_server_presents_the_cas_own_svid_and_trusts_only_its_bundle() {
    let s = served();
    let o = Cmd::new("openssl")
        .args(["s_client", "-connect", &s.server.addr.to_string(), "-CAfile"])
        .arg(&s.server.bundle)
        .args(["-verify_return_error", "-showcerts"])
        .run();
    assert!(o.stdout.contains("Verify return code: 0 (ok)"), "openssl does not verify the server:\n{o}");
    assert!(o.stdout.contains("TLSv1.3"), "the API speaks TLS 1.3:\n{o}");
    let served_chain = s.ca.path("served.pem");
    std::fs::write(&served_chain, &o.stdout).expect("writing the served chain");
    let d = describe(&served_chain);
    assert_eq!(d["uris"], json!(["spiffe://example.org/ns/mesh-system/sa/ca"]), "{d}");
    assert_eq!(d["ca"], false, "{d}");
    let own: Vec<Value> = store_certs(&s.ca)
        .into_iter()
        .filter(|c| c["spiffe_id"] == "spiffe://example.org/ns/mesh-system/sa/ca")
        .collect();
    assert_eq!(own.len(), 1, "the server's own certificate is recorded like any other: {own:?}");
    assert_eq!(norm(own[0]["serial"].as_str().unwrap_or("")), norm(d["serial"].as_str().unwrap_or("")));

    // A client trusting another CA refuses the server.
    let other = TestCa::init_unencrypted();
    let other_bundle = other.path("bundle.pem");
    std::fs::write(&other_bundle, other.cmd("bundle").run().stdout).expect("bundle");
    let api = Api { url: s.server.url.clone(), bundle: other_bundle };
    let r = api.request("GET", "/v1/bundle", &[]);
    assert!(
        r.status.is_none() && r.error.as_deref().is_some_and(|e| e.contains("CERTIFICATE_VERIFY_FAILED")),
        "{r:?}"
    );
}

#[test]
fn serve_needs_the_passphrase_of_an_encrypted_ca() {
    let ca = TestCa::init(&[]);
    // Without the passphrase: a clear refusal (exit 3), not a server.
    let dir = ca.dir.display().to_string();
    let mut p = LineChild::spawn(
        "serve without passphrase",
        &binary("mesh-ca"),
        &["serve", "--dir", &dir, "--listen", "127.0.0.1:0"],
    );
    let status = p.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(3), "{}", p.transcript());
    let err = p.stderr().join("\n").to_lowercase();
    assert!(err.contains("passphrase"), "the error must name the passphrase:\n{err}");
    assert!(p.stdout().iter().all(|l| !l.contains("ca.started")), "{}", p.transcript());
    // With it (--passphrase-file): serves and enrolls.
    let server = CaServer::start(&ca, &["--cert-ttl", "10m"]);
    let t = token(&ca, "orders", "api", "15m", 1);
    let csr = Csr::p256(ca.tmp.path(), "csr");
    assert_eq!(server.api().enroll(&t, &csr).assert_issued()["spiffe_id"], API_ID);
}

/// The CA's verifier reads an in-memory revocation set, loaded at start and updated by the
/// server's revocation poll: a certificate revoked by `mesh-ca revoke` (another process) is
/// refused inside the TLS handshake, not only by the renew handler's own store check (403).
/// Fails if the set were never updated (every attempt a 403) or never loaded (the same after
/// a restart).
#[test]
fn a_certificate_revoked_by_the_cli_is_refused_in_the_handshake_while_running_and_after_a_restart() {
    let s = served();
    let csr = Csr::p256(s.tmp(), "renew");
    let a = s.enroll("orders", "api", "a");
    let b = s.enroll("orders", "api", "b");
    let before = s.leaves().len();
    revoke(&s.ca, &["--serial", &a.serial, "--reason", "key-compromise"]).assert_ok();
    let in_handshake =
        |r: &Reply| r.tls_alert() && r.error.as_deref().is_some_and(|e| e.to_lowercase().contains("revoked"));
    // Until the poll has brought the entry in, the handler refuses (403); then the handshake.
    let revoked = Instant::now();
    loop {
        let r = s.api.renew(&a.cert(), &a.key(), &csr);
        if in_handshake(&r) {
            break;
        }
        assert!(r.status == Some(403) && r.code() == "revoked", "renewal with a revoked certificate: {r:?}");
        // The server's poll runs every 200 ms; the bound is for a machine busy enough to delay it.
        assert!(
            revoked.elapsed() < DEADLINE,
            "not refused in the handshake {DEADLINE:?} after the revocation"
        );
    }
    println!(
        "the handshake refused the revoked certificate {:?} after `mesh-ca revoke` exited",
        revoked.elapsed()
    );
    s.assert_nothing_issued(before, "renewal with a revoked certificate");
    // The other certificate of the same identity is not affected.
    s.api.renew(&b.cert(), &b.key(), &csr).assert_issued();

    // Revoked while the server is down: the set loaded at start refuses it at the first try.
    let Served { ca, server, .. } = s;
    drop(server);
    revoke(&ca, &["--serial", &b.serial, "--reason", "key-compromise"]).assert_ok();
    let server = CaServer::start(&ca, &["--cert-ttl", "10m"]);
    let r = server.api().renew(&b.cert(), &b.key(), &csr);
    assert!(in_handshake(&r), "a certificate revoked before the start: {r:?}");
}
