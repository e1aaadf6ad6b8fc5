//! The verifiers' memo of verified chains never weakens a check, and a resumed session is
//! verified again: real handshakes between configs from [`server_config`] and
//! [`client_config`], in memory, a CA made in a temp dir.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_config::TrustDomain;
use rustls::CertificateError;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::verify::verify_peer;
use super::*;
use crate::testing::TestPki as Ca;

fn ca() -> Ca {
    Ca::new()
}

fn ca_for(td: &str) -> Ca {
    Ca::for_domain(td)
}

fn identity(ca: &Ca, id: &SpiffeId) -> Identity {
    ca.identity(id)
}

/// Revokes everything once `on` is set; counts its calls.
#[derive(Debug, Default)]
struct Switch {
    on: AtomicBool,
    calls: AtomicUsize,
}

impl RevocationCheck for Switch {
    fn is_revoked(&self, _serial: &str, _id: &SpiffeId) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.on.load(Ordering::Relaxed)
    }
}

/// Moves what `from` wants to send into `to`, and lets `to` process it.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) -> Result<(), rustls::Error> {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write to memory");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read from memory");
    }
    to.process_new_packets().map(|_| ())
}

/// One in-memory handshake; the error of the side that refused, if one did.
fn handshake(server: &ServerTls, client: &ClientTls) -> Result<(), rustls::Error> {
    connect(server, client).map(|_| ())
}

/// One in-memory handshake, and the two finished connections. The server also sends its
/// session tickets, so the client can resume next time.
fn connect(
    server: &ServerTls,
    client: &ClientTls,
) -> Result<(ServerConnection, ClientConnection), rustls::Error> {
    let mut c = Connection::Client(ClientConnection::new(client.config().clone(), sni()).expect("client"));
    let mut s = Connection::Server(ServerConnection::new(server.config().clone()).expect("server"));
    let mut buf = Vec::new();
    for _ in 0..8 {
        pump(&mut c, &mut s, &mut buf)?;
        pump(&mut s, &mut c, &mut buf)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            // Tickets are written after the handshake; deliver them.
            pump(&mut s, &mut c, &mut buf)?;
            match (s, c) {
                (Connection::Server(s), Connection::Client(c)) => return Ok((s, c)),
                _ => unreachable!("built as a server and a client"),
            }
        }
    }
    panic!("handshake did not finish");
}

fn settings(access: Arc<dyn RevocationCheck>, resumption: Resumption) -> ServerSettings {
    ServerSettings { client_auth: ClientAuth::Required, resumption, access, alpn: Alpn::mesh() }
}

fn client_settings(
    expected: &SpiffeId,
    access: Arc<dyn RevocationCheck>,
    resumption: Resumption,
) -> ClientSettings {
    ClientSettings {
        expected: expected.clone(),
        kind: PeerKind::Workload,
        resumption,
        access,
        alpn: Alpn::mesh(),
    }
}

fn nothing() -> Arc<dyn RevocationCheck> {
    Arc::new(NothingRevoked)
}

#[test]
fn a_remembered_chain_is_still_checked_for_revocation_on_every_handshake() {
    let ca = ca();
    let server_id: SpiffeId = "spiffe://example.org/ns/b/sa/server".parse().expect("id");
    let client_id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let (sid, cid) = (identity(&ca, &server_id), identity(&ca, &client_id));
    let switch = Arc::new(Switch::default());
    let check: Arc<dyn RevocationCheck> = switch.clone();
    let server = server_config(&sid, &ca.bundle, &settings(check, Resumption::Off)).expect("server config");
    let client =
        client_config(Some(&cid), &ca.bundle, &client_settings(&server_id, nothing(), Resumption::Off))
            .expect("client");
    for _ in 0..3 {
        handshake(&server, &client).expect("a valid client is accepted, again and again");
    }
    assert_eq!(switch.calls.load(Ordering::Relaxed), 3, "revocation is consulted on every handshake");
    // Same config, same (remembered) chain: revoked now, refused now.
    switch.on.store(true, Ordering::Relaxed);
    let err = handshake(&server, &client).expect_err("a revoked client is refused");
    assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::Revoked));
}

