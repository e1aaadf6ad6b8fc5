//! The slowest enrollment test (about two minutes): one-minute certificates expire while the
//! CA is away. The sidecars must then fail closed (handshakes refused, `/ready` 503) and, once
//! the CA is back, recover by themselves by re-enrolling with the second use of their token.

use std::time::{Duration, Instant};

use mesh_tests::ca_server::DEADLINE;
use mesh_tests::ca_server::*;
use mesh_tests::now_unix;
use mesh_tests::proxy::*;
use serde_json::Value;

fn named(sc: &Sidecar, name: &str) -> Vec<Value> {
    sc.events().into_iter().filter(|e| e["event"] == name).collect()
}

/// The notAfter (Unix seconds) of the certificate a sidecar holds now: the detail of its
/// last `cert.enrolled` / `cert.renewed` ("serial X valid until Y").
fn current_not_after(sc: &Sidecar) -> i64 {
    let last =
        sc.events().into_iter().rfind(|e| e["event"] == "cert.enrolled" || e["event"] == "cert.renewed");
    let detail = last.as_ref().and_then(|e| e["detail"].as_str()).unwrap_or("");
    detail
        .rsplit(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no notAfter in {last:?}"))
}

/// The sidecar's retry backoff cap (`MAX_BACKOFF` in proxy/src/enroll.rs): past expiry it
/// retries at this pace, so a CA that comes back can wait this long for the next attempt.
const RETRY_CAP: Duration = Duration::from_secs(30);

/// One short request through `addr`: whether the echo came back intact.
fn works(addr: std::net::SocketAddr, what: &[u8]) -> bool {
    exchange(addr, what) == what
}

#[test]
fn expiry_while_the_ca_is_away_fails_closed_and_recovers_when_it_returns() {
    let mut mesh = EnrollMesh::start(&["--cert-ttl", "1m"], SAMPLE_POLICY);
    let app = App::start();
    // Two uses per token: the enrollment, and the re-enrollment after expiry.
    let shape = SidecarShape { inbound: Some(app.addr), admin: true, ..Default::default() };
    let server = mesh.sidecar("server", "orders", "api", 2, &shape);
    let inbound = server.inbound.expect("inbound");
    let api_id = mesh.id("orders", "api");
    let shape = SidecarShape { outbound: vec![(inbound, api_id.clone())], admin: true, ..Default::default() };
    let client = mesh.sidecar("client", "frontend", "web", 2, &shape);
    let out = client.outbound[0];
    let (server_admin, client_admin) = (admin_addr(&server), admin_addr(&client));
    let transcripts = |s: &Sidecar, c: &Sidecar| format!("{}\n{}", s.transcript(), c.transcript());

    assert!(works(out, b"before"), "traffic before the outage");
    assert_eq!(admin_status(server_admin, "/ready"), Some(200));
    assert_eq!(admin_status(client_admin, "/ready"), Some(200));

    mesh.kill_ca();
    let killed = Instant::now();

    // Renewals fail; the certificates (one minute) expire; both sidecars say so. Awaited from
    // each certificate's own notAfter (not from the kill: the setup may have been slow), plus
    // a deadline for the retry that notices (retries near expiry come at half the time left).
    for sc in [&server, &client] {
        let left = Duration::from_secs(u64::try_from(current_not_after(sc) - now_unix()).unwrap_or(0));
        if wait_events(sc, left + DEADLINE, 1, |e| e["event"] == "cert.expired").is_none() {
            panic!("{} never reported its certificate expired\n{}", sc.name, transcripts(&server, &client));
        }
        assert!(!named(sc, "cert.renew_failed").is_empty(), "no cert.renew_failed on {}", sc.name);
    }
    let expired_after = killed.elapsed();

    // Failed closed: not ready, and no traffic.
    assert_eq!(admin_status(server_admin, "/ready"), Some(503), "{}", server.transcript());
    assert_eq!(admin_status(client_admin, "/ready"), Some(503), "{}", client.transcript());
    let app_conns = app.connections();
    for i in 0..5u8 {
        assert!(!works(out, &[b'x', i]), "traffic flowed with expired certificates");
    }
    // Straight at the server sidecar too: a Python client gets no further than the handshake.
    let probe = Probe::to(inbound).verify(&mesh.ca.path("bundle.pem")).send("hello").run();
    assert_eq!(probe["received"], "", "the expired server sidecar served data: {probe}");
    assert_eq!(app.connections(), app_conns, "the app was reached after expiry");

    // The CA returns: both re-enroll with their token's second use, and traffic flows again.
    // Their next attempt may be a whole backoff away, then it must go through.
    mesh.restart_ca();
    let back = Instant::now();
    for sc in [&server, &client] {
        let again = wait_events(sc, RETRY_CAP + DEADLINE, 2, |e| e["event"] == "cert.enrolled");
        assert!(again.is_some(), "{} did not re-enroll\n{}", sc.name, transcripts(&server, &client));
    }
    let recovered_after = back.elapsed();
    let ok = poll(Duration::from_secs(20), || works(out, b"after").then_some(()));
    assert!(ok.is_some(), "no traffic after re-enrollment\n{}", transcripts(&server, &client));
    for i in 0..20u8 {
        assert!(works(out, &[b'y', i]), "request {i} after recovery failed");
    }
    assert_eq!(admin_status(server_admin, "/ready"), Some(200));
    assert_eq!(admin_status(client_admin, "/ready"), Some(200));
    let ca = mesh.server();
    let reenrolled = ca.named("token.used");
    assert_eq!(reenrolled.len(), 2, "both re-enrolled with their tokens\n{}", ca.transcript());
    println!(
        "expiry test: certificates expired {:.1}s after the CA was killed; CA back {:.1}s after \
         the kill; both sidecars re-enrolled {:.1}s after it returned",
        expired_after.as_secs_f64(),
        (back - killed).as_secs_f64(),
        recovered_after.as_secs_f64()
    );
}
