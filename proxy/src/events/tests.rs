//! The event schema's escaping, and the queue discipline every sink shares: drop instead of
//! wait, count what was lost, announce it once the sink delivers again; file reopening.

use super::*;

fn stats(label: &str) -> Arc<Stats> {
    Arc::new(Stats {
        label: label.into(),
        offered: AtomicU64::new(0),
        done: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    })
}

/// An `Events` with one sink of `queue` whose consumer is the returned feed (not running).
fn one_sink(queue: usize) -> (Events, Feed) {
    let (tx, rx) = mpsc::channel(queue);
    let stats = stats("test");
    let (reopen, _) = watch::channel(0);
    let events =
        Events { sinks: vec![SinkQueue { tx, stats: stats.clone() }].into(), reopen: Arc::new(reopen) };
    (events, Feed { rx, stats, reported: 0 })
}

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
    let (events, _feed) = one_sink(1);
    for _ in 0..10 {
        events.emit(Event::new("connection", Severity::Info));
    }
    assert_eq!(events.dropped(), 9);
}

#[tokio::test]
async fn drops_are_announced_once_the_sink_delivers_again() {
    let (events, mut feed) = one_sink(2);
    for _ in 0..5 {
        events.emit(Event::new("connection", Severity::Info));
    }
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert_eq!(b.events.len(), 2);
    let (notice, total) = b.notice.as_ref().expect("3 drops are owed");
    assert_eq!(
        (notice.event, notice.count, notice.sink.as_deref(), *total),
        ("events.dropped", Some(3), Some("test"), 3)
    );
    // The write failed: the notice stays owed, and the batch's events join the count.
    feed.lost(b.events.len());
    events.emit(Event::new("connection", Severity::Info));
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert_eq!(b.notice.as_ref().map(|(e, _)| e.count), Some(Some(5)));
    feed.delivered(&b);
    // Announced: nothing more is owed.
    events.emit(Event::new("connection", Severity::Info));
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert!(b.notice.is_none());
    feed.delivered(&b);
    assert_eq!(feed.stats.done.load(Ordering::Relaxed), feed.stats.offered.load(Ordering::Relaxed));
}

#[tokio::test]
async fn an_owed_notice_goes_out_alone_when_nothing_else_comes() {
    let (events, mut feed) = one_sink(1);
    events.emit(Event::new("connection", Severity::Info));
    events.emit(Event::new("connection", Severity::Info));
    let b = feed.next(10, Duration::ZERO).await.expect("a batch");
    assert_eq!(b.events.len(), 1);
    feed.lost(1);
    let b = feed.next(10, Duration::ZERO).await.expect("the notice alone");
    assert!(b.events.is_empty());
    assert_eq!(b.notice.as_ref().map(|(e, _)| e.count), Some(Some(2)));
}

#[tokio::test]
async fn file_sinks_reopen_after_rotation() {
    let dir = std::env::temp_dir().join(format!("mesh-events-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("events.log");
    let (events, task) = Events::start(vec![Sink::File(path.clone())], 16);
    events.emit(Event::new("proxy.started", Severity::Info));
    events.flush(Duration::from_secs(5)).await;
    let rotated = dir.join("events.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    events.reopen();
    events.emit(Event::new("proxy.stopping", Severity::Info));
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
    let (events, task) =
        Events::start(vec![Sink::Stderr, Sink::File(dir.join("a")), Sink::File(dir.join("b"))], 4);
    let labels: Vec<&str> = events.sinks.iter().map(|s| s.stats.label.as_str()).collect();
    assert_eq!(labels, ["stderr", "file", "file_2"]);
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
