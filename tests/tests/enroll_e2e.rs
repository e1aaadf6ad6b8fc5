//! End-to-end tests of sidecar enrollment: real `mesh-ca serve` and `mesh-proxy run`
//! processes, sidecars configured with `[identity] ca_url, ca_bundle, token_file` only, an echo
//! app behind the server sidecar and plain TCP clients at the client sidecar's outbound port.
//!
//! - enrollment end to end (keys never on disk, a spent token enrolls nobody);
//! - with `serve --cert-ttl 1m`: continuous traffic across three rotations on both sides with
//!   zero failed requests and a long-lived connection that outlives them;
//! - the CA killed for longer than a renewal interval: zero failed requests;
//! - a revoked client identity refused at the server sidecar, its open connection closed, with
//!   the propagation time measured.
//!
//! These take minutes (certificates of one minute must actually rotate). Numbers are printed;
//! run with `--nocapture` to see them.

use std::time::{Duration, Instant};

use mesh_tests::ca_server::*;
use mesh_tests::proxy::*;
use mesh_tests::{now_unix, Cmd};
use serde_json::Value;

/// A CA server, an echo app, a server sidecar (orders/api) in front of it and a client sidecar
/// (frontend/web) with one outbound to it, all enrolling.
struct Pair {
    mesh: EnrollMesh,
    app: App,
    server: Sidecar,
    client: Sidecar,
    api_id: String,
    web_id: String,
}

impl Pair {
    fn start(serve_flags: &[&str], uses: u32) -> Self {
        let mesh = EnrollMesh::start(serve_flags, SAMPLE_POLICY);
        let app = App::start();
        let shape = SidecarShape { inbound: Some(app.addr), admin: true, ..Default::default() };
        let server = mesh.sidecar("server", "orders", "api", uses, &shape);
        let inbound = server.inbound.expect("the server sidecar announces its inbound port");
        let api_id = mesh.id("orders", "api");
        let shape = SidecarShape { outbound: vec![(inbound, api_id.clone())], ..Default::default() };
        let client = mesh.sidecar("client", "frontend", "web", uses, &shape);
        let web_id = mesh.id("frontend", "web");
        Self { mesh, app, server, client, api_id, web_id }
    }

    fn outbound(&self) -> std::net::SocketAddr {
        self.client.outbound[0]
    }

    fn transcripts(&self) -> String {
        let ca = self.mesh.server.as_ref().map(|s| s.transcript()).unwrap_or_default();
        format!("{}\n{}\n{ca}", self.server.transcript(), self.client.transcript())
    }
}

fn named(sc: &Sidecar, name: &str) -> Vec<Value> {
    sc.events().into_iter().filter(|e| e["event"] == name).collect()
}

/// The notAfter (Unix seconds) in a `cert.enrolled` / `cert.renewed` event's detail
/// ("serial X valid until Y"). Deadlines are derived from it, not from when the test started:
/// on a busy machine the pair may take seconds to come up, and the certificates' clock runs
/// from their issuance.
fn event_not_after(e: &Value) -> i64 {
    let detail = e["detail"].as_str().unwrap_or("");
    detail.rsplit(' ').next().and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("no notAfter in {e}"))
}

/// The notAfter of the certificate a sidecar holds now (its last enrollment or renewal).
fn current_not_after(sc: &Sidecar) -> i64 {
    let last =
        sc.events().into_iter().rfind(|e| e["event"] == "cert.enrolled" || e["event"] == "cert.renewed");
    event_not_after(&last.unwrap_or_else(|| panic!("{} holds no certificate\n{}", sc.name, sc.transcript())))
}

/// The time left until the Unix second `at` (zero once it has passed).
fn until(at: i64) -> Duration {
    Duration::from_secs(u64::try_from(at - now_unix()).unwrap_or(0))
}

/// Waits (bounded) until the traffic has made progress past `from`: `n` more short requests and
/// at least one more round trip on the long-lived connection, or a failure.
fn progressed(traffic: &Traffic, from: &TrafficStats, n: u64) -> TrafficStats {
    let limit = mesh_tests::ca_server::DEADLINE;
    poll(limit, || {
        let s = traffic.snapshot();
        let done = s.ok >= from.ok + n && s.long_ok > from.long_ok;
        (done || !s.failed.is_empty() || s.long_failed.is_some()).then_some(s)
    })
    .unwrap_or_else(|| panic!("no traffic went through for {limit:?} after {from:?}"))
}

