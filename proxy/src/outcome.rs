//! One outcome record per connection: filled in as the connection moves through its stages,
//! and finished exactly once (every finishing method takes `self`), which writes the
//! connection's event and its metrics together, so counts and events cannot disagree.
//!
//! Metrics written here: connections opened (at accept), closed by outcome, open, duration;
//! handshakes by result and reason, handshake duration; policy decisions by zone pair; bytes.
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

use crate::events::{Event, Events, Severity};
use crate::forward::{Counts, End};
use crate::handshake::Failure;
use crate::metrics;
use crate::state::Shared;
use crate::stop::Stop;

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

    /// Ends the record: closes its metrics with `outcome` and returns its event.
    fn finish(&mut self, outcome: &'static str, name: &'static str, severity: Severity) -> Event {
        self.finished = true;
        let lasted = self.start.elapsed();
        metrics::connection_closed(self.direction.as_str(), outcome, lasted);
        let mut e = Event::new(name, severity);
        e.direction = Some(self.direction.as_str());
        e.listener = Some(self.listener.to_string());
        e.src_addr = Some(self.src_addr.to_string());
        e.dst_addr = self.dst_addr.take();
        e.src_id = self.src_id.take().map(|i| i.to_string());
        e.dst_id = self.dst_id.take().map(|i| i.to_string());
        e.rule = self.rule.take();
        e.duration_ms = Some(lasted.as_millis() as u64);
        e.tls_resumed = self.resumed;
        e
    }

    /// The handshake failed or timed out (or could not start: no valid own certificate).
    pub fn handshake_failed(mut self, failure: Failure) {
        let (reason, detail) = (failure.as_str(), failure.detail());
        let took = self.handshake_start.map(|t| t.elapsed());
        metrics::handshake(self.direction.as_str(), Some(reason), took);
        let e = self.finish("handshake_failed", "tls.handshake_failed", Severity::Warning);
        self.events.emit(e.reason(reason, detail));
    }

    /// The policy refused the connection.
    pub fn denied(mut self, d: Denial) {
        self.decision_metric(false, d.from(), d.to());
        let rule = d.rule().map(|r| r.text().to_owned());
        let mut e = self.finish("denied", "policy.deny", Severity::Warning);
        e.decision = Some("deny");
        e.rule = rule;
        self.events.emit(e.reason(d.reason().as_str(), d.detail().to_owned()));
    }

    /// The next hop (local app, or remote sidecar) could not be reached.
    pub fn upstream_failed(mut self, err: ConnectError) {
        let mut e = self.finish("upstream_failed", "upstream.connect_failed", Severity::Error);
        e.decision = Some("allow");
        self.events.emit(e.reason(err.reason.as_str(), err.detail));
    }

    /// An allowed connection ended. `counts.a_to_b` is bytes from the connecting side onward.
    /// Closed because a reloaded policy denies it (`policy_revoked`): the event says `deny`,
    /// names the new deciding rule and, in `reason_detail`, the rule that had allowed it.
    pub fn closed(mut self, end: End, counts: Counts) {
        metrics::bytes(self.direction.as_str(), counts.a_to_b, counts.b_to_a);
        let severity = if matches!(end, End::Stopped(Stop::PolicyRevoked { .. })) {
            Severity::Warning
        } else {
            Severity::Info
        };
        let allowed_by = self.rule.clone();
        let mut e = self.finish(end.as_str(), "connection", severity);
        e.decision = Some("allow");
        e.reason = Some(end.as_str());
        if let End::Stopped(Stop::PolicyRevoked { rule, detail }) = end {
            e.decision = Some("deny");
            e.rule = rule;
            let was = allowed_by.map(|r| format!("; it was allowed by {r}")).unwrap_or_default();
            e.reason_detail = Some(crate::events::truncate(format!("policy reloaded: {detail}{was}")));
        }
        e.bytes_in = Some(counts.a_to_b);
        e.bytes_out = Some(counts.b_to_a);
        self.events.emit(e);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.finished {
            metrics::connection_closed(self.direction.as_str(), "aborted", self.start.elapsed());
        }
    }
}

/// Longest normalized path a [`RequestRecord`] keeps (bytes; cut at a character boundary).
pub const MAX_PATH_LEN: usize = 256;

/// An HTTP request method, from a bounded set (anything else is `Other`), so it can label
/// a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110): `get` is `Other`.
    pub fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            "CONNECT" => Method::Connect,
            "TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Other => "other",
        }
    }
}

