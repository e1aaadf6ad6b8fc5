//! Event sinks end to end: one sidecar writing to stdout, a real rsyslog (UDP and TCP,
//! RFC 5424, octet-counted framing) and a local HTTPS collector at once; a dead collector
//! that must cost no connection anything, with what it lost counted and announced; a file
//! sink that follows logrotate's rename + SIGHUP.

use std::collections::BTreeSet;

use mesh_tests::monitoring::*;
use mesh_tests::proxy::*;
use serde_json::Value;

const POLICY: &str = r#"trust_domain = "example.org"
zones = ["frontend", "orders"]

[[allow]]
from = "frontend"
to = "orders"
"#;

/// The [`Pair`] these tests use: the server (orders/api) has an admin listener and `events`
/// as its extra config; the client (frontend/web) prints to stdout only.
fn start(mesh: Mesh, events: &str) -> Pair {
    Pair::with_policy(POLICY).mesh(mesh).server_config(&format!("{ADMIN}{events}")).start()
}

/// One echo through both sidecars; whether it came back whole.
fn call(p: &Pair, seed: u8) -> bool {
    let data = payload(2000, seed);
    exchange(p.client.outbound[0], &data) == data
}

/// The server's stdout events that every sink receives (all but the per-sink drop notices).
fn shared_events(sc: &Sidecar) -> Vec<Value> {
    sc.events().into_iter().filter(|e| e["event"] != "events.dropped").collect()
}

