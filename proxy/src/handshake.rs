//! The TLS stage both directions share: a handshake under a timeout, then the verified peer.
//!
//! Inbound calls [`accept`], outbound [`connect_tls`]; each returns the stream with the
//! peer it proved, or a [`Failure`] for the connection's one event. A resumed session is
//! verified again here (rustls does not: see `mesh_identity::tls`), so a peer whose certificate
//! expired, was revoked or no longer chains to the bundle cannot live on by resumption.
//! Generic over the transport, so the stage runs in memory in tests.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_rustls::{client, server};

use crate::tls::{self, ClientTls, Connected, HandshakeError, Peer, ServerTls};

/// Why the TLS stage refused a connection: a bounded reason and its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub detail: String,
}

/// A connection whose peer proved its identity.
pub struct Handshaken<S> {
    pub stream: S,
    pub peer: Peer,
    /// Whether the handshake resumed an earlier session (and was verified again).
    pub resumed: bool,
}

fn failure(e: HandshakeError) -> Failure {
    match e {
        HandshakeError::Handshake(e) => {
            Failure { reason: tls::failure_reason(&e), detail: tls::failure_detail(&e) }
        }
        HandshakeError::Peer { resumed: true, error } => Failure {
            reason: tls::tls_failure_reason(&error),
            detail: format!("resumed session refused: {}", tls::tls_failure_detail(&error)),
        },
        HandshakeError::Peer { resumed: false, error } => {
            Failure { reason: "bad_svid", detail: tls::tls_failure_detail(&error) }
        }
    }
}

/// What either side's handshake, run under `limit`, came to.
async fn conclude<S>(
    limit: Duration,
    handshake: impl std::future::Future<Output = Result<Connected<S>, HandshakeError>>,
) -> Result<Handshaken<S>, Failure> {
    match timeout(limit, handshake).await {
        Err(_) => Err(Failure { reason: "timeout", detail: "handshake timed out".into() }),
        Ok(Err(e)) => Err(failure(e)),
        Ok(Ok(Connected { stream, peer: Some(peer), resumed })) => Ok(Handshaken { stream, peer, resumed }),
        Ok(Ok(Connected { peer: None, .. })) => {
            Err(Failure { reason: "no_certificate", detail: "the peer presented no certificate".into() })
        }
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
        client_config, server_config, ClientAuth, ClientSettings, NothingRevoked, PeerKind, Resumption,
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
        };
        let server = server_config(&pki.identity(&server_id), &pki.bundle, &settings).expect("server");
        let client_settings = |expected: &SpiffeId| ClientSettings {
            expected: expected.clone(),
            kind: PeerKind::Workload,
            resumption: Resumption::Allowed,
            access: nothing.clone(),
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
        assert_eq!(f.reason, "wrong_identity", "{f:?}");
    }
}
