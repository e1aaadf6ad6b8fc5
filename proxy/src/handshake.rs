//! The TLS stage both directions share: a handshake under a timeout, then the verified peer.
//!
//! Inbound calls [`accept`], outbound [`connect_tls`]; each returns the stream with the
//! peer it proved, or a [`Failure`] for the connection's one event. A resumed session is
//! verified again here (rustls does not: see `mesh_ca::tls`), so a peer whose certificate
//! expired, was revoked or no longer chains to the bundle cannot live on by resumption.
//! Generic over the transport, so the stage runs in memory in tests.

use std::time::Duration;

use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_rustls::{client, server};

use crate::tls::{self, ClientTls, Peer, ServerTls};

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

fn failed(e: &std::io::Error) -> Failure {
    Failure { reason: tls::failure_reason(e), detail: tls::failure_detail(e) }
}

fn refused_resumption(e: &rustls::Error) -> Failure {
    Failure {
        reason: tls::tls_failure_reason(e),
        detail: format!("resumed session refused: {}", tls::tls_failure_detail(e)),
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
    let stream = match timeout(limit, config.acceptor().accept(io)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(failed(&e)),
        Ok(Ok(s)) => s,
    };
    let conn = stream.get_ref().1;
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    match config.peer(conn) {
        Ok(Some(peer)) => Ok(Handshaken { stream, peer, resumed }),
        Ok(None) => {
            Err(Failure { reason: "no_certificate", detail: "the peer presented no certificate".into() })
        }
        Err(e) if resumed => Err(refused_resumption(&e)),
        Err(e) => Err(Failure { reason: "bad_svid", detail: tls::tls_failure_detail(&e) }),
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
    let stream = match timeout(limit, config.connector().connect(tls::sni(), io)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(failed(&e)),
        Ok(Ok(s)) => s,
    };
    let conn = stream.get_ref().1;
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    match config.peer(conn) {
        Ok(peer) => Ok(Handshaken { stream, peer, resumed }),
        Err(e) if resumed => Err(refused_resumption(&e)),
        Err(e) => Err(Failure { reason: "bad_svid", detail: tls::tls_failure_detail(&e) }),
    }
}
