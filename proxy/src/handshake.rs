//! The TLS stage both directions share: a handshake under a timeout, then the verified peer
//! and the negotiated mode.
//!
//! Inbound calls [`accept`], outbound [`connect_tls`]; each returns the stream with the
//! peer it proved, or a [`Failure`] for the connection's one event. A resumed session is
//! verified again here (rustls does not: see `mesh_identity::tls`), so a peer whose certificate
//! expired, was revoked or no longer chains to the bundle cannot live on by resumption.
//! The connection's mode comes from ALPN: `zt-mesh/tcp1`, or no ALPN at all (an older
//! sidecar), is the byte stream; a peer offering only other protocols is refused inside the
//! handshake (`unknown_alpn`). Generic over the transport, so the stage runs in memory in tests.
//!
//! Before either, the fail-closed preamble: a sidecar that is [`NotReady`] takes no new
//! connection at all (the caller asks `Shared::not_ready`).

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_rustls::{client, server};

use crate::tls::{ClientTls, Connected, FailureReason, HandshakeError, Peer, Protocol, ServerTls};

/// Why this sidecar must not serve new connections now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Its own certificate has expired (or none is valid yet).
    OwnCertificateExpired,
    /// Following a CA: the revocation list has not been loaded once yet.
    RevocationsLoading,
    /// Following a CA: the revocation list cannot be loaded, for `problem`.
    RevocationsUnavailable { problem: String },
    /// Following a CA: this sidecar's own certificate (or identity) is revoked.
    OwnCertificateRevoked,
}

impl NotReady {
    /// The bounded reason code.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotReady::OwnCertificateExpired => "own_certificate_expired",
            NotReady::RevocationsLoading => "revocations_loading",
            NotReady::RevocationsUnavailable { .. } => "revocations_unavailable",
            NotReady::OwnCertificateRevoked => "own_certificate_revoked",
        }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::OwnCertificateExpired => f.write_str("this sidecar has no valid certificate"),
            NotReady::RevocationsLoading => f.write_str("the CA's revocation list is not loaded yet"),
            NotReady::RevocationsUnavailable { problem } => {
                write!(f, "the CA's revocation list cannot be loaded: {problem}")
            }
            NotReady::OwnCertificateRevoked => f.write_str("this sidecar's certificate is revoked"),
        }
    }
}

/// Why the TLS stage refused a connection (or never began it). [`Failure::as_str`] is the
/// bounded reason of the event and the handshake metric, [`Failure::detail`] the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The fail-closed preamble: no handshake while not ready.
    NotReady(NotReady),
    /// No TLS config for this listener (a config that has no inbound, or no such outbound).
    NoConfig(&'static str),
    /// The handshake, or the check of a resumed session after it, failed.
    Tls { reason: FailureReason, detail: String },
}

impl Failure {
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::NotReady(n) => n.as_str(),
            Failure::NoConfig(_) => "no_config",
            Failure::Tls { reason, .. } => reason.as_str(),
        }
    }

    /// The full explanation, for the event's `reason_detail`.
    pub fn detail(&self) -> String {
        match self {
            Failure::NotReady(n) => n.to_string(),
            Failure::NoConfig(what) => format!("{what} has no TLS config"),
            Failure::Tls { detail, .. } => detail.clone(),
        }
    }

    fn tls(reason: FailureReason, detail: impl Into<String>) -> Self {
        Failure::Tls { reason, detail: detail.into() }
    }
}

impl From<NotReady> for Failure {
    fn from(n: NotReady) -> Self {
        Failure::NotReady(n)
    }
}

/// A connection whose peer proved its identity.
pub struct Handshaken<S> {
    pub stream: S,
    pub peer: Peer,
    /// Whether the handshake resumed an earlier session (and was verified again).
    pub resumed: bool,
    /// What the connection carries (from ALPN; no ALPN is the byte stream).
    pub mode: Protocol,
}

fn failure(e: HandshakeError) -> Failure {
    match e {
        HandshakeError::Handshake(e) => {
            Failure::tls(FailureReason::of_io(&e), mesh_identity::tls::failure_detail(&e))
        }
        HandshakeError::Peer { resumed: true, error } => Failure::tls(
            FailureReason::of(&error),
            format!("resumed session refused: {}", mesh_identity::tls::tls_failure_detail(&error)),
        ),
        HandshakeError::Peer { resumed: false, error } => {
            Failure::tls(FailureReason::BadSvid, mesh_identity::tls::tls_failure_detail(&error))
        }
    }
}

