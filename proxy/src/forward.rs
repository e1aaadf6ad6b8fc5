//! Copies bytes both ways between two established streams until both sides are done, the
//! connection has been idle for too long, either side fails, or it is stopped from outside
//! (revocation, a policy that now denies it). Counts bytes as they move, so the outcome
//! record has them whatever way the connection ended, and feeds them to its [`Meter`] while
//! the connection runs: every [`FLUSH_BYTES`] and at most [`FLUSH_EVERY`] after a byte moved
//! (and once more at the end), so a long stream shows in the byte counters while it is open.
//!
//! One future drives both directions over the two streams it owns (the shape of tokio's
//! `copy_bidirectional`): no split halves behind a lock, no second task, and no clock read
//! per chunk (the flush timer reads it once when it is armed, at most once per
//! [`FLUSH_EVERY`]). This loop runs once or twice per request on a keep-alive connection, so
//! what it does beyond the two syscalls shows up directly in CPU per request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::authorize::Permit;
use crate::stop::Stop;

/// Per-direction buffer. 16 KiB is one full TLS record, so a record is read and written
/// in one go.
const BUF_LEN: usize = 16 * 1024;

/// The idle watchdog looks every `idle / WATCH_TICKS`, so a connection is closed between
/// `idle` and `idle * (1 + 1 / WATCH_TICKS)` after its last byte.
const WATCH_TICKS: u32 = 4;

/// Bytes one direction moves before they are added to its counters, whatever the time.
pub const FLUSH_BYTES: u64 = 64 * 1024;
/// Longest a moved byte waits before it is added to its counters (a slow stream is seen
/// within this; a quiet connection arms no timer at all).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How a forwarded connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides finished sending.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// A read or write failed on one side.
    Error,
    /// Stopped from outside, for the reason given (revocation, policy).
    Stopped(Stop),
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Error => "reset",
            End::Stopped(s) => s.as_str(),
        }
    }
}

/// Bytes that moved: `a_to_b` from the first stream to the second, and back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Where a connection's byte counts go while it runs: the counters of each direction (for
/// the sidecar, the direction's series and, on an outbound, the outbound's). Counters are
/// resolved once per connection, so a flush is two atomic additions.
pub struct Meter {
    a_to_b: [Counter; 2],
    b_to_a: [Counter; 2],
}

impl Meter {
    pub fn new(a_to_b: [Counter; 2], b_to_a: [Counter; 2]) -> Self {
        Self { a_to_b, b_to_a }
    }

    /// Counts nothing (the benchmarks, and tests that look at [`Counts`] only).
    pub fn none() -> Self {
        Self { a_to_b: [Counter::noop(), Counter::noop()], b_to_a: [Counter::noop(), Counter::noop()] }
    }
}

/// The forward stage: an authorized connection's bytes, `a` (the connecting side) to `b`
/// and back, as [`splice`] moves them. It takes the [`Permit`] by value, and only
/// `authorize::authorize` makes one, so no connection is forwarded without an allowing
/// decision; the permit lives as long as the connection. Bytes are counted on `meter` as
/// they move.
pub async fn forward<A, B, S>(
    permit: Permit,
    a: A,
    b: B,
    idle: Duration,
    stop: impl Future<Output = S>,
    meter: Meter,
) -> (End, Counts)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    S: Into<Stop>,
{
    let _permit = permit;
    splice_metered(a, b, idle, stop, meter).await
}

/// The copy engine under [`forward`] (public for the benchmarks, which measure it alone;
/// connection handlers go through [`forward`]).
///
/// Moves bytes between `a` and `b`, each direction independently (a blocked write one way
/// never stalls the other), with a watchdog for the idle timeout. `stop` resolving ends the
/// connection at once, with its reason (a `()` signal counts as a revocation). Stop is
/// looked at first on every wake-up: once it is ready, not one more byte is copied, however
/// much data is waiting.
pub async fn splice<A, B, S>(a: A, b: B, idle: Duration, stop: impl Future<Output = S>) -> (End, Counts)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    S: Into<Stop>,
{
    splice_metered(a, b, idle, stop, Meter::none()).await
}

