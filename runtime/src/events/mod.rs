//! Structured security events for both zt-mesh binaries: the [`Event`] schema (a kind from
//! [`EventKind`], a severity, and the kind's own [`Fields`]), the fan-out to the configured
//! sinks, and in-process subscriptions.
//!
//! The emitting side only ever does non-blocking hand-offs ([`Events::emit`]): a `try_send`
//! into one bounded queue per sink, and a send on a bounded broadcast for subscribers. Each
//! sink drains its own queue in its own task, so a slow, full or dead sink drops its own
//! events (counted through [`Recorder::dropped`], and reported by an `events.dropped` event
//! in that sink's stream once it delivers again) and never slows a connection, a request or
//! another sink. A subscriber that falls behind loses the oldest events (counted) the same
//! way. Peer-controlled text is truncated where it enters; JSON escaping (control characters
//! included) is serde_json's.
//!
//! Sinks: `stream` (stdout, stderr, files reopened on SIGHUP), `syslog` (RFC 5424 over UDP, or
//! TCP or TLS (RFC 5425) with octet counting), `https` (batched POSTs with bounded retries).
//! Each sink writes its events in one schema ([`EventFormat`]: zt-mesh's JSON, ECS or OCSF;
//! `format`, [`ecs`], [`ocsf`]). This module does
//! not decide what is an event, nor which metric it feeds: the binaries do (the sidecar's
//! `metrics::on_event` is an exhaustive `match` on [`EventKind`]).

pub mod ecs;
mod fields;
mod format;
mod https;
mod kind;
pub mod ocsf;
mod stream;
mod subscribe;
mod syslog;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use mesh_config::sidecar::EventFormat;
use mesh_config::sidecar::{EventOptions, EventSink, SyslogTransport};
use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

pub use fields::{Ca, CaFields, Connection, Dropped, Fields, Lifecycle};
pub use https::{load_roots, AuthHeader, HttpsTarget};
pub use kind::EventKind;
pub use subscribe::Subscription;
pub use syslog::SyslogTarget;

/// Longest peer-controlled string kept in an event.
const MAX_FIELD_LEN: usize = 256;
/// While a sink owes an `events.dropped` notice and no event comes, it sends the notice alone
/// after this long.
const NOTICE_IDLE: Duration = Duration::from_secs(1);
/// Events a subscriber may be behind before it loses the oldest.
pub const SUBSCRIBER_QUEUE: usize = 1024;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// The one timestamp format of both binaries: RFC 3339 in UTC with exactly six fractional
/// digits (`2026-11-28T14:12:58.480000Z`), the most RFC 5424 (syslog) allows, so the JSON
/// and the syslog header say the same instant the same way.
const TIMESTAMP: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// An instant as [`TIMESTAMP`] writes it (the instant is always UTC here).
pub fn format_timestamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC).format(TIMESTAMP).unwrap_or_default()
}

fn serialize_timestamp<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*t))
}

/// One event. Field names are documented in the README with their ECS and OCSF equivalents.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(serialize_with = "serialize_timestamp")]
    pub timestamp: OffsetDateTime,
    pub event: EventKind,
    pub severity: Severity,
    #[serde(flatten)]
    pub fields: Fields,
}

impl Event {
    /// A lifecycle event (its fields set with the builders below).
    pub fn new(event: EventKind, severity: Severity) -> Self {
        Self::with(event, severity, Fields::Lifecycle(Lifecycle::default()))
    }

    /// A connection's event.
    pub fn connection(event: EventKind, severity: Severity, c: Connection) -> Self {
        Self::with(event, severity, Fields::Connection(c))
    }

    /// A CA event; its kind follows from `what`.
    pub fn ca(severity: Severity, what: Ca) -> Self {
        Self::with(what.kind(), severity, Fields::Ca(what.into()))
    }

