//! One source cannot starve everyone (issue 11, defect 7), with real clients on loopback:
//! `tests/py/starve.py` holds hundreds of connections open from one address (Linux routes all
//! of 127.0.0.0/8 to loopback, so each flood gets source addresses of its own), while a
//! well-behaved caller from 127.0.0.1 goes about its business.
//!
//! - the CA: an idle pre-handshake flood from one address and anonymous 60-second long-polls
//!   from twelve addresses (each within the rate limit) together ask for more than all of the
//!   CA's connection slots; a caller with a client certificate still renews and reads the
//!   revocation list, and the anonymous long-polls were answered at once;
//! - a sidecar: an idle flood on its inbound; its outbound still carries the app's calls, its
//!   inbound still serves a peer from another address, and `/ready` still answers.
//!
//! No sleeps: each flood announces itself once every connection is open, and waits are for
//! events and answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use mesh_tests::ca_server::{admin_status, CaServer, Csr, LineChild};
use mesh_tests::proxy::*;
use mesh_tests::{py_script, Cmd, TestCa};
use serde_json::{json, Value};

/// Starts `starve.py hold ...` in the background (see [`report`]).
fn flood(target: SocketAddr, source: &str, count: usize, mode: &str, extra: &[&str]) -> LineChild {
    let script = py_script("starve.py").display().to_string();
    let (port, count) = (target.port().to_string(), count.to_string());
    let mut args = vec![script.as_str(), "hold", "127.0.0.1", &port, "--count", &count, "--source", source];
    args.extend(["--mode", mode]);
    args.extend_from_slice(extra);
    LineChild::spawn(&format!("flood from {source}"), Path::new("python3"), &args)
}

/// How long a flood may take to open all its connections and print its report. Longer than
/// the harness's usual deadline: twelve Python floods of 90 TLS handshakes each start at
/// once, which on a loaded 2-core machine takes a while; the wait ends as soon as the report
/// is printed.
const REPORT_WITHIN: Duration = Duration::from_secs(120);

/// Waits until every connection of a flood is open; its report (`opened`, `failed`,
/// `answered`, `statuses`).
fn report(flood: &LineChild) -> Value {
    let found = flood.wait_lines_for(REPORT_WITHIN, |l| {
        l.iter().find_map(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v.get("opened").is_some()))
    });
    found.unwrap_or_else(|| {
        panic!("no report from {} within {REPORT_WITHIN:?}\n{}", flood.name, flood.transcript())
    })
}

/// [`flood`], then its [`report`].
fn hold(target: SocketAddr, source: &str, count: usize, mode: &str, extra: &[&str]) -> (LineChild, Value) {
    let child = flood(target, source, count, mode, extra);
    let r = report(&child);
    (child, r)
}

/// `starve.py request ...` from 127.0.0.1: one HTTPS request, with a client certificate.
fn request(ca: &CaServer, cert: &Path, key: &Path, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (c, k, b) = (cert.display().to_string(), key.display().to_string(), ca.bundle.display().to_string());
    let mut cmd = Cmd::new("python3").arg(py_script("starve.py")).args(["request", &ca.url, "--bundle", &b]);
    cmd = cmd.args(["--cert", &c, "--key", &k, "--timeout", "20"]);
    if let Some(body) = body {
        cmd = cmd.args(["--json", &body.to_string()]);
    }
    let o = cmd.args([method, path]).run();
    assert!(o.success(), "starve.py request failed:\n{o}");
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("starve.py printed no JSON ({e}):\n{o}"))
}

#[test]
fn one_source_cannot_starve_the_ca_of_connections() {
    let ca = TestCa::init_unencrypted();
    let server = CaServer::start(&ca, &[]);
    let (dir, _) = ca.issue_ok("orders", "api", "id-api", &[]);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let bundle = server.bundle.display().to_string();

    // Anonymous long-polls first, all at once: 12 addresses x 90 (more than the CA's 1,024
    // slots), each address within its burst of 100. "Answered at once" means well before the
    // 60 s a held long-poll would wait: within 20 s, not the script's default 2 s, which a
    // CA busy with 1,080 handshakes on a loaded machine can miss while still answering at once.
    let path = "/v1/revocations?since=0&wait=60";
    let extra = ["--bundle", bundle.as_str(), "--path", path, "--answer-within", "20"];
    let floods: Vec<LineChild> =
        (0..12).map(|i| flood(server.addr, &format!("127.0.1.{}", i + 1), 90, "longpoll", &extra)).collect();
    let polls: Vec<(LineChild, Value)> = floods
        .into_iter()
        .map(|f| {
            let r = report(&f);
            (f, r)
        })
        .collect();
    // Then 60 idle connections from one more address (what the listen backlog of 128 still
    // holds besides).
    let (idle, idle_report) = hold(server.addr, "127.0.0.3", 60, "idle", &[]);
    assert_eq!(idle_report["opened"], 60, "{idle_report}");

    // A sidecar-like caller with a certificate renews and reads the revocation list.
    let csr = Csr::p256(ca.tmp.path(), "renewal");
    let renewed = request(&server, &cert, &key, "POST", "/v1/renew", Some(&json!({"csr": csr.pem})));
    assert_eq!(renewed["status"], 200, "renewal during the flood: {renewed}\n{}", server.transcript());
    let list = request(&server, &cert, &key, "GET", "/v1/revocations?since=0", None);
    assert_eq!(list["status"], 200, "revocation poll during the flood: {list}");

    // No anonymous long-poll was held: each was answered at once, or its connection closed
    // (past the source's budget, or the anonymous half of the slots).
    let (mut answered, mut opened) = (0, 0);
    for (_, r) in &polls {
        let (a, o) = (r["answered"].as_u64().unwrap_or(0), r["opened"].as_u64().unwrap_or(0));
        assert!(a >= 1 && r["silent"] == 0, "anonymous long-polls held instead of answered: {r}");
        assert!(r["statuses"] == json!([200]), "{r}");
        (answered, opened) = (answered + a, opened + o);
    }
    println!(
        "CA under a flood of 60 idle connections from one address and 1,080 anonymous long-polls \
         from 12: renewal and revocation poll answered 200; {answered} of {opened} long-poll \
         connections answered at once, none held, the others closed"
    );
    drop((idle, polls));
}

