//! The admin listener and `/metrics`, end to end: real `mesh-proxy run` processes, real
//! traffic through them, and `/metrics` read by Prometheus's own Python parser.
//!
//! Each test proves its feature by numbers that move (or not) with what the test did: a
//! counter that stayed put, a label that never appeared, an endpoint that answered 503.

use std::collections::BTreeMap;

use mesh_tests::monitoring::*;
use mesh_tests::proxy::*;
use serde_json::Value;

/// frontend may call orders; payments exists; nothing else is allowed.
const POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders", "payments"]

[[allow]]
from = "frontend"
to = "orders"
"#;

/// Per-connection events on `sc`, counted by name.
fn conn_event_counts(sc: &Sidecar) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in sc.conn_events() {
        *m.entry(field(&e, "event").to_owned()).or_insert(0) += 1;
    }
    m
}

#[test]
fn counters_move_as_connections_are_allowed_denied_and_refused() {
    let mesh = Mesh::new();
    let charge = mesh.identity("payments", "charge");
    // A valid certificate from our CA, for a zone the policy never declares.
    let intruder = mesh.identity("intruder", "x");
    // outbound[0] is allowed (frontend -> orders); outbound[1] expects payments/charge, which
    // the policy refuses before any connection is made.
    let p = Pair::with_policy(POLICY)
        .mesh(mesh)
        .server_config(ADMIN)
        .client_config(ADMIN)
        .client_outbound_to_server(&charge.id)
        .start();
    let (api, server, client) = (&p.api, &p.server, &p.client);
    let inbound = server.inbound.expect("inbound port");
    let (s_admin, c_admin) = (admin_addr(&server), admin_addr(&client));

    let s0 = scrape(s_admin);
    let c0 = scrape(c_admin);
    assert!(s0.content_type.starts_with("text/plain"), "{}", s0.content_type);
    let expiry = s0.sum("mesh_cert_expiry_timestamp_seconds", &[]);
    let now = mesh_tests::now_unix() as f64;
    assert!(expiry > now && expiry < now + 2.0 * 86400.0, "expiry {expiry} vs now {now}");

    // Allowed: N connections through both sidecars, each with its own bytes.
    const N: usize = 5;
    let mut sent = 0u64;
    for i in 0..N {
        let data = payload(1000 + i * 100, i as u8);
        assert_eq!(exchange(client.outbound[0], &data), data, "echo {i}");
        sent += data.len() as u64;
    }
    // Denied outbound (egress policy), denied inbound (a verified peer the policy refuses,
    // twice: a declared zone and an undeclared one), refused at the handshake (plaintext).
    assert!(exchange(client.outbound[1], b"never sent").is_empty());
    Probe::to(inbound).identity(&charge).verify(&api.bundle()).send("x").run();
    Probe::to(inbound).identity(&intruder).verify(&api.bundle()).send("x").run();
    Probe::to(inbound).raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").run();

    server.wait_count("every server-side outcome", N + 3, |e| CONNECTION_EVENTS.contains(&field(e, "event")));
    client.wait_count("every client-side outcome", N + 1, |e| CONNECTION_EVENTS.contains(&field(e, "event")));
    // The metric and the event come from one record: once the events are out, so are the
    // counts; the gauge is back to zero once every connection has closed.
    let s1 = poll("the server's open gauge back at 0", DEADLINE, || {
        let s = scrape(s_admin);
        (s.sum("mesh_connections_open", &[("direction", "inbound")]) == 0.0).then_some(s)
    });
    let c1 = poll("the client's open gauge back at 0", DEADLINE, || {
        let s = scrape(c_admin);
        (s.sum("mesh_connections_open", &[("direction", "outbound")]) == 0.0).then_some(s)
    });
    let d = |a: &Scrape, b: &Scrape, name: &str, labels: &[(&str, &str)]| {
        b.sum(name, labels) - a.sum(name, labels)
    };
    let n = N as f64;
    let inb = ("direction", "inbound");
    let out = ("direction", "outbound");

    // Server (inbound): N allowed + 2 denied + 1 refused.
    let want_server = [
        ("mesh_connections_opened_total", vec![inb], n + 3.0),
        ("mesh_connections_closed_total", vec![inb, ("outcome", "closed")], n),
        ("mesh_connections_closed_total", vec![inb, ("outcome", "denied")], 2.0),
        ("mesh_connections_closed_total", vec![inb, ("outcome", "handshake_failed")], 1.0),
        ("mesh_tls_handshakes_total", vec![inb, ("result", "ok"), ("reason", "none")], n + 2.0),
        ("mesh_tls_handshakes_total", vec![inb, ("result", "failed"), ("reason", "protocol")], 1.0),
        ("mesh_tls_handshake_duration_seconds_count", vec![inb], n + 3.0),
        ("mesh_connection_duration_seconds_count", vec![inb], n + 3.0),
        (
            "mesh_policy_decisions_total",
            vec![inb, ("decision", "allow"), ("src_zone", "frontend"), ("dst_zone", "orders")],
            n,
        ),
        (
            "mesh_policy_decisions_total",
            vec![inb, ("decision", "deny"), ("src_zone", "payments"), ("dst_zone", "orders")],
            1.0,
        ),
        (
            "mesh_policy_decisions_total",
            vec![inb, ("decision", "deny"), ("src_zone", "other"), ("dst_zone", "orders")],
            1.0,
        ),
        ("mesh_bytes_total", vec![inb, ("sender", "source")], sent as f64),
        ("mesh_bytes_total", vec![inb, ("sender", "destination")], sent as f64),
        ("mesh_events_total", vec![("event", "connection")], n),
        ("mesh_events_total", vec![("event", "policy.deny")], 2.0),
        ("mesh_events_total", vec![("event", "tls.handshake_failed")], 1.0),
    ];
    for (name, labels, want) in &want_server {
        assert_eq!(d(&s0, &s1, name, labels), *want, "server {name}{labels:?}\n{}", server.transcript());
    }
    // Client (outbound): N allowed + 1 refused by the egress policy before connecting.
    let want_client = [
        ("mesh_connections_opened_total", vec![out], n + 1.0),
        ("mesh_connections_closed_total", vec![out, ("outcome", "closed")], n),
        ("mesh_connections_closed_total", vec![out, ("outcome", "denied")], 1.0),
        ("mesh_tls_handshakes_total", vec![out, ("result", "ok")], n),
        (
            "mesh_policy_decisions_total",
            vec![out, ("decision", "deny"), ("src_zone", "frontend"), ("dst_zone", "payments")],
            1.0,
        ),
        ("mesh_bytes_total", vec![out, ("sender", "source")], sent as f64),
    ];
    for (name, labels, want) in &want_client {
        assert_eq!(d(&c0, &c1, name, labels), *want, "client {name}{labels:?}\n{}", client.transcript());
    }
    // Events and metrics agree, one record per connection.
    let events = conn_event_counts(&server);
    assert_eq!(events.get("connection"), Some(&N), "{events:?}");
    assert_eq!(events.get("policy.deny"), Some(&2), "{events:?}");
    assert_eq!(events.get("tls.handshake_failed"), Some(&1), "{events:?}");

    // Bounded labels: the intruder's zone, SPIFFE IDs, serials and addresses never appear.
    let text = http(s_admin, "GET", "/metrics").body;
    for leak in ["intruder", "spiffe://", &api.serial, &intruder.serial, "127.0.0.1"] {
        assert!(!text.contains(leak), "/metrics contains {leak:?}:\n{text}");
    }
    let zones = s1.label_values("mesh_policy_decisions_total", "src_zone");
    assert_eq!(zones, ["frontend", "other", "payments"], "src_zone values");
    for (family, kind) in [
        ("mesh_connections_opened", "counter"),
        ("mesh_connections_open", "gauge"),
        ("mesh_connection_duration_seconds", "histogram"),
        ("mesh_tls_handshake_duration_seconds", "histogram"),
        ("mesh_policy_decisions", "counter"),
        ("mesh_cert_expiry_timestamp_seconds", "gauge"),
        ("mesh_events_dropped", "counter"),
        ("mesh_build_info", "gauge"),
    ] {
        assert_eq!(s1.type_of(family), Some(kind), "{family} in {:?}", s1.families);
    }
    // Drop counters exist from the start, at 0, one per sink.
    assert_eq!(s0.label_values("mesh_events_dropped_total", "sink"), ["stdout"]);
    // HELP text for every family we export.
    for (family, (_, help)) in &s1.families {
        assert!(family.starts_with("mesh_") && !help.is_empty(), "{family} has no HELP");
    }
}

