//! ALPN between sidecars, end to end: a real `mesh-proxy run` and real Python `ssl` peers.
//!
//! Inbound: a client offering `zt-mesh/tcp1` gets it and is forwarded; a client offering no
//! ALPN (a sidecar from before ALPN) is forwarded too; a client offering only `h2` is
//! refused inside the handshake, with `unknown_alpn` in the `tls.handshake_failed` event and
//! in `mesh_tls_handshakes_total`, and the app sees nothing. Outbound: the sidecar offers
//! `zt-mesh/tcp1` (a Python server that speaks it selects it) and still connects to a server
//! that selects none.

use std::net::SocketAddr;
use std::path::Path;

use mesh_tests::ca_server::LineChild;
use mesh_tests::monitoring::{admin_addr, http, poll, sidecar_with, ADMIN};
use mesh_tests::proxy::*;
use serde_json::Value;

/// One TLS client connection with Python `ssl`: presents `cert`/`key`, verifies the server
/// against `bundle` (no host name: identity is the SPIFFE ID), offers `alpn` (none when
/// empty), sends `hello` and reads it back. Prints `{"alpn", "received"}` or `{"error"}`.
const CLIENT: &str = r#"
import json, socket, ssl, sys
port, cert, key, bundle = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
offer = [p for p in sys.argv[5].split(",") if p]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_verify_locations(bundle)
ctx.load_cert_chain(cert, key)
if offer:
    ctx.set_alpn_protocols(offer)
out = {}
try:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="mesh.invalid") as s:
            out["alpn"] = s.selected_alpn_protocol()
            s.sendall(b"hello")
            got = b""
            while len(got) < 5:
                chunk = s.recv(5 - len(got))
                if not chunk:
                    break
                got += chunk
            out["received"] = got.decode("latin-1")
except (OSError, ssl.SSLError) as e:
    out["error"] = str(e)
print(json.dumps(out))
"#;

/// A Python `ssl` TLS 1.3 server for one outbound: requires a client certificate of
/// `bundle`, selects from `alpn` (none configured when empty), reports each connection's
/// selected protocol (`{"alpn"}`) and echoes what it reads. Prints `{"port"}` first.
const SERVER: &str = r#"
import json, socket, ssl, sys, threading
cert, key, bundle = sys.argv[1], sys.argv[2], sys.argv[3]
accept = [p for p in sys.argv[4].split(",") if p]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(bundle)
ctx.load_cert_chain(cert, key)
if accept:
    ctx.set_alpn_protocols(accept)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(8)
print(json.dumps({"port": ls.getsockname()[1]}), flush=True)
def serve(raw):
    try:
        with ctx.wrap_socket(raw, server_side=True) as s:
            print(json.dumps({"alpn": s.selected_alpn_protocol()}), flush=True)
            while True:
                data = s.recv(4096)
                if not data:
                    break
                s.sendall(data)
    except (OSError, ssl.SSLError) as e:
        print(json.dumps({"error": str(e)}), flush=True)
while True:
    raw, _ = ls.accept()
    threading.Thread(target=serve, args=(raw,), daemon=True).start()
"#;

fn client(port: u16, ident: &Identity, bundle: &Path, offer: &[&str]) -> Value {
    let port = port.to_string();
    let (cert, key) = (ident.cert().display().to_string(), ident.key().display().to_string());
    let bundle = bundle.display().to_string();
    let offer = offer.join(",");
    let o = mesh_tests::Cmd::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args([&port, &cert, &key, &bundle, &offer])
        .run();
    assert!(o.success(), "the Python client failed:\n{o}");
    serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("no JSON from the client ({e}):\n{o}"))
}

/// A server sidecar for `orders/api` in front of an echo app, with an admin port.
struct Server {
    mesh: Mesh,
    api: Identity,
    web: Identity,
    app: App,
    sidecar: Sidecar,
}

impl Server {
    fn start() -> Self {
        let mesh = Mesh::new();
        let api = mesh.identity("orders", "api");
        let web = mesh.identity("frontend", "web");
        let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
        let app = App::start();
        let sidecar = sidecar_with(&mesh, SidecarSpec::new("server", &api, &policy).inbound(app.addr), ADMIN);
        Self { mesh, api, web, app, sidecar }
    }

    fn inbound(&self) -> u16 {
        self.sidecar.inbound.expect("the sidecar announces its inbound port").port()
    }