/// The public key of the certificate a sidecar's inbound presents, via `openssl s_client`.
fn served_public_key(
    inbound: std::net::SocketAddr,
    bundle: &std::path::Path,
    scratch: &std::path::Path,
) -> String {
    let o =
        Cmd::new("openssl").args(["s_client", "-connect", &inbound.to_string(), "-CAfile"]).arg(bundle).run();
    std::fs::write(scratch, &o.stdout).expect("writing the served certificate");
    let k = Cmd::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(scratch).run();
    assert!(k.success(), "no certificate in the s_client output:\n{o}\n{k}");
    k.stdout
}

#[test]
fn sidecars_enroll_with_a_token_and_carry_traffic_end_to_end() {
    let p = Pair::start(&["--cert-ttl", "1h"], 1);
    let ca = p.mesh.server();
    assert_eq!(p.server.id, p.api_id, "proxy.started src_id\n{}", p.server.transcript());
    assert_eq!(p.client.id, p.web_id, "proxy.started src_id\n{}", p.client.transcript());

    // Each enrolled once, with a certificate the CA recorded for its identity.
    let mut serials = Vec::new();
    for (sc, id) in [(&p.server, &p.api_id), (&p.client, &p.web_id)] {
        let enrolled = named(sc, "cert.enrolled");
        assert_eq!(enrolled.len(), 1, "one cert.enrolled\n{}", sc.transcript());
        assert_eq!(field(&enrolled[0], "src_id"), id.as_str(), "{}", enrolled[0]);
        let serial = event_serial(&enrolled[0]);
        assert!(serial.len() >= 16, "cert.enrolled names the serial: {}", enrolled[0]);
        let issued =
            ca.wait_event("cert.issued", |e| e["event"] == "cert.issued" && e["spiffe_id"] == id.as_str());
        assert_eq!(norm(issued["serial"].as_str().unwrap_or("")), serial, "{issued}");
        let leaf = workload_leaves(&p.mesh.ca)
            .into_iter()
            .find(|c| norm(c["serial"].as_str().unwrap_or("")) == serial);
        assert_eq!(leaf.as_ref().map(|c| c["spiffe_id"].clone()), Some(Value::from(id.as_str())), "{leaf:?}");
        serials.push(serial);
    }
    // The server sidecar presents the certificate it enrolled for.
    let inbound = p.server.inbound.expect("inbound");
    assert_eq!(served_serial(inbound, &ca.bundle), serials[0]);

    // Traffic: client sidecar -> server sidecar -> echo app, one connection event per side.
    let data = payload(100_000, 3);
    assert!(exchange(p.outbound(), &data) == data, "the echo differs");
    for (sc, dir) in [(&p.server, "inbound"), (&p.client, "outbound")] {
        let e = sc.wait_for("the connection event", |e| e["event"] == "connection");
        assert_eq!(field(&e, "direction"), dir, "{e}");
        assert_eq!(field(&e, "src_id"), p.web_id, "{e}");
        assert_eq!(field(&e, "dst_id"), p.api_id, "{e}");
        assert_eq!(field(&e, "reason"), "closed", "{e}");
    }
    assert_eq!(p.app.connections(), 1);
    assert_eq!(admin_status(admin_addr(&p.server), "/ready"), Some(200));

    // Keys stay in memory: no private key anywhere outside the CA directory; the token never
    // appears in any output.
    let mut stack = vec![p.mesh.ca.tmp.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = e.path();
            if path == p.mesh.ca.dir {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
                assert!(!text.contains("PRIVATE KEY"), "a private key on disk: {}", path.display());
            }
        }
    }
    for name in ["server", "client"] {
        let t = std::fs::read_to_string(p.mesh.ca.path(&format!("sc-{name}/token"))).expect("token");
        let t = t.trim();
        assert!(!p.transcripts().contains(t), "the token of {name} appears in an output");
    }

    // A spent token enrolls nobody: a third sidecar with the client's token never starts.
    let shape = SidecarShape { outbound: vec![(inbound, p.api_id.clone())], ..Default::default() };
    let config = p.mesh.config("copycat", "frontend", "web", 1, &shape);
    std::fs::copy(p.mesh.ca.path("sc-client/token"), p.mesh.ca.path("sc-copycat/token")).expect("copy token");
    let leaves = workload_leaves(&p.mesh.ca).len();
    let config_s = config.display().to_string();
    let copycat =
        LineChild::spawn("copycat", &mesh_tests::binary("mesh-proxy"), &["run", "--config", &config_s]);
    let failed = copycat.wait_lines("cert.enroll_failed", |l| {
        l.iter().find(|l| l.contains("\"cert.enroll_failed\"")).cloned()
    });
    assert!(failed.contains("ca_refused"), "{failed}");
    let started = copycat
        .wait_lines_for(Duration::from_secs(3), |l| l.iter().find(|l| l.contains("proxy.started")).cloned());
    assert!(started.is_none(), "a sidecar started without a certificate: {started:?}");
    assert_eq!(workload_leaves(&p.mesh.ca).len(), leaves, "the spent token bought a certificate");
    ca.wait_event("token.rejected used_up", |e| e["event"] == "token.rejected" && e["reason"] == "used_up");
}