#[test]
fn reloads_are_counted_by_kind_and_result() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let policy = mesh.write_file("policy.toml", POLICY);
    let server =
        sidecar_with(&mesh, SidecarSpec::new("server", &api, &policy).inbound(App::start().addr), ADMIN);
    let admin = admin_addr(&server);
    let before = scrape(admin);
    let ok = [("kind", "policy"), ("result", "ok")];
    let failed = [("kind", "policy"), ("result", "failed")];

    let mark = server.mark();
    mesh.write_file("policy.toml", "trust_domain = \"example.org\"\nzones = [\"orders\"\n");
    server.next_named(mark, "policy.reload_failed");
    let mark = server.mark();
    mesh.write_file("policy.toml", &POLICY.replace("frontend\"\nto", "orders\"\nto"));
    server.next_named(mark, "policy.reloaded");
    let after = scrape(admin);
    assert_eq!(after.sum("mesh_reloads_total", &failed) - before.sum("mesh_reloads_total", &failed), 1.0);
    assert_eq!(after.sum("mesh_reloads_total", &ok) - before.sum("mesh_reloads_total", &ok), 1.0);

    // A re-issued certificate: one cert reload, and the expiry gauge follows the new one.
    let mark = server.mark();
    let before_cert = after.sum("mesh_reloads_total", &[("kind", "cert"), ("result", "ok")]);
    mesh.reissue(&api);
    server.next_named(mark, "cert.rotated");
    let s = scrape(admin);
    assert_eq!(s.sum("mesh_reloads_total", &[("kind", "cert"), ("result", "ok")]) - before_cert, 1.0);
    let identity = http(admin, "GET", "/identity").json();
    let not_after = identity["not_after"].as_str().unwrap_or_default().to_owned();
    let expiry = s.sum("mesh_cert_expiry_timestamp_seconds", &[]);
    let left = identity["seconds_left"].as_f64().unwrap_or(-1.0);
    let now = mesh_tests::now_unix() as f64;
    assert!(
        (expiry - (now + left)).abs() <= 5.0,
        "expiry gauge {expiry}, /identity {not_after} ({left}s left)"
    );
}

