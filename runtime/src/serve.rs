//! The accept loop every listener of both binaries runs (the sidecar's inbound, outbounds and
//! admin; the CA's API and metrics listeners), so none grows its own:
//!
//! - a connection budget per listener: a permit is taken *before* accepting, so at the cap
//!   the loop stops accepting and the kernel backlog pushes back, while other listeners go on;
//! - optionally, a per-source budget for connections not yet authenticated
//!   ([`PerSource`] keyed by [`SourceKey`]): past it a new connection is closed as soon as it
//!   is accepted, unread, and the closures are reported coalesced ([`AcceptEvent::Shed`]);
//! - backoff on accept errors (out of file descriptors, ...) instead of spinning, each error
//!   reported through the caller's callback ([`AcceptEvent::Failed`]) so each binary reports
//!   it its own way;
//! - every connection a tracked task ([`Tasks`]), and a drain on shutdown: accepting stops
//!   at once, live connections get a grace period, then what is left is aborted and counted.
//!
//! Not here: TLS, authentication, what a connection does (the handler's), HTTP (see
//! [`crate::http`]).

use std::future::Future;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::{Held, PerSource, SourceKey};

/// First pause after an accept error; doubled on each error in a row, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between two accept attempts after errors.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Shortest interval between two [`AcceptEvent::Shed`] reports of one listener.
pub const SHED_REPORT: Duration = Duration::from_secs(1);

/// Something connections are accepted from: a [`TcpListener`], or an in-memory source in tests.
pub trait Accept: Send + 'static {
    type Stream: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Every protocol here is request/response or a relay of small writes: no Nagle delay.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// Unauthenticated connections per source (an IPv4 address, an IPv6 /64) and in total.
pub type PendingTable = Arc<PerSource<SourceKey>>;

/// One listener's budgets.
#[derive(Clone)]
pub struct Budget {
    /// Connections open at once: a permit is held for each connection's whole life.
    pub connections: Arc<Semaphore>,
    /// Connections not yet authenticated, per source and in total, if this listener counts
    /// them (the handler gives its unit back with [`Pending::authenticated`]).
    pub pending: Option<PendingTable>,
}

impl Budget {
    /// At most `max_connections` open at once; no per-source count.
    pub fn new(max_connections: usize) -> Self {
        Self { connections: Arc::new(Semaphore::new(max_connections)), pending: None }
    }

    /// Also caps connections not yet authenticated: `per_source` per source, `total` overall.
    pub fn with_pending(mut self, per_source: usize, total: usize) -> Self {
        self.pending = Some(PerSource::new(per_source, total));
        self
    }
}

/// A connection's place among the not yet authenticated; [`Pending::authenticated`] (or
/// dropping it) gives the place back. Empty on listeners that do not count them.
pub struct Pending<K: Eq + Hash + Clone = SourceKey>(Option<Held<K>>);

impl<K: Eq + Hash + Clone> Pending<K> {
    /// A place that counts nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// The peer has authenticated: it no longer counts as pending.
    pub fn authenticated(&mut self) {
        self.0 = None;
    }

    /// Whether this still holds a place.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

/// What a connection holds for as long as it is open.
pub struct Slot {
    /// Its place in the listener's budget.
    pub permit: OwnedSemaphorePermit,
    pub pending: Pending,
}

/// What the accept loop reports; the caller turns it into its own event.
#[derive(Debug)]
pub enum AcceptEvent<'a> {
    /// `accept` failed; the loop waits `retry_in` before the next attempt.
    Failed { error: &'a io::Error, retry_in: Duration },
    /// `count` connections were closed unread since the last report (at most one per
    /// [`SHED_REPORT`]): too many not yet authenticated, the latest from `latest`.
    Shed { count: u64, latest: SourceKey },
}

/// Connection tasks, tracked so that shutdown can wait for them and then abort what is left.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    abort: CancellationToken,
}

/// What a drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Tasks open when the drain began.
    pub open: usize,
    /// Tasks still open at the end of the grace period, aborted.
    pub aborted: usize,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` tracked; it is dropped (its connection closed) if a drain aborts it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let abort = self.abort.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = abort.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Tasks running now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// No more tasks are expected: [`Tasks::wait`] returns once the running ones end.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Waits until closed and every task has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await
    }

    /// Waits up to `grace` for the running tasks, then aborts the rest and says how many.
    /// The accept loops must have stopped (their shutdown cancelled) for nothing new to start.
    pub async fn drain(&self, grace: Duration) -> Drained {
        self.close();
        let open = self.len();
        if tokio::time::timeout(grace, self.wait()).await.is_ok() {
            return Drained { open, aborted: 0 };
        }
        let aborted = self.len();
        self.abort.cancel();
        // Each task ends at its next poll (the abort branch is checked first); bounded anyway.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wait()).await;
        Drained { open, aborted }
    }
}

/// Accepts from `listener` until `shutdown`, within `budget`, running `handle` for each
/// connection as a task in `tasks`. Accept errors and shed connections go to `on_event`.
pub async fn accept_loop<L, E, F, Fut>(
    listener: L,
    budget: Budget,
    tasks: Tasks,
    shutdown: CancellationToken,
    mut on_event: E,
    mut handle: F,
) where
    L: Accept,
    E: FnMut(AcceptEvent<'_>) + Send,
    F: FnMut(L::Stream, SocketAddr, Slot) -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    let mut shed = Shed::default();
    loop {
        // `biased`: shutdown is checked first, so nothing is accepted once it has begun.
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = budget.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // closed: the listener is being stopped
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                let pending = match &budget.pending {
                    None => Pending(None),
                    Some(table) => match table.try_hold(SourceKey::of(peer.ip())) {
                        Some(h) => Pending(Some(h)),
                        None => {
                            // Closed unread; the permit goes back at once.
                            drop((stream, permit));
                            if let Some((count, latest)) = shed.note(SourceKey::of(peer.ip())) {
                                on_event(AcceptEvent::Shed { count, latest });
                            }
                            continue;
                        }
                    },
                };
                tasks.spawn(handle(stream, peer, Slot { permit, pending }));
            }
            Err(error) => {
                drop(permit);
                on_event(AcceptEvent::Failed { error: &error, retry_in: backoff });
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Counts shed connections and lets them be reported at most once per [`SHED_REPORT`].
#[derive(Default)]
struct Shed {
    count: u64,
    reported: Option<Instant>,
}

impl Shed {
    /// One more closed; returns what to report now, if a report is due.
    fn note(&mut self, source: SourceKey) -> Option<(u64, SourceKey)> {
        self.count += 1;
        if self.reported.is_some_and(|at| at.elapsed() < SHED_REPORT) {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        self.reported = Some(Instant::now());
        Some((count, source))
    }
}

#[cfg(test)]
mod tests;
