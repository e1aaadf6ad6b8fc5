//! Event sinks end to end: one sidecar writing to stdout, a real rsyslog (UDP and TCP,
//! RFC 5424, octet-counted framing, identity and decision in structured data) and a local
//! HTTPS collector at once; syslog over TLS (RFC 5425) to a real rsyslog that must be
//! verified against `ca_bundle`; a dead collector
//! that must cost no connection anything, with what it lost counted and announced; each batch
//! delivered exactly once, with its auth header, to an HTTP/1.0 and to an HTTP/1.1 collector;
//! a file sink that follows logrotate's rename + SIGHUP.

use std::collections::BTreeSet;

use mesh_tests::monitoring::*;
use mesh_tests::proxy::*;
use serde_json::Value;

/// The [`Pair`] these tests use: the server (orders/api) has an admin listener and `events`
/// as its extra config; the client (frontend/web) prints to stdout only.
fn start(mesh: Mesh, events: &str) -> Pair {
    Pair::with_policy(SAMPLE_POLICY).mesh(mesh).server_config(&format!("{ADMIN}{events}")).start()
}

/// One echo through both sidecars; whether it came back whole.
fn call(p: &Pair, seed: u8) -> bool {
    let data = payload(2000, seed);
    exchange(p.client.outbound[0], &data) == data
}

