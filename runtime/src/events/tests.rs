//! The event schema (escaping, the timestamp, each kind's fields), the queue discipline every
//! sink shares (drop instead of wait, count what was lost, announce it once the sink delivers
//! again), file reopening, and subscriptions.

use super::*;

fn stats(label: &str) -> Arc<Stats> {
    Arc::new(Stats {
        label: label.into(),
        offered: AtomicU64::new(0),
        done: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        report: |_, _| {},
    })
}

fn ev() -> Event {
    Event::new(EventKind::ProxyStarted, Severity::Info)
}

/// The drop notice in a batch: (count, sink).
fn notice_of(b: &Batch) -> Option<(u64, &str)> {
    match &b.notice.as_ref()?.0.fields {
        Fields::Dropped(d) => Some((d.count, d.sink.as_str())),
        _ => None,
    }
}

/// An `Events` with one sink of `queue` whose consumer is the returned feed (not running).
fn one_sink(queue: usize) -> (Events, Feed) {
    let (tx, rx) = mpsc::channel(queue);
    let stats = stats("test");
    let (reopen, _) = watch::channel(0);
    let events = Events::assemble(vec![SinkQueue { tx, stats: stats.clone() }], reopen, Recorder::NONE);
    (events, Feed { rx, stats, reported: 0, format: EventFormat::Json })
}

#[test]
fn escapes_control_characters_and_truncates() {
    let e = Event::new(EventKind::PolicyReloadFailed, Severity::Warning)
        .reason("x", format!("a\u{1b}[31m\n{}", "z".repeat(1000)));
    let line = serde_json::to_string(&e).expect("json");
    assert!(!line.contains('\n') && !line.contains('\u{1b}'));
    assert!(line.contains("\\u001b"));
    let v: serde_json::Value = serde_json::from_str(&line).expect("parse");
    assert!(v["reason_detail"].as_str().expect("str").len() <= MAX_FIELD_LEN + 3);
}

#[tokio::test]
async fn full_queue_drops_instead_of_blocking() {
    let (events, _feed) = one_sink(1);
    for _ in 0..10 {
        events.emit(ev());
    }
    assert_eq!(events.dropped(), 9);
}

#[tokio::test]
async fn drops_are_announced_once_the_sink_delivers_again() {
    let (events, mut feed) = one_sink(2);
    for _ in 0..5 {
        events.emit(ev());
    }
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert_eq!(b.events.len(), 2);
    let (notice, total) = b.notice.as_ref().expect("3 drops are owed");
    assert_eq!((notice.event.as_str(), *total), ("events.dropped", 3));
    assert_eq!(notice_of(&b), Some((3, "test")));
    // The write failed: the notice stays owed, and the batch's events join the count.
    feed.lost(b.events.len());
    events.emit(ev());
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert_eq!(notice_of(&b).map(|n| n.0), Some(5));
    feed.delivered(&b);
    // Announced: nothing more is owed.
    events.emit(ev());
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert!(b.notice.is_none());
    feed.delivered(&b);
    assert_eq!(feed.stats.done.load(Ordering::Relaxed), feed.stats.offered.load(Ordering::Relaxed));
}

#[tokio::test]
async fn an_owed_notice_goes_out_alone_when_nothing_else_comes() {
    let (events, mut feed) = one_sink(1);
    events.emit(ev());
    events.emit(ev());
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert_eq!(b.events.len(), 1);
    feed.lost(1);
    let b = feed.next(10, Duration::ZERO).await.expect("the notice alone");
    assert!(b.events.is_empty());
    assert_eq!(notice_of(&b).map(|n| n.0), Some(2));
}

