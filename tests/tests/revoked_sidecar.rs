//! A sidecar whose own identity is revoked (issue 12): it says "this sidecar's certificate is
//! revoked" in one `cert.revoked_self` event and goes unready (`/ready` 503 on its admin
//! listener), instead of reporting the CA unreachable every 30 s; it tries nothing but a
//! quiet re-enrollment at the backoff cap. After `mesh-ca reinstate` and a new token in its
//! token file it enrolls again and is ready, and its peer, which had learnt the revocation,
//! learns the reinstatement from the log and serves the new certificate.
//!
//! Fails on the code before: there no `cert.revoked_self` came, `/ready` stayed 200 until the
//! certificate expired, and every renewal and revocation poll was reported as a failure.

use std::time::Duration;

use mesh_tests::ca_server::DEADLINE;
use mesh_tests::ca_server::*;
use mesh_tests::proxy::*;
use mesh_tests::Cmd;
use serde_json::Value;

/// `GET /ready`: the status and the body.
fn ready(addr: std::net::SocketAddr) -> (Option<u16>, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, DEADLINE) else {
        return (None, String::new());
    };
    let _ = s.set_read_timeout(Some(DEADLINE));
    let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

fn named_from(sc: &Sidecar, from: usize, name: &str) -> Vec<Value> {
    sc.events().into_iter().skip(from).filter(|e| e["event"] == name).collect()
}

#[test]
fn a_revoked_sidecar_says_so_goes_unready_stops_retrying_and_recovers_after_reinstatement() {
    let mesh = EnrollMesh::start(&["--cert-ttl", "1m"], SAMPLE_POLICY);
    let app = App::start();
    let shape = SidecarShape { inbound: Some(app.addr), ..Default::default() };
    let server = mesh.sidecar("server", "orders", "api", 1, &shape);
    let inbound = server.inbound.expect("the server sidecar announces its inbound port");
    let shape = SidecarShape {
        outbound: vec![(inbound, mesh.id("orders", "api"))],
        admin: true,
        ..Default::default()
    };
    let client = mesh.sidecar("client", "frontend", "web", 1, &shape);
    let admin = admin_addr(&client);
    let transcripts = || {
        let ca = mesh.server.as_ref().map(|s| s.transcript()).unwrap_or_default();
        format!("{}\n{}\n{ca}", server.transcript(), client.transcript())
    };
    assert_eq!(exchange(client.outbound[0], b"before"), b"before", "{}", transcripts());
    assert_eq!(ready(admin).0, Some(200), "{}", transcripts());

    let mark = client.mark();
    revoke(&mesh.ca, &["--zone", "frontend", "--workload", "web", "--reason", "test"]).assert_ok();
    let told = client.wait_from(mark, "cert.revoked_self", |e| e["event"] == "cert.revoked_self");
    assert!(told.to_string().contains("this sidecar's certificate is revoked"), "{told}");
    assert_eq!(field(&told, "src_id"), mesh.id("frontend", "web"), "{told}");
    let unready = poll(DEADLINE, || {
        let (status, body) = ready(admin);
        (status == Some(503)).then_some(body)
    })
    .unwrap_or_else(|| panic!("/ready did not turn 503\n{}", transcripts()));
    assert!(unready.contains("this sidecar's certificate is revoked"), "{unready}");

    // Past its renewal time and one retry at the cap: the CA sees the quiet re-enrollment
    // (the spent one-use token, refused), and the sidecar has said nothing more.
    let ca = mesh.server();
    let attempts = ca.named("token.rejected").len();
    poll(Duration::from_secs(150), || (ca.named("token.rejected").len() > attempts).then_some(()))
        .unwrap_or_else(|| panic!("the revoked sidecar never tried to enroll again\n{}", transcripts()));
    assert_eq!(named_from(&client, mark, "cert.revoked_self").len(), 1, "{}", client.transcript());
    for storm in [
        "cert.renew_failed",
        "cert.enroll_failed",
        "revocations.poll_failed",
        "revocations.unavailable",
        "cert.expired",
    ] {
        let seen = named_from(&client, mark, storm);
        assert!(seen.is_empty(), "{} {storm} events after the revocation: {seen:?}", seen.len());
    }
    assert_eq!(ready(admin).0, Some(503), "still not ready");

    // Reinstated, with a new token in the token file: enrolls again, ready, and the server
    // sidecar (which refused the identity) learnt the reinstatement and serves it.
    let o = Cmd::mesh_ca()
        .arg("reinstate")
        .arg("--dir")
        .arg(&mesh.ca.dir)
        .args(["--zone", "frontend", "--workload", "web", "--reason", "test over"])
        .run();
    o.assert_ok();
    let t = token(&mesh.ca, "frontend", "web", "15m", 1);
    std::fs::write(mesh.ca.path("sc-client/token"), format!("{t}\n")).expect("the new token");
    // The sidecar tries every 30 s (its backoff cap), so this may take that long.
    let before = named_from(&client, 0, "cert.enrolled").len();
    wait_events(&client, Duration::from_secs(90), before + 1, |e| e["event"] == "cert.enrolled")
        .unwrap_or_else(|| panic!("no re-enrollment after the reinstatement\n{}", transcripts()));
    poll(DEADLINE, || (ready(admin).0 == Some(200)).then_some(()))
        .unwrap_or_else(|| panic!("not ready after enrolling again\n{}", transcripts()));
    let echoed = poll(DEADLINE, || {
        let back = exchange(client.outbound[0], b"after");
        (back == b"after").then_some(())
    });
    assert!(echoed.is_some(), "the peer refuses the reinstated identity\n{}", transcripts());
}

