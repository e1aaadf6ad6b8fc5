//! In-process subscriptions: the events a process emits, for consumers inside it (detectors
//! that will quarantine a misbehaving peer, tests). A bounded broadcast: the emitting side's
//! send never waits; a subscriber that falls behind loses the oldest events it has not read,
//! and learns how many.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use super::Event;

/// One subscriber's end ([`super::Events::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    /// Lost by this subscriber.
    lost: u64,
    /// Lost by every subscriber of the same `Events`.
    all_lost: Arc<AtomicU64>,
}

impl Subscription {
    pub(super) fn new(rx: broadcast::Receiver<Arc<Event>>, all_lost: Arc<AtomicU64>) -> Self {
        Self { rx, lost: 0, all_lost }
    }

    /// The next event; events lost since the last call are counted and skipped. `None` once
    /// every handle of the `Events` is gone.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(RecvError::Lagged(n)) => self.count(n),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Event>> {
        loop {
            match self.rx.try_recv() {
                Ok(e) => return Some(e),
                Err(TryRecvError::Lagged(n)) => self.count(n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }

    /// Events this subscriber lost by falling behind, so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    fn count(&mut self, n: u64) {
        self.lost += n;
        self.all_lost.fetch_add(n, Ordering::Relaxed);
    }
}
