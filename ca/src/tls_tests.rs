//! The verifiers' memo of verified chains never weakens a check: real handshakes between
//! configs from [`server_config`] and [`client_config`], a CA made in a temp dir.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_config::Ttl;
use rustls::{ClientConnection, Connection, ServerConnection};

use super::*;
use crate::authority::{Authority, InitOptions};
use crate::settings::Settings;

struct Ca {
    _dir: tempfile::TempDir,
    authority: Authority,
    roots: Arc<RootCertStore>,
    td: TrustDomain,
}

fn ca() -> Ca {
    let dir = tempfile::tempdir().expect("tempdir");
    let td: TrustDomain = "example.org".parse().expect("td");
    let settings =
        Settings::new(td.clone(), Ttl::from_secs(60), Ttl::from_secs(86_400), Ttl::from_secs(3_600))
            .expect("settings");
    let opts = InitOptions {
        settings,
        root_ttl: Ttl::from_secs(86_400 * 3_650),
        intermediate_ttl: Ttl::from_secs(86_400 * 365),
    };
    let made = Authority::init(&dir.path().join("ca"), &opts, None).expect("init");
    let authority = Authority::open(made, None).expect("open");
    let mut roots = RootCertStore::empty();
    roots.add(authority.dir().root.clone()).expect("root anchor");
    Ca { _dir: dir, authority, roots: Arc::new(roots), td }
}

fn identity(ca: &Ca, id: &SpiffeId) -> Identity {
    let key = crate::keys::generate().expect("key");
    let leaf = ca.authority.issue(id, None, &[], &key, "test").expect("issue");
    Identity {
        chain: vec![leaf.der, ca.authority.dir().intermediate.clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
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
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Result<(), rustls::Error> {
    let mut c = Connection::Client(ClientConnection::new(client.clone(), sni()).expect("client"));
    let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
    let mut buf = Vec::new();
    for _ in 0..8 {
        pump(&mut c, &mut s, &mut buf)?;
        pump(&mut s, &mut c, &mut buf)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn a_remembered_chain_is_still_checked_for_revocation_on_every_handshake() {
    let ca = ca();
    let server_id: SpiffeId = "spiffe://example.org/ns/b/sa/server".parse().expect("id");
    let client_id: SpiffeId = "spiffe://example.org/ns/a/sa/client".parse().expect("id");
    let (sid, cid) = (identity(&ca, &server_id), identity(&ca, &client_id));
    let switch = Arc::new(Switch::default());
    let check: Arc<dyn RevocationCheck> = switch.clone();
    let server =
        server_config(&sid, ca.roots.clone(), &ca.td, ClientAuth::Required, Some(check), Resumption::Off)
            .expect("server config");
    let client =
        client_config(Some(&cid), ca.roots.clone(), &server_id, None, Resumption::Off).expect("client");
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
        assert_eq!(verify_peer(&memo, leaf, intermediates, now, &ca.td, None, ok), Ok(id.clone()));
    }
    assert_eq!(chain_checks.load(Ordering::Relaxed), 1, "verified once, then remembered");

    // Past the leaf's expiry (its TTL is at most a day) the memo has no answer: the chain
    // check runs again, and its verdict stands.
    let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 2 * 86_400));
    let expired = || Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    let got = verify_peer(&memo, leaf, intermediates, later, &ca.td, None, expired);
    assert_eq!(got, Err(rustls::Error::InvalidCertificate(CertificateError::Expired)));

    // A chain that fails is never remembered.
    let other = identity(&ca, &id);
    let refuse = || Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    for _ in 0..2 {
        let got = verify_peer(&memo, &other.chain[0], &other.chain[1..], now, &ca.td, None, refuse);
        assert_eq!(got, Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)));
    }

    // Another trust domain's verifier (a different config, so a different memo) refuses the
    // profile even though the chain check passes.
    let foreign: TrustDomain = "other.org".parse().expect("td");
    let got = verify_peer(&VerifiedChains::default(), leaf, intermediates, now, &foreign, None, || Ok(()));
    assert!(got.is_err(), "{got:?}");
}