#[tokio::test]
async fn file_sinks_reopen_after_rotation() {
    let dir = std::env::temp_dir().join(format!("mesh-events-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("events.log");
    let (events, task) = Events::start(vec![Sink::File(path.clone(), EventFormat::Json)], 16, Recorder::NONE);
    events.emit(Event::new(EventKind::ProxyStarted, Severity::Info));
    events.flush(Duration::from_secs(5)).await;
    let rotated = dir.join("events.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    events.reopen();
    events.emit(Event::new(EventKind::ProxyStopping, Severity::Info));
    events.flush(Duration::from_secs(5)).await;
    task.abort();
    let old = std::fs::read_to_string(&rotated).expect("the rotated file");
    let new = std::fs::read_to_string(&path).expect("a new file at the configured path");
    assert!(old.contains("proxy.started") && !old.contains("proxy.stopping"), "{old}");
    assert!(new.contains("proxy.stopping") && !new.contains("proxy.started"), "{new}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "events are not world-readable: {mode:o}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sink_labels_number_repeated_kinds() {
    let dir = std::env::temp_dir().join(format!("mesh-events-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (events, task) = Events::start(
        vec![
            Sink::Stderr(EventFormat::Json),
            Sink::File(dir.join("a"), EventFormat::Json),
            Sink::File(dir.join("b"), EventFormat::Json),
        ],
        4,
        Recorder::NONE,
    );
    let labels: Vec<&str> = events.sinks.iter().map(|s| s.stats.label.as_str()).collect();
    assert_eq!(labels, ["stderr", "file", "file_2"]);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timestamps_are_rfc_3339_utc_with_six_digits() {
    let mut e = ev();
    e.timestamp = time::macros::datetime!(2026-11-28 14:12:58.48 +02:00);
    let v: serde_json::Value = serde_json::to_value(&e).expect("json");
    assert_eq!(v["timestamp"], "2026-11-28T12:12:58.480000Z");
    let now = serde_json::to_value(ev()).expect("json");
    let ts = now["timestamp"].as_str().expect("a string");
    let parsed = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339);
    assert!(parsed.is_ok() && ts.len() == "2026-11-28T12:12:58.480000Z".len(), "{ts}");
}

#[test]
fn each_kind_serializes_its_own_fields_flat() {
    let c = Connection {
        direction: "inbound",
        listener: "127.0.0.1:1".into(),
        src_addr: "127.0.0.1:2".into(),
        decision: Some("allow"),
        bytes_in: Some(5),
        bytes_out: Some(0),
        duration_ms: 7,
        ..Connection::default()
    };
    let e = Event::connection(EventKind::Connection, Severity::Info, c).reason("closed", "");
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!((v["event"].as_str(), v["severity"].as_str()), (Some("connection"), Some("info")));
    assert_eq!(
        (v["direction"].as_str(), v["bytes_in"].as_u64(), v["duration_ms"].as_u64()),
        (Some("inbound"), Some(5), Some(7))
    );
    assert_eq!(v["reason"], "closed");
    assert!(v.get("src_id").is_none() && v.get("fields").is_none(), "absent fields are omitted: {v}");

    let e = Event::ca(Severity::Info, Ca::OwnCertificateRenewed { not_after: "1764000000".into() });
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!(v["event"], "ca.own_certificate_renewed");
    assert_eq!((v["source"].as_str(), v["not_after"].as_str()), (Some("mesh-ca"), Some("1764000000")));
    let e = Event::ca(Severity::Warning, Ca::TokenRejected { peer: "p".into(), reason: "r".repeat(1000) });
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!((v["event"].as_str(), v["peer"].as_str()), (Some("token.rejected"), Some("p")));
    assert!(v["reason"].as_str().expect("str").len() <= MAX_FIELD_LEN + 3, "CA text is cut too");

    let e = ev().src_id("spiffe://example.org/ns/a/sa/b").listener("l").count(3).detail("d");
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!(
        (v["src_id"].as_str(), v["count"].as_u64(), v["detail"].as_str()),
        (Some("spiffe://example.org/ns/a/sa/b"), Some(3), Some("d"))
    );
}

#[test]
fn kind_names_are_the_documented_ones() {
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    for name in
        ["connection", "tls.handshake_failed", "policy.deny", "events.dropped", "ca.started", "token.used"]
    {
        assert!(names.contains(&name), "{name}");
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
    for k in EventKind::ALL {
        assert!(readme.contains(&format!("`{}`", k.as_str())), "README lacks event {}", k.as_str());
    }
}

#[tokio::test]
async fn subscribers_see_every_event_and_a_lagging_one_loses_the_oldest_counted() {
    let (events, _feed) = one_sink(1);
    let mut keeping_up = events.subscribe();
    let mut lagging = events.subscribe();
    let total = SUBSCRIBER_QUEUE as u64 + 10;
    for i in 0..total {
        events.emit(ev().count(i));
        // One subscriber reads as it goes; the emitting side never waits for the other.
        let e = keeping_up.try_recv().expect("the event just emitted");
        assert!(matches!(&e.fields, Fields::Lifecycle(l) if l.count == Some(i)));
    }
    assert_eq!(keeping_up.lost(), 0);
    let first = lagging.recv().await.expect("an event");
    // The oldest ten were overwritten: the first one read is the eleventh emitted.
    assert!(matches!(&first.fields, Fields::Lifecycle(l) if l.count == Some(10)), "{first:?}");
    assert_eq!((lagging.lost(), events.lagged()), (10, 10));
    let mut rest = 0;
    while lagging.try_recv().is_some() {
        rest += 1;
    }
    assert_eq!(rest + 1, SUBSCRIBER_QUEUE);
    // Sinks are not affected by subscribers: this one's queue of 1 dropped the rest.
    assert_eq!(events.dropped(), total - 1);
}

#[tokio::test]
async fn a_subscription_ends_when_every_handle_is_gone() {
    let (events, _feed) = one_sink(4);
    let mut sub = events.subscribe();
    events.emit(ev());
    drop(events);
    assert!(sub.recv().await.is_some(), "what was emitted before is still delivered");
    assert!(sub.recv().await.is_none());
}