#[test]
fn verify_peer_skips_only_the_chain_and_profile_and_only_inside_the_validity_window() {
    let ca = ca();
    let id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let ident = identity(&ca, &id);
    let (leaf, intermediates) = (&ident.chain[0], &ident.chain[1..]);
    let memo = VerifiedChains::default();
    let chain_checks = AtomicUsize::new(0);
    let ok = || {
        chain_checks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    let now = UnixTime::now();
    for _ in 0..3 {
        assert_eq!(
            verify_peer(&memo, leaf, intermediates, now, &ca.td, &NothingRevoked, ok).map(|p| p.id),
            Ok(id.clone())
        );
    }
    assert_eq!(chain_checks.load(Ordering::Relaxed), 1, "verified once, then remembered");

    // Past the leaf's expiry (its TTL is at most a day) the memo has no answer: the chain
    // check runs again, and its verdict stands.
    let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 2 * 86_400));
    let expired = || Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    let got = verify_peer(&memo, leaf, intermediates, later, &ca.td, &NothingRevoked, expired);
    assert_eq!(got.map(|p| p.id), Err(rustls::Error::InvalidCertificate(CertificateError::Expired)));

    // A chain that fails is never remembered.
    let other = identity(&ca, &id);
    let refuse = || Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    for _ in 0..2 {
        let got =
            verify_peer(&memo, &other.chain[0], &other.chain[1..], now, &ca.td, &NothingRevoked, refuse);
        assert_eq!(
            got.map(|p| p.id),
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
        );
    }

    // Another trust domain's verifier (a different config, so a different memo) refuses the
    // profile even though the chain check passes.
    let foreign: TrustDomain = "other.org".parse().expect("td");
    let got =
        verify_peer(&VerifiedChains::default(), leaf, intermediates, now, &foreign, &NothingRevoked, || {
            Ok(())
        });
    assert!(got.is_err(), "{got:?}");
}

/// rustls resumes a TLS 1.3 session without verifying the stored chain again; `peer` does,
/// at the time given: past the peer's expiry, or once it is revoked, the resumed session is
/// refused on both sides, while a full handshake of the same pair at the same moment would
/// fail in the verifier. Before this check, a resumed session outlived its certificate.
#[test]
fn a_resumed_session_is_verified_again_on_both_sides() {
    let ca = ca();
    let server_id: SpiffeId = "spiffe://example.org/ns/b/sa/server".parse().expect("id");
    let client_id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let (sid, cid) = (identity(&ca, &server_id), identity(&ca, &client_id));
    let switch = Arc::new(Switch::default());
    let check: Arc<dyn RevocationCheck> = switch.clone();
    let server =
        server_config(&sid, &ca.bundle, &settings(check.clone(), Resumption::Allowed)).expect("server");
    let client =
        client_config(Some(&cid), &ca.bundle, &client_settings(&server_id, check, Resumption::Allowed))
            .expect("client");

    let (s, c) = connect(&server, &client).expect("first, full handshake");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(server.peer(&s).expect("peer").map(|p| p.id), Some(client_id.clone()));
    assert_eq!(client.peer(&c).expect("peer").id, server_id);

    let (s, c) = connect(&server, &client).expect("second handshake");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed), "the session resumed");
    assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    // Now: both certificates valid, nothing revoked.
    assert_eq!(server.peer(&s).expect("peer").map(|p| p.id), Some(client_id.clone()));
    assert_eq!(client.peer(&c).expect("peer").id, server_id);
    // Two days on, both leaves (TTL at most a day) have expired.
    let later = UnixTime::since_unix_epoch(Duration::from_secs(UnixTime::now().as_secs() + 2 * 86_400));
    let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
    assert!(
        matches!(server.peer_at(&s, later), Err(ref e) if tls_failure_reason(e) == "expired"),
        "server side"
    );
    assert!(
        matches!(client.peer_at(&c, later), Err(ref e) if tls_failure_reason(e) == "expired"),
        "client side"
    );
    assert_eq!(tls_failure_reason(&expired), "expired");

    // Revoked: the resumed session is refused at once, on both sides.
    let (s, c) = connect(&server, &client).expect("third handshake");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed));
    switch.on.store(true, Ordering::Relaxed);
    let revoked = rustls::Error::InvalidCertificate(CertificateError::Revoked);
    assert_eq!(server.peer(&s).map(|p| p.map(|p| p.id)), Err(revoked.clone()));
    assert_eq!(client.peer(&c).map(|p| p.id), Err(revoked));
}