#[test]
fn admin_endpoints_answer_truthfully_and_change_nothing() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let policy = mesh.write_file("policy.toml", POLICY);
    let server =
        sidecar_with(&mesh, SidecarSpec::new("server", &api, &policy).inbound(App::start().addr), ADMIN);
    let admin = admin_addr(&server);

    assert_eq!(http(admin, "GET", "/live").status, 200);
    let ready = http(admin, "GET", "/ready");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    let id = http(admin, "GET", "/identity");
    assert_eq!((id.status, id.header("content-type")), (200, Some("application/json")));
    let v = id.json();
    assert_eq!(v["spiffe_id"], api.id.as_str());
    assert_eq!(norm_serial(v["serial"].as_str().unwrap_or_default()), api.serial);
    assert!(v["seconds_left"].as_i64().unwrap_or(0) > 0, "{v}");
    assert!(v["issuer"].as_str().is_some_and(|i| !i.is_empty()), "{v}");
    for k in ["not_before", "not_after"] {
        assert!(v[k].as_str().is_some_and(|t| t.ends_with('Z')), "{k} in {v}");
    }

    let config = http(admin, "GET", "/config");
    assert_eq!(config.status, 200);
    let c = config.json();
    assert_eq!(c["identity"]["mode"], "files");
    assert_eq!(c["identity"]["key"]["contents"], "[redacted]");
    assert_eq!(c["policy"].as_str().map(|p| p.ends_with("policy.toml")), Some(true), "{c}");
    assert_eq!(c["events"]["sinks"][0]["sink"], "stdout");
    assert_eq!(c["limits"]["max_connections"], 10000);
    // No key material anywhere: neither the PEM armour nor any line of the key's base64.
    let key = std::fs::read_to_string(api.key()).expect("key.pem");
    for body in [&config.body, &id.body, &http(admin, "GET", "/metrics").body] {
        assert!(!body.contains("PRIVATE KEY"), "{body}");
        for line in key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16) {
            assert!(!body.contains(line), "key material served:\n{body}");
        }
    }

    // Read-only and bounded.
    for method in ["POST", "PUT", "DELETE"] {
        let a = http(admin, method, "/ready");
        assert_eq!((a.status, a.header("allow")), (405, Some("GET, HEAD")), "{method}");
    }
    assert_eq!(http(admin, "GET", "/nope").status, 404);
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let a = http_raw(admin, huge.as_bytes());
    assert!(a.as_ref().is_none_or(|a| a.status == 431 || a.status == 400), "{a:?}");
    assert_eq!(http(admin, "GET", "/live").status, 200, "the admin listener survives");

    // Readiness follows the policy file: missing means deny everything, so not ready.
    let moved = mesh.path("policy.toml.away");
    std::fs::rename(&policy, &moved).expect("moving the policy away");
    let a = http(admin, "GET", "/ready");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("policy") && a.body.contains("missing"), "{}", a.body);
    std::fs::rename(&moved, &policy).expect("putting it back");
    assert_eq!(http(admin, "GET", "/ready").status, 200);

    // Nothing changed state: the policy still decides as before, the identity is the same.
    assert_eq!(http(admin, "GET", "/identity").json()["serial"], v["serial"]);
    let started: Vec<Value> = server.events().into_iter().filter(|e| e["event"] == "proxy.started").collect();
    assert_eq!(started.len(), 1, "{}", server.transcript());
}
