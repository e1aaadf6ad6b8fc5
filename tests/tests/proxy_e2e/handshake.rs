//! Peers that must fail the inbound handshake, straight at the inbound port: each is refused
//! with the right reason in exactly one `tls.handshake_failed` event, the app sees nothing,
//! and a good client still works afterwards.

use std::time::Duration;

use super::*;

/// (certfactory variant, acceptable reasons, text the reason_detail must contain).
/// A CA-flagged leaf is caught by path validation (webpki: CA used as end entity) before the
/// SVID profile is looked at, so either reason names it correctly.
const BAD_CERTS: [(&str, &[&str], &str); 14] = [
    ("expired", &["expired"], ""),
    ("not_yet_valid", &["not_yet_valid"], ""),
    ("foreign_trust_domain", &["wrong_trust_domain"], ""),
    ("two_uri_sans", &["bad_svid"], "uri-san-count"),
    ("ca_leaf", &["bad_svid", "bad_certificate"], ""),
    ("key_cert_sign", &["bad_svid"], ""),
    ("id_in_cn_only", &["bad_svid"], "uri-san-count"),
    ("id_in_dns_only", &["bad_svid"], "uri-san-count"),
    ("not_mesh_shape", &["bad_svid"], ""),
    ("small_serial", &["bad_svid"], "serial"),
    ("rsa_key", &["bad_svid"], ""),
    ("bad_signature", &["bad_signature"], ""),
    ("other_ca", &["unknown_ca"], ""),
    ("self_signed", &["unknown_ca"], ""),
];

/// Runs `probe` and asserts the sidecar refused its handshake for one of `reasons`, nothing
/// came back, and the app saw no new connection.
#[track_caller]
fn assert_refused(p: &Pair, what: &str, probe: Probe, reasons: &[&str], detail: &str) {
    let before = p.app.connections();
    let mark = p.server.mark();
    let r = probe.run();
    let e = p.server.next_conn_event(mark);
    let reason = field(&e, "reason");
    assert!(
        field(&e, "event") == "tls.handshake_failed" && reasons.contains(&reason),
        "{what}: expected tls.handshake_failed with a reason in {reasons:?}, got {e}\nprobe: {r}\n{}",
        p.server.transcript()
    );
    assert_fields(&p.server, &e, &[("direction", "inbound"), ("dst_id", &p.api.id)]);
    assert!(e.get("src_id").is_none_or(Value::is_null), "{what}: an unverified peer got a src_id: {e}");
    assert!(e.get("decision").is_none_or(Value::is_null), "{what}: a policy decision without identity: {e}");
    assert!(field(&e, "reason_detail").contains(detail), "{what}: reason_detail lacks {detail:?}: {e}");
    // Nothing but, at most, the TLS alert that refuses it (content type 21, a 7-byte record).
    let received = field(&r, "received");
    assert!(
        received.is_empty() || (received.starts_with('\u{15}') && received.len() <= 7),
        "{what}: the peer got bytes back: {r}"
    );
    assert_eq!(p.app.connections(), before, "{what}: the app was reached");
}