/// A bundle holding a second trust domain's root does not let that root vouch for ours,
/// nor ours for theirs; an unnamed anchor counts for the local trust domain only.
#[test]
fn anchors_vouch_only_for_their_own_trust_domain() {
    let (ours, theirs) = (ca(), ca_for("other.org"));
    let both = vec![ours.root().clone(), theirs.root().clone()];
    let bundle = TrustBundle::new(ours.td.clone(), both).expect("bundle");
    // A client of example.org signed under other.org's root: refused by our server.
    let server_id: SpiffeId = "spiffe://example.org/ns/b/sa/server".parse().expect("id");
    let sid = identity(&ours, &server_id);
    let server = server_config(&sid, &bundle, &settings(nothing(), Resumption::Off)).expect("server");
    let forged_id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let forged = identity_signed_by(&theirs, &forged_id);
    let client =
        client_config(Some(&forged), &ours.bundle, &client_settings(&server_id, nothing(), Resumption::Off))
            .expect("client");
    let err = handshake(&server, &client).expect_err("another trust domain's root mints no identity of ours");
    assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    // The control: a client issued by our own CA passes.
    let good = identity(&ours, &forged_id);
    let client =
        client_config(Some(&good), &ours.bundle, &client_settings(&server_id, nothing(), Resumption::Off))
            .expect("client");
    handshake(&server, &client).expect("our own CA's client is accepted");
    // Only the foreign domain's anchor serves a foreign identity, and a domain without one
    // has no roots at all.
    let theirs_roots = bundle.roots_for(&theirs.td).expect("other.org's roots");
    assert_eq!(theirs_roots.len(), 1);
    assert!(bundle.roots_for(&"third.net".parse().expect("td")).is_err());
    assert!(TrustBundle::new("third.net".parse().expect("td"), vec![theirs.root().clone()]).is_err());
}

/// A leaf for `id` (of any trust domain) signed by `ca`'s intermediate, as a rogue or
/// federated CA could make one: the test PKI signs without the CA's rules.
fn identity_signed_by(ca: &Ca, id: &SpiffeId) -> Identity {
    ca.identity(id)
}

/// A CA client (PeerKind::CaServer) accepts only a server with the CA's identity *and* the
/// CA server marker, and refuses the CA's certificate once its access check says revoked.
#[test]
fn a_ca_client_refuses_an_unmarked_or_revoked_ca_certificate() {
    let ca = ca();
    let ca_id = crate::profile::ca_server_id(&ca.td);
    let marked = ca.ca_server_identity();
    // The same identity without the marker, as anyone could get it before the zone was
    // reserved (signed by the real intermediate).
    let unmarked = identity_signed_by(&ca, &ca_id);
    let switch = Arc::new(Switch::default());
    let check: Arc<dyn RevocationCheck> = switch.clone();
    let settings = ClientSettings {
        expected: ca_id,
        kind: PeerKind::CaServer,
        resumption: Resumption::Off,
        access: check,
        alpn: Alpn::none(),
    };
    let client = client_config(None, &ca.bundle, &settings).expect("client");
    let server_settings = ServerSettings {
        client_auth: ClientAuth::Optional,
        resumption: Resumption::Off,
        access: nothing(),
        alpn: Alpn::none(),
    };
    let real = server_config(&marked, &ca.bundle, &server_settings).expect("server");
    handshake(&real, &client).expect("the real CA is accepted");
    let impostor = server_config(&unmarked, &ca.bundle, &server_settings).expect("server");
    let err = handshake(&impostor, &client).expect_err("a certificate that only names the CA is refused");
    assert_eq!(tls_failure_reason(&err), "not_the_ca", "{err}");
    switch.on.store(true, Ordering::Relaxed);
    let err = handshake(&real, &client).expect_err("a revoked CA certificate is refused");
    assert_eq!(err, rustls::Error::InvalidCertificate(CertificateError::Revoked));
}

/// A self-signed CA certificate with the given URI SANs (none: an openssl-style root).
fn root_with_uris(uris: &[&str]) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params.subject_alt_names =
        uris.iter().map(|u| rcgen::SanType::URI((*u).try_into().expect("an ASCII URI"))).collect();
    let key = crate::keys::generate().expect("key");
    params.self_signed(&key).expect("self-signed").der().clone()
}