#[test]
fn stdout_rsyslog_udp_tcp_and_https_receive_the_same_events() {
    let mesh = Mesh::new();
    let syslog = Rsyslog::start(&mesh.path("rsyslog"));
    let collector = Collector::start(&mesh.path("collector"));
    let events = format!(
        "[events]\nsink = [\"stdout\", \"syslog+udp://{}\", \"syslog+tcp://{}\", \"{}\"]\nca_bundle = \"{}\"\nsyslog_facility = \"local3\"\n",
        syslog.udp,
        syslog.tcp,
        collector.url(),
        collector.ca.display()
    );
    let p = start(mesh, &events);
    const N: u8 = 6;
    for i in 0..N {
        assert!(call(&p, i), "call {i}");
    }
    p.server.wait_count("the connection events", N.into(), |e| e["event"] == "connection");
    let want = shared_events(&p.server);
    assert!(want.iter().any(|e| e["event"] == "proxy.started"), "{}", p.server.transcript());

    // rsyslog parsed every message as RFC 5424 (version 1) with our header fields, and its
    // MSG is exactly the event stdout printed. UDP and TCP alike.
    let records = poll("rsyslog to have every event over UDP and TCP", DEADLINE, || {
        let r = syslog.records();
        let count = |input: &str| r.iter().filter(|x| x["input"] == input).count();
        (count("imudp") >= want.len() && count("imtcp") >= want.len()).then_some(r)
    });
    for input in ["imudp", "imtcp"] {
        let mut got = Vec::new();
        for r in records.iter().filter(|r| r["input"] == input) {
            assert_eq!(
                (
                    r["version"].as_str(),
                    r["app_name"].as_str(),
                    r["facility_text"].as_str(),
                    r["structured_data"].as_str()
                ),
                (Some("1"), Some("mesh-proxy"), Some("local3"), Some("-")),
                "{input}: {r}"
            );
            let msg: Value = serde_json::from_str(r["msg"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{input}: MSG is not the event's JSON ({e}): {r}"));
            assert_eq!(r["msgid"], msg["event"], "{input}: MSGID is the event name: {r}");
            let severity = match msg["severity"].as_str() {
                Some("info") => "6",
                Some("warning") => "4",
                _ => "3",
            };
            assert_eq!(r["severity"].as_str(), Some(severity), "{input}: {r}");
            assert_eq!(r["procid"].as_str(), Some(p.server.pid().to_string().as_str()), "{input}: {r}");
            got.push(msg);
        }
        assert_eq!(got, want, "{input} received exactly what stdout printed, in order");
    }

    // The HTTPS collector: NDJSON batches on the configured path, the same events.
    let received = poll("the collector to have every event", DEADLINE, || {
        let r = collector.received();
        (r.len() >= want.len()).then_some(r)
    });
    for r in &received {
        assert_eq!(
            (r["content_type"].as_str(), r["path"].as_str()),
            (Some("application/x-ndjson"), Some("/ingest"))
        );
    }
    let got: Vec<Value> = received.iter().map(|r| r["event"].clone()).collect();
    assert_eq!(got, want, "the collector received exactly what stdout printed");
    assert!(!got.iter().any(|e| e["event"] == "events.dropped"), "nothing was lost");
    drop(p);
}

#[test]
fn a_dead_collector_slows_no_connection_and_its_losses_are_counted_and_announced() {
    let mesh = Mesh::new();
    let mut collector = Collector::start(&mesh.path("collector"));
    // A small queue, so the outage overflows it within a few dozen connections.
    let events = format!(
        "[events]\nsink = [\"stdout\", \"{}\"]\nca_bundle = \"{}\"\nqueue_size = 16\nhttps_format = \"json\"\n",
        collector.url(),
        collector.ca.display()
    );
    let p = start(mesh, &events);
    let admin = admin_addr(&p.server);
    for i in 0..3 {
        assert!(call(&p, i), "call {i} with the collector up");
    }
    p.server.wait_count("3 connection events", 3, |e| e["event"] == "connection");
    // Everything so far has arrived (so no POST is in flight when the collector dies).
    let n_before = shared_events(&p.server).len();
    poll("the collector to catch up", DEADLINE, || (collector.received().len() >= n_before).then_some(()));
    assert!(collector.received().iter().all(|r| r["content_type"] == "application/json"));

    collector.kill();
    const N: u8 = 60;
    let ok = (0..N).filter(|i| call(&p, *i)).count();
    assert_eq!(ok, usize::from(N), "{ok} of {N} connections succeeded while the collector was dead");
    p.server.wait_count("every connection event", 3 + usize::from(N), |e| e["event"] == "connection");
    let dropped = poll("drops to be counted", DEADLINE, || {
        let d = scrape(admin).sum("mesh_events_dropped_total", &[("sink", "https")]);
        (d > 0.0).then_some(d)
    });
    assert_eq!(scrape(admin).sum("mesh_events_dropped_total", &[("sink", "stdout")]), 0.0);
    eprintln!("collector dead: {ok}/{N} connections succeeded, {dropped} events dropped so far");

    collector.restart();
    for i in 0..3 {
        assert!(call(&p, 100 + i), "call {i} after the restart");
    }
    // Once it delivers again, the sink says what it lost, and every event is accounted for:
    // delivered to the collector, or counted as dropped (announced in events.dropped).
    let (delivered, announced, metric, total) =
        poll("delivered + dropped to account for every event", DEADLINE, || {
            let total = shared_events(&p.server).len();
            let r = collector.received();
            let delivered = r.iter().filter(|x| x["event"]["event"] != "events.dropped").count();
            let announced: u64 = r
                .iter()
                .filter(|x| x["event"]["event"] == "events.dropped")
                .filter_map(|x| x["event"]["count"].as_u64())
                .sum();
            let metric = scrape(admin).sum("mesh_events_dropped_total", &[("sink", "https")]);
            (announced > 0 && metric == announced as f64 && delivered + announced as usize == total)
                .then_some((delivered, announced, metric, total))
        });
    eprintln!(
        "after the restart: {total} events in all, {delivered} delivered to the collector, {announced} dropped (metric {metric})"
    );
    let notice = collector
        .received()
        .into_iter()
        .find(|x| x["event"]["event"] == "events.dropped")
        .map(|x| x["event"].clone())
        .unwrap_or_default();
    assert_eq!(
        (notice["sink"].as_str(), notice["severity"].as_str()),
        (Some("https"), Some("warning")),
        "{notice}"
    );
    // Everything delivered is a real event, each once: no duplicates from the retries.
    let seen: BTreeSet<String> = collector.received().iter().map(|x| x["event"].to_string()).collect();
    assert_eq!(seen.len(), collector.received().len(), "duplicates delivered");
    drop(p);
}

#[test]
fn file_sink_follows_logrotate_rename_and_sighup() {
    let mesh = Mesh::new();
    let log = mesh.path("events.log");
    let p = start(mesh, &format!("[events]\nsink = [\"stdout\", \"file:{}\"]\n", log.display()));
    assert!(call(&p, 1));
    p.server.wait_count("a connection event", 1, |e| e["event"] == "connection");
    poll("the event in the file", DEADLINE, || {
        json_lines(&log).iter().any(|e| e["event"] == "connection").then_some(())
    });
    let rotated = p.mesh.path("events.log.1");
    std::fs::rename(&log, &rotated).expect("rotating");
    let mark = p.server.mark();
    p.server.signal("HUP");
    // SIGHUP also re-reads the policy: its event says the signal was handled.
    p.server.next_named(mark, "policy.reloaded");
    assert!(call(&p, 2));
    p.server.wait_count("two connection events", 2, |e| e["event"] == "connection");
    let fresh = poll("a new file at the configured path", DEADLINE, || {
        let v = json_lines(&log);
        v.iter().any(|e| e["event"] == "connection").then_some(v)
    });
    let old = json_lines(&rotated);
    let conns = |v: &[Value]| v.iter().filter(|e| e["event"] == "connection").count();
    assert_eq!((conns(&old), conns(&fresh)), (1, 1), "old file: {old:?}\nnew file: {fresh:?}");
}

#[test]
fn check_accepts_every_sink_kind_and_refuses_an_unusable_collector_bundle() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let policy = mesh.write_file("policy.toml", POLICY);
    let config = mesh.write_config(&SidecarSpec::new("check", &api, &policy).inbound(App::start().addr));
    let base = std::fs::read_to_string(&config).expect("sidecar.toml");
    let bundle = mesh.path("collector-ca.pem");
    std::fs::copy(api.bundle(), &bundle).expect("a PEM bundle to trust");
    let with = |events: &str| {
        std::fs::write(&config, format!("{base}\n{events}")).expect("writing sidecar.toml");
        mesh_proxy(&["check", "--config", &config.display().to_string()])
    };
    let all = format!(
        "[events]\nsink = [\"stdout\", \"file:events.log\", \"syslog+udp://127.0.0.1:5514\", \"syslog+tcp://localhost\", \"https://127.0.0.1:8443/in\"]\nca_bundle = \"{}\"\n",
        bundle.display()
    );
    with(&all).assert_ok();
    let missing = all.replace("collector-ca.pem", "nowhere.pem");
    with(&missing).assert_error_naming(&["https://127.0.0.1:8443/in"]);
    std::fs::write(&bundle, "not a certificate\n").expect("spoiling the bundle");
    with(&all).assert_error_naming(&["collector-ca.pem"]);
}
