//! One outcome record per connection: filled in as the connection moves through its stages,
//! and finished exactly once (every finishing method takes `self`), which writes the
//! connection's event and its metrics together, so counts and events cannot disagree.
//!
//! Metrics written here: connections opened (at accept), closed by outcome, open, duration;
//! handshakes by result and reason, handshake duration; policy decisions by zone pair; per
//! outbound, connections closed. Bytes are counted by the forwarder as they move, on the
//! record's [`Outcome::meter`].
//! A record dropped without finishing (its task aborted when the drain timed out) still
//! closes its metrics, with outcome `aborted`; its event is `proxy.drain_timeout`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mesh_config::policy::Policy;
use mesh_config::SpiffeId;
use tokio::sync::watch;

use crate::authorize::{Denial, Permit};
use crate::connect::ConnectError;

use crate::events::{Connection, Event, EventKind, Events, Severity};
use crate::forward::{Counts, End, Meter};
use crate::handshake::Failure;
use crate::metrics;
use crate::state::Shared;
use crate::stop::Stop;

mod request;

pub use request::{normalize_path, Method, RequestRecord, MAX_PATH_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

pub struct Outcome {
    events: Events,
    /// For zone labels: only zones the current policy declares become labels.
    policy: watch::Receiver<Arc<Policy>>,
    direction: Direction,
    start: Instant,
    handshake_start: Option<Instant>,
    listener: SocketAddr,
    src_addr: SocketAddr,
    dst_addr: Option<String>,
    src_id: Option<SpiffeId>,
    dst_id: Option<SpiffeId>,
    rule: Option<String>,
    /// `Some` once a handshake completed: whether it resumed a session.
    resumed: Option<bool>,
    /// Set by the one finishing call; `Drop` closes the metrics of a record never finished.
    finished: bool,
    /// The outbound's index in sidecar.toml, for its per-outbound series.
    outbound: Option<usize>,
}

impl Outcome {
    /// A connection was accepted on `listener` from `src_addr`.
    pub fn new(shared: &Shared, direction: Direction, listener: SocketAddr, src_addr: SocketAddr) -> Self {
        metrics::connection_opened(direction.as_str());
        Self {
            events: shared.events.clone(),
            policy: shared.policy.clone(),
            direction,
            start: Instant::now(),
            handshake_start: None,
            listener,
            src_addr,
            dst_addr: None,
            src_id: None,
            dst_id: None,
            rule: None,
            resumed: None,
            finished: false,
            outbound: None,
        }
    }

    /// The connection came through the outbound at `index` (its position in sidecar.toml).
    pub fn outbound(&mut self, index: usize) {
        self.outbound = Some(index);
    }

    /// Where the forwarder counts this connection's bytes as they move.
    pub fn meter(&self) -> Meter {
        metrics::byte_meter(self.direction.as_str(), self.outbound)
    }

    fn closed_metrics(&self, outcome: &'static str) {
        metrics::connection_closed(self.direction.as_str(), outcome, self.start.elapsed());
        if let Some(i) = self.outbound {
            metrics::outbound_closed(i, outcome);
        }
    }

    pub fn src_id(&mut self, id: SpiffeId) {
        self.src_id = Some(id);
    }

    pub fn dst_id(&mut self, id: SpiffeId) {
        self.dst_id = Some(id);
    }

    pub fn dst_addr(&mut self, addr: impl Into<String>) {
        self.dst_addr = Some(addr.into());
    }

    /// The TLS handshake begins now (for its duration).
    pub fn handshake_started(&mut self) {
        self.handshake_start = Some(Instant::now());
    }

    /// The TLS handshake succeeded, resumed or full; the connection goes on.
    pub fn handshake_ok(&mut self, resumed: bool) {
        self.resumed = Some(resumed);
        let took = self.handshake_start.map(|t| t.elapsed());
        metrics::handshake(self.direction.as_str(), None, took);
    }

    /// Records the allowing rule of the permit; the connection goes on.
    pub fn allowed(&mut self, permit: &Permit) {
        self.rule = Some(permit.rule().text().to_owned());
        self.decision_metric(true, permit.from(), permit.to());
    }

    fn decision_metric(&self, allowed: bool, from: &SpiffeId, to: &SpiffeId) {
        let policy = self.policy.borrow().clone();
        metrics::decision(
            self.direction.as_str(),
            allowed,
            metrics::zone_label(&policy, from),
            metrics::zone_label(&policy, to),
        );
    }

    /// Ends the record: closes its metrics with `outcome` and returns its event's fields.
    fn finish(&mut self, outcome: &'static str) -> Connection {
        self.finished = true;
        let lasted = self.start.elapsed();
        self.closed_metrics(outcome);
        Connection {
            direction: self.direction.as_str(),
            listener: self.listener.to_string(),
            src_addr: self.src_addr.to_string(),
            dst_addr: self.dst_addr.take(),
            src_id: self.src_id.take().map(|i| i.to_string()),
            dst_id: self.dst_id.take().map(|i| i.to_string()),
            rule: self.rule.take(),
            duration_ms: lasted.as_millis() as u64,
            tls_resumed: self.resumed,
            ..Connection::default()
        }
    }

    fn emit(&self, kind: EventKind, severity: Severity, c: Connection) {
        self.events.emit(Event::connection(kind, severity, c));
    }

    /// The handshake failed or timed out (or could not start: no valid own certificate).
    pub fn handshake_failed(mut self, failure: Failure) {
        let (reason, detail) = (failure.as_str(), failure.detail());
        let took = self.handshake_start.map(|t| t.elapsed());
        metrics::handshake(self.direction.as_str(), Some(reason), took);
        let mut c = self.finish("handshake_failed");
        c.reason(reason, detail);
        self.emit(EventKind::TlsHandshakeFailed, Severity::Warning, c);
    }

    /// The policy refused the connection.
    pub fn denied(mut self, d: Denial) {
        self.decision_metric(false, d.from(), d.to());
        let rule = d.rule().map(|r| r.text().to_owned());
        let mut c = self.finish("denied");
        c.decision = Some("deny");
        c.rule = rule;
        c.reason(d.reason().as_str(), d.detail());
        self.emit(EventKind::PolicyDeny, Severity::Warning, c);
    }

    /// The next hop (local app, or remote sidecar) could not be reached.
    pub fn upstream_failed(mut self, err: ConnectError) {
        let mut c = self.finish("upstream_failed");
        c.decision = Some("allow");
        c.reason(err.reason.as_str(), err.detail);
        self.emit(EventKind::UpstreamConnectFailed, Severity::Error, c);
    }

    /// An allowed connection ended. `counts.a_to_b` is bytes from the connecting side onward.
    /// Closed because a reloaded policy denies it (`policy_revoked`): the event says `deny`,
    /// names the new deciding rule and, in `reason_detail`, the rule that had allowed it.
    /// Its bytes are on the meter already (the forwarder's).
    pub fn closed(mut self, end: End, counts: Counts) {
        let severity = if matches!(end, End::Stopped(Stop::PolicyRevoked { .. })) {
            Severity::Warning
        } else {
            Severity::Info
        };
        let allowed_by = self.rule.clone();
        let reason = end.as_str();
        let mut c = self.finish(reason);
        c.decision = Some("allow");
        c.reason = Some(reason);
        if let End::Stopped(Stop::PolicyRevoked { rule, detail }) = end {
            c.decision = Some("deny");
            c.rule = rule;
            let was = allowed_by.map(|r| format!("; it was allowed by {r}")).unwrap_or_default();
            c.reason(reason, format!("policy reloaded: {detail}{was}"));
        }
        c.bytes_in = Some(counts.a_to_b);
        c.bytes_out = Some(counts.b_to_a);
        self.emit(EventKind::Connection, severity, c);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.finished {
            self.closed_metrics("aborted");
        }
    }
}
