//! SIEM-native events end to end: a real mesh-proxy pair and a real mesh-ca write their events
//! as ECS and as OCSF (`[events] format`, `mesh-ca serve --events-format`), and every event
//! is checked by an independent validator (tests/py/siem_validate.py): OCSF against the JSON
//! Schema that the `ocsf-json-schema` package generates from the OCSF 1.5.0 release it ships;
//! ECS against the field reference of ECS 9.4.0 (vendored: no PyPI package ships it). Beside
//! the schemas, each mapped event is compared with the same event in zt-mesh's own JSON (the
//! sidecars' stdout stays JSON through `stdout_format`), so a value that is valid but wrong
//! (a port, a SPIFFE ID, a duration's unit) fails too. A last test shows the validators
//! refuse a renamed or mistyped field, so these tests fail if the mapping ever does that.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use mesh_tests::ca_server::*;
use mesh_tests::monitoring::{json_lines, poll};
use mesh_tests::proxy::DEADLINE;
use mesh_tests::proxy::*;
use mesh_tests::*;
use serde_json::{json, Value};

const API_ID: &str = "spiffe://example.org/ns/orders/sa/api";
const PAY_ID: &str = "spiffe://example.org/ns/payments/sa/pay";

/// Runs the validator on a file of JSON lines; returns its report, panicking (with the
/// errors) unless every event is valid.
#[track_caller]
fn validate(format: &str, file: &Path) -> Value {
    let o = Cmd::new("python3").arg(py_script("siem_validate.py")).arg(format).arg(file).run();
    let report: Value =
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("validator output ({e}):\n{o}"));
    assert!(
        o.success() && report["errors"].as_array().is_some_and(Vec::is_empty),
        "{format}: {:#}\n{o}",
        report["errors"]
    );
    assert!(report["checked"].as_u64() > Some(0), "{format}: no events in {}", file.display());
    report
}

/// An address nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

/// A sidecar pair whose server and client write `format` to a file (stdout stays JSON), taken
/// through an allowed call, an outbound denial, an outbound to a dead upstream, a caller with
/// no certificate, a caller the policy denies, a policy reload and a stop. Returns the pair
/// (stopped) and the two files.
fn pair_in(format: &str) -> (Pair, PathBuf, PathBuf) {
    let mesh = Mesh::new();
    let (server_file, client_file) = (mesh.path("server-events.jsonl"), mesh.path("client-events.jsonl"));
    let events = |file: &Path| {
        format!(
            "[events]\nsink = [\"stdout\", \"file:{}\"]\nformat = \"{format}\"\nstdout_format = \"json\"\n",
            file.display()
        )
    };
    let mut p = Pair::with_policy(SAMPLE_POLICY)
        .mesh(mesh)
        .server_config(&events(&server_file))
        .client_config(&events(&client_file))
        .client_outbound(closed_port(), API_ID)
        .client_outbound_to_server(PAY_ID)
        .start();
    let data = payload(1500, 3);
    assert_eq!(exchange(p.client.outbound[0], &data), data, "the allowed call");
    // outbound[1]: nothing listens there; outbound[2]: frontend -> payments has no rule.
    let _ = exchange(p.client.outbound[1], b"x");
    let _ = exchange(p.client.outbound[2], b"x");
    let inbound = p.server.inbound.expect("the server's inbound");
    let _ = Probe::to(inbound).run();
    let pay = p.mesh.identity("payments", "pay");
    let _ = Probe::to(inbound).identity(&pay).verify(&pay.bundle()).send("hi").run();
    p.client.wait_count("the client's three connection events", 3, |e| {
        ["connection", "upstream.connect_failed", "policy.deny"].contains(&field(e, "event"))
    });
    p.server.wait_count("the server's three connection events", 3, |e| {
        ["connection", "tls.handshake_failed", "policy.deny"].contains(&field(e, "event"))
    });
    let mark = p.server.mark();
    p.server.signal("HUP");
    p.server.next_named(mark, "policy.reloaded");
    for sc in [&mut p.server, &mut p.client] {
        sc.signal("TERM");
        sc.wait_exit(DEADLINE);
    }
    (p, server_file, client_file)
}