/// [`splice`], counting the bytes on `meter` as they move (see the module doc).
pub async fn splice_metered<A, B, S>(
    mut a: A,
    mut b: B,
    idle: Duration,
    stop: impl Future<Output = S>,
    meter: Meter,
) -> (End, Counts)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    S: Into<Stop>,
{
    let Meter { a_to_b: up, b_to_a: down } = meter;
    let (mut a_to_b, mut b_to_a) = (Direction::new(up), Direction::new(down));
    let tick = (idle / WATCH_TICKS).max(Duration::from_millis(1));
    let mut quiet = Duration::ZERO;
    let now = Instant::now();
    let mut watchdog = pin!(tokio::time::sleep_until(now + tick));
    // Armed (and polled) only while counted bytes wait to be flushed.
    let mut flush = pin!(tokio::time::sleep_until(now));
    let mut armed = false;
    let mut stop = pin!(stop);
    let end = poll_fn(|cx| {
        if let Poll::Ready(s) = stop.as_mut().poll(cx) {
            return Poll::Ready(End::Stopped(s.into()));
        }
        let ab = a_to_b.poll(cx, &mut a, &mut b);
        let ba = b_to_a.poll(cx, &mut b, &mut a);
        match (ab, ba) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(End::Error),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
            _ => {}
        }
        // The timer is polled once, when armed, which registers its wake-up; after that an
        // atomic load says whether it fired (polling a second timer on every wake-up costs a
        // keep-alive request measurably). A caller that changed wakers in between would see
        // the flush at the next wake-up instead: the timer only ever delays a count, never
        // the data.
        if armed && flush.is_elapsed() {
            a_to_b.meter_flush();
            b_to_a.meter_flush();
            armed = false;
        }
        if !armed && (a_to_b.unmetered() || b_to_a.unmetered()) {
            flush.as_mut().reset(Instant::now() + FLUSH_EVERY);
            // Registers the wake-up; a deadline a second away is not ready now.
            let _ = flush.as_mut().poll(cx);
            armed = true;
        }
        // Activity is a flag set by the copies, read here once per tick: the data path
        // never asks for the time.
        while watchdog.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut a_to_b.moved) | std::mem::take(&mut b_to_a.moved) {
                quiet = Duration::ZERO;
            } else {
                quiet += tick;
                if quiet >= idle {
                    return Poll::Ready(End::Idle);
                }
            }
            watchdog.as_mut().reset(Instant::now() + tick);
        }
        Poll::Pending
    })
    .await;
    a_to_b.meter_flush();
    b_to_a.meter_flush();
    (end, Counts { a_to_b: a_to_b.count, b_to_a: b_to_a.count })
}

/// One direction: read, write, flush, until EOF (then pass the half-close on).
struct Direction {
    buf: Box<[u8]>,
    /// `buf[pos..cap]` is read and not yet written.
    pos: usize,
    cap: usize,
    /// Written since the last flush.
    unflushed: bool,
    eof: bool,
    done: bool,
    count: u64,
    /// `count` when it was last added to `meter`.
    flushed: u64,
    meter: [Counter; 2],
    /// A byte moved since the watchdog last looked.
    moved: bool,
}

impl Direction {
    fn new(meter: [Counter; 2]) -> Self {
        Direction {
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            pos: 0,
            cap: 0,
            unflushed: false,
            eof: false,
            done: false,
            count: 0,
            flushed: 0,
            meter,
            moved: false,
        }
    }

    /// Bytes counted here and not yet on the meter.
    fn unmetered(&self) -> bool {
        self.count != self.flushed
    }

