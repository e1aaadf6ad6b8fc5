//! The admin listener and `/metrics`, end to end: real `mesh-proxy run` processes, real
//! traffic through them, and `/metrics` read by Prometheus's own Python parser.
//!
//! Each test proves its feature by numbers that move (or not) with what the test did: a
//! counter that stayed put, a label that never appeared, an endpoint that answered 503.
//! What operators expect of any Prometheus target (issue 12) is here too: `process_*`,
//! every series the README documents present at zero before any traffic and in the README's
//! order, bytes of a connection visible while it is open, the CA's requests by route and
//! status, its `/live` and `/ready`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use mesh_tests::ca_server::{token, CaServer, Csr};
use mesh_tests::monitoring::*;
use mesh_tests::proxy::*;
use mesh_tests::TestCa;
use serde_json::{json, Value};

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
    let (s_admin, c_admin) = (admin_addr(server), admin_addr(client));

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
    let events = conn_event_counts(server);
    assert_eq!(events.get("connection"), Some(&N), "{events:?}");
    assert_eq!(events.get("policy.deny"), Some(&2), "{events:?}");
    assert_eq!(events.get("tls.handshake_failed"), Some(&1), "{events:?}");

    // Bounded labels: the intruder's zone, SPIFFE IDs, serials and addresses never appear.
    let text = http(s_admin, "GET", "/metrics").body;
    for leak in ["intruder", "spiffe://", &api.serial, &intruder.serial, "127.0.0.1"] {
        assert!(!text.contains(leak), "/metrics contains {leak:?}:\n{text}");
    }
    // Every declared zone (registered at zero towards this sidecar's own) and `other`; never
    // the intruder's.
    let zones = s1.label_values("mesh_policy_decisions_total", "src_zone");
    assert_eq!(zones, ["frontend", "orders", "other", "payments"], "src_zone values");
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
        let ours = family.starts_with("mesh_") || family.starts_with("process_");
        assert!(ours && !help.is_empty(), "{family} has no HELP");
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

/// The metrics a README table documents: (name, type), in the table's order. `section` is
/// the heading the table follows; the table ends at the next heading.
fn documented(section: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the workspace README");
    let start = readme.find(&format!("\n{section}\n")).unwrap_or_else(|| panic!("README has no {section}"));
    let body = &readme[start + section.len() + 2..];
    let body = &body[..body.find("\n#").unwrap_or(body.len())];
    let rows: Vec<(String, String)> = body
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.get(2)?.to_string()))
        })
        .collect();
    assert!(rows.len() >= 5, "the {section} table in the README: {rows:?}");
    rows
}