/// Which anchors a bundle binds to which trust domain, and which bundles it refuses.
#[test]
fn bundles_bind_every_root_or_none() {
    let ours: TrustDomain = "example.org".parse().expect("td");
    let partner: TrustDomain = "partner.net".parse().expect("td");
    let named = root_with_uris(&["spiffe://example.org"]);
    // A SPIFFE URI with a path binds the root to its trust domain all the same.
    let with_path = root_with_uris(&["spiffe://partner.net/ca"]);
    let bundle = TrustBundle::new(ours.clone(), vec![named.clone(), with_path.clone()]).expect("bundle");
    assert_eq!(bundle.roots_for(&partner).expect("partner's roots").len(), 1);
    assert_eq!(bundle.roots_for(&ours).expect("our roots").len(), 1);
    // Unnamed roots alone are the local trust domain's (a plain openssl PKI).
    let unnamed = root_with_uris(&[]);
    let plain = TrustBundle::new(ours.clone(), vec![unnamed.clone(), root_with_uris(&[])]).expect("bundle");
    assert_eq!(plain.roots_for(&ours).expect("local roots").len(), 2);
    assert!(plain.roots_for(&partner).is_err(), "an unnamed root never vouches for a foreign domain");
    // Beside a named root, an unnamed one could be anyone's: refused.
    let e = TrustBundle::new(ours.clone(), vec![named.clone(), unnamed]).expect_err("mixed bundle");
    assert!(e.to_string().contains("#2 names no trust domain"), "{e}");
    // One root naming two trust domains: refused.
    let two = root_with_uris(&["spiffe://example.org", "spiffe://partner.net"]);
    let e = TrustBundle::new(ours, vec![two]).expect_err("a root for two domains");
    assert!(e.to_string().contains("several trust domains"), "{e}");
}

/// A bundle or credential change builds new configs, and a new server config knows no
/// session of the old one: a returning client gets a full handshake, verified in it.
#[test]
fn a_new_config_resumes_no_session_of_the_old_one() {
    let ca = ca();
    let server_id: SpiffeId = "spiffe://example.org/ns/b/sa/server".parse().expect("id");
    let client_id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let (sid, cid) = (identity(&ca, &server_id), identity(&ca, &client_id));
    let old = server_config(&sid, &ca.bundle, &settings(nothing(), Resumption::Allowed)).expect("server");
    let client =
        client_config(Some(&cid), &ca.bundle, &client_settings(&server_id, nothing(), Resumption::Allowed))
            .expect("client");
    connect(&old, &client).expect("full");
    let (s, _) = connect(&old, &client).expect("resumed");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Resumed), "the old config resumes");
    let new = server_config(&sid, &ca.bundle, &settings(nothing(), Resumption::Allowed)).expect("server");
    let (s, _) = connect(&new, &client).expect("a full handshake with the new config");
    assert_eq!(s.handshake_kind(), Some(HandshakeKind::Full), "the new config resumed an old session");
}

/// `server`'s and `client`'s configs with the ALPN list replaced by `offer`, as a peer built
/// by another stack (or a future sidecar) would send it.
fn offering(client: &ClientTls, offer: &[&str]) -> ClientTls {
    let mut cfg = (**client.config()).clone();
    cfg.alpn_protocols = offer.iter().map(|p| p.as_bytes().to_vec()).collect();
    ClientTls { config: Arc::new(cfg), verifier: client.verifier.clone() }
}

fn answering(server: &ServerTls, pick: &[&str]) -> ServerTls {
    let mut cfg = (**server.config()).clone();
    cfg.alpn_protocols = pick.iter().map(|p| p.as_bytes().to_vec()).collect();
    ServerTls { config: Arc::new(cfg), verifier: server.verifier.clone() }
}

/// Both sides through `accept` / `connect` over an in-memory pipe: each side's mode, or the
/// reason of the side that refused.
fn modes(
    server: &ServerTls,
    client: &ClientTls,
) -> (Result<Option<Protocol>, FailureReason>, Result<Option<Protocol>, FailureReason>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let reason = |e: HandshakeError| match e {
            HandshakeError::Handshake(e) => FailureReason::of_io(&e),
            HandshakeError::Peer { error, .. } => FailureReason::of(&error),
        };
        let (s, c) = tokio::join!(server.accept(a), client.connect(b));
        (s.map(|c| c.protocol).map_err(reason), c.map(|c| c.protocol).map_err(reason))
    })
}

