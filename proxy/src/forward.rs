//! Copies bytes both ways between two established streams until both sides are done, the
//! connection has been idle for too long, or either side fails. Counts bytes as they move, so
//! the outcome record has them whatever way the connection ended.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Per-direction buffer. 16 KiB is one full TLS record, so a record is read and written
/// in one go.
const BUF_LEN: usize = 16 * 1024;

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished sending.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// A read or write failed on one side.
    Error,
    /// Stopped from outside: the peer's certificate or identity was revoked.
    Revoked,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Error => "reset",
            End::Revoked => "revoked",
        }
    }
}

/// Bytes that moved: `a_to_b` from the first stream to the second, and back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Moves bytes between `a` and `b`, each direction independently (a blocked write one way
/// never stalls the other), with a watchdog for the idle timeout. `stop` resolving ends the
/// connection at once (revocation of the peer).
pub async fn splice<A, B>(a: A, b: B, idle: Duration, stop: impl Future<Output = ()>) -> (End, Counts)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let last = AtomicU64::new(0);
    let (a_to_b, b_to_a) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        match tokio::try_join!(
            pipe(&mut ar, &mut bw, &a_to_b, &last, start),
            pipe(&mut br, &mut aw, &b_to_a, &last, start)
        ) {
            Ok(_) => End::Closed,
            Err(_) => End::Error,
        }
    };
    let watchdog = async {
        loop {
            let quiet = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return End::Idle;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    let end = tokio::select! {
        e = both => e,
        e = watchdog => e,
        _ = stop => End::Revoked,
    };
    (end, Counts { a_to_b: a_to_b.load(Ordering::Relaxed), b_to_a: b_to_a.load(Ordering::Relaxed) })
}

/// One direction: read, write, count, until EOF (then pass the half-close on).
async fn pipe<R, W>(
    r: &mut R,
    w: &mut W,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        // TLS streams may hold the last record of a burst until flushed; a quiet peer would
        // otherwise wait for it forever. Free for plain TCP.
        w.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
