//! The accept loop every listener shares: take a connection permit from *this listener's*
//! budget first (so at its cap the loop stops accepting and the kernel backlog pushes back,
//! while the other listeners go on), then accept; back off on accept errors (e.g. out of file
//! descriptors) instead of spinning; stop on shutdown. Each connection runs as a tracked task
//! holding its [`Slot`].
//!
//! The inbound listener also caps connections that have not finished their TLS handshake,
//! per source (an IPv4 address, an IPv6 /64) and in total: past either cap a new connection is
//! closed as soon as it is accepted, so a flood of unauthenticated connections from one
//! address cannot take the listener's budget. The handler gives its [`Pending`] unit back
//! once the peer is authenticated. Shed connections are counted in one `listener.shed` event
//! per second at most, not one event each.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_runtime::limits::{Held, PerSource, SourceKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::events::{Event, Severity};
use crate::state::Shared;

const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Shortest interval between two `listener.shed` events of one listener.
const SHED_REPORT: Duration = Duration::from_secs(1);

/// One listener's connection budget.
pub type Budget = Arc<Semaphore>;

/// Unauthenticated inbound connections per source and in total.
pub type PendingTable = Arc<PerSource<SourceKey>>;

/// An inbound connection's place among the not yet authenticated; [`Pending::authenticated`]
/// (or dropping it) gives the place back. Empty on listeners that do not count them.
pub struct Pending(Option<Held<SourceKey>>);

impl Pending {
    /// The peer is through the handshake: it no longer counts as pending.
    pub fn authenticated(&mut self) {
        self.0 = None;
    }
}

/// What a connection holds for as long as it is open.
pub struct Slot {
    /// Its place in the listener's budget.
    pub permit: OwnedSemaphorePermit,
    pub pending: Pending,
}

/// A new pending table for `[limits] max_pending_per_source` and `max_pending`.
pub fn pending_table(per_source: usize, total: usize) -> PendingTable {
    PerSource::new(per_source, total)
}

pub async fn serve<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    budget: Budget,
    pending: Option<PendingTable>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    let mut shed = Shed::new(&listener);
    loop {
        // `biased`: shutdown is checked first, so nothing is accepted once it has begun.
        let permit = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return,
            p = budget.clone().acquire_owned() => match p {
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
                let held = match &pending {
                    None => Pending(None),
                    Some(table) => match table.try_hold(SourceKey::of(peer.ip())) {
                        Some(h) => Pending(Some(h)),
                        None => {
                            // Closed unread; the permit goes back at once.
                            drop((stream, permit));
                            shed.note(peer.ip(), &shared);
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                shared.tracker.spawn(handle(stream, peer, Slot { permit, pending: held }));
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

/// Counts shed connections and reports them at most once per [`SHED_REPORT`].
struct Shed {
    listener: String,
    count: u64,
    reported: Option<Instant>,
}

impl Shed {
    fn new(listener: &TcpListener) -> Self {
        let listener = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Self { listener, count: 0, reported: None }
    }

    fn note(&mut self, source: IpAddr, shared: &Shared) {
        self.count += 1;
        if self.reported.is_some_and(|at| at.elapsed() < SHED_REPORT) {
            return;
        }
        let mut e = Event::new("listener.shed", Severity::Warning).reason(
            "too_many_pending",
            format!(
                "{} connection(s) closed unread: too many not yet authenticated (latest from {})",
                self.count,
                SourceKey::of(source)
            ),
        );
        e.listener = Some(self.listener.clone());
        e.count = Some(self.count);
        shared.events.emit(e);
        self.count = 0;
        self.reported = Some(Instant::now());
    }
}