/// Sidecars name their byte stream `zt-mesh/tcp1`; a client naming no protocol (an older
/// sidecar) is served as that mode, one naming only others is refused inside the handshake
/// with `unknown_alpn`, and a client accepts a server that picks the mesh protocol or none.
#[test]
fn alpn_names_the_mesh_stream_accepts_none_and_refuses_unknown_protocols() {
    let ca = ca();
    let server_id: SpiffeId = "spiffe://example.org/ns/b/sa/server".parse().expect("id");
    let client_id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let (sid, cid) = (identity(&ca, &server_id), identity(&ca, &client_id));
    let server = server_config(&sid, &ca.bundle, &settings(nothing(), Resumption::Off)).expect("server");
    let client =
        client_config(Some(&cid), &ca.bundle, &client_settings(&server_id, nothing(), Resumption::Off))
            .expect("client");
    assert_eq!(Protocol::MeshTcp.name(), "zt-mesh/tcp1");
    assert_eq!(client.config().alpn_protocols, vec![b"zt-mesh/tcp1".to_vec()], "outbound offers it");
    assert_eq!(server.config().alpn_protocols, vec![b"zt-mesh/tcp1".to_vec()]);

    let mesh = Ok(Some(Protocol::MeshTcp));
    assert_eq!(modes(&server, &client), (mesh, mesh), "both agree on zt-mesh/tcp1");
    // No ALPN, as an older sidecar sends it: served as the byte stream.
    assert_eq!(modes(&server, &offering(&client, &[])).0, mesh, "no ALPN: an older sidecar");
    assert_eq!(
        modes(&server, &offering(&client, &["h2", "zt-mesh/tcp1"])),
        (mesh, mesh),
        "the mesh protocol among others is picked"
    );
    let (s, c) = modes(&server, &offering(&client, &["h2", "http/1.1"]));
    assert_eq!(s, Err(FailureReason::UnknownAlpn), "only unknown protocols: refused");
    assert_eq!(c, Err(FailureReason::UnknownAlpn), "the client hears no_application_protocol");
    assert_eq!(FailureReason::UnknownAlpn.as_str(), "unknown_alpn");
    let err = handshake(&server, &offering(&client, &["h2"])).expect_err("refused in the handshake");
    assert_eq!(err, rustls::Error::NoApplicationProtocol);
    assert!(tls_failure_detail(&err).contains("ALPN"), "{}", tls_failure_detail(&err));

    // A server that picks none (a sidecar from before ALPN) is the byte stream too.
    assert_eq!(modes(&answering(&server, &[]), &client).1, mesh, "the client takes it as zt-mesh/tcp1");
    // The CA API names none: nothing offered, whatever a client offers is ignored.
    let ca_settings = ServerSettings { alpn: Alpn::none(), ..settings(nothing(), Resumption::Off) };
    let ca_server = server_config(&sid, &ca.bundle, &ca_settings).expect("server");
    assert!(ca_server.config().alpn_protocols.is_empty());
    assert_eq!(modes(&ca_server, &offering(&client, &["h2"])).0, Ok(None));
}

/// Reason codes are a bounded set of distinct snake_case labels, and every way ALPN can fail
/// (refused by us as a server, refused by the server we called, a server picking a protocol
/// we did not offer) is `unknown_alpn`.
#[test]
fn failure_reasons_are_distinct_labels_and_alpn_failures_are_unknown_alpn() {
    use rustls::{AlertDescription, PeerMisbehaved};
    use FailureReason as R;
    let all = FailureReason::ALL;
    let labels: std::collections::BTreeSet<&str> = all.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), all.len(), "{labels:?}");
    assert!(labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')), "{labels:?}");
    for e in [
        rustls::Error::NoApplicationProtocol,
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol),
        rustls::Error::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedApplicationProtocol),
    ] {
        assert_eq!(FailureReason::of(&e), R::UnknownAlpn, "{e:?}");
    }
    assert_eq!(
        FailureReason::of(&rustls::Error::AlertReceived(AlertDescription::BadCertificate)),
        R::AlertReceived
    );
}