/// The RFC 5424 structured data the sidecar must send for `e` (its own JSON event), escaped
/// per RFC 5424 6.3.3 (`"`, `\` and `]` take a backslash): written here independently of
/// the sidecar's code.
fn expected_sd(e: &Value) -> String {
    let mut sd = String::new();
    for name in ["src_id", "dst_id", "spiffe_id", "decision", "rule", "reason"] {
        if let Some(v) = e[name].as_str().filter(|v| !v.is_empty() && *v != "-") {
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
            sd.push_str(&format!(" {name}=\"{escaped}\""));
        }
    }
    if sd.is_empty() {
        "-".into()
    } else {
        format!("[ztmesh@32473{sd}]")
    }
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
                (r["version"].as_str(), r["app_name"].as_str(), r["facility_text"].as_str()),
                (Some("1"), Some("mesh-proxy"), Some("local3")),
                "{input}: {r}"
            );
            let msg: Value = serde_json::from_str(r["msg"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{input}: MSG is not the event's JSON ({e}): {r}"));
            assert_eq!(r["structured_data"].as_str(), Some(expected_sd(&msg).as_str()), "{input}: {r}");
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

/// `syslog+tls://`: octet-counted RFC 5424 messages inside TLS to a real rsyslog (gtls). The
/// server trusts the relay's CA (`ca_bundle`) and its messages arrive, MSG the event and the
/// structured data (parsed by rsyslog's mmpstrucdata) carrying identity and decision; the
/// client, trusting only the system's bundle, refuses the relay's certificate: nothing of
/// its reaches rsyslog and its losses are counted.
#[test]
fn syslog_over_tls_reaches_a_verified_rsyslog_with_identity_and_decision_in_structured_data() {
    let mesh = Mesh::new();
    let (ca, cert, key) = local_server_cert(&mesh.path("relay-cert"));
    let relay = RsyslogTls::start(&mesh.path("rsyslog-tls"), &ca, &cert, &key);
    let sink = format!("syslog+tls://{}", relay.addr);
    let server_events =
        format!("[events]\nsink = [\"stdout\", \"{sink}\"]\nca_bundle = \"{}\"\n", ca.display());
    let client_events = format!("{ADMIN}[events]\nsink = [\"stdout\", \"{sink}\"]\n");
    let p = Pair::with_policy(SAMPLE_POLICY)
        .mesh(mesh)
        .server_config(&format!("{ADMIN}{server_events}"))
        .client_config(&client_events)
        .start();
    const N: u8 = 4;
    for i in 0..N {
        assert!(call(&p, i), "call {i}");
    }
    p.server.wait_count("the connection events", N.into(), |e| e["event"] == "connection");
    let want = shared_events(&p.server);
    let server_pid = p.server.pid().to_string();
    let records = poll("rsyslog to have every event over TLS", DEADLINE, || {
        let r: Vec<Value> =
            relay.records().into_iter().filter(|x| x["procid"] == server_pid.as_str()).collect();
        (r.len() >= want.len()).then_some(r)
    });
    let mut got = Vec::new();
    for r in &records {
        let msg: Value = serde_json::from_str(r["msg"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("MSG is not the event's JSON ({e}): {r}"));
        assert_eq!((r["version"].as_str(), r["input"].as_str()), (Some("1"), Some("imtcp")), "{r}");
        assert_eq!(r["structured_data"].as_str(), Some(expected_sd(&msg).as_str()), "{r}");
        let sd: Value = serde_json::from_str(r["sd"].as_str().unwrap_or("{}")).unwrap_or_default();
        let params = &sd["ztmesh@32473"];
        for name in ["src_id", "dst_id", "decision", "rule", "reason"] {
            assert_eq!(params[name].as_str(), msg[name].as_str(), "rsyslog read {name} back: {r}");
        }
        if msg["event"] == "connection" {
            assert_eq!(params["decision"], "allow", "{r}");
        }
        got.push(msg);
    }
    assert_eq!(got, want, "rsyslog received over TLS exactly what stdout printed, in order");
    // The client does not trust the relay: nothing of its arrives, and its sink counts the loss.
    let client_admin = admin_addr(&p.client);
    let lost = poll("the client's TLS syslog sink to count losses", DEADLINE, || {
        let d = scrape(client_admin).sum("mesh_events_dropped_total", &[("sink", "syslog_tls")]);
        (d > 0.0).then_some(d)
    });
    let client_pid = p.client.pid().to_string();
    assert!(
        !relay.records().iter().any(|x| x["procid"] == client_pid.as_str()),
        "an unverified relay got events"
    );
    eprintln!(
        "TLS syslog: {} events delivered to the verified relay; the unverifying client lost {lost}",
        got.len()
    );
}

/// A plain HTTP/1.0 collector answers each POST and closes the connection without a TLS
/// close_notify. Before the fix the sink took the unclean end of the answer for a failure:
/// every batch was POSTed four times (the collector stored it four times) and then counted
/// as dropped. Now the status line decides: each batch arrives once, nothing is dropped,
/// over HTTP/1.0 as over HTTP/1.1, and every POST carries the configured header.
#[test]
fn https_batches_are_delivered_exactly_once_to_http_1_0_and_1_1_collectors() {
    for protocol in ["HTTP/1.0", "HTTP/1.1"] {
        let mesh = Mesh::new();
        let collector = Collector::start_speaking(&mesh.path("collector"), protocol);
        const SECRET: &str = "Splunk 7c2f1e0a-hec-token-never-logged";
        let auth = mesh.write_file("hec.header", &format!("Authorization: {SECRET}\n"));
        // A secret: 0600 is quiet; readable by the group, it is warned about like a key.
        let mode = if protocol == "HTTP/1.0" { 0o600 } else { 0o640 };
        std::fs::set_permissions(&auth, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
        let events = format!(
            "[events]\nsink = [\"stdout\", \"{}\"]\nca_bundle = \"{}\"\nauth_header_file = \"{}\"\n",
            collector.url(),
            collector.ca.display(),
            auth.display()
        );
        let mut p = start(mesh, &events);
        let admin = admin_addr(&p.server);
        const N: u8 = 8;
        for i in 0..N {
            assert!(call(&p, i), "{protocol}: call {i}");
            // One batch per call or so: wait for each event to arrive before the next call.
            let n = shared_events(&p.server).len();
            p.server.wait_count("the connection event", usize::from(i) + 1, |e| e["event"] == "connection");
            poll("the collector to have the batch", DEADLINE, || {
                (collector.received().len() >= n).then_some(())
            });
        }
        let dropped = scrape(admin).sum("mesh_events_dropped_total", &[("sink", "https")]);
        // The sidecar stops: its sinks finish what they hold, then it exits; nothing more can come.
        p.server.signal("TERM");
        p.server.wait_exit(DEADLINE);
        let want = shared_events(&p.server);
        let received = collector.received();
        let got: Vec<Value> = received.iter().map(|r| r["event"].clone()).collect();
        let requests: BTreeSet<u64> = received.iter().filter_map(|r| r["request"].as_u64()).collect();
        eprintln!(
            "{protocol}: {} events printed, {} received in {} POSTs, {dropped} counted dropped",
            want.len(),
            got.len(),
            requests.len()
        );
        assert_eq!(dropped, 0.0, "{protocol}: a delivered batch was counted as dropped");
        assert!(!got.iter().any(|e| e["event"] == "events.dropped"), "{protocol}: {got:?}");
        assert_eq!(got, want, "{protocol}: the collector received every event exactly once, in order");
        assert!(
            received.iter().all(|r| r["auth"].as_str() == Some(SECRET)),
            "{protocol}: every POST carries the configured header"
        );
        assert!(!p.server.transcript().contains("7c2f1e0a"), "{protocol}: the token was printed");
        let warned: Vec<Value> = p
            .server
            .events()
            .into_iter()
            .filter(|e| {
                e["event"] == "config.secret_exposed" && field(e, "reason_detail").contains("hec.header")
            })
            .collect();
        assert_eq!(warned.len(), usize::from(mode == 0o640), "{protocol}: mode {mode:o}: {warned:?}");
    }
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
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    let config = mesh.write_config(&SidecarSpec::new("check", &api, &policy).inbound(App::start().addr));
    let base = std::fs::read_to_string(&config).expect("sidecar.toml");
    let bundle = mesh.path("collector-ca.pem");
    std::fs::copy(api.bundle(), &bundle).expect("a PEM bundle to trust");
    let with = |events: &str| {
        std::fs::write(&config, format!("{base}\n{events}")).expect("writing sidecar.toml");
        mesh_proxy(&["check", "--config", &config.display().to_string()])
    };
    let auth = mesh.write_file("hec.header", "Authorization: ApiKey c2VjcmV0LWtleQ==\n");
    std::fs::set_permissions(&auth, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    let all = format!(
        "[events]\nsink = [\"stdout\", \"file:events.log\", \"syslog+udp://127.0.0.1:5514\", \"syslog+tcp://localhost\", \"syslog+tls://localhost\", \"https://127.0.0.1:8443/in\"]\nca_bundle = \"{}\"\nformat = \"ocsf\"\nstdout_format = \"json\"\nauth_header_file = \"{}\"\n",
        bundle.display(),
        auth.display()
    );
    with(&all).assert_ok();
    // An auth header file that holds no header is refused by name, its content unshown.
    std::fs::write(&auth, "c2VjcmV0LWtleQ==\n").expect("spoiling the header file");
    let o = with(&all);
    o.assert_error_naming(&["hec.header"]);
    assert!(!o.to_string().contains("c2VjcmV0"), "the secret was printed:\n{o}");
    std::fs::write(&auth, "Authorization: ApiKey c2VjcmV0LWtleQ==\n").expect("restoring the header file");
    let missing = all.replace("collector-ca.pem", "nowhere.pem");
    // The first sink that needs the bundle names it (TLS syslog here, HTTPS alike).
    with(&missing).assert_error_naming(&["syslog+tls://localhost:6514", "nowhere.pem"]);
    std::fs::write(&bundle, "not a certificate\n").expect("spoiling the bundle");
    with(&all).assert_error_naming(&["collector-ca.pem"]);
}