/// Rotations each sidecar must go through under traffic (at least two, by the contract).
const ROTATIONS: usize = 3;

#[test]
fn rotation_under_continuous_traffic_fails_no_request_and_keeps_old_connections() {
    let p = Pair::start(&["--cert-ttl", "1m"], 1);
    let ca_bundle = p.mesh.server().bundle.clone();
    let inbound = p.server.inbound.expect("inbound");
    let scratch = p.mesh.ca.path("served.pem");
    let t0 = Instant::now();
    // The traffic first, so that the long-lived connection is older than the first rotation
    // however long the probes take on a busy machine.
    let traffic = Traffic::start(p.outbound(), Duration::from_millis(50), true);
    assert!(
        named(&p.server, "cert.renewed").is_empty() && named(&p.client, "cert.renewed").is_empty(),
        "the long-lived connection must be older than the first rotation"
    );
    let key0 = served_public_key(inbound, &ca_bundle, &scratch);

    // Three rotations on each side (renewal at about half of the one-minute lifetime). Each is
    // awaited until the certificate it replaces expires (a renewal after that is a failure in
    // itself), and traffic must go through between rotations: short requests and the
    // long-lived connection's round trips (no count per second: a loaded machine is slow).
    let mut keys = vec![key0];
    let mut seen = traffic.snapshot();
    for round in 1..=ROTATIONS {
        for sc in [&p.server, &p.client] {
            let limit = until(current_not_after(sc)) + Duration::from_secs(5);
            if wait_events(sc, limit, round, |e| e["event"] == "cert.renewed").is_none() {
                let s = traffic.snapshot();
                panic!(
                    "no rotation #{round} on {} before its certificate expired ({s:?})\n{}",
                    sc.name,
                    p.transcripts()
                );
            }
        }
        // A new handshake gets a renewed certificate: this round's or, if the server renewed
        // again meanwhile, a later one (never the one before this round).
        let served = served_serial(inbound, &ca_bundle);
        let renewed: Vec<String> = named(&p.server, "cert.renewed").iter().map(event_serial).collect();
        assert!(
            renewed[round - 1..].contains(&served),
            "new handshakes must get the renewed certificate: served {served}, renewed {renewed:?}"
        );
        let key = served_public_key(inbound, &ca_bundle, &scratch);
        assert!(!keys.contains(&key), "rotation #{round} reused a key");
        keys.push(key);
        seen = progressed(&traffic, &seen, 5);
        println!("rotation #{round} on both sidecars after {:.1}s: {seen:?}", t0.elapsed().as_secs_f64());
    }
    // Some traffic on the newest certificates, then stop.
    progressed(&traffic, &seen, 20);
    let stats = traffic.stop();
    let elapsed = t0.elapsed();
    println!(
        "rotation test: {:.0}s of traffic, {} short requests ok, {} failed, {} round trips on the \
         long-lived connection (opened before the first rotation), server rotations {}, client rotations {}",
        elapsed.as_secs_f64(),
        stats.ok,
        stats.failed.len(),
        stats.long_ok,
        named(&p.server, "cert.renewed").len(),
        named(&p.client, "cert.renewed").len()
    );
    assert!(
        stats.failed.is_empty(),
        "failed requests during rotation: {:?}\n{}",
        stats.failed,
        p.transcripts()
    );
    assert!(
        stats.long_failed.is_none(),
        "the long-lived connection broke: {:?}\n{}",
        stats.long_failed,
        p.transcripts()
    );
    // The renewals went through the CA's renew endpoint for the same identities.
    let ca = p.mesh.server();
    for id in [&p.api_id, &p.web_id] {
        let n = ca.named("cert.renewed").iter().filter(|e| e["spiffe_id"] == id.as_str()).count();
        assert!(n >= 2, "the CA saw {n} renewals of {id}\n{}", ca.transcript());
    }
    // No handshake failed except those of the serial probes (no client certificate).
    let bad: Vec<Value> = p
        .server
        .events()
        .into_iter()
        .filter(|e| e["event"] == "tls.handshake_failed" && field(e, "reason") != "no_certificate")
        .chain(p.client.events().into_iter().filter(|e| e["event"] == "tls.handshake_failed"))
        .collect();
    assert!(bad.is_empty(), "handshakes failed during rotation: {bad:?}");
    assert!(
        named(&p.server, "cert.renew_failed").is_empty() && named(&p.client, "cert.renew_failed").is_empty()
    );
}

