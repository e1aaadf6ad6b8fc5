//! Revocation at scale (issue 11, defect 5): a revocation log far beyond one answer's size
//! limit, made with the real `mesh-ca revoke --from-file`, is served in pages that a freshly
//! started sidecar follows to the end before it is ready; a sidecar that cannot load the list
//! is not ready, says why on `/ready` and in an error event, and recovers when the CA is back.
//!
//! Real processes throughout: `mesh-ca serve`, `mesh-proxy run` in enrollment mode, Python
//! `ssl` peers presenting certificates from `mesh-ca issue`. Numbers are printed
//! (`--nocapture`).

use std::time::Instant;

use mesh_tests::ca_server::*;
use mesh_tests::proxy::*;
use mesh_tests::relay::Relay;
use serde_json::Value;

const POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders", "bulk"]

[[allow]]
from = "frontend"
to = "orders"
"#;

/// Identities revoked in bulk before the peer that matters (over 2 MB of log as one answer).
const BULK: usize = 20_000;

/// `mesh-ca issue` for zone/workload into `<tmp>/<out>`, as a probe identity.
fn issued(mesh: &EnrollMesh, zone: &str, workload: &str) -> Identity {
    let out = format!("id-{zone}-{workload}");
    let (dir, serial) = mesh.ca.issue_ok(zone, workload, &out, &[]);
    Identity { id: mesh.id(zone, workload), dir, serial: norm(&serial) }
}

fn named(sc: &Sidecar, name: &str) -> Vec<Value> {
    sc.events().into_iter().filter(|e| e["event"] == name).collect()
}

/// The admin `/ready` answer: status and body.
fn ready(sc: &Sidecar) -> (Option<u16>, String) {
    use std::io::{Read, Write};
    let addr = admin_addr(sc);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, mesh_tests::ca_server::DEADLINE) else {
        return (None, String::new());
    };
    let _ = s.set_read_timeout(Some(mesh_tests::ca_server::DEADLINE));
    let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