/// A sidecar that missed the log entry (the CA was down when the identity was revoked, and
/// refuses its certificate in the handshake once back) learns it from the refusal itself: one
/// `cert.revoked_self`, not ready, and no stream of "CA unreachable" poll failures after.
#[test]
fn a_sidecar_that_missed_its_revocation_learns_it_from_the_cas_refusal() {
    let mut mesh = EnrollMesh::start(&["--cert-ttl", "1h"], SAMPLE_POLICY);
    let shape = SidecarShape { admin: true, ..Default::default() };
    let client = mesh.sidecar("client", "frontend", "web", 1, &shape);
    let admin = admin_addr(&client);
    assert_eq!(ready(admin).0, Some(200), "{}", client.transcript());

    mesh.kill_ca();
    revoke(&mesh.ca, &["--zone", "frontend", "--workload", "web", "--reason", "while away"]).assert_ok();
    let mark = client.mark();
    mesh.restart_ca();
    let told = client.wait_from(mark, "cert.revoked_self", |e| e["event"] == "cert.revoked_self");
    assert!(told.to_string().contains("the CA refused it as revoked"), "{told}");
    let unready = poll(DEADLINE, || {
        let (status, body) = ready(admin);
        (status == Some(503)).then_some(body)
    })
    .unwrap_or_else(|| panic!("/ready did not turn 503\n{}", client.transcript()));
    assert!(unready.contains("this sidecar's certificate is revoked"), "{unready}");
    // The next poll, at the backoff cap, is refused again: still told only once.
    let ca = mesh.server();
    let refusals = |ca: &CaServer| ca.events().iter().filter(|e| e.to_string().contains("revoked")).count();
    let seen = refusals(ca);
    poll(Duration::from_secs(75), || (refusals(ca) > seen).then_some(()));
    let after: Vec<Value> = client.events().into_iter().skip(mark).collect();
    let told_again = after.iter().filter(|e| e["event"] == "cert.revoked_self").count();
    assert_eq!(told_again, 1, "{}", client.transcript());
    let polls_after = after
        .iter()
        .skip_while(|e| e["event"] != "cert.revoked_self")
        .filter(|e| e["event"] == "revocations.poll_failed" || e["event"] == "revocations.unavailable")
        .count();
    assert_eq!(polls_after, 0, "poll failures reported after the state was told\n{}", client.transcript());
}