/// How long before the first certificate's notAfter the outage test brings the CA back.
const BACK_BEFORE_EXPIRY_S: i64 = 20;

#[test]
fn a_ca_outage_longer_than_a_renewal_interval_fails_no_request() {
    let mut p = Pair::start(&["--cert-ttl", "1m"], 1);
    let traffic = Traffic::start(p.outbound(), Duration::from_millis(50), true);
    // Both sidecars enrolled (they announce their ports only then). The outage is planned from
    // their certificates, not from the test's start: each renews at about half its one-minute
    // life (24..36 s in), so both renewals fall into the outage, and the CA comes back
    // BACK_BEFORE_EXPIRY_S before the first certificate expires (time for its restart and for
    // a retry at half the time left to reach it). About 40 s down on an idle machine; shorter
    // if the pair was slow to start, but always past a failed renewal on each side.
    let not_after = [current_not_after(&p.server), current_not_after(&p.client)];
    let restart_at = not_after[0].min(not_after[1]) - BACK_BEFORE_EXPIRY_S;
    p.mesh.kill_ca();
    let killed = Instant::now();
    let before = traffic.snapshot();
    for (sc, expiry) in [(&p.server, not_after[0]), (&p.client, not_after[1])] {
        if wait_events(sc, until(expiry), 1, |e| e["event"] == "cert.renew_failed").is_none() {
            panic!("{} never tried to renew while the CA was down\n{}", sc.name, p.transcripts());
        }
    }
    // Down until the planned restart (under a minute away: it is derived from the certificates).
    std::thread::sleep(until(restart_at));
    let during = traffic.snapshot();
    p.mesh.restart_ca();
    let down_for = killed.elapsed();
    println!(
        "CA down for {:.1}s, back {}s before the first certificate's notAfter; requests during the \
         outage: {} ok, {} failed",
        down_for.as_secs_f64(),
        not_after[0].min(not_after[1]) - now_unix(),
        during.ok - before.ok,
        during.failed.len() - before.failed.len()
    );
    for (sc, expiry) in [(&p.server, not_after[0]), (&p.client, not_after[1])] {
        // Renewal must land before the certificate expires (after, only re-enrolling could help,
        // and the token is spent); the 5 s are for reading the event.
        let limit = until(expiry) + Duration::from_secs(5);
        let renewed = wait_events(sc, limit, 1, |e| e["event"] == "cert.renewed");
        assert!(renewed.is_some(), "{} did not renew once the CA was back\n{}", sc.name, p.transcripts());
    }
    // Some traffic on the renewed certificates, then stop.
    progressed(&traffic, &traffic.snapshot(), 20);
    let stats = traffic.stop();
    for sc in [&p.server, &p.client] {
        assert!(
            named(sc, "cert.expired").is_empty(),
            "{} let its certificate expire\n{}",
            sc.name,
            sc.transcript()
        );
        let failed = named(sc, "cert.renew_failed");
        println!("{}: {} cert.renew_failed while the CA was down, then renewed", sc.name, failed.len());
    }
    println!(
        "outage test: {} short requests ok, {} failed; {} round trips on the long-lived connection",
        stats.ok,
        stats.failed.len(),
        stats.long_ok
    );
    assert!(
        stats.failed.is_empty(),
        "failed requests with valid certificates: {:?}\n{}",
        stats.failed,
        p.transcripts()
    );
    assert!(stats.long_failed.is_none(), "the long-lived connection broke: {:?}", stats.long_failed);
    assert!(during.ok > before.ok, "traffic did not flow during the outage: {before:?} then {during:?}");
}