    /// The event as one JSON object (no newline) in `format`, as a sink of that format
    /// writes it.
    pub fn render(&self, format: EventFormat) -> String {
        let mut out = Vec::with_capacity(512);
        format::encode(self, format, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn with(event: EventKind, severity: Severity, fields: Fields) -> Self {
        Self { timestamp: OffsetDateTime::now_utc(), event, severity, fields }
    }

    fn lifecycle(&mut self) -> Option<&mut Lifecycle> {
        match &mut self.fields {
            Fields::Lifecycle(l) => Some(l),
            _ => None,
        }
    }

    /// Free text (lifecycle events).
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        if let Some(l) = self.lifecycle() {
            l.detail = Some(truncate(d.into()));
        }
        self
    }

    /// A bounded reason and its explanation (lifecycle and connection events).
    pub fn reason(mut self, reason: &'static str, detail: impl Into<String>) -> Self {
        match &mut self.fields {
            Fields::Lifecycle(l) => {
                l.reason = Some(reason);
                l.reason_detail = Some(truncate(detail.into()));
            }
            Fields::Connection(c) => c.reason(reason, detail),
            Fields::Dropped(_) | Fields::Ca(_) => {}
        }
        self
    }

    /// The identity concerned (lifecycle events).
    pub fn src_id(mut self, id: impl Into<String>) -> Self {
        if let Some(l) = self.lifecycle() {
            l.src_id = Some(id.into());
        }
        self
    }

    /// The listener concerned (lifecycle events).
    pub fn listener(mut self, listener: impl Into<String>) -> Self {
        if let Some(l) = self.lifecycle() {
            l.listener = Some(listener.into());
        }
        self
    }

    /// A count (lifecycle events).
    pub fn count(mut self, n: u64) -> Self {
        if let Some(l) = self.lifecycle() {
            l.count = Some(n);
        }
        self
    }
}

/// Cuts a string to `MAX_FIELD_LEN` bytes on a character boundary, marking the cut.
pub fn truncate(mut s: String) -> String {
    if s.len() > MAX_FIELD_LEN {
        let mut end = MAX_FIELD_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// What a binary records about its events, given to [`Events::start`]: the event machinery
/// names no metric itself.
#[derive(Debug, Clone, Copy)]
pub struct Recorder {
    /// Called with every event emitted, before it is queued (the sidecar's
    /// `metrics::on_event`: the event count and the metric the kind feeds).
    pub emitted: fn(&Event),
    /// `n` events lost by the sink labelled `sink`; called with 0 once per sink at start, so
    /// the series exists for alerts.
    pub dropped: fn(&str, u64),
}

impl Recorder {
    /// Records nothing.
    pub const NONE: Recorder = Recorder { emitted: |_| {}, dropped: |_, _| {} };
}

/// Where events go, each sink with the schema it writes them in.
#[derive(Debug, Clone)]
pub enum Sink {
    Stdout(EventFormat),
    Stderr(EventFormat),
    /// Appended to; reopened by [`Events::reopen`] (SIGHUP), so logrotate can move it away.
    File(PathBuf, EventFormat),
    Syslog(SyslogTarget),
    Https(HttpsTarget),
}

impl Sink {
    /// The sink `sidecar.toml` names, with the `[events]` options it uses. Reads the trust
    /// anchors (HTTPS, TLS syslog) and the HTTPS auth header now, so a bad `ca_bundle` or
    /// `auth_header_file` stops the start (and `mesh-proxy check`).
    pub fn from_config(sink: &EventSink, options: &EventOptions) -> Result<Self, String> {
        let format = options.format_of(sink);
        Ok(match sink {
            EventSink::Stdout => Sink::Stdout(format),
            EventSink::Stderr => Sink::Stderr(format),
            EventSink::File(p) => Sink::File(p.clone(), format),
            EventSink::Syslog { transport, server } => {
                let roots = match transport {
                    SyslogTransport::Tls => Some(
                        load_roots(options.ca_bundle.as_deref())
                            .map_err(|e| format!("[events] sink {sink}: {e}"))?
                            .0,
                    ),
                    SyslogTransport::Udp | SyslogTransport::Tcp => None,
                };
                Sink::Syslog(SyslogTarget {
                    transport: *transport,
                    server: server.clone(),
                    facility: options.syslog_facility,
                    format,
                    roots,
                })
            }
            EventSink::Https(url) => {
                let (roots, roots_file) = load_roots(options.ca_bundle.as_deref())
                    .map_err(|e| format!("[events] sink {url}: {e}"))?;
                let auth = match &options.auth_header_file {
                    Some(p) => {
                        Some(AuthHeader::read(p).map_err(|e| format!("[events] auth_header_file: {e}"))?)
                    }
                    None => None,
                };
                Sink::Https(HttpsTarget {
                    url: url.clone(),
                    format: options.https_format,
                    schema: format,
                    roots,
                    roots_file,
                    auth,
                })
            }
        })
    }

    /// The schema this sink writes.
    pub fn format(&self) -> EventFormat {
        match self {
            Sink::Stdout(f) | Sink::Stderr(f) | Sink::File(_, f) => *f,
            Sink::Syslog(t) => t.format,
            Sink::Https(t) => t.schema,
        }
    }

    /// A warning when a secret this sink reads (the HTTPS auth header) is readable by group
    /// or others, as for the sidecar's key and token.
    pub fn exposed_secret(&self) -> Option<String> {
        match self {
            Sink::Https(HttpsTarget { auth: Some(a), .. }) => {
                mesh_identity::fsutil::exposed_mode_warning(&a.file, "events auth header file")
            }
            _ => None,
        }
    }

    /// The kind, as the `sink` metric label says it.
    fn kind(&self) -> &'static str {
        match self {
            Sink::Stdout(_) => "stdout",
            Sink::Stderr(_) => "stderr",
            Sink::File(..) => "file",
            Sink::Syslog(t) => t.kind(),
            Sink::Https(_) => "https",
        }
    }
}

impl fmt::Display for Sink {
    /// The sink as sidecar.toml writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Stdout(_) => f.write_str("stdout"),
            Sink::Stderr(_) => f.write_str("stderr"),
            Sink::File(p, _) => write!(f, "file:{}", p.display()),
            Sink::Syslog(t) => t.fmt(f),
            Sink::Https(t) => t.fmt(f),
        }
    }
}

