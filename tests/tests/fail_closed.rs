//! "No valid identity, no traffic", where it used to leak: sessions resumed past a
//! certificate's life, an identity minted in the CA's own zone, a trust bundle whose every
//! root could vouch for any trust domain, and a CA whose own certificate was renewed once or
//! never. Each test drives the real binaries with real TLS peers (Python `ssl` on OpenSSL,
//! the sidecar's rustls) and fails on the code before its fix.

use std::path::Path;
use std::time::Duration;

use mesh_tests::ca_server::*;
use mesh_tests::proxy::*;
use mesh_tests::{cert_times, now_unix, TestCa};
use serde_json::Value;

/// The first event called `name` after `mark`.
fn next_named(sc: &Sidecar, mark: usize, name: &str) -> Value {
    sc.wait_from(mark, name, |e| e["event"] == name)
}

/// Waits (polling the clock, bounded) until `cert`'s notAfter has passed.
fn wait_until_expired(cert: &Path) {
    let (_, not_after) = cert_times(cert);
    let left = not_after + 2 - now_unix();
    assert!(left < 60, "{} is not a short-lived certificate ({left}s left)", cert.display());
    if left > 0 {
        std::thread::sleep(Duration::from_secs(left as u64));
    }
    assert!(now_unix() > not_after, "the certificate should have expired by now");
}

/// Inbound: a peer that made one full handshake while its certificate was valid used to
/// resume that session after the certificate expired (every resumption renews the ticket,
/// so indefinitely). Now the resumed session is verified again and refused, nothing reaches
/// the app, and the event says why.
#[test]
fn inbound_refuses_a_session_resumed_after_the_peer_certificate_expired() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    let app = App::start();
    let server = mesh.sidecar(SidecarSpec::new("server", &api, &policy).inbound(app.addr));
    let inbound = server.inbound.expect("inbound port");
    let web = &mesh.variants("frontend", "web", &["short_lived"])["short_lived"];

    let mark = server.mark();
    let r = Probe::to(inbound).identity(web).send("while valid").again_after_expiry().run();
    assert_eq!(field(&r, "received"), "while valid", "the first, full handshake works: {r}");
    let again = &r["again"];
    assert_eq!(again["resumed"], true, "the second connection resumed its session at the TLS level: {r}");
    assert_eq!(field(again, "received"), "", "nothing may come back on the resumed session: {r}");
    assert_eq!(app.connections(), 1, "the resumed session reached the app\n{}", server.transcript());

    let first = server.next_conn_event(mark);
    assert_eq!(field(&first, "event"), "connection", "{first}");
    let refused = next_named(&server, mark, "tls.handshake_failed");
    assert_eq!(field(&refused, "reason"), "expired", "{refused}\n{}", server.transcript());
    assert!(field(&refused, "reason_detail").contains("resumed session"), "{refused}");
}

/// Outbound, the mirror case: a server (here Python `ssl`, which keeps serving a certificate
/// past its expiry, as a stolen key would) resumed by the sidecar's client session. The
/// sidecar now refuses the resumed session before a byte of the app's request leaves.
#[test]
fn outbound_refuses_a_session_resumed_after_the_server_certificate_expired() {
    // The short-lived certificate's 20 s run from when it is made, and the server and the
    // sidecar start after it (the sidecar needs the server's address): on a machine too busy
    // to start them within a few seconds, the "while valid" exchange would fail for want of
    // time, not of the feature. Then start over with a fresh certificate (at most 3 times).
    let mut attempt = 0;
    let (_mesh, api, server, client) = loop {
        attempt += 1;
        let mesh = Mesh::new();
        let web = mesh.identity("frontend", "web");
        let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
        let api =
            mesh.variants("orders", "api", &["short_lived"]).remove("short_lived").expect("short_lived");
        let server = TlsServer::start(&api, Some(&web.bundle()), true);
        let client = mesh.sidecar(SidecarSpec::new("client", &web, &policy).outbound(server.addr, &api.id));
        let left = cert_times(&api.cert()).1 - now_unix();
        if left >= 5 || attempt == 3 {
            break (mesh, api, server, client);
        }
        println!("attempt {attempt}: {left}s of the certificate's life left after starting the peers; again");
    };
    let outbound = client.outbound[0];

    assert_eq!(exchange(outbound, b"while valid"), b"while valid", "{}", client.transcript());
    wait_until_expired(&api.cert());
    let mark = client.mark();
    let mut c = Client::connect(outbound);
    use std::io::Write;
    let _ = c.stream.write_all(b"after expiry");
    let back = c.read_until_closed(Duration::from_secs(15));
    assert_eq!(back.as_deref().unwrap_or_default(), b"", "bytes came back through an expired server");

    let refused = next_named(&client, mark, "tls.handshake_failed");
    assert_eq!(field(&refused, "reason"), "expired", "{refused}\n{}", client.transcript());
    assert!(field(&refused, "reason_detail").contains("resumed session"), "{refused}");
    let seen = server.wait_connections(2);
    assert_eq!(seen[1]["resumed"], true, "the sidecar resumed at the TLS level: {seen:?}");
    assert_eq!(field(&seen[1], "received"), "", "a request byte reached the expired server: {seen:?}");
}

