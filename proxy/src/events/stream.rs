//! Stream sinks: stdout, stderr and files, one JSON object per line, a batch per write.
//!
//! Files are opened for appending (created 0640: events name identities and addresses) and
//! reopened after [`super::Events::reopen`] (SIGHUP), at the next write: logrotate moves the
//! file away, signals, and the next event starts the new file. A file that cannot be opened
//! or written loses the batch (counted) and is tried again with the next one.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{json_line, Feed};

/// Most events per write.
const MAX_BATCH: usize = 512;

/// How long a batch waits for more events after its first. Every write to stdout or a file
/// goes through tokio's blocking pool (a thread hand-off and a futex wake each); under a
/// thousand new connections a second, waiting 10 ms turns one write per event into one per
/// dozens, at the cost of events reaching the sink up to 10 ms later.
const LINGER: Duration = Duration::from_millis(10);

pub(super) enum Target {
    Stdout,
    Stderr,
    File(PathBuf),
}

type Out = Box<dyn AsyncWrite + Unpin + Send>;

async fn open(target: &Target) -> std::io::Result<Out> {
    Ok(match target {
        Target::Stdout => Box::new(tokio::io::stdout()),
        Target::Stderr => Box::new(tokio::io::stderr()),
        Target::File(p) => {
            Box::new(tokio::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(p).await?)
        }
    })
}

fn name(target: &Target) -> String {
    match target {
        Target::Stdout => "stdout".into(),
        Target::Stderr => "stderr".into(),
        Target::File(p) => format!("file:{}", p.display()),
    }
}

pub(super) async fn run(mut feed: Feed, target: Target, mut reopen: watch::Receiver<u64>) {
    let mut out: Option<Out> = None;
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
            match open(&target).await {
                Ok(o) => out = Some(o),
                Err(e) => {
                    if !failing {
                        eprintln!("mesh-proxy: event sink {} unusable, dropping events: {e}", name(&target));
                        failing = true;
                    }
                    feed.lost(batch.events.len());
                    continue;
                }
            }
        }
        buf.clear();
        for e in batch.all() {
            json_line(e, &mut buf);
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
                    eprintln!("mesh-proxy: event sink {} failed, dropping events: {e}", name(&target));
                    failing = true;
                }
                out = None;
                feed.lost(batch.events.len());
            }
        }
    }
}