/// Counters one sink shares with the data plane.
#[derive(Debug)]
struct Stats {
    /// The `sink` label: the kind, numbered from the second sink of a kind on (`file_2`).
    label: String,
    /// Events offered to this sink (queued or dropped at once).
    offered: AtomicU64,
    /// Events finished with: delivered or dropped.
    done: AtomicU64,
    dropped: AtomicU64,
    /// Where losses are reported (a metric).
    report: fn(&str, u64),
}

impl Stats {
    fn lost(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.done.fetch_add(n, Ordering::Relaxed);
            (self.report)(&self.label, n);
        }
    }
}

struct SinkQueue {
    tx: mpsc::Sender<Arc<Event>>,
    stats: Arc<Stats>,
}

/// The emitting side's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Events {
    sinks: Arc<[SinkQueue]>,
    /// Bumped by [`Events::reopen`]; file sinks reopen their file when it changes.
    reopen: Arc<watch::Sender<u64>>,
    /// In-process subscribers ([`Events::subscribe`]).
    bus: broadcast::Sender<Arc<Event>>,
    /// Events subscribers lost by falling behind, over all subscribers.
    lagged: Arc<AtomicU64>,
    recorder: Recorder,
}

impl Events {
    /// Starts one task per sink, each behind a queue of `queue` events, and returns the handle
    /// plus a task owning them all (aborting it stops every sink). Must be called inside a
    /// tokio runtime.
    pub fn start(sinks: Vec<Sink>, queue: usize, recorder: Recorder) -> (Self, tokio::task::JoinHandle<()>) {
        let (reopen, _) = watch::channel(0u64);
        let mut set = JoinSet::new();
        let mut queues = Vec::with_capacity(sinks.len());
        let mut seen: Vec<&'static str> = Vec::new();
        let exposed: Vec<String> = sinks.iter().filter_map(Sink::exposed_secret).collect();
        for sink in sinks {
            let kind = sink.kind();
            seen.push(kind);
            let nth = seen.iter().filter(|k| **k == kind).count();
            let label = if nth == 1 { kind.to_owned() } else { format!("{kind}_{nth}") };
            let stats = Arc::new(Stats {
                label,
                offered: AtomicU64::new(0),
                done: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                report: recorder.dropped,
            });
            // The series exists (at 0) from the start, for alerts on it.
            (recorder.dropped)(&stats.label, 0);
            let (tx, rx) = mpsc::channel(queue.max(1));
            let feed = Feed { rx, stats: stats.clone(), reported: 0, format: sink.format() };
            match sink {
                Sink::Stdout(_) => set.spawn(stream::run(feed, stream::Target::Stdout, reopen.subscribe())),
                Sink::Stderr(_) => set.spawn(stream::run(feed, stream::Target::Stderr, reopen.subscribe())),
                Sink::File(p, _) => set.spawn(stream::run(feed, stream::Target::File(p), reopen.subscribe())),
                Sink::Syslog(t) => set.spawn(syslog::run(feed, t)),
                Sink::Https(t) => set.spawn(https::run(feed, t)),
            };
            queues.push(SinkQueue { tx, stats });
        }
        let task = tokio::spawn(async move { while set.join_next().await.is_some() {} });
        let events = Self::assemble(queues, reopen, recorder);
        // A collector's credential others can read is one others may already have: say so,
        // as the sidecar does for its key and token.
        for warning in exposed {
            events.emit(
                Event::new(EventKind::ConfigSecretExposed, Severity::Warning).reason("file_mode", warning),
            );
        }
        (events, task)
    }