/// The families of a raw exposition, in the order their `# TYPE` lines come.
fn family_order(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every documented metric but those in `none` (per-outbound families on a sidecar without
/// outbounds) has a series in `s` (a histogram its `_count`), and every series of a
/// documented counter, histogram count or gauge is 0 but those in `nonzero`. Also checks the
/// families come in the table's order, twice in a row.
#[track_caller]
fn all_documented_at_zero(section: &str, s: &Scrape, texts: [&str; 2], nonzero: &[&str], none: &[&str]) {
    let docs: Vec<(String, String)> =
        documented(section).into_iter().filter(|(n, _)| !none.contains(&n.as_str())).collect();
    for (name, kind) in &docs {
        let sample = if kind == "histogram" { format!("{name}_count") } else { name.clone() };
        let series: Vec<&Sample> = s.samples.iter().filter(|x| x.name == sample).collect();
        assert!(!series.is_empty(), "{name} ({kind}) is documented but has no series before any traffic");
        if !nonzero.contains(&name.as_str()) {
            for x in series {
                assert_eq!(x.value, 0.0, "{name}{:?} before any traffic", x.labels);
            }
        }
    }
    let want: Vec<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
    for text in texts {
        let got = family_order(text);
        let ours: Vec<&str> = got.iter().map(String::as_str).filter(|f| want.contains(f)).collect();
        assert_eq!(ours, want, "families in the README's order");
        let process: Vec<&str> =
            got.iter().map(String::as_str).filter(|f| f.starts_with("process_")).collect();
        assert_eq!(process.len(), 6, "process_* after them: {got:?}");
    }
    assert_eq!(texts[0].lines().count(), texts[1].lines().count());
}

/// `process_*` of the process behind `s`: present, and plausible for a process started
/// within the last hour.
#[track_caller]
fn process_plausible(s: &Scrape) {
    let one = |name: &str| {
        let v: Vec<f64> = s.samples.iter().filter(|x| x.name == name).map(|x| x.value).collect();
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        v[0]
    };
    let now = mesh_tests::now_unix() as f64;
    let start = one("process_start_time_seconds");
    assert!(start <= now + 1.0 && start > now - 3600.0, "start time {start}, now {now}");
    let resident = one("process_resident_memory_bytes");
    assert!(resident > 1e5, "resident {resident}");
    assert!(one("process_virtual_memory_bytes") >= resident);
    assert!(one("process_cpu_seconds_total") >= 0.0);
    let fds = one("process_open_fds");
    assert!(fds >= 3.0, "open fds {fds}");
    let max = one("process_max_fds");
    assert!(max == 0.0 || max >= fds, "max fds {max}");
    assert_eq!(s.type_of("process_cpu_seconds"), Some("counter"));
    assert_eq!(s.type_of("process_resident_memory_bytes"), Some("gauge"));
}

#[test]
fn every_documented_series_is_present_at_zero_before_any_traffic() {
    let p = Pair::with_policy(POLICY).server_config(ADMIN).client_config(ADMIN).start();
    let per_outbound = ["mesh_outbound_connections_closed_total", "mesh_outbound_bytes_total"];
    for (sc, none) in [(&p.server, &per_outbound[..]), (&p.client, &[][..])] {
        let admin = admin_addr(sc);
        let texts = [http(admin, "GET", "/metrics").body, http(admin, "GET", "/metrics").body];
        let s = scrape(admin);
        // Set at start: the version, the certificate's expiry, the events of the start.
        let nonzero = ["mesh_build_info", "mesh_cert_expiry_timestamp_seconds", "mesh_events_total"];
        all_documented_at_zero("## Metrics", &s, [&texts[0], &texts[1]], &nonzero, none);
        process_plausible(&s);
    }
    // The label sets known at start: every outcome and failure reason, per direction, from
    // the typed enums; the client's outbound by its index (the server has none); the server's
    // zone pairs.
    let c = scrape(admin_addr(&p.client));
    let outcomes = c.label_values("mesh_connections_closed_total", "outcome");
    for o in ["closed", "idle_timeout", "reset", "revoked", "policy_revoked", "denied", "handshake_failed"] {
        assert!(outcomes.contains(&o.to_owned()), "{o} in {outcomes:?}");
    }
    let reasons = c.label_values("mesh_tls_handshakes_total", "reason");
    for r in ["none", "unknown_ca", "wrong_identity", "timeout", "own_certificate_expired", "no_config"] {
        assert!(reasons.contains(&r.to_owned()), "{r} in {reasons:?}");
    }
    assert_eq!(c.label_values("mesh_outbound_bytes_total", "outbound"), ["0"]);
    assert_eq!(c.label_values("mesh_outbound_connections_closed_total", "outbound"), ["0"]);
    let s = scrape(admin_addr(&p.server));
    let allow =
        [("direction", "inbound"), ("decision", "allow"), ("src_zone", "frontend"), ("dst_zone", "orders")];
    assert!(s.samples.iter().any(|x| x.name == "mesh_policy_decisions_total"
        && allow.iter().all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))));
}

