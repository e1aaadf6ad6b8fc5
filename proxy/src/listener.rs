//! The sidecar's listeners on the accept loop both binaries share
//! ([`mesh_runtime::serve::accept_loop`]): a connection permit from *this listener's* budget
//! first (at its cap the loop stops accepting and the kernel backlog pushes back, while the
//! other listeners go on), backoff on accept errors, nothing accepted once shutdown begins,
//! each connection a tracked task holding its [`Slot`].
//!
//! The inbound listener also caps connections that have not finished their TLS handshake,
//! per source (an IPv4 address, an IPv6 /64) and in total: past either cap a new connection is
//! closed as soon as it is accepted, so a flood of unauthenticated connections from one
//! address cannot take the listener's budget. The handler gives its [`Pending`] unit back
//! once the peer is authenticated.
//!
//! What is the sidecar's own here is how the loop's reports become events: an accept error is
//! a `listener.accept_failed` event, shed connections one `listener.shed` event per second at
//! most, not one event each.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_runtime::serve::{self, AcceptEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub use mesh_runtime::serve::{Pending, PendingTable, Slot};

use crate::events::{Event, EventKind, Events, Severity};
use crate::state::Shared;

/// One listener's connection budget.
pub type Budget = Arc<Semaphore>;

/// A new pending table for `[limits] max_pending_per_source` and `max_pending`.
pub fn pending_table(per_source: usize, total: usize) -> PendingTable {
    mesh_runtime::limits::PerSource::new(per_source, total)
}

/// Serves `listener` until shutdown, within `budget` (and `pending`, when given), running
/// `handle` for each connection as a task in the sidecar's [`Shared::tasks`].
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    budget: Budget,
    pending: Option<PendingTable>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let name = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let events = shared.events.clone();
    let budget = serve::Budget { connections: budget, pending };
    let tasks = shared.tasks.clone();
    serve::accept_loop(listener, budget, tasks, shared.shutdown.clone(), report(name, events), handle).await
}

/// Turns the accept loop's reports into the sidecar's events.
pub fn report(listener: String, events: Events) -> impl FnMut(AcceptEvent<'_>) + Send {
    move |e| match e {
        AcceptEvent::Failed { error, retry_in } => {
            let mut e = Event::new(EventKind::ListenerAcceptFailed, Severity::Error)
                .reason("accept_error", error.to_string())
                .detail(format!("retrying in {} ms", retry_in.as_millis()));
            e = e.listener(listener.clone());
            events.emit(e);
        }
        AcceptEvent::Shed { count, latest } => {
            let mut e = Event::new(EventKind::ListenerShed, Severity::Warning).reason(
                "too_many_pending",
                format!(
                    "{count} connection(s) closed unread: too many not yet authenticated (latest from {latest})"
                ),
            );
            e = e.listener(listener.clone());
            e = e.count(count);
            events.emit(e);
        }
    }
}
