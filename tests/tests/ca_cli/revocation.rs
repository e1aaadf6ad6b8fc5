//! Revocation tells the truth (issue 12): an identity nobody made needs `--force`, a repeat
//! says "already revoked (#N)" and changes nothing, `list` shows a revoked identity's
//! certificates as revoked, `issue` and `token create` refuse a revoked identity until
//! `mesh-ca reinstate` (audited; the old certificates and tokens stay revoked); join tokens
//! have ids, `token list` and `token revoke`; `init` bounds join tokens.
//!
//! Each test fails on the code before: there `revoke` banned any name, repeated entries,
//! `issue` and `token create` served revoked identities, and neither `reinstate`, `token
//! list`, `token revoke` nor `--max-token-ttl` existed.

use std::path::Path;

use mesh_tests::ca_server::{revoke, token, CaServer, Csr};
use mesh_tests::*;
use serde_json::Value;

use super::{json, LEAF_ID, WORKLOAD, ZONE};

fn revocations(ca: &TestCa) -> Vec<Value> {
    json(ca.cmd("list").arg("--json").run().assert_ok())["revocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn statuses(ca: &TestCa, id: &str) -> Vec<(String, String)> {
    json(ca.cmd("list").arg("--json").run().assert_ok())["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .filter(|c| c["spiffe_id"] == id)
        .map(|c| {
            (c["serial"].as_str().unwrap_or("").to_owned(), c["status"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

/// The audit trail's operations, read from store.db by Python's sqlite3 (no mesh-ca code).
fn audit_ops(ca: &TestCa) -> Vec<String> {
    let db = ca.dir.join("store.db");
    let o = Cmd::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; [print(r[0]) for r in sqlite3.connect(sys.argv[1]).execute('SELECT op FROM audit ORDER BY seq')]")
        .arg(&db)
        .run();
    o.assert_ok();
    o.stdout.lines().map(str::to_owned).collect()
}

fn token_list(ca: &TestCa) -> Vec<Value> {
    let o = Cmd::mesh_ca().args(["token", "list", "--dir"]).arg(&ca.dir).arg("--json").run();
    json(o.assert_ok())["tokens"].as_array().cloned().expect("tokens")
}

fn token_revoke(ca: &TestCa, id: &str) -> Output {
    Cmd::mesh_ca().args(["token", "revoke", "--dir"]).arg(&ca.dir).arg(id).run()
}

#[test]
fn revoking_an_identity_nobody_made_needs_force_and_names_it() {
    let ca = TestCa::init_unencrypted();
    ca.issue_ok(ZONE, WORKLOAD, "out", &[]);
    let typo = "spiffe://example.org/ns/payments/sa/chrage";
    let o = revoke(&ca, &["--zone", ZONE, "--workload", "chrage"]);
    o.assert_error_naming(&[typo]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stderr.contains("--force") && o.stderr.contains("nothing was revoked"), "{o}");
    // The same through a file: the whole batch is refused.
    let file = ca.path("incident.txt");
    std::fs::write(&file, format!("{ZONE}/{WORKLOAD}\n{ZONE}/chrage\n")).expect("write");
    let o = revoke(&ca, &["--from-file", &file.display().to_string()]);
    o.assert_error_naming(&[typo]);
    assert!(revocations(&ca).is_empty(), "a refused revocation was logged");

    let o = revoke(&ca, &["--zone", ZONE, "--workload", "chrage", "--force"]);
    o.assert_ok();
    assert!(o.stdout.contains(&format!("revoked every certificate of {typo} (revocation #1")), "{o}");
    // An identity with only a join token is known: no --force needed.
    token(&ca, "orders", "api", "15m", 1);
    revoke(&ca, &["--zone", "orders", "--workload", "api"]).assert_ok();
    assert_eq!(revocations(&ca).len(), 2);
}

#[test]
fn a_repeat_revocation_says_already_revoked_and_changes_nothing() {
    let ca = TestCa::init_unencrypted();
    let (_, serial) = ca.issue_ok(ZONE, WORKLOAD, "out", &[]);
    let (_, other) = ca.issue_ok(ZONE, "other", "other", &[]);
    revoke(&ca, &["--zone", ZONE, "--workload", WORKLOAD]).assert_ok();
    let o = revoke(&ca, &["--zone", ZONE, "--workload", WORKLOAD, "--reason", "again"]);
    o.assert_ok();
    assert!(o.stdout.contains(&format!("{LEAF_ID} is already revoked (#1); nothing changed")), "{o}");
    let o = revoke(&ca, &["--serial", &serial]);
    o.assert_ok();
    assert!(o.stdout.contains("is already revoked (#1)"), "its identity's entry revokes it: {o}");
    revoke(&ca, &["--serial", &other]).assert_ok();
    let o = revoke(&ca, &["--serial", &other.to_uppercase()]);
    assert!(o.stdout.contains("is already revoked (#2)"), "{o}");
    let file = ca.path("again.txt");
    std::fs::write(&file, format!("{ZONE}/{WORKLOAD}\n{other}\n")).expect("write");
    let o = revoke(&ca, &["--from-file", &file.display().to_string()]);
    o.assert_ok();
    assert!(o.stdout.contains("all 2 target(s)") && o.stdout.contains("already revoked"), "{o}");
    assert_eq!(revocations(&ca).len(), 2, "a repeat wrote to the log");
    assert_eq!(audit_ops(&ca).iter().filter(|op| *op == "cert.revoked").count(), 2, "a repeat was audited");
}

#[test]
fn a_revoked_identity_gets_nothing_until_reinstated_and_its_old_certificates_stay_revoked() {
    let ca = TestCa::init_unencrypted();
    let (_, old) = ca.issue_ok(ZONE, WORKLOAD, "old", &[]);
    let old_token = token(&ca, ZONE, WORKLOAD, "15m", 2);
    revoke(&ca, &["--zone", ZONE, "--workload", WORKLOAD, "--reason", "compromised"]).assert_ok();

    let o = ca.issue(ZONE, WORKLOAD, "refused", &[]);
    o.assert_error_naming(&[LEAF_ID]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stderr.contains("is revoked (#1)"), "{o}");
    assert!(o.stderr.contains(&format!("mesh-ca reinstate --zone {ZONE} --workload {WORKLOAD}")), "{o}");
    assert!(!ca.path("refused").join("cert.pem").exists());
    let o = Cmd::mesh_ca()
        .args(["token", "create", "--dir"])
        .arg(&ca.dir)
        .args(["--zone", ZONE, "--workload", WORKLOAD])
        .run();
    o.assert_error_naming(&[LEAF_ID]);
    assert!(o.stdout.trim().is_empty(), "a token was printed: {o}");
    let listed = statuses(&ca, LEAF_ID);
    assert_eq!(listed.len(), 1, "only the old certificate: {listed:?}");
    assert!(listed.iter().all(|(_, s)| s == "revoked"), "{listed:?}");
    let text = ca.cmd("list").run();
    let line = text.stdout.lines().find(|l| l.contains(&old)).unwrap_or_default().to_owned();
    assert!(line.contains("revoked"), "{text}");

    let o = Cmd::mesh_ca()
        .arg("reinstate")
        .arg("--dir")
        .arg(&ca.dir)
        .args(["--zone", ZONE, "--workload", WORKLOAD, "--reason", "mistake"])
        .run();
    o.assert_ok();
    assert!(o.stdout.contains(&format!("reinstated {LEAF_ID} (revocation #1 lifted by #3")), "{o}");
    assert!(o.stdout.contains("1 certificate(s) and 1 join token(s) from before stay revoked"), "{o}");
    let (_, new) = ca.issue_ok(ZONE, WORKLOAD, "new", &[]);
    let listed = statuses(&ca, LEAF_ID);
    let status = |s: &str| listed.iter().find(|(x, _)| x == s).map(|(_, st)| st.clone());
    assert_eq!(status(&old).as_deref(), Some("revoked"), "{listed:?}");
    assert_eq!(status(&new).as_deref(), Some("active"), "{listed:?}");
    token(&ca, ZONE, WORKLOAD, "15m", 1);
    let tokens = token_list(&ca);
    assert_eq!(
        tokens.iter().map(|t| t["status"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        ["revoked", "active"]
    );
    let log = revocations(&ca);
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(
        log[1]["serial"].as_str().map(|s| s.trim_start_matches('0')),
        Some(old.trim_start_matches('0'))
    );
    assert_eq!(log[2]["action"], "reinstate");
    assert!(audit_ops(&ca).contains(&"identity.reinstated".to_owned()));
    // The old token is refused at enrollment, a reinstated identity enrolls with a new one.
    let server = CaServer::start(&ca, &["--rate-limit", "0"]);
    let csr = Csr::p256(ca.tmp.path(), "csr");
    server.api().enroll(&old_token, &csr).assert_refused(403, "token_rejected");

    let again = Cmd::mesh_ca()
        .arg("reinstate")
        .arg("--dir")
        .arg(&ca.dir)
        .args(["--zone", ZONE, "--workload", WORKLOAD])
        .run();
    again.assert_ok();
    assert!(again.stdout.contains("is not revoked; nothing changed"), "{again}");
    assert_eq!(revocations(&ca).len(), 3);
}

#[test]
fn join_tokens_are_listed_by_id_and_revoked_by_it_and_never_shown() {
    let ca = TestCa::init_unencrypted();
    let a = token(&ca, ZONE, WORKLOAD, "15m", 2);
    let b = token(&ca, "orders", "api", "1h", 1);
    let o = Cmd::mesh_ca().args(["token", "list", "--dir"]).arg(&ca.dir).run();
    o.assert_ok();
    for t in [&a, &b] {
        assert!(!o.stdout.contains(t.as_str()), "token list shows a token:\n{o}");
    }
    let header = o.stdout.lines().next().unwrap_or_default();
    for col in ["ID", "IDENTITY", "USES LEFT", "EXPIRES", "STATUS"] {
        assert!(header.contains(col), "{header}");
    }
    let json_text = Cmd::mesh_ca().args(["token", "list", "--json", "--dir"]).arg(&ca.dir).run();
    for t in [&a, &b] {
        assert!(!json_text.stdout.contains(t.as_str()), "token list --json shows a token:\n{json_text}");
    }
    let tokens = token_list(&ca);
    assert_eq!(tokens.len(), 2);
    let id = tokens[0]["id"].as_str().expect("an id").to_owned();
    assert!(id.len() == 12 && id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(tokens[0]["spiffe_id"], LEAF_ID);
    assert_eq!((tokens[0]["uses_left"].as_i64(), tokens[0]["status"].as_str()), (Some(2), Some("active")));
    assert!(o.stdout.contains(&id) && o.stdout.contains("payments/charge"), "{o}");

    let o = token_revoke(&ca, &id);
    o.assert_ok();
    assert!(o.stdout.contains(&format!("revoked join token {id} for payments/charge")), "{o}");
    let o = token_revoke(&ca, &id.to_uppercase());
    o.assert_ok();
    assert!(o.stdout.contains("is already revoked") && o.stdout.contains("nothing changed"), "{o}");
    let o = token_revoke(&ca, "0123456789ab");
    o.assert_error_naming(&["0123456789ab"]);
    assert_eq!(o.code(), Some(1));
    token_revoke(&ca, "not-an-id").assert_error_naming(&["not-an-id"]);
    let tokens = token_list(&ca);
    assert_eq!(
        (tokens[0]["status"].as_str(), tokens[1]["status"].as_str()),
        (Some("revoked"), Some("active"))
    );
    assert_eq!(audit_ops(&ca).iter().filter(|op| *op == "token.revoked").count(), 1);

    // Enrollment: the caller hears only token_rejected; the CA's event says revoked.
    let server = CaServer::start(&ca, &["--rate-limit", "0"]);
    let csr = Csr::p256(ca.tmp.path(), "csr");
    server.api().enroll(&a, &csr).assert_refused(403, "token_rejected");
    let rejected = server.wait_event("token.rejected", |e| e["event"] == "token.rejected");
    assert!(rejected.to_string().contains("\"revoked\""), "{rejected}");
    server.api().enroll(&b, &csr).assert_issued();
    let listed = token_list(&ca);
    assert_eq!(listed[0]["uses_left"], 2, "a revoked token spent nothing");
}

#[test]
fn init_sets_the_bounds_token_create_enforces() {
    let ca = TestCa::prepare(false);
    ca.cmd("init")
        .args(["--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase"])
        .args(["--max-token-ttl", "1h", "--max-token-uses", "5"])
        .run()
        .assert_ok();
    let settings = std::fs::read_to_string(ca.dir.join("ca.toml")).expect("ca.toml");
    assert!(
        settings.contains("max_token_ttl = \"1h\"") && settings.contains("max_token_uses = 5"),
        "{settings}"
    );
    let create = |ttl: &str, uses: &str| {
        Cmd::mesh_ca()
            .args(["token", "create", "--dir"])
            .arg(&ca.dir)
            .args(["--zone", ZONE, "--workload", WORKLOAD, "--ttl", ttl, "--uses", uses])
            .run()
    };
    let o = create("2h", "1");
    o.assert_error_naming(&["--ttl"]);
    assert!(o.stderr.contains("max_token_ttl"), "{o}");
    let o = create("1h", "6");
    o.assert_error_naming(&["--uses"]);
    assert!(o.stderr.contains("max_token_uses"), "{o}");
    assert!(create("1h", "5").assert_ok().stdout.starts_with("ztm1_"));
    assert_eq!(token_list(&ca).len(), 1, "only the token within the bounds was made");

    // Above the mesh's own caps: refused while parsing.
    for (flag, value) in [("--max-token-ttl", "721h"), ("--max-token-uses", "1001")] {
        let other = TestCa::prepare(false);
        let o = other
            .cmd("init")
            .args(["--trust-domain", TRUST_DOMAIN, "--insecure-no-passphrase", flag, value])
            .run();
        o.assert_error_naming(&[flag]);
        assert_eq!(o.code(), Some(2), "{o}");
        assert!(!Path::new(&other.dir).join("ca.toml").exists());
    }
}