#[test]
fn a_revoked_client_identity_is_refused_and_its_open_connection_closed() {
    let p = Pair::start(&["--cert-ttl", "1h"], 1);
    // A second client of the same zone: not revoked, must keep working.
    let inbound = p.server.inbound.expect("inbound");
    let shape = SidecarShape { outbound: vec![(inbound, p.api_id.clone())], ..Default::default() };
    let other = p.mesh.sidecar("other", "frontend", "web2", 1, &shape);

    let mut open = LongLived::open(p.outbound()).expect("the long-lived connection");
    open.roundtrip(0).expect("the first echo on the open connection");
    assert!(exchange(p.outbound(), b"before") == b"before");

    let revoke_started = Instant::now();
    let o = revoke(&p.mesh.ca, &["--zone", "frontend", "--workload", "web", "--reason", "test"]);
    o.assert_ok();
    let revoked = Instant::now();

    // New connections from the revoked identity: refused by the server sidecar.
    let mut attempts = 0;
    let refused_after = loop {
        attempts += 1;
        let back = exchange(p.outbound(), b"after");
        if back.is_empty() {
            break revoked.elapsed();
        }
        assert!(revoked.elapsed() < Duration::from_secs(30), "still served 30 s after the revocation");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The first refused attempt may have completed its handshake a moment before the list
    // arrived, and been closed as `revoked` right after; the next one meets the refusal in
    // the handshake itself.
    let _ = exchange(p.outbound(), b"again");
    // Refused in a handshake: by the server sidecar (`revoked`), or, once the client sidecar
    // has learnt that its own identity is revoked, by the client itself before it connects
    // (`own_certificate_revoked`: a revoked sidecar is not ready, issue 12).
    let refusal = poll(mesh_tests::ca_server::DEADLINE, || {
        let at = |sc: &Sidecar, reason: &str| {
            sc.events()
                .into_iter()
                .find(|e| e["event"] == "tls.handshake_failed" && field(e, "reason") == reason)
        };
        at(&p.server, "revoked").or_else(|| at(&p.client, "own_certificate_revoked"))
    })
    .unwrap_or_else(|| panic!("no handshake refused as revoked\n{}", p.transcripts()));
    // The open connection: closed by the server sidecar.
    let closed_after = {
        use std::io::Read;
        let mut buf = [0u8; 64];
        loop {
            let left = Duration::from_secs(30).saturating_sub(revoked.elapsed());
            if left.is_zero() {
                panic!("the open connection was not closed within 30 s\n{}", p.transcripts());
            }
            open.stream.set_read_timeout(Some(left)).expect("set_read_timeout");
            match open.stream.read(&mut buf) {
                Ok(0) => break revoked.elapsed(),
                Ok(_) => continue,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(_) => break revoked.elapsed(),
            }
        }
    };
    assert!(open.roundtrip(1).is_err(), "the open connection still echoes");
    let conn = p.server.wait_for("the open connection's event", |e| {
        e["event"] == "connection" && field(e, "reason") == "revoked"
    });
    assert_eq!(field(&conn, "src_id"), p.web_id, "{conn}");
    println!(
        "revocation: `mesh-ca revoke` took {:?}; first refused connection {:?} after it exited \
         ({attempts} attempts); open connection closed {:?} after it exited",
        revoked - revoke_started,
        refused_after,
        closed_after
    );
    println!("refusal event: {refusal}");
    let ev = p.server.wait_for("cert.revoked", |e| e["event"] == "cert.revoked");
    assert_eq!(field(&ev, "src_id"), p.web_id, "{ev}");

    // The other client is unaffected.
    assert!(exchange(other.outbound[0], b"still fine") == b"still fine", "{}", other.transcript());
}