/// The CA API: a renewal over a session resumed after the caller's certificate expired used
/// to be answered with a fresh certificate (`renew` never looked at notAfter, and the
/// resumed session skipped the certificate check). Now it is refused, with an event; a full
/// handshake with the expired certificate is refused by the handshake itself.
#[test]
fn renewal_with_an_expired_certificate_is_refused_over_full_and_resumed_handshakes() {
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &[]);
    let (dir, _serial) = ca.issue_ok("orders", "api", "api", &["--ttl", "1m"]);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let csr = Csr::p256(ca.tmp.path(), "next");
    let body = serde_json::json!({ "csr": csr.pem }).to_string();
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let bundle = server.bundle.display().to_string();
    let r = ca_client(&[
        "resume",
        "--url",
        &server.url,
        "--bundle",
        &bundle,
        "--cert",
        &c,
        "--key",
        &k,
        "--json",
        &body,
        "POST",
        "/v1/renew",
    ]);
    assert_eq!(r["first"]["status"], 200, "the first request, while valid, is served: {r}");
    let second = &r["second"];
    assert_eq!(second["resumed"], true, "the renewal resumed the first session: {r}");
    assert_ne!(second["status"], 200, "an expired certificate was renewed over a resumed session: {r}");
    assert!(second["json"]["cert_chain"].is_null(), "a certificate was handed out: {r}");
    let e = server.wait_event("tls.resumption_refused", |e| e["event"] == "tls.resumption_refused");
    assert_eq!(e["reason"], "expired", "{e}");

    // The same expired certificate on a full handshake: refused by the handshake.
    let again = server.api().renew(&cert, &key, &csr);
    assert!(again.status.is_none() || again.status != Some(200), "renewed on a full handshake: {again:?}");
    assert!(again.tls_alert() || again.status.is_none(), "expected a TLS refusal: {again:?}");
    assert_eq!(
        workload_leaves(&ca).len(),
        1,
        "only the original certificate is on record\n{}",
        server.transcript()
    );
}