#[test]
fn a_fresh_sidecar_loads_20000_revocations_page_by_page_and_refuses_a_revoked_peer() {
    let mesh = EnrollMesh::start(&["--cert-ttl", "1h"], POLICY);
    let web = issued(&mesh, "frontend", "web");
    let good = issued(&mesh, "frontend", "good");

    // 20,000 identities and then the peer under test, last, so only a sidecar that follows
    // every page knows it: one `mesh-ca revoke --from-file`, one transaction.
    let list = mesh.ca.path("incident.txt");
    let mut text: String = (0..BULK).map(|i| format!("bulk/w{i}\n")).collect();
    text.push_str("# the peer under test\nfrontend/web\n");
    std::fs::write(&list, text).expect("writing the revocation list");
    let t = Instant::now();
    // The bulk identities never had a certificate: --force.
    let o =
        revoke(&mesh.ca, &["--from-file", &list.display().to_string(), "--reason", "incident", "--force"]);
    o.assert_ok();
    let revoke_took = t.elapsed();
    assert!(o.stdout.contains(&format!("revoked {} target(s)", BULK + 1)), "{o}");

    // A sidecar started now: ready only once it has every page, and then it refuses the peer.
    let app = App::start();
    let shape = SidecarShape { inbound: Some(app.addr), admin: true, ..Default::default() };
    let t = Instant::now();
    let sc = mesh.sidecar("server", "orders", "api", 1, &shape);
    let inbound = sc.inbound.expect("the sidecar announces its inbound port");
    let v = Probe::to(inbound).identity(&web).send("from a revoked peer").run();
    assert_ne!(v["received"], "from a revoked peer", "a revoked peer was served: {v}\n{}", sc.transcript());
    let refused = sc.wait_for("the revoked peer refused", |e| {
        e["event"] == "tls.handshake_failed" && field(e, "reason") == "revoked"
    });
    assert_eq!(app.connections(), 0, "nothing reaches the app from a revoked peer: {refused}");

    let loaded = sc.wait_for("revocations.loaded", |e| e["event"] == "revocations.loaded");
    let load_took = t.elapsed();
    let detail = field(&loaded, "detail").to_owned();
    assert!(detail.starts_with(&format!("{} revocation(s)", BULK + 1)), "{loaded}");
    assert!(named(&sc, "revocations.unavailable").is_empty(), "{}", sc.transcript());
    // One summary for the initial load, not 20,001 cert.revoked events.
    assert!(
        named(&sc, "cert.revoked").len() < 10,
        "{} cert.revoked events",
        named(&sc, "cert.revoked").len()
    );
    assert_eq!(ready(&sc).0, Some(200), "{}", sc.transcript());

    // The API serves it in pages, each well under the client's 1 MiB limit.
    let api = mesh.server().api();
    let first = api.request("GET", "/v1/revocations?since=0", &[]);
    assert_eq!(first.status, Some(200), "{first:?}");
    let entries = first.json["revoked"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!((entries, &first.json["more"]), (1000, &Value::Bool(true)), "page 1: {}", first.text);
    let small = api.request("GET", "/v1/revocations?since=0&limit=10", &[]);
    assert_eq!(small.json["revoked"].as_array().map(Vec::len), Some(10), "{small:?}");
    let bad = api.request("GET", "/v1/revocations?since=0&limit=0", &[]);
    assert_eq!(bad.status, Some(400), "{bad:?}");

    // A peer that is not revoked is served.
    let v = Probe::to(inbound).identity(&good).send("hello").run();
    assert_eq!(v["received"], "hello", "an unrevoked peer: {v}\n{}", sc.transcript());

    println!(
        "revocation at scale: `mesh-ca revoke --from-file` of {} targets took {revoke_took:?}; a fresh \
         sidecar started and loaded them in {load_took:?} ({detail})",
        BULK + 1
    );
}

#[test]
fn a_sidecar_that_cannot_load_the_revocation_list_is_not_ready_and_says_so() {
    let mesh = EnrollMesh::start(&["--cert-ttl", "1h"], POLICY);
    let good = issued(&mesh, "frontend", "good");
    // The sidecar reaches the CA through a relay that lets its enrollment through (the first
    // connection) and then cuts every connection: the revocation list cannot be loaded.
    let relay = Relay::start(mesh.addr, 1);
    let app = App::start();
    let shape = SidecarShape { inbound: Some(app.addr), admin: true, ..Default::default() };
    let config = mesh.config("cut", "orders", "api", 1, &shape);
    let text = std::fs::read_to_string(&config).expect("reading sidecar.toml");
    std::fs::write(&config, text.replace(&mesh.addr.to_string(), &relay.addr.to_string()))
        .expect("writing sidecar.toml");
    let sc = Sidecar::start("cut", &config);

    let (status, body) = ready(&sc);
    assert_eq!(
        status,
        Some(503),
        "a sidecar without its revocation list is ready: {body}\n{}",
        sc.transcript()
    );
    assert!(body.contains("revocation list"), "/ready says why: {body:?}");
    let unavailable = sc.wait_for("revocations.unavailable", |e| e["event"] == "revocations.unavailable");
    assert_eq!(field(&unavailable, "severity"), "error", "{unavailable}");
    assert!(relay.cut() >= 1, "the relay cut no connection");
    // Not ready means no new connections: even a valid, unrevoked peer is refused.
    let v = Probe::to(inbound_of(&sc)).identity(&good).send("hello").run();
    assert_ne!(v["received"], "hello", "served without a revocation list: {v}");
    assert_eq!(app.connections(), 0);
    sc.wait_for("the refusal, with its reason", |e| {
        e["event"] == "tls.handshake_failed" && field(e, "reason") == "revocations_unavailable"
    });

    // The CA reachable again: the next retry loads the list and the sidecar is ready.
    relay.open();
    sc.wait_for("revocations.loaded", |e| e["event"] == "revocations.loaded");
    assert_eq!(ready(&sc).0, Some(200), "{}", sc.transcript());
    let v = Probe::to(inbound_of(&sc)).identity(&good).send("hello").run();
    assert_eq!(v["received"], "hello", "{v}\n{}", sc.transcript());
    println!(
        "revocation list unavailable: not ready, {} connection(s) cut, ready once it loaded",
        relay.cut()
    );
}

fn inbound_of(sc: &Sidecar) -> std::net::SocketAddr {
    sc.inbound.expect("the sidecar announces its inbound port")
}
