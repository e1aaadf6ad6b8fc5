//! Output that can neither stop nor stall a server: every stdout and stderr line of
//! `mesh-ca serve` and `mesh-proxy run` goes through a [`LineWriter`], a bounded queue that one
//! dedicated thread per stream drains.
//!
//! Why: `println!`/`eprintln!` panic when a write fails (a log reader that went away gives
//! EPIPE; Rust ignores SIGPIPE, so EPIPE arrives as an error), and release builds abort on a
//! panic; and they block the calling thread, an async worker, while a pipe nobody reads is
//! full. Here the caller only appends to a queue: when the queue is full the line is dropped
//! and counted; when a write fails the error is noted once (for stdout, with a line on
//! stderr) and later failures are only counted. The thread writes to its own duplicate of the
//! file descriptor, so a write stuck in the kernel holds no lock that anyone else needs.
//!
//! What it does not do: it is not an audit trail (the CA's durable records are its store), and
//! it does not serve CLI commands that print one result and exit; those write directly and
//! exit with an error code when the write fails.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Bytes a stream may hold queued; a line that does not fit is dropped. The writer thread may
/// hold as much again in the write it is doing, so a stalled stream costs at most twice this.
pub const QUEUE_BYTES: usize = 1024 * 1024;

/// Called once, with the writer's name, on its first failed write.
type OnFirstError = Box<dyn Fn(&str, &io::Error) + Send + Sync>;

/// A non-blocking line writer: [`LineWriter::line`] never waits and never fails.
pub struct LineWriter {
    shared: Arc<Shared>,
}

/// What a writer has done so far. Counts are of the units callers gave ([`LineWriter::lines`]),
/// lines for [`LineWriter::line`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub written: u64,
    /// Refused because the queue was full (or the writer thread could not start).
    pub dropped: u64,
    /// Handed to the destination, which failed.
    pub failed: u64,
}

struct Shared {
    name: &'static str,
    capacity: usize,
    state: Mutex<State>,
    /// Wakes the writer thread: something was queued, or the writer was dropped.
    queued: Condvar,
    /// Wakes [`LineWriter::flush`]: the queue is empty and no write is under way.
    idle: Condvar,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    /// Set by the first failed write; later failures are counted, not reported.
    noted: AtomicBool,
    on_first_error: Option<OnFirstError>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Vec<u8>, u64)>,
    bytes: usize,
    /// The writer thread has taken lines and not finished writing them.
    busy: bool,
    /// No thread drains this writer (it could not be started, or the writer was dropped).
    closed: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LineWriter {
    /// A writer draining into `dest` on a thread of its own, holding up to `capacity` bytes.
    /// If the thread cannot be started, every line is dropped (and counted).
    pub fn new(name: &'static str, dest: Box<dyn Write + Send>, capacity: usize) -> Self {
        Self::build(name, Some(dest), capacity, None)
    }

    fn build(
        name: &'static str,
        dest: Option<Box<dyn Write + Send>>,
        capacity: usize,
        on_first_error: Option<OnFirstError>,
    ) -> Self {
        let shared = Arc::new(Shared {
            name,
            capacity,
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            idle: Condvar::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            noted: AtomicBool::new(false),
            on_first_error,
        });
        let started = dest.and_then(|dest| {
            let s = shared.clone();
            std::thread::Builder::new().name(format!("output-{name}")).spawn(move || drain(&s, dest)).ok()
        });
        if started.is_none() {
            lock(&shared.state).closed = true;
        }
        Self { shared }
    }

    /// Queues one line (a newline is added unless `text` ends with one). Returns false when it
    /// was dropped instead.
    pub fn line(&self, text: &str) -> bool {
        let mut buf = Vec::with_capacity(text.len() + 1);
        buf.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            buf.push(b'\n');
        }
        self.lines(buf, 1)
    }

    /// Queues `buf` (whole lines, each ending in a newline) as `count` units for the counters
    /// (an event sink counts its events, not the notices among them). Returns false when it was
    /// dropped instead.
    pub fn lines(&self, buf: Vec<u8>, count: u64) -> bool {
        if buf.is_empty() {
            return true;
        }
        let mut st = lock(&self.shared.state);
        if st.closed || st.bytes + buf.len() > self.shared.capacity {
            drop(st);
            self.shared.dropped.fetch_add(count, Ordering::Relaxed);
            return false;
        }
        st.bytes += buf.len();
        st.queue.push_back((buf, count));
        drop(st);
        self.shared.queued.notify_one();
        true
    }

    /// Waits up to `limit` until everything queued has been written (or has failed); true if
    /// it all went. For a clean exit: lines still queued when a process exits are lost.
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = lock(&self.shared.state);
        while !st.closed && (st.busy || !st.queue.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.shared.idle.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        st.queue.is_empty()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            written: self.shared.written.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LineWriter {
    /// Lets the thread end once the queue is empty (a thread stuck in a write stays stuck).
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.queued.notify_all();
    }
}