/// The CA's identity can no longer be minted: `issue` and `token create` refuse the reserved
/// zone (`mesh-system`), and a sidecar enrolling against an impostor that holds a
/// `.../ns/mesh-system/sa/ca` certificate signed by the real intermediate (as anyone could
/// get before) refuses it in the handshake: the join token never leaves.
#[test]
fn the_cas_identity_cannot_be_minted_or_impersonated() {
    let mesh = Mesh::new();
    let issue = mesh.ca.issue("mesh-system", "ca", "minted", &[]);
    let token = mesh_tests::Cmd::mesh_ca()
        .args(["token", "create", "--dir"])
        .arg(&mesh.ca.dir)
        .args(["--zone", "mesh-system", "--workload", "ca"])
        .run();
    for (what, o) in [("issue", issue), ("token create", token)] {
        assert_eq!(o.code(), Some(1), "{what} minted the CA's identity:\n{o}");
        assert!(o.stderr.contains("reserved"), "{what}: {o}");
        assert!(o.stdout.trim().is_empty(), "{what} printed something: {o}");
    }
    assert!(!mesh.ca.path("minted").join("cert.pem").exists(), "issue wrote a certificate");

    let impostor = &mesh.variants("mesh-system", "ca", &["good"])["good"];
    let fake = TlsServer::start(impostor, None, false);
    let token = mesh_tests::ca_server::token(&mesh.ca, "orders", "api", "15m", 1);
    let dir = mesh.path("sc-enroll");
    std::fs::create_dir_all(&dir).expect("sidecar dir");
    std::fs::write(dir.join("token"), format!("{token}\n")).expect("token file");
    std::fs::write(dir.join("bundle.pem"), std::fs::read(mesh.ca.dir.join("root.pem")).expect("root"))
        .expect("bundle");
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "policy = {:?}\n[identity]\nca_url = \"https://{}\"\nca_bundle = {:?}\ntoken_file = {:?}\n",
            policy.display().to_string(),
            fake.addr,
            dir.join("bundle.pem").display().to_string(),
            dir.join("token").display().to_string()
        ),
    )
    .expect("config");
    let cfg = config.display().to_string();
    let sidecar =
        LineChild::spawn("enrolling", &mesh_tests::binary("mesh-proxy"), &["run", "--config", &cfg]);
    let failed = sidecar.wait_lines("cert.enroll_failed", |lines| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "cert.enroll_failed")
    });
    assert!(
        failed.to_string().contains("not the CA"),
        "the sidecar should refuse the impostor's certificate: {failed}\n{}",
        sidecar.transcript()
    );
    let seen = fake.wait_connections(1);
    for c in &seen {
        let got = c["received"].as_str().unwrap_or("");
        assert!(got.is_empty() && !got.contains(&token), "the impostor received a request: {seen:?}");
    }
}

/// A bundle that federates with another trust domain (our root and other.org's): a leaf
/// naming our trust domain but signed under other.org's root used to be accepted, since any
/// listed root could vouch for any identity. Now only our trust domain's anchors do.
#[test]
fn a_foreign_root_in_the_bundle_cannot_mint_identities_of_our_trust_domain() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let v = mesh.variants("frontend", "web", &["foreign_root", "good"]);
    let (forged, good) = (&v["foreign_root"], &v["good"]);
    // The server's bundle: its own root, then other.org's.
    let mut bundle = std::fs::read(api.bundle()).expect("bundle");
    bundle.extend(std::fs::read(forged.dir.join("extra_anchor.pem")).expect("the foreign root"));
    let federated = api.dir.join("bundle.pem");
    std::fs::write(&federated, bundle).expect("writing the federated bundle");
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    let app = App::start();
    let server = mesh.sidecar(SidecarSpec::new("server", &api, &policy).inbound(app.addr));
    let inbound = server.inbound.expect("inbound");

    let r = Probe::to(inbound).identity(good).send("ours").run();
    assert_eq!(field(&r, "received"), "ours", "the control, signed by our own CA, passes: {r}");
    let mark = server.mark();
    let r = Probe::to(inbound).identity(forged).send("forged").run();
    assert_eq!(field(&r, "received"), "", "a leaf under other.org's root got through: {r}");
    let e = server.next_conn_event(mark);
    assert_eq!(field(&e, "event"), "tls.handshake_failed", "{e}");
    assert_eq!(field(&e, "reason"), "unknown_ca", "{e}");
    assert_eq!(app.connections(), 1);
}