/// A sidecar.toml from `spec` with `[limits]` and `[admin]` appended.
fn config(mesh: &Mesh, spec: &SidecarSpec<'_>, limits: &str) -> std::path::PathBuf {
    let path = mesh.write_config(spec);
    let mut text = std::fs::read_to_string(&path).expect("reading sidecar.toml");
    text.push_str(&format!("\n[limits]\n{limits}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    std::fs::write(&path, text).expect("writing sidecar.toml");
    path
}

/// The app's call through an outbound: send, half-close, read the echo back.
fn call(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    s.write_all(data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(std::net::Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
    Ok(back)
}

#[test]
fn an_inbound_flood_starves_neither_the_outbound_nor_the_admin_nor_other_peers() {
    let mesh = Mesh::new();
    let policy = mesh.write_file(
        "policy.toml",
        "trust_domain = \"example.org\"\nzones = [\"frontend\", \"orders\"]\n\n[[allow]]\nfrom = \"frontend\"\nto = \"orders\"\n\n[[allow]]\nfrom = \"orders\"\nto = \"frontend\"\n",
    );
    let (api, web, peer) =
        (mesh.identity("orders", "api"), mesh.identity("frontend", "web"), mesh.identity("orders", "peer"));
    let (app_api, app_web) = (App::start(), App::start());
    let upstream = mesh.sidecar(SidecarSpec::new("api", &api, &policy).inbound(app_api.addr));
    let upstream_in = upstream.inbound.expect("inbound");

    // The sidecar under attack: an inbound and an outbound, a small connection budget and a
    // long handshake timeout, so nothing but the budgets can save the outbound.
    let spec = SidecarSpec::new("web", &web, &policy).inbound(app_web.addr).outbound(upstream_in, &api.id);
    let path = config(&mesh, &spec, "max_connections = 40\nhandshake_timeout = \"30s\"");
    let sc = Sidecar::start("web", &path);
    let (inbound, outbound) = (sc.inbound.expect("inbound"), sc.outbound[0]);
    let admin = admin_addr_of(&sc);

    // 150 idle connections: more than the budget of 40, within what the listen backlog (128)
    // holds besides, so every one of them connects.
    let (flood, report) = hold(inbound, "127.0.0.3", 150, "idle", &[]);
    assert_eq!(report["opened"], 150, "{report}");

    // The app's own calls go out.
    for i in 0..5u8 {
        let data = payload(10_000, i);
        match call(outbound, &data) {
            Ok(back) => assert!(back == data, "call {i}: the echo differs"),
            Err(e) => {
                panic!("call {i} through the outbound during an inbound flood: {e}\n{}", sc.transcript())
            }
        }
    }
    // /ready answers.
    assert_eq!(admin_status(admin, "/ready"), Some(200), "{}", sc.transcript());
    // A peer from another address is served on the flooded inbound.
    let v = Probe::to(inbound).identity(&peer).send("hello").run();
    assert_eq!(v["received"], "hello", "a peer during the flood: {v}\n{}", sc.transcript());
    // The flood was shed, and said so once in a while rather than once per connection.
    let shed = sc.wait_for("listener.shed", |e| e["event"] == "listener.shed");
    assert_eq!(field(&shed, "reason"), "too_many_pending", "{shed}");
    let sheds = sc.events().into_iter().filter(|e| e["event"] == "listener.shed").count();
    assert!(sheds < 50, "{sheds} listener.shed events for 150 connections");
    assert_eq!(app_web.connections(), 1, "only the peer reached the app");
    println!("sidecar under a 150-connection inbound flood from one address: 5 of 5 outbound calls, /ready 200, a peer served; {sheds} listener.shed event(s)");
    drop(flood);
}

fn admin_addr_of(sc: &Sidecar) -> SocketAddr {
    mesh_tests::ca_server::admin_addr(sc)
}
