//! Traffic through a pair of sidecars: the allowed path end to end, and every kind of
//! refusal the policy and the outbound identity check make.

use super::*;

#[test]
fn allowed_pair_echoes_end_to_end_with_one_connection_event_per_side() {
    let p = Pair::with_policy(SAMPLE_POLICY).start();
    let (server, client) = (&p.server, &p.client);
    assert_eq!(server.id, p.api.id, "proxy.started src_id\n{}", server.transcript());
    assert_eq!(client.id, p.web.id, "proxy.started src_id\n{}", client.transcript());
    let inbound = server.inbound.expect("inbound port");
    let serving = format!("mesh-proxy: {} serving inbound={inbound}", p.api.id);
    server.wait_stderr(&serving, |l| l.starts_with(&serving));
    let serving = format!("mesh-proxy: {} serving outbound[0]={}", p.web.id, client.outbound[0]);
    client.wait_stderr(&serving, |l| l.starts_with(&serving));

    // Big enough to take many TLS records each way.
    let data = payload(200_000, 7);
    let back = exchange(client.outbound[0], &data);
    assert!(back == data, "echo differs: sent {} bytes, got {}", data.len(), back.len());

    let n = data.len() as u64;
    for (sc, direction) in [(server, "inbound"), (client, "outbound")] {
        let e = sc.wait_for("the connection event", |e| e["event"] == "connection");
        assert_fields(
            sc,
            &e,
            &[
                ("direction", direction),
                ("src_id", &p.web.id),
                ("dst_id", &p.api.id),
                ("decision", "allow"),
                ("reason", "closed"),
            ],
        );
        let rule = field(&e, "rule");
        assert!(rule.contains("allow[0]") && rule.contains("policy.toml"), "rule {rule:?} in {e}");
        assert_eq!(
            (e["bytes_in"].as_u64(), e["bytes_out"].as_u64()),
            (Some(n), Some(n)),
            "byte counts in {e}"
        );
        assert!(e["duration_ms"].is_u64(), "duration_ms in {e}");
        assert!(e["timestamp"].is_string(), "timestamp in {e}");
        assert_eq!(sc.conn_events().len(), 1, "one connection, one event\n{}", sc.transcript());
        assert!(sc.not_json().is_empty(), "stdout lines that are not JSON\n{}", sc.transcript());
    }
    let seen = p.app.seen();
    assert_eq!(seen.connections, 1);
    assert!(seen.bytes == data, "the app received {} bytes, not the {} sent", seen.bytes.len(), data.len());

    // Several at once, each with its own bytes.
    let addr = client.outbound[0];
    let workers: Vec<_> = (0..4u8)
        .map(|i| {
            std::thread::spawn(move || {
                let d = payload(30_000 + usize::from(i) * 1000, i + 1);
                exchange(addr, &d) == d
            })
        })
        .collect();
    for w in workers {
        assert!(w.join().expect("a client thread"), "a concurrent connection got wrong bytes back");
    }
    for sc in [server, client] {
        let all = sc.wait_count("five connection events", 5, |e| e["event"] == "connection");
        assert!(all.iter().all(|e| field(e, "reason") == "closed"), "{}", sc.transcript());
    }
    assert_eq!(p.app.connections(), 5);
}

/// Policy for the refusal tests: allows with near-miss neighbours, and denies that must win.
const REFUSALS_POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders", "orders2", "pay", "payments"]

[[allow]]
from = "frontend"
to = "orders"

[[allow]]
from = "frontend/web"
to = "payments/charge"

[[deny]]
from = "frontend/legacy"
to = "orders"

[[deny]]
from = "frontend"
to = "orders/admin"
"#;

/// Asserts a `policy.deny` event and the rule it cites (None: no rule, deny by default).
#[track_caller]
fn assert_denied(sc: &Sidecar, e: &Value, direction: &str, src: &str, dst: &str, deny_rule: Option<&str>) {
    let reason = if deny_rule.is_some() { "deny_rule" } else { "no_rule" };
    assert_fields(
        sc,
        e,
        &[
            ("event", "policy.deny"),
            ("direction", direction),
            ("src_id", src),
            ("dst_id", dst),
            ("decision", "deny"),
            ("reason", reason),
        ],
    );
    match deny_rule {
        Some(r) => assert!(field(e, "rule").contains(r), "expected rule {r} in {e}"),
        None => assert!(!field(e, "rule").contains("allow"), "a default deny cites an allow rule: {e}"),
    }
    assert!(!field(e, "reason_detail").is_empty(), "no reason_detail in {e}");
}