    fn assemble(sinks: Vec<SinkQueue>, reopen: watch::Sender<u64>, recorder: Recorder) -> Self {
        let (bus, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        Self { sinks: sinks.into(), reopen: Arc::new(reopen), bus, lagged: Arc::default(), recorder }
    }

    /// Hands `e` to every sink and subscriber without waiting: a sink whose queue is full
    /// drops it; a subscriber that is [`SUBSCRIBER_QUEUE`] events behind loses its oldest.
    pub fn emit(&self, e: Event) {
        (self.recorder.emitted)(&e);
        let e = Arc::new(e);
        for s in self.sinks.iter() {
            s.stats.offered.fetch_add(1, Ordering::Relaxed);
            if s.tx.try_send(e.clone()).is_err() {
                s.stats.lost(1);
            }
        }
        // Fails only when nobody subscribes.
        let _ = self.bus.send(e);
    }

    /// A receiver of every event emitted from now on, for in-process consumers (detectors).
    /// It holds at most [`SUBSCRIBER_QUEUE`] unread events; past that it loses the oldest
    /// (counted in [`Subscription::lost`] and [`Events::lagged`]) and the emitting side never
    /// waits for it.
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.bus.subscribe(), self.lagged.clone())
    }

    /// Events subscribers lost by falling behind, over all subscribers so far.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Asks file sinks to reopen their files (after logrotate moved them; on SIGHUP).
    pub fn reopen(&self) {
        self.reopen.send_modify(|n| *n += 1);
    }

    /// Waits (at most `limit`) until every sink has delivered or dropped what it was given;
    /// for shutdown.
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self
                .sinks
                .iter()
                .any(|s| s.stats.done.load(Ordering::Relaxed) < s.stats.offered.load(Ordering::Relaxed))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Events lost so far, over all sinks.
    pub fn dropped(&self) -> u64 {
        self.sinks.iter().map(|s| s.stats.dropped.load(Ordering::Relaxed)).sum()
    }
}

