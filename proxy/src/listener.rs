//! The accept loop every listener shares: take a connection permit first (so at the cap the
//! loop stops accepting and the kernel backlog pushes back), then accept; back off on accept
//! errors (e.g. out of file descriptors) instead of spinning; stop on shutdown. Each
//! connection runs as a tracked task holding its permit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::events::{Event, Severity};
use crate::state::Shared;

const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub async fn serve<F, Fut>(listener: TcpListener, shared: Arc<Shared>, handle: F)
where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        // `biased`: shutdown is checked first, so nothing is accepted once it has begun.
        let permit = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            p = shared.conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // the semaphore is closed only at exit
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                shared.tracker.spawn(handle(stream, peer, permit));
            }
            Err(e) => {
                drop(permit);
                shared.events.emit(
                    Event::new("listener.accept_failed", Severity::Error)
                        .reason("accept_error", e.to_string())
                        .detail(format!("retrying in {} ms", backoff.as_millis())),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
