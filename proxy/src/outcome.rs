//! One outcome record per connection: filled in as the connection moves through its stages,
//! and finished exactly once (every finishing method takes `self`), which writes the event.
//! Metrics will hang off the same `finish`, so counts and events can never disagree.

use std::net::SocketAddr;
use std::time::Instant;

use mesh_config::policy::Decision;
use mesh_config::SpiffeId;

use crate::events::{Event, Events, Severity};
use crate::forward::{Counts, End};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

pub struct Outcome {
    events: Events,
    direction: Direction,
    start: Instant,
    listener: SocketAddr,
    src_addr: SocketAddr,
    dst_addr: Option<String>,
    src_id: Option<SpiffeId>,
    dst_id: Option<SpiffeId>,
    rule: Option<String>,
}

impl Outcome {
    pub fn new(events: &Events, direction: Direction, listener: SocketAddr, src_addr: SocketAddr) -> Self {
        Self {
            events: events.clone(),
            direction,
            start: Instant::now(),
            listener,
            src_addr,
            dst_addr: None,
            src_id: None,
            dst_id: None,
            rule: None,
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

    /// Records the allowing rule; the connection goes on.
    pub fn allowed(&mut self, d: &Decision<'_>) {
        self.rule = d.rule().map(|r| r.text().to_owned());
    }

    fn event(self, name: &'static str, severity: Severity) -> (Event, Events) {
        let mut e = Event::new(name, severity);
        e.direction = Some(self.direction.as_str());
        e.listener = Some(self.listener.to_string());
        e.src_addr = Some(self.src_addr.to_string());
        e.dst_addr = self.dst_addr;
        e.src_id = self.src_id.map(|i| i.to_string());
        e.dst_id = self.dst_id.map(|i| i.to_string());
        e.rule = self.rule;
        e.duration_ms = Some(self.start.elapsed().as_millis() as u64);
        (e, self.events)
    }

    /// The handshake failed or timed out.
    pub fn handshake_failed(self, reason: &'static str, detail: String) {
        let (e, events) = self.event("tls.handshake_failed", Severity::Warning);
        events.emit(e.reason(reason, detail));
    }

    /// The policy refused the connection.
    pub fn denied(self, d: &Decision<'_>) {
        let rule = d.rule().map(|r| r.text().to_owned());
        let (mut e, events) = self.event("policy.deny", Severity::Warning);
        e.decision = Some("deny");
        e.rule = rule;
        events.emit(e.reason(d.reason().as_str(), d.to_string()));
    }

    /// The next hop (local app, or remote sidecar) could not be reached.
    pub fn upstream_failed(self, reason: &'static str, detail: String) {
        let (mut e, events) = self.event("upstream.connect_failed", Severity::Error);
        e.decision = Some("allow");
        events.emit(e.reason(reason, detail));
    }

    /// An allowed connection ended. `up` is bytes from the connecting side onward.
    pub fn closed(self, end: End, counts: Counts) {
        let (mut e, events) = self.event("connection", Severity::Info);
        e.decision = Some("allow");
        e.reason = Some(end.as_str());
        e.bytes_in = Some(counts.a_to_b);
        e.bytes_out = Some(counts.b_to_a);
        events.emit(e);
    }
}
