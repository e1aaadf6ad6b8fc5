//! The connect stage both directions share: resolve the next hop, refuse one that is this
//! sidecar's own listener (an app or config pointing the sidecar at itself would otherwise
//! chain connections until the cap), then connect within the timeout.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::state::Shared;

/// Why the next hop could not be reached, by type ([`ConnectReason::as_str`] is the bounded
/// reason of the `upstream.connect_failed` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReason {
    /// The name did not resolve.
    Resolve,
    /// It resolves to one of this sidecar's own listeners.
    Loop,
    /// Refused, unreachable, or another connect error.
    Connect,
    /// No connection within the connect timeout.
    Timeout,
}

impl ConnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectReason::Resolve => "resolve_error",
            ConnectReason::Loop => "loop",
            ConnectReason::Connect => "connect_error",
            ConnectReason::Timeout => "timeout",
        }
    }
}

/// A failed connect: its reason and the full detail (target and OS error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    pub reason: ConnectReason,
    pub detail: String,
}

impl ConnectError {
    fn new(reason: ConnectReason, detail: String) -> Self {
        Self { reason, detail }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

pub async fn connect(shared: &Shared, target: &str, limit: Duration) -> Result<TcpStream, ConnectError> {
    let work = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|e| ConnectError::new(ConnectReason::Resolve, format!("{target}: {e}")))?
            .collect();
        if addrs.iter().any(|a| shared.is_own(*a)) {
            return Err(ConnectError::new(
                ConnectReason::Loop,
                format!("{target} is this sidecar's own listener"),
            ));
        }
        let stream = TcpStream::connect(&addrs[..])
            .await
            .map_err(|e| ConnectError::new(ConnectReason::Connect, format!("{target}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    };
    timeout(limit, work).await.unwrap_or_else(|_| {
        Err(ConnectError::new(ConnectReason::Timeout, format!("connecting to {target} timed out")))
    })
}