#[test]
fn inbound_refuses_every_bad_peer_and_still_serves_good_ones() {
    let p = Pair::with_policy(SAMPLE_POLICY).server_limit("handshake_timeout", "2s").start();
    let inbound = p.server.inbound.expect("inbound port");
    let mut names: Vec<&str> = BAD_CERTS.iter().map(|b| b.0).collect();
    names.push("good");
    let variants = p.mesh.variants("frontend", "web", &names);

    // Control: a certificate from the same factory, signed by the same intermediate, without
    // a defect, is accepted. The refusals below are each about their one defect.
    let mark = p.server.mark();
    let r = Probe::to(inbound).identity(&variants["good"]).send("factory ok").run();
    assert_eq!(field(&r, "received"), "factory ok", "{r}\n{}", p.server.transcript());
    assert_eq!(field(&r, "version"), "TLSv1.3", "{r}");
    assert_fields(
        &p.server,
        &p.server.next_conn_event(mark),
        &[("event", "connection"), ("src_id", &p.web.id)],
    );
    assert_eq!(p.app.connections(), 1);

    for (name, reasons, detail) in BAD_CERTS {
        let probe = Probe::to(inbound).identity(&variants[name]).send("hello");
        assert_refused(&p, name, probe, reasons, detail);
    }
    assert_refused(&p, "no client certificate", Probe::to(inbound).send("hello"), &["no_certificate"], "");
    assert_refused(
        &p,
        "TLS 1.2 client",
        Probe::to(inbound).identity(&p.web).tls12().send("hello"),
        &["incompatible", "protocol"],
        "",
    );
    let http = b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n";
    assert_refused(&p, "plaintext HTTP", Probe::to(inbound).raw(http), &["protocol"], "");
    let garbage: Vec<u8> = (0..512u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert_refused(&p, "garbage bytes", Probe::to(inbound).raw(&garbage), &["protocol"], "");
    // A TLS handshake record header announcing 512 bytes, then EOF.
    let truncated = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    assert_refused(&p, "truncated record", Probe::to(inbound).raw(&truncated), &["eof", "protocol"], "");

    // A peer that connects and says nothing is cut off after handshake_timeout (2s).
    let mark = p.server.mark();
    let mut silent = Client::connect(inbound);
    let closed = silent.read_until_closed(Duration::from_secs(15));
    let e = p.server.next_conn_event(mark);
    assert_fields(&p.server, &e, &[("event", "tls.handshake_failed"), ("reason", "timeout")]);
    assert!(closed.is_ok(), "a silent peer was never disconnected: {closed:?}");

    // After all that, a real client through a real sidecar still works.
    assert_eq!(exchange(p.client.outbound[0], b"still fine"), b"still fine");
    assert_eq!(p.app.connections(), 2);
    let failures = p.server.conn_events().iter().filter(|e| e["event"] == "tls.handshake_failed").count();
    assert_eq!(
        failures,
        BAD_CERTS.len() + 6,
        "exactly one event per refused connection\n{}",
        p.server.transcript()
    );
}

/// The `tls_resumed` of the next connection event after `mark`, checking it names both peers.
#[track_caller]
fn resumed_after(p: &Pair, sc: &Sidecar, mark: usize) -> bool {
    let e = sc.next_conn_event(mark);
    assert_fields(sc, &e, &[("event", "connection"), ("src_id", &p.web.id), ("dst_id", &p.api.id)]);
    e["tls_resumed"].as_bool().unwrap_or_else(|| panic!("no tls_resumed in {e}\n{}", sc.transcript()))
}

/// Calls through `client`'s outbound `n` times; returns, per call, what the client's and the
/// server's events said about resumption.
fn calls(p: &Pair, client: &Sidecar, server: &Sidecar, n: usize) -> Vec<(bool, bool)> {
    (0..n)
        .map(|i| {
            let (mc, ms) = (client.mark(), server.mark());
            let msg = format!("call {i}");
            assert_eq!(exchange(client.outbound[0], msg.as_bytes()), msg.as_bytes());
            (resumed_after(p, client, mc), resumed_after(p, server, ms))
        })
        .collect()
}

/// Resumption is on by default: a returning peer skips the certificate exchange, and the
/// event says so while still naming the identity verified when the session began. With
/// `[tls] resumption = false` on either side, every connection is a full handshake.
#[test]
fn sessions_resume_by_default_and_never_where_resumption_is_off() {
    let p = Pair::with_policy(SAMPLE_POLICY).start();
    let inbound = p.server.inbound.expect("inbound port");
    let full_then_resumed = vec![(false, false), (true, true), (true, true)];
    assert_eq!(calls(&p, &p.client, &p.server, 3), full_then_resumed, "{}", p.server.transcript());

    // Another TLS stack (Python's ssl on OpenSSL) resumes with the inbound too.
    let probe = || Probe::to(inbound).identity(&p.web).verify(&p.api.bundle()).send("again?").again();
    let r = probe().run();
    assert_eq!((&r["resumed"], &r["again"]["resumed"]), (&false.into(), &true.into()), "{r}");
    assert_eq!(field(&r["again"], "received"), "again?", "{r}");

    // Server side off: it issues no tickets and keeps no cache, so nothing resumes.
    let server = p.mesh.sidecar(p.server_spec("server-full").resumption(false));
    let to = server.inbound.expect("inbound port");
    let client = p.mesh.sidecar(p.client_spec_to("client-2", to));
    assert_eq!(calls(&p, &client, &server, 3), vec![(false, false); 3], "{}", server.transcript());
    let r = Probe::to(to).identity(&p.web).verify(&p.api.bundle()).send("again?").again().run();
    assert_eq!((&r["resumed"], &r["again"]["resumed"]), (&false.into(), &false.into()), "{r}");
    assert_eq!(field(&r["again"], "received"), "again?", "{r}");

    // Client side off, towards the resuming server: the client never offers a session.
    let client = p.mesh.sidecar(p.client_spec_to("client-full", inbound).resumption(false));
    assert_eq!(calls(&p, &client, &p.server, 3), vec![(false, false); 3], "{}", client.transcript());
}
