//! The TLS stage both directions share: a handshake under a timeout, then the verified peer.
//!
//! Inbound calls [`accept`], outbound [`connect_tls`]; each returns the stream with the
//! peer it proved, or a [`Failure`] for the connection's one event. A resumed session is
//! verified again here (rustls does not: see `mesh_ca::tls`), so a peer whose certificate
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

fn timed_out() -> Failure {
    Failure { reason: "timeout", detail: "handshake timed out".into() }
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
    match timeout(limit, config.accept(io)).await {
        Err(_) => Err(timed_out()),
        Ok(Err(e)) => Err(failure(e)),
        Ok(Ok(Connected { stream, peer: Some(peer), resumed })) => Ok(Handshaken { stream, peer, resumed }),
        Ok(Ok(Connected { peer: None, .. })) => {
            Err(Failure { reason: "no_certificate", detail: "the peer presented no certificate".into() })
        }
    }
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
    match timeout(limit, config.connect(io)).await {
        Err(_) => Err(timed_out()),
        Ok(Err(e)) => Err(failure(e)),
        Ok(Ok(Connected { stream, peer: Some(peer), resumed })) => Ok(Handshaken { stream, peer, resumed }),
        Ok(Ok(Connected { peer: None, .. })) => {
            Err(Failure { reason: "no_certificate", detail: "the server presented no certificate".into() })
        }
    }
}