/// The event in `mapped` that stands for the JSON event `e` (the n-th of its name).
fn counterpart<'a>(
    mapped: &'a [Value],
    json: &[Value],
    e: &Value,
    name_of: impl Fn(&Value) -> String,
) -> &'a Value {
    let name = field(e, "event");
    let nth = json.iter().take_while(|x| !std::ptr::eq(*x, e)).filter(|x| field(x, "event") == name).count();
    mapped
        .iter()
        .filter(|m| name_of(m) == name)
        .nth(nth)
        .unwrap_or_else(|| panic!("no mapped {name} #{nth} in {mapped:#?}"))
}

/// The sidecar events in zt-mesh's JSON (stdout) that the file sink got too.
fn json_events(sc: &Sidecar) -> Vec<Value> {
    sc.events().into_iter().filter(|e| e["event"] != "events.dropped").collect()
}

fn addr_of(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is not ip:port"))
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.ffffffZ` (the events' timestamps).
fn ms_of(ts: &str) -> i64 {
    let n = |a: usize, b: usize| -> i64 {
        ts.get(a..b).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{ts:?}"))
    };
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19);
    secs * 1000 + n(20, 23)
}

#[test]
fn a_sidecar_pairs_events_in_ecs_validate_against_ecs_9_4_0() {
    let (p, server_file, client_file) = pair_in("ecs");
    for (sc, file) in [(&p.server, &server_file), (&p.client, &client_file)] {
        let report = validate("ecs", file);
        eprintln!("{}: ECS, {} events valid: {}", sc.name, report["checked"], report["kinds"]);
        let mapped = json_lines(file);
        let json = json_events(sc);
        if let Some(c) = mapped.iter().find(|m| m["event"]["action"] == "connection") {
            eprintln!("{}: an ECS connection event: {c}", sc.name);
        }
        assert_eq!(mapped.len(), json.len(), "{}: one ECS document per event", sc.name);
        for e in &json {
            let m =
                counterpart(&mapped, &json, e, |m| m["event"]["action"].as_str().unwrap_or("").to_owned());
            assert_eq!(m["@timestamp"], e["timestamp"], "{m}");
            assert_eq!(
                (m["service"]["name"].as_str(), m["observer"]["product"].as_str()),
                (Some("mesh-proxy"), Some("zt-mesh"))
            );
            if !["connection", "policy.deny", "tls.handshake_failed", "upstream.connect_failed"]
                .contains(&field(e, "event"))
            {
                continue;
            }
            let src = addr_of(field(e, "src_addr"));
            assert_eq!(
                (m["source"]["ip"].as_str(), m["source"]["port"].as_u64()),
                (Some(src.ip().to_string().as_str()), Some(u64::from(src.port()))),
                "{m}"
            );
            assert_eq!(
                m["event"]["duration"].as_u64(),
                e["duration_ms"].as_u64().map(|ms| ms * 1_000_000),
                "nanoseconds: {m}"
            );
            assert_eq!(m["network"]["direction"], e["direction"], "{m}");
            assert_eq!(m["labels"]["src_id"].as_str(), e["src_id"].as_str(), "{m}");
            assert_eq!(m["labels"]["dst_id"].as_str(), e["dst_id"].as_str(), "{m}");
            match field(e, "event") {
                "connection" => {
                    assert_eq!(
                        (m["event"]["outcome"].as_str(), m["tls"]["established"].as_bool()),
                        (Some("success"), Some(true)),
                        "{m}"
                    );
                    assert_eq!(m["event"]["type"], json!(["connection", "end", "allowed"]), "{m}");
                    assert_eq!(m["tls"]["client"]["x509"]["alternative_names"], json!([e["src_id"]]), "{m}");
                    assert_eq!(m["tls"]["server"]["x509"]["alternative_names"], json!([e["dst_id"]]), "{m}");
                    assert_eq!(m["rule"]["name"], e["rule"], "{m}");
                    assert_eq!(
                        (m["source"]["bytes"].as_u64(), m["destination"]["bytes"].as_u64()),
                        (e["bytes_in"].as_u64(), e["bytes_out"].as_u64())
                    );
                }
                "policy.deny" => {
                    assert_eq!(
                        (m["event"]["outcome"].as_str(), m["event"]["reason"].as_str()),
                        (Some("failure"), e["reason"].as_str()),
                        "{m}"
                    );
                    assert!(
                        m["event"]["type"].as_array().is_some_and(|t| t.contains(&json!("denied"))),
                        "{m}"
                    );
                }
                "tls.handshake_failed" => {
                    assert_eq!(m["tls"]["established"], false, "{m}");
                    assert!(
                        m["event"]["category"]
                            .as_array()
                            .is_some_and(|c| c.contains(&json!("authentication"))),
                        "{m}"
                    );
                }
                _ => {}
            }
        }
        let kinds: Vec<&str> = json.iter().map(|e| field(e, "event")).collect();
        for want in ["proxy.started", "connection", "policy.deny", "proxy.stopping"] {
            assert!(kinds.contains(&want), "{}: no {want} among {kinds:?}", sc.name);
        }
    }
}

#[test]
fn a_sidecar_pairs_events_in_ocsf_validate_against_ocsf_1_5_0() {
    let (p, server_file, client_file) = pair_in("ocsf");
    for (sc, file) in [(&p.server, &server_file), (&p.client, &client_file)] {
        let report = validate("ocsf", file);
        eprintln!("{}: OCSF, {} events valid: {}", sc.name, report["checked"], report["kinds"]);
        let mapped = json_lines(file);
        let json = json_events(sc);
        if let Some(c) = mapped.iter().find(|m| m["metadata"]["event_code"] == "policy.deny") {
            eprintln!("{}: an OCSF policy.deny event: {c}", sc.name);
        }
        assert_eq!(mapped.len(), json.len(), "{}: one OCSF event per event", sc.name);
        for e in &json {
            let m = counterpart(&mapped, &json, e, |m| {
                m["metadata"]["event_code"].as_str().unwrap_or("").to_owned()
            });
            assert_eq!(m["time"].as_i64(), Some(ms_of(field(e, "timestamp"))), "epoch ms: {m}");
            assert_eq!(
                (m["metadata"]["product"]["name"].as_str(), m["metadata"]["version"].as_str()),
                (Some("zt-mesh"), Some("1.5.0"))
            );
            let class = m["class_uid"].as_u64();
            match field(e, "event") {
                "connection" | "policy.deny" | "upstream.connect_failed" => {
                    assert_eq!(class, Some(4001), "{m}");
                    let src = addr_of(field(e, "src_addr"));
                    assert_eq!(
                        (m["src_endpoint"]["ip"].as_str(), m["src_endpoint"]["port"].as_u64()),
                        (Some(src.ip().to_string().as_str()), Some(u64::from(src.port()))),
                        "{m}"
                    );
                    assert_eq!(m["src_endpoint"]["uid"].as_str(), e["src_id"].as_str(), "{m}");
                    assert_eq!(m["dst_endpoint"]["uid"].as_str(), e["dst_id"].as_str(), "{m}");
                    assert_eq!(m["duration"].as_u64(), e["duration_ms"].as_u64(), "milliseconds: {m}");
                    let direction = if e["direction"] == "inbound" { 1 } else { 2 };
                    assert_eq!(m["connection_info"]["direction_id"], direction, "{m}");
                    let (activity, action) = match field(e, "event") {
                        "connection" => (if e["reason"] == "reset" { 3 } else { 2 }, 1),
                        "policy.deny" => (5, 2),
                        _ => (4, 1),
                    };
                    assert_eq!(
                        (m["activity_id"].as_u64(), m["action_id"].as_u64()),
                        (Some(activity), Some(action)),
                        "{m}"
                    );
                    if field(e, "event") == "connection" {
                        assert_eq!(
                            (m["disposition_id"].as_u64(), m["status_id"].as_u64()),
                            (Some(1), Some(1)),
                            "{m}"
                        );
                        assert_eq!(m["firewall_rule"]["name"], e["rule"], "{m}");
                        assert_eq!(
                            (m["traffic"]["bytes_out"].as_u64(), m["traffic"]["bytes_in"].as_u64()),
                            (e["bytes_in"].as_u64(), e["bytes_out"].as_u64())
                        );
                    }
                    if field(e, "event") == "policy.deny" {
                        assert_eq!(
                            (m["disposition_id"].as_u64(), m["status_code"].as_str()),
                            (Some(2), e["reason"].as_str()),
                            "{m}"
                        );
                    }
                }
                "tls.handshake_failed" => {
                    assert_eq!(
                        (class, m["activity_id"].as_u64(), m["status_id"].as_u64()),
                        (Some(3002), Some(1), Some(2)),
                        "{m}"
                    );
                    assert_eq!(m["status_code"], e["reason"], "{m}");
                }
                "proxy.started" => {
                    assert_eq!((class, m["activity_id"].as_u64()), (Some(6002), Some(3)), "{m}")
                }
                "proxy.stopping" => {
                    assert_eq!((class, m["activity_id"].as_u64()), (Some(6002), Some(4)), "{m}")
                }
                _ => {}
            }
        }
    }
}

/// A mesh-ca serving with `--events-format FORMAT`: its stdout, and the address from its
/// `ca.started` in that format.
struct FormattedCa {
    ca: TestCa,
    server: CaServer,
}

fn ca_in(format: &str) -> FormattedCa {
    let ca = TestCa::init_unencrypted();
    let dir = ca.dir.display().to_string();
    let args =
        ["serve", "--dir", &dir, "--listen", "127.0.0.1:0", "--cert-ttl", "10m", "--events-format", format];
    let proc = LineChild::spawn("mesh-ca serve", &binary("mesh-ca"), &args);
    let started = proc.wait_lines("ca.started", |lines| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"]["action"] == "ca.started" || e["metadata"]["event_code"] == "ca.started")
    });
    let listen = started["zt_mesh"]["listen"].as_str().or(started["unmapped"]["listen"].as_str());
    let addr: SocketAddr =
        listen.and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no listen address: {started}"));
    let bundle = ca.path("bundle.pem");
    let o = ca.cmd("bundle").run();
    o.assert_ok();
    std::fs::write(&bundle, &o.stdout).expect("writing bundle.pem");
    let server = CaServer { proc, addr, url: format!("https://{addr}"), bundle };
    FormattedCa { ca, server }
}

/// Drives the CA through enroll, a spent and a malformed token, renew, a revocation and a
/// stop; returns its stdout as a file of JSON lines.
/// The CA (kept: its directory holds the file) comes back too.
fn ca_events(format: &str, name_of: impl Fn(&Value) -> String) -> (FormattedCa, PathBuf, Vec<Value>) {
    let mut f = ca_in(format);
    let api = f.server.api();
    let tmp = f.ca.tmp.path().to_owned();
    let t = token(&f.ca, "orders", "api", "15m", 1);
    let csr = Csr::p256(&tmp, "first");
    let first = Issued::save(api.enroll(&t, &csr).assert_issued(), &csr, &f.ca.path("first"));
    // The token is spent now; and one that is not a token at all.
    let _ = api.enroll(&t, &Csr::p256(&tmp, "again"));
    let _ = api.enroll("not-a-token", &Csr::p256(&tmp, "bad"));
    let csr = Csr::p256(&tmp, "renewed");
    api.renew(&first.cert(), &first.key(), &csr).assert_issued();
    let o = f.ca.cmd("revoke").args(["--zone", "orders", "--workload", "api"]).run();
    o.assert_ok();
    let names = |lines: &[String]| -> Vec<String> {
        lines.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).map(|v| name_of(&v)).collect()
    };
    f.server.proc.wait_lines("cert.revoked", |l| names(l).contains(&"cert.revoked".to_owned()).then_some(()));
    f.server.proc.signal("TERM");
    f.server.proc.wait_exit(DEADLINE);
    let lines = f.server.proc.stdout();
    let out = f.ca.path(&format!("ca-{format}.jsonl"));
    std::fs::write(&out, lines.join("\n") + "\n").expect("writing the CA's events");
    let events: Vec<Value> = json_lines(&out);
    assert_eq!(events.len(), lines.len(), "every stdout line of the CA is one JSON event");
    for want in [
        "ca.started",
        "token.used",
        "cert.issued",
        "token.rejected",
        "cert.renewed",
        "cert.revoked",
        "ca.stopped",
    ] {
        assert!(events.iter().any(|e| name_of(e) == want), "{format}: no {want}:\n{}", lines.join("\n"));
    }
    (f, out, events)
}

#[test]
fn the_cas_events_validate_as_ocsf_api_activity_and_authentication() {
    let name_of = |v: &Value| v["metadata"]["event_code"].as_str().unwrap_or("").to_owned();
    let (_ca, file, events) = ca_events("ocsf", name_of);
    let report = validate("ocsf", &file);
    eprintln!("mesh-ca: OCSF, {} events valid: {}", report["checked"], report["kinds"]);
    let find = |n: &str| events.iter().find(|e| name_of(e) == n).cloned().unwrap_or_default();
    let issued = find("cert.issued");
    assert_eq!(
        (issued["class_uid"].as_u64(), issued["activity_id"].as_u64()),
        (Some(6003), Some(1)),
        "{issued}"
    );
    assert_eq!(issued["actor"]["user"]["uid"], API_ID, "{issued}");
    let renewed = find("cert.renewed");
    assert_eq!(
        (renewed["class_uid"].as_u64(), renewed["activity_id"].as_u64()),
        (Some(6003), Some(3)),
        "{renewed}"
    );
    let revoked = find("cert.revoked");
    assert_eq!(
        (revoked["class_uid"].as_u64(), revoked["api"]["operation"].as_str()),
        (Some(6003), Some("RevokeCertificate")),
        "{revoked}"
    );
    let used = find("token.used");
    assert_eq!(
        (used["class_uid"].as_u64(), used["status_id"].as_u64(), used["user"]["uid"].as_str()),
        (Some(3002), Some(1), Some(API_ID)),
        "{used}"
    );
    let rejected = find("token.rejected");
    assert_eq!(
        (rejected["class_uid"].as_u64(), rejected["status_id"].as_u64()),
        (Some(3002), Some(2)),
        "{rejected}"
    );
    assert_eq!(rejected["src_endpoint"]["ip"], "127.0.0.1", "{rejected}");
    assert_eq!(find("ca.started")["metadata"]["product"]["feature"]["name"], "mesh-ca");
}

#[test]
fn the_cas_events_validate_as_ecs() {
    let name_of = |v: &Value| v["event"]["action"].as_str().unwrap_or("").to_owned();
    let (_ca, file, events) = ca_events("ecs", name_of);
    let report = validate("ecs", &file);
    eprintln!("mesh-ca: ECS, {} events valid: {}", report["checked"], report["kinds"]);
    let find = |n: &str| events.iter().find(|e| name_of(e) == n).cloned().unwrap_or_default();
    let issued = find("cert.issued");
    assert_eq!(
        (issued["labels"]["spiffe_id"].as_str(), issued["event"]["outcome"].as_str()),
        (Some(API_ID), Some("success")),
        "{issued}"
    );
    assert_eq!(issued["service"]["name"], "mesh-ca");
    let rejected = find("token.rejected");
    assert_eq!(
        (rejected["source"]["ip"].as_str(), rejected["event"]["outcome"].as_str()),
        (Some("127.0.0.1"), Some("failure")),
        "{rejected}"
    );
}

/// The validators are what makes the tests above fail on a renamed or mistyped field: each
/// spoiled copy of a real event is refused.
#[test]
fn the_validators_refuse_renamed_and_mistyped_fields() {
    let (p, server_file, _) = pair_in("ecs");
    let (q, ocsf_file, _) = pair_in("ocsf");
    let conn = |file: &Path, name_of: &dyn Fn(&Value) -> bool| {
        json_lines(file)
            .into_iter()
            .find(|e| name_of(e))
            .unwrap_or_else(|| panic!("a connection event in {}", file.display()))
    };
    let ecs = conn(&server_file, &|e| e["event"]["action"] == "connection");
    let ocsf = conn(&ocsf_file, &|e| e["metadata"]["event_code"] == "connection");
    let spoil = |v: &Value, f: &dyn Fn(&mut Value)| {
        let mut v = v.clone();
        f(&mut v);
        v
    };
    let ecs_cases: Vec<(&str, Value)> = vec![
        (
            "source.ip renamed",
            spoil(&ecs, &|v| {
                let ip = v["source"]["ip"].take();
                v["source"].as_object_mut().map(|o| o.remove("ip"));
                v["source"]["ip_address"] = ip;
            }),
        ),
        ("event.duration a string", spoil(&ecs, &|v| v["event"]["duration"] = json!("12ms"))),
        ("source.port a string", spoil(&ecs, &|v| v["source"]["port"] = json!("4000"))),
        ("source.ip not an IP", spoil(&ecs, &|v| v["source"]["ip"] = json!("localhost"))),
        ("event.type not ECS's", spoil(&ecs, &|v| v["event"]["type"] = json!(["closed"]))),
        ("event.category not an array", spoil(&ecs, &|v| v["event"]["category"] = json!("network"))),
        ("tls.established a string", spoil(&ecs, &|v| v["tls"]["established"] = json!("true"))),
        (
            "@timestamp renamed",
            spoil(&ecs, &|v| {
                let t = v["@timestamp"].take();
                v.as_object_mut().map(|o| o.remove("@timestamp"));
                v["timestamp"] = t;
            }),
        ),
    ];
    let ocsf_cases: Vec<(&str, Value)> = vec![
        ("time a string", spoil(&ocsf, &|v| v["time"] = json!("2026-12-02T00:00:00Z"))),
        (
            "src_endpoint renamed",
            spoil(&ocsf, &|v| {
                let s = v["src_endpoint"].take();
                v.as_object_mut().map(|o| o.remove("src_endpoint"));
                v["source_endpoint"] = s;
            }),
        ),
        ("action_id outside its enum", spoil(&ocsf, &|v| v["action_id"] = json!(7))),
        ("type_uid not class*100+activity", spoil(&ocsf, &|v| v["type_uid"] = json!(400101))),
        ("src_endpoint.port a string", spoil(&ocsf, &|v| v["src_endpoint"]["port"] = json!("4000"))),
        (
            "metadata.version missing",
            spoil(&ocsf, &|v| {
                v["metadata"].as_object_mut().map(|o| o.remove("version"));
            }),
        ),
        (
            "action_id without the security_control profile",
            spoil(&ocsf, &|v| {
                v["metadata"].as_object_mut().map(|o| o.remove("profiles"));
            }),
        ),
    ];
    for (format, original, cases) in [("ecs", &ecs, ecs_cases), ("ocsf", &ocsf, ocsf_cases)] {
        let ok = p.mesh.path(&format!("{format}-original.jsonl"));
        std::fs::write(&ok, format!("{original}\n")).expect("write");
        validate(format, &ok);
        for (what, spoiled) in cases {
            let file = p.mesh.path(&format!("{format}-spoiled.jsonl"));
            std::fs::write(&file, format!("{spoiled}\n")).expect("write");
            let o = Cmd::new("python3").arg(py_script("siem_validate.py")).arg(format).arg(&file).run();
            let report: Value = serde_json::from_str(o.stdout.trim()).unwrap_or_default();
            assert!(
                !o.success() && report["errors"].as_array().is_some_and(|e| !e.is_empty()),
                "{format}: {what} was accepted:\n{o}"
            );
        }
    }
    // The sidecars' JSON on stdout was not changed by the formats of their other sinks.
    let started = poll("proxy.started in JSON", DEADLINE, || {
        q.server.events().into_iter().find(|e| e["event"] == "proxy.started")
    });
    assert!(started["timestamp"].is_string() && started.get("@timestamp").is_none(), "{started}");
}