/// The record of one request on an HTTP-aware listener, beside its connection's
/// [`Outcome`]: filled by the HTTP mode (not built yet) as the request is decided and
/// answered. The event it will produce, `request`, carries the connection's `direction`,
/// `src_id`, `dst_id`, and:
///
/// | field | ECS | from |
/// |---|---|---|
/// | `http_method` | `http.request.method` | [`Method::as_str`] (bounded) |
/// | `url_path` | `url.path` | [`normalize_path`] of the target: no query, at most [`MAX_PATH_LEN`] bytes |
/// | `http_status` | `http.response.status_code` | the status sent back (403 for a denied request) |
/// | `decision`, `rule` | `event.outcome`, `rule.name` | the per-request policy decision and its rule |
///
/// Metrics will label method and status only; the path never becomes a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: Method,
    /// Normalized, without the query: what the policy's path conditions are matched against.
    pub path: String,
    /// `None` until a response is sent.
    pub status: Option<u16>,
    /// The rule that decided the request.
    pub rule: Option<String>,
}

impl RequestRecord {
    /// A request for `target` (an origin-form request target, query included) by `method`.
    pub fn new(method: &str, target: &str) -> Self {
        Self { method: Method::parse(method), path: normalize_path(target), status: None, rule: None }
    }
}

/// The path of a request target as the policy sees it: the query and fragment dropped,
/// percent-encoded unreserved characters decoded (so `%2e%2e` is `..`), empty and `.`
/// segments removed, `..` removing the segment before it (never above the root), always
/// starting with `/`, and at most [`MAX_PATH_LEN`] bytes. `//a/./b/../c?x` is `/a/c`.
pub fn normalize_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len().min(MAX_PATH_LEN) + 1);
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
        if out.len() >= MAX_PATH_LEN {
            break;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    if out.len() > MAX_PATH_LEN {
        let mut cut = MAX_PATH_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Decodes `%XX` where XX is an unreserved character (RFC 3986 §2.3: letters, digits,
/// `-._~`); every other escape, `%2F` included, stays as it is, in upper case.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = char::from((h * 16 + l) as u8);
                if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                    out.push(c);
                } else {
                    out.push('%');
                    out.push_str(&format!("{:02X}", h * 16 + l));
                }
                i += 3;
                continue;
            }
        }
        // Copy up to the next '%' as text (keeps multi-byte characters whole).
        let next = bytes[i + 1..].iter().position(|&b| b == b'%').map_or(bytes.len(), |n| i + 1 + n);
        out.push_str(&path[i..next]);
        i = next;
    }
    out
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn paths_are_normalized_as_the_policy_matches_them() {
        for (target, want) in [
            ("//a/./b/../c?x", "/a/c"),
            ("/", "/"),
            ("", "/"),
            ("?q=1", "/"),
            ("/charge", "/charge"),
            ("/charge/", "/charge"),
            ("/a/b/../../../..", "/"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E./admin#frag", "/admin"),
            ("/a%2fb/c", "/a%2Fb/c"),
            ("/%7euser", "/~user"),
            ("/caf\u{e9}/%", "/caf\u{e9}/%"),
            ("/x%4", "/x%4"),
        ] {
            assert_eq!(normalize_path(target), want, "{target:?}");
        }
    }

    #[test]
    fn a_path_is_bounded_at_a_character_boundary() {
        let long = format!("/{}", "\u{e9}".repeat(1000));
        let p = normalize_path(&long);
        assert!(p.len() <= MAX_PATH_LEN && p.len() >= MAX_PATH_LEN - 1, "{}", p.len());
        assert!(p.starts_with("/\u{e9}"));
        let many = "/a".repeat(10_000);
        assert_eq!(normalize_path(&many).len(), MAX_PATH_LEN);
    }

    #[test]
    fn a_request_record_has_a_bounded_method_and_a_normalized_path() {
        let r = RequestRecord::new("POST", "/orders/./new?id=7");
        assert_eq!((r.method, r.path.as_str(), r.status, r.rule), (Method::Post, "/orders/new", None, None));
        assert_eq!(RequestRecord::new("get", "/").method.as_str(), "other", "methods are case-sensitive");
        assert_eq!(Method::parse("DELETE").as_str(), "DELETE");
    }
}