/// What either side's handshake, run under `limit`, came to.
async fn conclude<S>(
    limit: Duration,
    handshake: impl std::future::Future<Output = Result<Connected<S>, HandshakeError>>,
) -> Result<Handshaken<S>, Failure> {
    match timeout(limit, handshake).await {
        Err(_) => Err(Failure::tls(FailureReason::Timeout, "handshake timed out")),
        Ok(Err(e)) => Err(failure(e)),
        Ok(Ok(Connected { peer: None, .. })) => {
            Err(Failure::tls(FailureReason::NoCertificate, "the peer presented no certificate"))
        }
        Ok(Ok(Connected { stream, peer: Some(peer), resumed, protocol })) => match protocol {
            Some(mode) => Ok(Handshaken { stream, peer, resumed, mode }),
            // A config without ALPN: not one the sidecar builds, and no mode to serve.
            None => Err(Failure::tls(FailureReason::UnknownAlpn, "no application protocol negotiated")),
        },
    }
}

/// Inbound: the server side of the handshake, a client certificate required.
pub async fn accept<IO>(
    config: &ServerTls,
    io: IO,
    limit: Duration,
) -> Result<Handshaken<server::TlsStream<IO>>, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    conclude(limit, config.accept(io)).await
}

/// Outbound: the client side of the handshake; the server must be the expected identity.
pub async fn connect_tls<IO>(
    config: &ClientTls,
    io: IO,
    limit: Duration,
) -> Result<Handshaken<client::TlsStream<IO>>, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    conclude(limit, config.connect(io)).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mesh_config::SpiffeId;
    use mesh_identity::testing::TestPki;

    use super::*;
    use crate::tls::{
        client_config, server_config, Alpn, ClientAuth, ClientSettings, NothingRevoked, PeerKind, Resumption,
        ServerSettings,
    };

    /// Both ends of the stage over an in-memory pipe; when both succeed, one byte goes from
    /// the server to the client, which reads past the session tickets sent after the
    /// handshake (so a next connection can resume).
    async fn pair(
        server: &ServerTls,
        client: &ClientTls,
    ) -> (Result<Peer, Failure>, Result<(Peer, bool), Failure>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let limit = Duration::from_secs(10);
        let (mut s, mut c) = tokio::join!(accept(server, a, limit), connect_tls(client, b, limit));
        if let (Ok(s), Ok(c)) = (&mut s, &mut c) {
            s.stream.write_all(b"x").await.expect("server writes");
            s.stream.flush().await.expect("server flushes");
            let mut byte = [0u8; 1];
            c.stream.read_exact(&mut byte).await.expect("client reads");
        }
        (s.map(|h| h.peer), c.map(|h| (h.peer, h.resumed)))
    }

    /// The stage in memory: each side proves its identity to the other, a returning client
    /// resumes (and is verified again), and a client expecting another identity is refused
    /// with a bounded reason.
    #[tokio::test]
    async fn the_stage_hands_out_verified_peers_and_bounded_failures() {
        let pki = TestPki::new();
        let server_id: SpiffeId = "spiffe://example.org/ns/orders/sa/api".parse().expect("id");
        let client_id: SpiffeId = "spiffe://example.org/ns/frontend/sa/web".parse().expect("id");
        let nothing: Arc<dyn crate::tls::RevocationCheck> = Arc::new(NothingRevoked);
        let settings = ServerSettings {
            client_auth: ClientAuth::Required,
            resumption: Resumption::Allowed,
            access: nothing.clone(),
            alpn: Alpn::mesh(),
        };
        let server = server_config(&pki.identity(&server_id), &pki.bundle, &settings).expect("server");
        let client_settings = |expected: &SpiffeId| ClientSettings {
            expected: expected.clone(),
            kind: PeerKind::Workload,
            resumption: Resumption::Allowed,
            access: nothing.clone(),
            alpn: Alpn::mesh(),
        };
        let client_identity = pki.identity(&client_id);
        let client =
            client_config(Some(&client_identity), &pki.bundle, &client_settings(&server_id)).expect("client");

        let (s, c) = pair(&server, &client).await;
        assert_eq!(s.expect("server side").id, client_id);
        let (peer, resumed) = c.expect("client side");
        assert_eq!((peer.id, resumed), (server_id.clone(), false));
        let (s, c) = pair(&server, &client).await;
        assert_eq!(s.expect("server side, resumed").id, client_id);
        assert!(c.expect("client side, resumed").1, "the second connection resumed");

        let other: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("id");
        let wrong =
            client_config(Some(&client_identity), &pki.bundle, &client_settings(&other)).expect("client");
        let (_, c) = pair(&server, &wrong).await;
        let f = c.expect_err("a client expecting another identity is refused");
        assert_eq!(f.as_str(), "wrong_identity", "{f:?}");
    }
}