    /// Connects offering `offer` and expects the echo back, `want` negotiated, and one
    /// `connection` event (not a refusal) for it.
    #[track_caller]
    fn accepted(&self, offer: &[&str], want: Option<&str>) {
        let mark = self.sidecar.mark();
        let r = client(self.inbound(), &self.web, &self.api.bundle(), offer);
        assert_eq!(r["received"], "hello", "offering {offer:?}: {r}\n{}", self.sidecar.transcript());
        assert_eq!(r["alpn"].as_str(), want, "offering {offer:?}: {r}");
        let e = self.sidecar.next_conn_event(mark);
        assert_eq!(
            field(&e, "event"),
            "connection",
            "offering {offer:?}: {e}\n{}",
            self.sidecar.transcript()
        );
        assert_eq!(field(&e, "src_id"), self.web.id, "{e}");
    }
}

#[test]
fn inbound_takes_the_mesh_protocol_or_none_and_refuses_unknown_alpn() {
    let s = Server::start();
    s.accepted(&["zt-mesh/tcp1"], Some("zt-mesh/tcp1"));
    s.accepted(&[], None);
    s.accepted(&["h2", "zt-mesh/tcp1"], Some("zt-mesh/tcp1"));
    let seen = s.app.connections();
    assert_eq!(seen, 3, "each accepted client reached the app");

    let mark = s.sidecar.mark();
    let r = client(s.inbound(), &s.web, &s.api.bundle(), &["h2"]);
    let error = r["error"].as_str().unwrap_or_else(|| panic!("an h2-only client is refused: {r}"));
    assert!(error.to_lowercase().contains("application protocol"), "the alert names ALPN: {error}");
    let e = s.sidecar.next_conn_event(mark);
    assert_eq!(field(&e, "event"), "tls.handshake_failed", "{e}\n{}", s.sidecar.transcript());
    assert_eq!(field(&e, "reason"), "unknown_alpn", "{e}");
    assert!(field(&e, "reason_detail").contains("ALPN"), "{e}");
    assert!(e.get("src_id").is_none_or(Value::is_null), "refused before any identity: {e}");
    assert_eq!(s.app.connections(), seen, "nothing reached the app");

    // The metric, read as text (the exposition format, one sample per line).
    let admin = admin_addr(&s.sidecar);
    let refused = ["direction=\"inbound\"", "result=\"failed\"", "reason=\"unknown_alpn\""];
    poll("the unknown_alpn handshake metric", DEADLINE, || {
        let body = http(admin, "GET", "/metrics").body;
        body.lines()
            .find(|l| l.starts_with("mesh_tls_handshakes_total{") && refused.iter().all(|r| l.contains(r)))
            .filter(|l| l.ends_with(" 1"))
            .map(|_| ())
    });
    drop(s.mesh);
}

/// The Python server of [`SERVER`], selecting from `accept`.
fn tls_server(ident: &Identity, accept: &[&str]) -> (LineChild, SocketAddr) {
    let (cert, key) = (ident.cert().display().to_string(), ident.key().display().to_string());
    let bundle = ident.bundle().display().to_string();
    let accept = accept.join(",");
    let child =
        LineChild::spawn("alpn-server", Path::new("python3"), &["-c", SERVER, &cert, &key, &bundle, &accept]);
    let port = child.wait_lines("the server's port", |lines| {
        lines.iter().find_map(|l| serde_json::from_str::<Value>(l).ok()?["port"].as_u64())
    });
    (child, SocketAddr::from(([127, 0, 0, 1], port as u16)))
}

#[test]
fn outbound_offers_the_mesh_protocol_and_accepts_a_server_that_picks_none() {
    let mesh = Mesh::new();
    let api = mesh.identity("orders", "api");
    let web = mesh.identity("frontend", "web");
    let policy = mesh.write_file("policy.toml", SAMPLE_POLICY);
    for (accept, want) in [(&["zt-mesh/tcp1"][..], Value::from("zt-mesh/tcp1")), (&[][..], Value::Null)] {
        let (server, addr) = tls_server(&api, accept);
        let sidecar = mesh.sidecar(SidecarSpec::new("client", &web, &policy).outbound(addr, &api.id));
        let out = sidecar.outbound[0];
        let echoed = exchange(out, b"through the outbound");
        assert_eq!(echoed, b"through the outbound", "server accepting {accept:?}\n{}", sidecar.transcript());
        let seen = server.wait_lines("the server's report", |lines| {
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v.get("alpn").is_some())
        });
        assert_eq!(seen["alpn"], want, "server accepting {accept:?}: {seen}");
    }
}