    /// Adds what moved since the last flush to the meter.
    fn meter_flush(&mut self) {
        let n = self.count - self.flushed;
        if n > 0 {
            for c in &self.meter {
                c.increment(n);
            }
            self.flushed = self.count;
        }
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.pos < self.cap {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.count += n as u64;
                self.moved = true;
                self.unflushed = true;
                if self.count - self.flushed >= FLUSH_BYTES {
                    self.meter_flush();
                }
            }
            // TLS streams may hold the last record of a burst until flushed; a quiet peer
            // would otherwise wait for it forever. Free for plain TCP.
            if self.unflushed {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                let _ = ready!(Pin::new(&mut *w).poll_shutdown(cx));
                self.done = true;
                continue;
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            (self.pos, self.cap) = (0, n);
            self.eof = n == 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn copies_both_ways_counts_and_passes_half_close_on() {
        let (mut app, a) = duplex(64);
        let (b, mut peer) = duplex(64);
        let run = tokio::spawn(splice(a, b, LONG, std::future::pending::<()>()));
        // More than either pipe holds, so the copy has to wait for writes to drain.
        let up: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let up2 = up.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&up2).await.expect("write a -> b");
            app.shutdown().await.expect("half-close a");
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.expect("read b -> a");
            back
        });
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read a -> b");
        assert_eq!(got, up, "bytes a -> b arrive intact, then EOF");
        peer.write_all(b"reply").await.expect("write b -> a");
        peer.shutdown().await.expect("half-close b");
        assert_eq!(
            writer.await.expect("app task"),
            b"reply",
            "the other direction still works after a half-close"
        );
        let (end, counts) = run.await.expect("splice task");
        assert_eq!(end, End::Closed);
        assert_eq!((counts.a_to_b, counts.b_to_a), (100_000, 5));
    }

    // Paused time: the runtime jumps to the next timer whenever every task waits, so the
    // pacing below is exact however busy the machine is.
    #[tokio::test(start_paused = true)]
    async fn quiet_connection_ends_idle_and_busy_one_does_not() {
        let idle = Duration::from_millis(200);
        let (mut app, a) = duplex(64);
        let (b, mut peer) = duplex(64);
        let run = tokio::spawn(splice(a, b, idle, std::future::pending::<()>()));
        // Traffic for several idle periods keeps it open.
        for _ in 0..10 {
            app.write_all(b"x").await.expect("write");
            let mut one = [0u8; 1];
            peer.read_exact(&mut one).await.expect("read");
            tokio::time::sleep(idle / 4).await;
        }
        assert!(!run.is_finished(), "a connection with traffic is not idle");
        let (end, counts) = tokio::time::timeout(LONG, run).await.expect("ends").expect("splice task");
        assert_eq!(end, End::Idle);
        assert_eq!(counts.a_to_b, 10);
    }

    #[tokio::test]
    async fn stop_ends_the_connection_as_revoked() {
        let (_app, a) = duplex(64);
        let (b, _peer) = duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(splice(a, b, LONG, async move {
            let _ = rx.await;
        }));
        tx.send(()).expect("splice waits on stop");
        let (end, _) = tokio::time::timeout(LONG, run).await.expect("ends").expect("splice task");
        assert_eq!(end, End::Stopped(Stop::Revoked));
    }

    #[tokio::test]
    async fn stop_wins_over_data_that_is_ready_at_the_same_time() {
        let (mut app, a) = duplex(1024);
        let (b, mut peer) = duplex(1024);
        // Data waits in both directions before the first poll, and stop is ready too.
        app.write_all(b"must not pass").await.expect("write a");
        peer.write_all(b"nor this").await.expect("write b");
        let stop = std::future::ready(Stop::PolicyRevoked { rule: None, detail: "denied".into() });
        let (end, counts) = splice(a, b, LONG, stop).await;
        assert_eq!(end.as_str(), "policy_revoked");
        assert_eq!((counts.a_to_b, counts.b_to_a), (0, 0), "no byte is copied once stop is ready");
        let (mut got_b, mut got_a) = (Vec::new(), Vec::new());
        peer.read_to_end(&mut got_b).await.expect("b sees EOF");
        app.read_to_end(&mut got_a).await.expect("a sees EOF");
        assert!(got_b.is_empty() && got_a.is_empty(), "{got_b:?} {got_a:?}");
    }

    fn meter() -> (Meter, [Arc<AtomicU64>; 2]) {
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let c = |a: &Arc<AtomicU64>| Counter::from_arc(a.clone());
        (Meter::new([c(&up), Counter::noop()], [c(&down), Counter::noop()]), [up, down])
    }

    // Paused time: the flush timer fires exactly when the runtime has nothing else to do.
    #[tokio::test(start_paused = true)]
    async fn bytes_reach_the_meter_while_the_connection_is_open() {
        let (mut app, a) = duplex(256 * 1024);
        let (b, mut peer) = duplex(256 * 1024);
        let (m, [up, down]) = meter();
        let run = tokio::spawn(splice_metered(a, b, LONG, std::future::pending::<()>(), m));
        // A few bytes each way: on the meter within FLUSH_EVERY, the connection still open.
        app.write_all(b"hello").await.expect("write a");
        let mut five = [0u8; 5];
        peer.read_exact(&mut five).await.expect("read b");
        peer.write_all(b"hi").await.expect("write b");
        let mut two = [0u8; 2];
        app.read_exact(&mut two).await.expect("read a");
        assert_eq!(up.load(Ordering::Relaxed), 0, "not on the meter before the flush");
        tokio::time::sleep(FLUSH_EVERY + Duration::from_millis(1)).await;
        assert_eq!((up.load(Ordering::Relaxed), down.load(Ordering::Relaxed)), (5, 2));
        // Past FLUSH_BYTES the bytes are flushed at once, without waiting for the timer.
        let big = vec![7u8; FLUSH_BYTES as usize + 10];
        app.write_all(&big).await.expect("write a");
        let mut got = vec![0u8; big.len()];
        peer.read_exact(&mut got).await.expect("read b");
        assert!(up.load(Ordering::Relaxed) >= 5 + FLUSH_BYTES, "{}", up.load(Ordering::Relaxed));
        assert!(!run.is_finished());
        drop((app, peer));
        let (_, counts) = run.await.expect("splice task");
        // The rest is flushed at the end: the meter agrees with the counts exactly once.
        assert_eq!(up.load(Ordering::Relaxed), counts.a_to_b);
        assert_eq!(down.load(Ordering::Relaxed), counts.b_to_a);
        assert_eq!(counts.a_to_b, 5 + big.len() as u64);
    }

    #[tokio::test]
    async fn a_failed_write_ends_in_error() {
        let (mut app, a) = duplex(64);
        let (b, peer) = duplex(64);
        drop(peer); // writes towards b now fail
        let run = tokio::spawn(splice(a, b, LONG, std::future::pending::<()>()));
        app.write_all(b"hello").await.expect("write");
        let (end, _) = tokio::time::timeout(LONG, run).await.expect("ends").expect("splice task");
        assert_eq!(end, End::Error);
    }
}