/// The writer thread: takes everything queued, writes it in one go, repeats.
fn drain(shared: &Shared, mut dest: Box<dyn Write + Send>) {
    let mut buf = Vec::new();
    loop {
        let mut count = 0;
        {
            let mut st = lock(&shared.state);
            st.busy = false;
            while st.queue.is_empty() {
                shared.idle.notify_all();
                if st.closed {
                    return;
                }
                st = shared.queued.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.busy = true;
            st.bytes = 0;
            buf.clear();
            for (chunk, n) in st.queue.drain(..) {
                buf.extend_from_slice(&chunk);
                count += n;
            }
        }
        match dest.write_all(&buf).and_then(|()| dest.flush()) {
            Ok(()) => {
                shared.written.fetch_add(count, Ordering::Relaxed);
            }
            Err(e) => {
                shared.failed.fetch_add(count, Ordering::Relaxed);
                if !shared.noted.swap(true, Ordering::Relaxed) {
                    if let Some(note) = &shared.on_first_error {
                        note(shared.name, &e);
                    }
                }
            }
        }
    }
}

/// A duplicate of `fd` to write to, so the writer thread shares no lock with `std::io`.
fn duplicate(fd: std::os::fd::BorrowedFd<'_>) -> Option<Box<dyn Write + Send>> {
    fd.try_clone_to_owned().ok().map(|fd| Box::new(File::from(fd)) as Box<dyn Write + Send>)
}

/// The running program's file name (`mesh-proxy`, `mesh-ca`): the prefix of its diagnostics.
pub fn program() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mesh".into())
}

static STDOUT: OnceLock<LineWriter> = OnceLock::new();
static STDERR: OnceLock<LineWriter> = OnceLock::new();

/// The process's stdout writer (started on first use). Its first failed write is reported
/// with one line on [`stderr`].
pub fn stdout() -> &'static LineWriter {
    STDOUT.get_or_init(|| {
        let note: OnFirstError = Box::new(|name, e| {
            stderr().line(&format!(
                "{}: {name} failed ({e}); lines that cannot be written are dropped",
                program()
            ));
        });
        LineWriter::build("stdout", duplicate(io::stdout().as_fd()), QUEUE_BYTES, Some(note))
    })
}

/// The process's stderr writer (started on first use). Its failures have nowhere to be
/// reported; they are counted.
pub fn stderr() -> &'static LineWriter {
    STDERR.get_or_init(|| LineWriter::build("stderr", duplicate(io::stderr().as_fd()), QUEUE_BYTES, None))
}

/// Flushes stdout then stderr (those in use), within `limit` in all; before a process exits.
pub fn flush_all(limit: Duration) {
    let deadline = Instant::now() + limit;
    for w in [STDOUT.get(), STDERR.get()].into_iter().flatten() {
        w.flush(deadline.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A destination whose every write waits for the test to let it through.
    struct Gate {
        rx: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.rx.recv().map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            self.got.lock().expect("got").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_destination_never_blocks_the_caller_and_full_queues_drop_and_count() {
        let (open, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let w = LineWriter::new("test", Box::new(Gate { rx, got: got.clone() }), 100);
        // The thread takes what is queued and blocks writing it; the queue then fills
        // (10-byte lines, 100 bytes) and the rest is dropped, without the caller waiting.
        let mut accepted = 0;
        for i in 0..1000 {
            if w.line(&format!("line {i:04}")) {
                accepted += 1;
            }
        }
        assert!(accepted <= 2 * 10, "at most the queue and one write's worth: {accepted}");
        assert_eq!(w.stats().dropped, 1000 - accepted);
        // Let the writes through: what was accepted arrives whole and in order.
        for _ in 0..1000 {
            open.send(()).expect("the writer thread holds the gate");
        }
        assert!(w.flush(Duration::from_secs(30)));
        let text = String::from_utf8(got.lock().expect("got").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, accepted);
        assert!(lines.windows(2).all(|p| p[0] < p[1]), "{lines:?}");
        assert_eq!(w.stats(), Stats { written: accepted, dropped: 1000 - accepted, failed: 0 });
    }

    #[test]
    fn write_errors_are_counted_and_reported_once() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let notes = Arc::new(AtomicU64::new(0));
        let n = notes.clone();
        let note: OnFirstError = Box::new(move |_, e| {
            assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
            n.fetch_add(1, Ordering::Relaxed);
        });
        let w = LineWriter::build("test", Some(Box::new(Broken)), 1 << 20, Some(note));
        for _ in 0..5 {
            assert!(w.line("x"));
            assert!(w.flush(Duration::from_secs(30)));
        }
        assert!(w.lines(b"a\nb\n".to_vec(), 2));
        assert!(w.flush(Duration::from_secs(30)));
        assert_eq!(w.stats(), Stats { written: 0, dropped: 0, failed: 7 });
        assert_eq!(notes.load(Ordering::Relaxed), 1, "the first error is noted, later ones only counted");
    }

    #[test]
    fn lines_get_one_newline_and_arrive_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("sink").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let w = LineWriter::new("test", Box::new(Sink(got.clone())), 1 << 20);
        assert!(w.line("one"));
        assert!(w.line("two\n"));
        assert!(w.lines(b"three\nfour\n".to_vec(), 2));
        assert!(w.flush(Duration::from_secs(30)));
        assert_eq!(&*got.lock().expect("sink"), b"one\ntwo\nthree\nfour\n");
        assert_eq!(w.stats().written, 4);
    }

    #[test]
    fn a_writer_without_a_thread_drops_everything() {
        let w = LineWriter::build("test", None, 1 << 20, None);
        assert!(!w.line("lost"));
        assert!(w.flush(Duration::ZERO));
        assert_eq!(w.stats().dropped, 1);
    }
}