#[test]
fn bytes_of_a_long_lived_connection_are_counted_while_it_is_open() {
    let p = Pair::with_policy(POLICY).server_config(ADMIN).client_config(ADMIN).start();
    let (s_admin, c_admin) = (admin_addr(&p.server), admin_addr(&p.client));
    let mut conn = TcpStream::connect(p.client.outbound[0]).expect("connecting to the outbound");
    conn.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    // Less than the forwarder's 64 KiB batch: only its timer can show these bytes.
    let data = payload(3000, 7);
    conn.write_all(&data).expect("sending");
    let mut back = vec![0u8; data.len()];
    conn.read_exact(&mut back).expect("the echo");
    assert_eq!(back, data);
    let sent = data.len() as f64;
    let out = [("direction", "outbound"), ("sender", "source")];
    let inb = [("direction", "inbound"), ("sender", "destination")];
    let c = poll("the client's bytes while the connection is open", DEADLINE, || {
        let s = scrape(c_admin);
        (s.sum("mesh_bytes_total", &out) >= sent).then_some(s)
    });
    assert_eq!(c.sum("mesh_bytes_total", &out), sent);
    assert_eq!(c.sum("mesh_outbound_bytes_total", &[("outbound", "0"), ("sender", "destination")]), sent);
    assert_eq!(c.sum("mesh_connections_open", &[("direction", "outbound")]), 1.0, "still open");
    poll("the server's bytes while the connection is open", DEADLINE, || {
        (scrape(s_admin).sum("mesh_bytes_total", &inb) >= sent).then_some(())
    });
    // More on the same connection: the count grows, and nothing is counted twice at close.
    conn.write_all(&data).expect("sending again");
    conn.read_exact(&mut back).expect("the echo again");
    poll("the second send counted", DEADLINE, || {
        (scrape(c_admin).sum("mesh_bytes_total", &out) >= 2.0 * sent).then_some(())
    });
    assert_eq!(scrape(c_admin).sum("mesh_connections_open", &[("direction", "outbound")]), 1.0);
    drop(conn);
    let done = poll("the connection closed", DEADLINE, || {
        let s = scrape(c_admin);
        (s.sum("mesh_connections_open", &[("direction", "outbound")]) == 0.0).then_some(s)
    });
    assert_eq!(done.sum("mesh_bytes_total", &out), 2.0 * sent);
    let closed = [("outbound", "0"), ("outcome", "closed")];
    assert_eq!(done.sum("mesh_outbound_connections_closed_total", &closed), 1.0);
}

/// `GET path` on `addr` (plain HTTP).
fn get(addr: SocketAddr, path: &str) -> Answer {
    http(addr, "GET", path)
}

#[test]
fn the_ca_counts_requests_by_route_and_status_and_answers_live_and_ready() {
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();

    assert_eq!((get(metrics, "/live").status, get(metrics, "/live").body.as_str()), (200, "live\n"));
    let ready = get(metrics, "/ready");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"), "{}", server.transcript());

    let texts = [get(metrics, "/metrics").body, get(metrics, "/metrics").body];
    let before = scrape(metrics);
    let nonzero = ["mesh_ca_authority_expiry_timestamp_seconds", "mesh_ca_build_info"];
    all_documented_at_zero("### The CA's metrics", &before, [&texts[0], &texts[1]], &nonzero, &[]);
    process_plausible(&before);
    assert_eq!(before.sum("mesh_ca_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);

    let api = server.api();
    let dir = ca.tmp.path();
    let tok = token(&ca, "orders", "api", "15m", 1);
    assert_eq!(api.enroll(&tok, &Csr::p256(dir, "good")).status, Some(200));
    assert_eq!(api.enroll(&tok, &Csr::p256(dir, "again")).status, Some(403), "the token is used up");
    for _ in 0..3 {
        assert_eq!(api.request("GET", "/v1/bundle", &[]).status, Some(200));
    }
    assert_eq!(api.request("GET", "/v1/enroll", &[]).status, Some(405));
    assert_eq!(api.request("GET", "/nope/secret-looking-path", &[]).status, Some(404));
    let bad = api.post("/v1/enroll", &json!({"token": tok, "csr": "garbage"}), None);
    assert_eq!(bad.status, Some(400));

    let after = scrape(metrics);
    let req = |route: &str, status: &str| {
        after.sum("mesh_ca_requests_total", &[("route", route), ("status", status)])
    };
    assert_eq!(req("/v1/enroll", "200"), 1.0);
    assert_eq!(req("/v1/enroll", "403"), 1.0);
    assert_eq!(req("/v1/enroll", "400"), 1.0);
    assert_eq!(req("/v1/enroll", "405"), 1.0);
    assert_eq!(req("/v1/bundle", "200"), 3.0);
    assert_eq!(req("other", "404"), 1.0);
    assert_eq!(
        after.label_values("mesh_ca_requests_total", "route"),
        ["/v1/bundle", "/v1/enroll", "/v1/renew", "/v1/revocations", "other"]
    );
    // Only the issued certificate is timed, not the refusals.
    assert_eq!(after.sum("mesh_ca_issue_duration_seconds_count", &[]), 1.0);
    assert_eq!(get(metrics, "/ready").status, 200);
    assert_eq!(get(metrics, "/nope").status, 404);
}