/// One sink's end of its queue, with the bookkeeping every sink shares.
struct Feed {
    rx: mpsc::Receiver<Arc<Event>>,
    stats: Arc<Stats>,
    /// Drops already announced by an `events.dropped` notice this sink delivered.
    reported: u64,
    /// The schema this sink writes.
    format: EventFormat,
}

/// What a sink writes next: events, plus a drop notice when one is owed.
struct Batch {
    events: Vec<Arc<Event>>,
    /// The notice, and the drop total it announces.
    notice: Option<(Arc<Event>, u64)>,
}

impl Batch {
    /// Everything to write, the notice last.
    fn all(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().map(|e| &**e).chain(self.notice.as_ref().map(|(e, _)| &**e))
    }
}

impl Feed {
    /// The next batch: waits for one event, then takes up to `max` of those already queued,
    /// waiting up to `linger` for more. `None` once the handle side is gone.
    async fn next(&mut self, max: usize, linger: Duration) -> Option<Batch> {
        loop {
            let first = if self.owed() > 0 {
                match tokio::time::timeout(NOTICE_IDLE, self.rx.recv()).await {
                    Ok(Some(e)) => Some(e),
                    Ok(None) => return None,
                    // Nothing to say but the notice: send it alone.
                    Err(_) => None,
                }
            } else {
                Some(self.rx.recv().await?)
            };
            let mut events = Vec::with_capacity(max.min(64));
            if let Some(first) = first {
                events.push(first);
                let deadline = tokio::time::Instant::now() + linger;
                while events.len() < max {
                    match self.rx.try_recv() {
                        Ok(e) => events.push(e),
                        Err(_) if linger.is_zero() => break,
                        Err(_) => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Ok(Some(e)) => events.push(e),
                            _ => break,
                        },
                    }
                }
            }
            let batch = Batch { events, notice: self.notice() };
            if !batch.events.is_empty() || batch.notice.is_some() {
                return Some(batch);
            }
        }
    }

    /// Drops not yet announced.
    fn owed(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed).saturating_sub(self.reported)
    }

    fn notice(&self) -> Option<(Arc<Event>, u64)> {
        let total = self.stats.dropped.load(Ordering::Relaxed);
        let n = total.checked_sub(self.reported).filter(|n| *n > 0)?;
        let detail = format!(
            "{n} event(s) lost by sink {}: its queue was full or its destination failed",
            self.stats.label
        );
        let dropped = Dropped { sink: self.stats.label.clone(), count: n, detail };
        let e = Event::with(EventKind::EventsDropped, Severity::Warning, Fields::Dropped(dropped));
        Some((Arc::new(e), total))
    }

    /// The batch reached its destination.
    fn delivered(&mut self, b: &Batch) {
        self.stats.done.fetch_add(b.events.len() as u64, Ordering::Relaxed);
        if let Some((_, total)) = b.notice {
            self.reported = self.reported.max(total);
        }
    }

    /// `n` of the batch's events were lost (a notice is simply owed again).
    fn lost(&self, n: usize) {
        self.stats.lost(n as u64);
    }

    /// `n` events of earlier batches, already counted as delivered (handed to the output
    /// thread), never reached their destination after all.
    fn undelivered(&self, n: u64) {
        if n > 0 {
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            (self.stats.report)(&self.stats.label, n);
        }
    }

    /// Part of a batch made it: `ok` events delivered, `failed` lost, and the notice made
    /// it if `notice_ok`.
    fn partly(&mut self, b: &Batch, ok: usize, failed: usize, notice_ok: bool) {
        self.stats.done.fetch_add(ok as u64, Ordering::Relaxed);
        self.stats.lost(failed as u64);
        if let (true, Some((_, total))) = (notice_ok, &b.notice) {
            self.reported = self.reported.max(*total);
        }
    }
}

impl Feed {
    /// One event as a JSON object in this sink's schema (without a newline).
    fn encode(&self, e: &Event, out: &mut Vec<u8>) {
        format::encode(e, self.format, out);
    }
}

#[cfg(test)]
mod tests;
