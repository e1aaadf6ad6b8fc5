//! SIGTERM: stop accepting, keep serving open connections for up to drain_timeout, exit 0.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::*;

/// True when a new connection to `addr` gets nowhere: refused, or closed without an answer.
fn refused(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { return true };
    s.set_read_timeout(Some(DEADLINE)).expect("setting a read timeout");
    let _ = s.write_all(b"too late");
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got.is_empty()
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let p = Pair::with_policy(SAMPLE_POLICY)
        .server_limit("drain_timeout", "60s")
        .client_limit("drain_timeout", "2s")
        .start();
    let patient = p.mesh.sidecar(p.client_spec("patient"));
    let (app, web, mut server, mut hasty) = (&p.app, &p.web, p.server, p.client);

    // 1. A connection that outlives drain_timeout: served during the drain, then cut, exit 0.
    let mut c1 = Client::connect(hasty.outbound[0]);
    assert_eq!(c1.roundtrip(b"before"), b"before");
    let mark = hasty.mark();
    hasty.signal("TERM");
    hasty.next_named(mark, "proxy.stopping");
    assert_eq!(c1.roundtrip(b"during the drain"), b"during the drain", "{}", hasty.transcript());
    assert!(refused(hasty.outbound[0]), "a new connection was served after SIGTERM\n{}", hasty.transcript());
    hasty.next_named(mark, "proxy.drain_timeout");
    let end = c1.read_until_closed(DEADLINE);
    assert!(end.is_ok(), "the connection was not closed after drain_timeout: {end:?}");
    let status = hasty.wait_exit(DEADLINE);
    assert!(status.success(), "exit after drain_timeout: {status}\n{}", hasty.transcript());

    // 2. A connection that closes during the drain: the server exits as soon as it is gone.
    let mut c2 = Client::connect(patient.outbound[0]);
    assert_eq!(c2.roundtrip(b"before"), b"before");
    let mark = server.mark();
    server.signal("TERM");
    server.next_named(mark, "proxy.stopping");
    assert_eq!(c2.roundtrip(b"draining"), b"draining", "{}", server.transcript());
    let before = app.connections();
    let pmark = patient.mark();
    assert!(
        exchange(patient.outbound[0], b"too late").is_empty(),
        "the draining server took a new connection"
    );
    let e = patient.next_conn_event(pmark);
    assert_fields(&patient, &e, &[("event", "upstream.connect_failed"), ("direction", "outbound")]);
    assert_eq!(app.connections(), before, "the draining server forwarded a new connection");

    let closing = Instant::now();
    let (rest, clean) = c2.finish();
    assert!(rest.is_empty() && clean, "the drained connection ended badly: {rest:?}");
    let status = server.wait_exit(DEADLINE);
    assert!(status.success(), "exit after draining: {status}\n{}", server.transcript());
    assert!(closing.elapsed() < Duration::from_secs(30), "the server waited for drain_timeout (60s) anyway");
    let events = server.events();
    let last =
        events.iter().rev().find(|e| e["event"] == "connection").expect("the drained connection's event");
    assert_fields(&server, last, &[("reason", "closed"), ("src_id", &web.id)]);
    assert_eq!(last["bytes_in"].as_u64(), Some((b"before".len() + b"draining".len()) as u64));
    assert!(events.iter().all(|e| e["event"] != "proxy.drain_timeout"), "{}", server.transcript());
}
