//! The connect stage both directions share: resolve the next hop, refuse one that is this
//! sidecar's own listener (an app or config pointing the sidecar at itself would otherwise
//! chain connections until the cap), then connect within the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::state::Shared;

/// Why the next hop could not be reached: a short reason and the full detail.
pub type ConnectError = (&'static str, String);

pub async fn connect(shared: &Shared, target: &str, limit: Duration) -> Result<TcpStream, ConnectError> {
    let work = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
            .await
            .map_err(|e| ("resolve_error", format!("{target}: {e}")))?
            .collect();
        if addrs.iter().any(|a| shared.is_own(*a)) {
            return Err(("loop", format!("{target} is this sidecar's own listener")));
        }
        let stream =
            TcpStream::connect(&addrs[..]).await.map_err(|e| ("connect_error", format!("{target}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    };
    timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(("timeout", format!("connecting to {target} timed out"))))
}