#[test]
fn policy_refuses_forbidden_pairs_on_both_sides() {
    let mesh = Mesh::new();
    // Where every forbidden outbound points: egress is refused before connecting, so it must
    // never see a connection.
    let trap = App::start();
    // (server identity the outbound insists on, the deny rule that must decide)
    let forbidden: [(String, Option<&str>); 6] = [
        (mesh.id("orders2", "api"), None),      // zone near-miss of orders
        (mesh.id("pay", "charge"), None),       // zone prefix of payments
        (mesh.id("payments", "charges"), None), // workload near-misses of payments/charge
        (mesh.id("payments", "charg"), None),
        (mesh.id("frontend", "other"), None), // intra-zone: denied without a rule
        (mesh.id("orders", "admin"), Some("deny[1]")), // allowed by allow[0], denied by deny[1]
    ];
    let mut spec = Pair::with_policy(REFUSALS_POLICY).mesh(mesh);
    for (server_id, _) in &forbidden {
        spec = spec.client_outbound(trap.addr, server_id);
    }
    let Pair { mesh, api, web, app, server, client, .. } = spec.start();
    let inbound = server.inbound.expect("inbound port");

    // Control: the allowed outbound works, so the refusals below are the policy's doing.
    assert_eq!(exchange(client.outbound[0], b"allowed"), b"allowed");
    client.wait_for("the allowed connection", |e| e["event"] == "connection");

    for (i, (server_id, deny_rule)) in forbidden.iter().enumerate() {
        let mark = client.mark();
        let back = exchange(client.outbound[i + 1], b"must not leave");
        assert!(back.is_empty(), "egress to {server_id} answered {back:?}");
        let e = client.next_conn_event(mark);
        assert_denied(&client, &e, "outbound", &web.id, server_id, *deny_rule);
    }
    assert_eq!(trap.connections(), 0, "a denied outbound contacted its remote");

    // Ingress, straight at the server's inbound port with a valid certificate of the caller.
    let callers: [(&str, &str, Option<&str>); 6] = [
        ("frontend", "legacy", Some("deny[0]")), // allowed by allow[0], denied by deny[0]
        ("orders", "worker", None),              // intra-zone
        ("front", "web", None),                  // prefix of frontend
        ("frontend2", "web", None),              // extension of frontend
        ("payments", "charge", None),            // reverse of nothing allowed
        ("pay", "web", None),
    ];
    let before = app.connections();
    for (zone, workload, deny_rule) in callers {
        let caller = mesh.identity(zone, workload);
        let mark = server.mark();
        let r = Probe::to(inbound).identity(&caller).send("must not arrive").run();
        assert_eq!(field(&r, "received"), "", "a denied caller {} got an answer: {r}", caller.id);
        let e = server.next_conn_event(mark);
        assert_denied(&server, &e, "inbound", &caller.id, &api.id, deny_rule);
        assert_eq!(app.connections(), before, "a denied caller {} reached the app", caller.id);
    }
    // The same kind of client with an allowed identity gets through.
    let mark = server.mark();
    let r = Probe::to(inbound).identity(&web).send("allowed too").run();
    assert_eq!(field(&r, "received"), "allowed too", "{r}\n{}", server.transcript());
    assert_fields(&server, &server.next_conn_event(mark), &[("event", "connection"), ("src_id", &web.id)]);
    assert_eq!(app.connections(), before + 1);
    let bytes = String::from_utf8_lossy(&app.seen().bytes).into_owned();
    assert!(!bytes.contains("must not"), "refused bytes reached the app: {bytes:?}");
}

#[test]
fn outbound_refuses_a_remote_with_the_wrong_identity_before_sending_a_byte() {
    let mesh = Mesh::new();
    let charge = mesh.identity("payments", "charge");
    let web = mesh.identity("frontend", "web");
    // Both the expected identity and the one actually there are allowed: only the identity
    // check can stop this connection.
    let policy = mesh.write_file(
        "policy.toml",
        r#"trust_domain = "example.org"
zones = ["frontend", "orders", "payments"]

[[allow]]
from = "frontend"
to = "orders"

[[allow]]
from = "frontend"
to = "payments"
"#,
    );
    let app = App::start();
    let remote = mesh.sidecar(SidecarSpec::new("payments", &charge, &policy).inbound(app.addr));
    let inbound = remote.inbound.expect("inbound port");
    let client = mesh.sidecar(
        SidecarSpec::new("client", &web, &policy)
            .outbound(inbound, &mesh.id("orders", "api")) // wrong: payments/charge is there
            .outbound(inbound, &charge.id),
    );

    // The app writes its request at once, before the sidecar could have verified anything.
    let mut c = Client::connect(client.outbound[0]);
    let secret = b"POST /charge card=4111111111111111";
    let _ = std::io::Write::write_all(&mut c.stream, secret);
    let back = c.read_until_closed(DEADLINE).expect("the client sidecar closes the connection");
    assert!(back.is_empty(), "the app got an answer from the wrong remote: {back:?}");
    let e = client.next_conn_event(0);
    assert_fields(
        &client,
        &e,
        &[("event", "tls.handshake_failed"), ("direction", "outbound"), ("reason", "wrong_identity")],
    );
    assert!(field(&e, "reason_detail").contains(&charge.id), "detail names what was presented: {e}");
    // The remote sidecar saw the handshake abort: one failure event, nothing forwarded.
    let re = remote.next_conn_event(0);
    assert_eq!(field(&re, "event"), "tls.handshake_failed", "{}", remote.transcript());
    let seen = app.seen();
    assert_eq!((seen.connections, seen.bytes.len()), (0, 0), "the wrong remote's app was reached");

    // Control: the same remote under its real identity is reached.
    assert_eq!(exchange(client.outbound[1], b"right one"), b"right one");
    assert_eq!(app.connections(), 1);
}