/// The CA server renews its own certificate a third into its life and retries a failed
/// renewal with backoff until it works. Before, it tried once per half of the maximum leaf
/// TTL, so one failure (here: the store locked by another process, as a backup or a stuck
/// `mesh-ca` command would) left it serving an expired certificate.
#[test]
fn the_ca_retries_renewing_its_own_certificate_until_it_works() {
    let ca = TestCa::prepare(false);
    ca.cmd("init")
        .args(["--trust-domain", &ca.trust_domain, "--insecure-no-passphrase"])
        .args(["--min-leaf-ttl", "1m", "--max-leaf-ttl", "2m", "--default-leaf-ttl", "1m"])
        .run()
        .assert_ok();
    let server = CaServer::start(&ca, &[]);
    let first_expiry = store_certs(&ca)
        .iter()
        .filter(|c| c["spiffe_id"].as_str().is_some_and(|s| s.ends_with("/ns/mesh-system/sa/ca")))
        .filter_map(|c| c["not_after"].as_i64())
        .max()
        .expect("the CA server's own certificate is on record");
    // The certificate lives 120 s and is renewed 40 s in. Hold the store's write lock from now
    // until 55 s in: the first renewal fails, and only a retry can renew it in time.
    let issued_at = first_expiry - 120;
    let hold_until = (issued_at + 55).to_string();
    let store = ca.dir.join("store.db").display().to_string();
    let locker = LineChild::spawn(
        "store-locker",
        Path::new("python3"),
        &[
            "-c",
            "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', int(time.time()), flush=True)\ntime.sleep(max(0, float(sys.argv[2]) - time.time()))\nc.execute('COMMIT')\nprint('released', flush=True)\ntime.sleep(3600)",
            &store,
            &hold_until,
        ],
    );
    let locked_at: i64 = locker.wait_lines("the store lock", |l| {
        l.iter().find_map(|x| x.strip_prefix("locked ").and_then(|t| t.parse().ok()))
    });
    assert!(locked_at < issued_at + 35, "the test machine took {}s to lock the store", locked_at - issued_at);
    // Longer than the harness's usual deadline: the first renewal is 40 s in.
    let named = |name: &'static str| {
        move |l: &[String]| {
            l.iter().filter_map(|x| serde_json::from_str::<Value>(x).ok()).find(|e| e["event"] == name)
        }
    };
    let failed = server
        .proc
        .wait_lines_for(Duration::from_secs(120), named("ca.renew_own_failed"))
        .unwrap_or_else(|| panic!("no ca.renew_own_failed\n{}", server.transcript()));
    assert!(failed["retry_in_seconds"].is_string(), "the failure names its retry: {failed}");
    locker.wait_lines("the store lock released", |l| l.iter().any(|x| x == "released").then_some(()));
    server
        .proc
        .wait_lines_for(Duration::from_secs(120), named("ca.own_certificate_renewed"))
        .unwrap_or_else(|| panic!("no ca.own_certificate_renewed\n{}", server.transcript()));
    // When the new certificate was made: its notBefore is backdated by 60 s for clock skew.
    let renewed_at = store_certs(&ca)
        .iter()
        .filter(|c| c["spiffe_id"].as_str().is_some_and(|s| s.ends_with("/ns/mesh-system/sa/ca")))
        .filter_map(|c| c["not_before"].as_i64())
        .max()
        .expect("the renewed certificate is on record")
        + 60;
    assert!(
        renewed_at < first_expiry,
        "renewed at {renewed_at}, after the old certificate expired at {first_expiry}\n{}",
        server.transcript()
    );
    // And the server presents the new certificate.
    let r = server.api().request("GET", "/v1/bundle", &[]);
    assert_eq!(r.status, Some(200), "{r:?}");
}

