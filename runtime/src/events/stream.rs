//! Stream sinks: stdout, stderr and files, one JSON object per line (in the sink's schema), a
//! batch per write.
//!
//! stdout and stderr go through [`crate::output`]'s writer thread: a closed, failing or
//! stalled stream loses events (counted in `mesh_events_dropped_total`) and never blocks or
//! kills the process.
//!
//! Files are opened for appending (created 0640: events name identities and addresses) and
//! reopened after [`super::Events::reopen`] (SIGHUP), at the next write: logrotate moves the
//! file away, signals, and the next event starts the new file. A file that cannot be opened
//! or written loses the batch (counted) and is tried again with the next one.

use std::path::PathBuf;
use std::time::Duration;

use crate::output::{self, LineWriter};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::Feed;

/// Most events per write.
const MAX_BATCH: usize = 512;

/// How long a batch waits for more events after its first. Every file write goes through
/// tokio's blocking pool (a thread hand-off and a futex wake each), and every stdout/stderr
/// batch wakes the output thread; under a thousand new connections a second, waiting 10 ms
/// turns one write per event into one per dozens, at the cost of events reaching the sink up
/// to 10 ms later.
const LINGER: Duration = Duration::from_millis(10);

pub(super) enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

async fn open(path: &PathBuf) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(path).await
}

pub(super) async fn run(feed: Feed, target: Target, reopen: watch::Receiver<u64>) {
    match target {
        Target::Stdout => to_stream(feed, output::stdout()).await,
        Target::Stderr => to_stream(feed, output::stderr()).await,
        Target::File(path) => to_file(feed, path, reopen).await,
    }
}

/// stdout and stderr: each batch is handed to the process's output thread
/// ([`crate::output`]), which never blocks this task. A batch that does not fit its queue is
/// lost; events the thread could not write (a closed pipe) are counted as lost when seen, and
/// the thread reports the failure itself (stdout's on stderr), once.
async fn to_stream(mut feed: Feed, out: &'static LineWriter) {
    let mut failed_seen = out.stats().failed;
    while let Some(batch) = feed.next(MAX_BATCH, LINGER).await {
        let failed = out.stats().failed;
        feed.undelivered(failed.saturating_sub(failed_seen));
        failed_seen = failed;
        let mut buf = Vec::with_capacity(batch.events.len() * 512);
        for e in batch.all() {
            feed.encode(e, &mut buf);
            buf.push(b'\n');
        }
        // The notice is not an event: only events count.
        if out.lines(buf, batch.events.len() as u64) {
            feed.delivered(&batch);
        } else {
            feed.lost(batch.events.len());
        }
    }
}

async fn to_file(mut feed: Feed, path: PathBuf, mut reopen: watch::Receiver<u64>) {
    let mut out: Option<tokio::fs::File> = None;
    // Say so once per failure streak, not once per batch.
    let mut failing = false;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(batch) = feed.next(MAX_BATCH, LINGER).await {
        if reopen.has_changed().unwrap_or(false) {
            reopen.borrow_and_update();
            if let Some(mut old) = out.take() {
                let _ = old.flush().await;
            }
        }
        if out.is_none() {
            match open(&path).await {
                Ok(o) => out = Some(o),
                Err(e) => {
                    if !failing {
                        tracing::warn!("event sink file:{} unusable, dropping events: {e}", path.display());
                        failing = true;
                    }
                    feed.lost(batch.events.len());
                    continue;
                }
            }
        }
        buf.clear();
        for e in batch.all() {
            feed.encode(e, &mut buf);
            buf.push(b'\n');
        }
        let Some(o) = out.as_mut() else { continue };
        match async { o.write_all(&buf).await.and(o.flush().await) }.await {
            Ok(()) => {
                failing = false;
                feed.delivered(&batch);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("event sink file:{} failed, dropping events: {e}", path.display());
                    failing = true;
                }
                out = None;
                feed.lost(batch.events.len());
            }
        }
    }
}
