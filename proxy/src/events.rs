//! Structured security events: one JSON object per line, written by a background task.
//!
//! The data plane only ever does a non-blocking `try_send` into a bounded queue: a slow or
//! broken sink drops events (counted, and reported by an `events.dropped` event once the sink
//! keeps up again) and never slows a connection. Peer-controlled text is truncated here;
//! JSON escaping (control characters included) is serde_json's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Room for bursts; past this the data plane drops instead of waiting.
const QUEUE_LEN: usize = 8192;
/// Longest peer-controlled string kept in an event.
const MAX_FIELD_LEN: usize = 256;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// One event. Field names follow ECS-like conventions (`src_id`, `dst_id`, `decision`,
/// `reason`) so SIEM mappings stay simple; absent fields are omitted.
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
    File(PathBuf),
}

/// The data plane's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    /// Events queued and events handed to the sinks, so `flush` knows when the queue is done.
    sent: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl Events {
    /// Starts the writer task for `sinks` and returns the handle plus the task.
    pub fn start(sinks: Vec<Sink>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(writer(rx, sinks, dropped.clone(), written.clone()));
        (Self { tx, dropped, sent: Arc::new(AtomicU64::new(0)), written }, task)
    }

    pub fn emit(&self, e: Event) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `limit`) until every queued event has been written; for shutdown.
    pub async fn flush(&self, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.written.load(Ordering::Relaxed) < self.sent.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Events lost so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn open(sink: &Sink) -> std::io::Result<Box<dyn AsyncWrite + Unpin + Send>> {
    Ok(match sink {
        Sink::Stdout => Box::new(tokio::io::stdout()),
        Sink::Stderr => Box::new(tokio::io::stderr()),
        Sink::File(p) => Box::new(tokio::fs::OpenOptions::new().create(true).append(true).open(p).await?),
    })
}

async fn writer(
    mut rx: mpsc::Receiver<Event>,
    sinks: Vec<Sink>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
) {
    let mut outs = Vec::new();
    for s in &sinks {
        match open(s).await {
            Ok(w) => outs.push(w),
            Err(e) => eprintln!("mesh-proxy: event sink {s:?} unusable: {e}"),
        }
    }
    let mut reported_drops = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut taken = 1u64;
        fn push(buf: &mut Vec<u8>, e: &Event) {
            if serde_json::to_writer(&mut *buf, e).is_ok() {
                buf.push(b'\n');
            }
        }
        push(&mut buf, &first);
        // Batch whatever else is queued into one write per sink.
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(e) => {
                    push(&mut buf, &e);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported_drops {
            let e = Event::new("events.dropped", Severity::Warning).detail(format!(
                "{} events dropped because the event queue was full",
                now_dropped - reported_drops
            ));
            push(&mut buf, &e);
            reported_drops = now_dropped;
        }
        for out in outs.iter_mut() {
            if out.write_all(&buf).await.is_err() || out.flush().await.is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        written.fetch_add(taken, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_and_truncates() {
        let e = Event::new("policy.deny", Severity::Warning)
            .reason("x", format!("a\u{1b}[31m\n{}", "z".repeat(1000)));
        let line = serde_json::to_string(&e).expect("json");
        assert!(!line.contains('\n') && !line.contains('\u{1b}'));
        assert!(line.contains("\\u001b"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("parse");
        assert!(v["reason_detail"].as_str().expect("str").len() <= MAX_FIELD_LEN + 3);
    }

    #[tokio::test]
    async fn full_queue_drops_instead_of_blocking() {
        let (tx, _rx) = mpsc::channel(1);
        let events = Events {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            sent: Arc::default(),
            written: Arc::default(),
        };
        for _ in 0..10 {
            events.emit(Event::new("connection", Severity::Info));
        }
        assert_eq!(events.dropped(), 9);
    }
}