/// Revoking the CA server's serial (a stolen serving key) takes that certificate out of
/// service without cutting the mesh off: sidecars learn the revocation (and from then on
/// refuse that certificate in the handshake, see `tls::tests::a_ca_client_refuses_...`), the
/// CA sees its own serial revoked and issues itself a new certificate at once, and the
/// sidecar keeps talking to the CA. Before, the CA went on presenting the revoked
/// certificate until its next scheduled renewal (hours).
#[test]
fn a_revoked_ca_server_certificate_is_replaced_at_once() {
    let mesh = EnrollMesh::start(&[], SAMPLE_POLICY);
    let sc = mesh.sidecar("web", "frontend", "web", 1, &SidecarShape::default());
    let ca_serial = store_certs(&mesh.ca)
        .into_iter()
        .find(|c| c["spiffe_id"].as_str().is_some_and(|s| s.ends_with("/ns/mesh-system/sa/ca")))
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
        .expect("the CA server's certificate is on record");
    let mark = sc.mark();
    revoke(&mesh.ca, &["--serial", &ca_serial, "--reason", "key-compromise"]).assert_ok();
    sc.wait_from(mark, "the CA's revocation learnt", |e| {
        e["event"] == "cert.revoked"
            && e["detail"].as_str().is_some_and(|d| norm(d).contains(&norm(&ca_serial)))
    });
    let server = mesh.server();
    server.wait_event("ca.own_certificate_revoked", |e| e["event"] == "ca.own_certificate_revoked");
    server.wait_event("ca.own_certificate_renewed", |e| e["event"] == "ca.own_certificate_renewed");
    let served = mesh_tests::proxy::Probe::to(server.addr).verify(&server.bundle).run();
    assert_ne!(
        norm(served["peer_serial"].as_str().unwrap_or("")),
        norm(&ca_serial),
        "the CA still presents its revoked certificate: {served}"
    );
    // The sidecar's next poll reaches the renewed CA: it learns of the next revocation.
    let mark = sc.mark();
    revoke(&mesh.ca, &["--zone", "orders", "--workload", "gone", "--force"]).assert_ok();
    sc.wait_from(mark, "a revocation learnt from the renewed CA", |e| {
        e["event"] == "cert.revoked" && field(e, "src_id").ends_with("/ns/orders/sa/gone")
    });
}

/// The CA server's own identity cannot be revoked as an identity: every certificate it
/// will ever present has it, and identity revocations are forever, so one typo would cut
/// every sidecar off from the CA for good.
#[test]
fn the_cas_own_identity_cannot_be_revoked() {
    let ca = TestCa::init_unencrypted();
    let o = revoke(&ca, &["--zone", "mesh-system", "--workload", "ca"]);
    assert_eq!(o.code(), Some(1), "{o}");
    assert!(o.stderr.contains("nothing was revoked") && o.stderr.contains("serial"), "{o}");
    let listed = ca.cmd("list").arg("--json").run();
    let v: Value = serde_json::from_str(&listed.stdout).expect("list --json");
    assert!(v["revocations"].as_array().is_none_or(|r| r.is_empty()), "{listed}");
}

/// A key file that group or others can read draws a warning: a `config.secret_exposed`
/// event from `run`, a line from `check` (which still passes: the file works).
#[test]
fn a_readable_key_file_draws_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    std::fs::set_permissions(api.key(), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    let app = App::start();
    let spec = SidecarSpec::new("server", &api, &policy).inbound(app.addr);
    let config = mesh.write_config(&spec);
    let checked = mesh_proxy(&["check", "--config", &config.display().to_string()]);
    checked.assert_ok();
    assert!(
        checked.stdout.contains("readable by group or others") && checked.stdout.contains("chmod 600"),
        "{checked}"
    );
    let server = Sidecar::start("server", &config);
    let e = server.wait_for("config.secret_exposed", |e| e["event"] == "config.secret_exposed");
    assert!(field(&e, "reason_detail").contains("id-orders-api/key.pem"), "{e}");
    assert_eq!(field(&e, "severity"), "warning", "{e}");

    // The control: a 0600 key draws nothing.
    std::fs::set_permissions(api.key(), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let checked = mesh_proxy(&["check", "--config", &config.display().to_string()]);
    assert!(!checked.stdout.contains("readable by group"), "{checked}");
}

/// `check` builds the TLS configs `run` builds: an outbound to a trust domain the bundle has
/// no root for is refused by both, naming the bundle and the trust domain.
#[test]
fn check_and_run_refuse_an_outbound_whose_trust_domain_the_bundle_lacks() {
    let mesh = Mesh::new();
    let web = mesh.identity("frontend", "web");
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    let remote: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let spec =
        SidecarSpec::new("client", &web, &policy).outbound(remote, "spiffe://other.org/ns/orders/sa/api");
    let config = mesh.write_config(&spec).display().to_string();
    for cmd in ["check", "run"] {
        let o = mesh_proxy(&[cmd, "--config", &config]);
        assert!(!o.success(), "{cmd} accepted an outbound it cannot verify:\n{o}");
        assert!(o.stderr.contains("no anchor for trust domain other.org"), "{cmd}: {o}");
    }
}
