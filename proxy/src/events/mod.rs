//! Structured security events: the [`Event`] schema, and the fan-out to the configured sinks.
//!
//! The data plane only ever does a non-blocking `try_send` into one bounded queue per sink
//! ([`Events::emit`]). Each sink drains its own queue in its own task, so a slow, full or dead
//! sink drops its own events (counted in `mesh_events_dropped_total{sink}`, and reported by an
//! `events.dropped` event in that sink's stream once it delivers again) and never slows a
//! connection or another sink. Peer-controlled text is truncated here; JSON escaping (control
//! characters included) is serde_json's.
//!
//! Sinks: `stream` (stdout, stderr, files reopened on SIGHUP), `syslog` (RFC 5424 over UDP, or
//! TCP with octet counting), `https` (batched POSTs with bounded retries). This module does
//! not decide what is an event: `outcome` writes the per-connection ones, each task its own.

mod https;
mod stream;
mod syslog;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_config::sidecar::{EventOptions, EventSink};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use https::{load_roots, HttpsTarget};
pub use syslog::SyslogTarget;

/// Longest peer-controlled string kept in an event.
const MAX_FIELD_LEN: usize = 256;
/// While a sink owes an `events.dropped` notice and no event comes, it sends the notice alone
/// after this long.
const NOTICE_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One event. Field names are documented in the README with their ECS and OCSF equivalents;
/// absent fields are omitted.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub timestamp: String,
    pub event: &'static str,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// A short reason from a bounded set (e.g. `unknown_ca`, `no_rule`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The full explanation; may quote peer-controlled text (truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Whether the connection's handshake resumed an earlier session (no certificates were
    /// exchanged this time; the identity is the one verified when the session began).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_resumed: Option<bool>,
    /// `events.dropped`: the sink that lost events, and how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    pub fn new(event: &'static str, severity: Severity) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            timestamp: now.format(&Rfc3339).unwrap_or_default(),
            event,
            severity,
            direction: None,
            listener: None,
            src_id: None,
            dst_id: None,
            src_addr: None,
            dst_addr: None,
            decision: None,
            rule: None,
            reason: None,
            reason_detail: None,
            bytes_in: None,
            bytes_out: None,
            duration_ms: None,
            tls_resumed: None,
            sink: None,
            count: None,
            detail: None,
        }
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(truncate(d.into()));
        self
    }

    pub fn reason(mut self, reason: &'static str, detail: impl Into<String>) -> Self {
        self.reason = Some(reason);
        self.reason_detail = Some(truncate(detail.into()));
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

/// Where events go.
#[derive(Debug, Clone)]
pub enum Sink {
    Stdout,
    Stderr,
    /// Appended to; reopened by [`Events::reopen`] (SIGHUP), so logrotate can move it away.
    File(PathBuf),
    Syslog(SyslogTarget),
    Https(HttpsTarget),
}

impl Sink {
    /// The sink `sidecar.toml` names, with the `[events]` options it uses. Reads the HTTPS
    /// trust anchors now, so a bad `ca_bundle` stops the start (and `mesh-proxy check`).
    pub fn from_config(sink: &EventSink, options: &EventOptions) -> Result<Self, String> {
        Ok(match sink {
            EventSink::Stdout => Sink::Stdout,
            EventSink::Stderr => Sink::Stderr,
            EventSink::File(p) => Sink::File(p.clone()),
            EventSink::Syslog { transport, server } => Sink::Syslog(SyslogTarget {
                transport: *transport,
                server: server.clone(),
                facility: options.syslog_facility,
            }),
            EventSink::Https(url) => {
                let (roots, roots_file) = load_roots(options.ca_bundle.as_deref())
                    .map_err(|e| format!("[events] sink {url}: {e}"))?;
                Sink::Https(HttpsTarget { url: url.clone(), format: options.https_format, roots, roots_file })
            }
        })
    }

    /// The kind, as the `sink` metric label says it.
    fn kind(&self) -> &'static str {
        match self {
            Sink::Stdout => "stdout",
            Sink::Stderr => "stderr",
            Sink::File(_) => "file",
            Sink::Syslog(t) => t.kind(),
            Sink::Https(_) => "https",
        }
    }
}

impl fmt::Display for Sink {
    /// The sink as sidecar.toml writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Stdout => f.write_str("stdout"),
            Sink::Stderr => f.write_str("stderr"),
            Sink::File(p) => write!(f, "file:{}", p.display()),
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
}

impl Stats {
    fn lost(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.done.fetch_add(n, Ordering::Relaxed);
            crate::metrics::events_dropped(&self.label, n);
        }
    }
}

struct SinkQueue {
    tx: mpsc::Sender<Arc<Event>>,
    stats: Arc<Stats>,
}

/// The data plane's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Events {
    sinks: Arc<[SinkQueue]>,
    /// Bumped by [`Events::reopen`]; file sinks reopen their file when it changes.
    reopen: Arc<watch::Sender<u64>>,
}

impl Events {
    /// Starts one task per sink, each behind a queue of `queue` events, and returns the handle
    /// plus a task owning them all (aborting it stops every sink).
    pub fn start(sinks: Vec<Sink>, queue: usize) -> (Self, tokio::task::JoinHandle<()>) {
        let (reopen, _) = watch::channel(0u64);
        let mut set = JoinSet::new();
        let mut queues = Vec::with_capacity(sinks.len());
        let mut seen: Vec<&'static str> = Vec::new();
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
            });
            // The series exists (at 0) from the start, for alerts on it.
            crate::metrics::events_dropped(&stats.label, 0);
            let (tx, rx) = mpsc::channel(queue.max(1));
            let feed = Feed { rx, stats: stats.clone(), reported: 0 };
            match sink {
                Sink::Stdout => set.spawn(stream::run(feed, stream::Target::Stdout, reopen.subscribe())),
                Sink::Stderr => set.spawn(stream::run(feed, stream::Target::Stderr, reopen.subscribe())),
                Sink::File(p) => set.spawn(stream::run(feed, stream::Target::File(p), reopen.subscribe())),
                Sink::Syslog(t) => set.spawn(syslog::run(feed, t)),
                Sink::Https(t) => set.spawn(https::run(feed, t)),
            };
            queues.push(SinkQueue { tx, stats });
        }
        let task = tokio::spawn(async move { while set.join_next().await.is_some() {} });
        (Self { sinks: queues.into(), reopen: Arc::new(reopen) }, task)
    }

    /// Hands `e` to every sink without waiting: a sink whose queue is full drops it.
    pub fn emit(&self, e: Event) {
        crate::metrics::on_event(&e);
        let e = Arc::new(e);
        for s in self.sinks.iter() {
            s.stats.offered.fetch_add(1, Ordering::Relaxed);
            if s.tx.try_send(e.clone()).is_err() {
                s.stats.lost(1);
            }
        }
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
        let mut e = Event::new("events.dropped", Severity::Warning).detail(format!(
            "{n} event(s) lost by sink {}: its queue was full or its destination failed",
            self.stats.label
        ));
        e.sink = Some(self.stats.label.clone());
        e.count = Some(n);
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
            crate::metrics::events_dropped(&self.stats.label, n);
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

/// One event as a JSON line (without the newline).
fn json_line(e: &Event, out: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *out, e).is_err() {
        // Serializing these plain fields cannot fail; write a valid object anyway.
        out.extend_from_slice(br#"{"event":"events.serialize_failed","severity":"error"}"#);
    }
}

#[cfg(test)]
mod tests;
