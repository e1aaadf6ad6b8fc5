//! The accept loop in memory (a queue of duplex streams or errors standing in for the kernel)
//! and on loopback. Time is paused and auto-advanced: `sleep` here returns only once every
//! task is parked, so "nothing more happened" is checked without wall-clock waits.

use std::pin::Pin;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::*;

type Incoming = io::Result<(DuplexStream, SocketAddr)>;
type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Connections (or accept errors) handed to the loop in the order they are queued.
struct Queue(tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>);

impl Accept for Queue {
    type Stream = DuplexStream;

    async fn accept(&self) -> Incoming {
        match self.0.lock().await.recv().await {
            Some(next) => next,
            None => std::future::pending().await,
        }
    }
}

fn queue() -> (mpsc::UnboundedSender<Incoming>, Queue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Queue(tokio::sync::Mutex::new(rx)))
}

fn from(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), 40000)
}

/// Queues a connection from `ip`; returns the client's end.
fn connect(tx: &mpsc::UnboundedSender<Incoming>, ip: &str) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64);
    tx.send(Ok((server, from(ip)))).expect("the loop is running");
    client
}

/// Lets every task run until all are parked (paused time advances only then).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// A handler that keeps each connection (and its slot) until told to let `n` of them go, and
/// reports each connection it got.
struct Holder {
    got: mpsc::UnboundedReceiver<(SocketAddr, bool)>,
    release: Arc<Semaphore>,
}

fn holder() -> (Holder, impl FnMut(DuplexStream, SocketAddr, Slot) -> BoxFut + Send) {
    let (got_tx, got) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let r = release.clone();
    let handle = move |stream: DuplexStream, peer: SocketAddr, mut slot: Slot| {
        let (got_tx, release) = (got_tx.clone(), r.clone());
        let held = slot.pending.is_held();
        Box::pin(async move {
            let _ = got_tx.send((peer, held));
            // An authenticated peer would give its pending place back here.
            if peer.ip().to_string() == "10.0.0.9" {
                slot.pending.authenticated();
            }
            let _permit = release.acquire().await;
            drop((stream, slot));
        }) as BoxFut
    };
    (Holder { got, release }, handle)
}

#[tokio::test(start_paused = true)]
async fn at_its_budget_the_loop_stops_accepting_until_a_connection_ends() {
    let (tx, listener) = queue();
    let (mut h, handle) = holder();
    let shutdown = CancellationToken::new();
    let budget = Budget::new(2);
    let permits = budget.connections.clone();
    let lp = tokio::spawn(accept_loop(listener, budget, Tasks::new(), shutdown.clone(), |_| {}, handle));
    let _clients: Vec<_> = (0..3).map(|_| connect(&tx, "10.0.0.1")).collect();
    settle().await;
    assert!(h.got.recv().await.is_some() && h.got.recv().await.is_some());
    assert!(h.got.try_recv().is_err(), "a third connection was taken past a budget of 2");
    assert_eq!(permits.available_permits(), 0);
    h.release.add_permits(1);
    settle().await;
    assert!(h.got.try_recv().is_ok(), "the third is accepted once one ends");
    shutdown.cancel();
    lp.await.expect("the loop ends at shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_source_past_its_pending_budget_is_closed_unread_and_reported_once() {
    let (tx, listener) = queue();
    let (mut h, handle) = holder();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let on_event = move |e: AcceptEvent<'_>| {
        if let AcceptEvent::Shed { count, latest } = e {
            ev.lock().expect("events").push((count, latest.to_string()));
        }
    };
    let shutdown = CancellationToken::new();
    let budget = Budget::new(100).with_pending(2, 10);
    let lp = tokio::spawn(accept_loop(listener, budget, Tasks::new(), shutdown.clone(), on_event, handle));

    let _kept: Vec<_> = (0..2).map(|_| connect(&tx, "10.0.0.1")).collect();
    let mut shed: Vec<_> = (0..3).map(|_| connect(&tx, "10.0.0.1")).collect();
    let _other = connect(&tx, "10.0.0.2");
    settle().await;
    let mut got = Vec::new();
    while let Ok((peer, held)) = h.got.try_recv() {
        assert!(held, "counted as pending");
        got.push(peer.ip().to_string());
    }
    assert_eq!(got, ["10.0.0.1", "10.0.0.1", "10.0.0.2"], "a third from one source is not served");
    for c in &mut shed {
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).await.expect("read"), 0, "closed unread");
    }
    // Three closed within one report interval: reported once, as soon as the first happened.
    assert_eq!(*events.lock().expect("events"), [(1, "10.0.0.1".to_owned())]);
    tokio::time::sleep(SHED_REPORT).await;
    let _fourth = connect(&tx, "10.0.0.1");
    settle().await;
    assert_eq!(events.lock().expect("events")[1], (3, "10.0.0.1".to_owned()), "the rest, counted");

    // A peer that authenticates gives its place back while still connected.
    let mut nine = Vec::new();
    for _ in 0..3 {
        nine.push(connect(&tx, "10.0.0.9"));
        settle().await;
    }
    let nines =
        std::iter::from_fn(|| h.got.try_recv().ok()).filter(|(p, _)| p.ip().to_string() == "10.0.0.9");
    assert_eq!(nines.count(), 3, "authenticated peers do not count against their source");
    shutdown.cancel();
    lp.await.expect("the loop ends at shutdown");
}

#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_doubling_to_a_cap_then_reset_on_success() {
    let (tx, listener) = queue();
    for _ in 0..10 {
        tx.send(Err(io::Error::from_raw_os_error(24))).expect("queued"); // EMFILE
    }
    let (mut h, handle) = holder();
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    let on_event = move |e: AcceptEvent<'_>| {
        if let AcceptEvent::Failed { error, retry_in } = e {
            assert_eq!(error.raw_os_error(), Some(24));
            w.lock().expect("waits").push(retry_in.as_millis());
        }
    };
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let lp =
        tokio::spawn(accept_loop(listener, Budget::new(4), Tasks::new(), shutdown.clone(), on_event, handle));
    let _c = connect(&tx, "10.0.0.1");
    assert!(h.got.recv().await.is_some(), "served after the errors");
    let expected = [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000];
    assert_eq!(*waits.lock().expect("waits"), expected);
    let waited: u128 = expected.iter().sum();
    assert!(started.elapsed().as_millis() >= waited, "the loop paused (virtual time) between attempts");

    // After a success the next error starts from the first pause again.
    tx.send(Err(io::Error::from_raw_os_error(24))).expect("queued");
    settle().await;
    assert_eq!(waits.lock().expect("waits").last(), Some(&5));
    // Shutdown during a backoff pause ends the loop without waiting it out.
    tx.send(Err(io::Error::from_raw_os_error(24))).expect("queued");
    tokio::task::yield_now().await;
    shutdown.cancel();
    lp.await.expect("the loop ends at shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_drain_waits_for_what_ends_within_grace_and_aborts_and_counts_the_rest() {
    let tasks = Tasks::new();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    // Ends at shutdown after finishing its work, well within the grace period.
    let (s, d) = (stop.clone(), done_tx.clone());
    tasks.spawn(async move {
        s.cancelled().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = d.send("polite");
    });
    // Never ends by itself: aborted at the end of the grace period (its guard sends on drop).
    struct Guard(mpsc::UnboundedSender<&'static str>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send("aborted");
        }
    }
    let guard = Guard(done_tx.clone());
    tasks.spawn(async move {
        let _g = guard;
        std::future::pending::<()>().await
    });
    assert_eq!(tasks.len(), 2);
    stop.cancel();
    let started = Instant::now();
    let drained = tasks.drain(Duration::from_secs(5)).await;
    assert_eq!(drained, Drained { open: 2, aborted: 1 });
    assert!(started.elapsed() >= Duration::from_secs(5), "the grace period was given");
    assert!(tasks.is_empty());
    assert_eq!((done.recv().await, done.recv().await), (Some("polite"), Some("aborted")));

    // Nothing left over: a drain returns at once.
    let empty = Tasks::new();
    assert_eq!(empty.drain(Duration::from_secs(5)).await, Drained { open: 0, aborted: 0 });
}

#[tokio::test]
async fn on_loopback_shutdown_stops_accepting_at_once_and_the_drain_closes_what_is_left() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tasks = Tasks::new();
    let shutdown = CancellationToken::new();
    let handle = |mut stream: TcpStream, _peer: SocketAddr, slot: Slot| async move {
        let _slot = slot;
        // Echo one line, then hold the connection until aborted.
        let mut b = [0u8; 5];
        if stream.read_exact(&mut b).await.is_ok() {
            let _ = stream.write_all(&b).await;
        }
        std::future::pending::<()>().await
    };
    let lp =
        tokio::spawn(accept_loop(listener, Budget::new(8), tasks.clone(), shutdown.clone(), |_| {}, handle));
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(b"hello").await.expect("write");
    let mut b = [0u8; 5];
    client.read_exact(&mut b).await.expect("echo");
    assert_eq!(&b, b"hello");

    shutdown.cancel();
    lp.await.expect("the loop ends at shutdown");
    // The listener is gone with the loop: new connections are refused.
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    let drained = tasks.drain(Duration::from_millis(50)).await;
    assert_eq!(drained, Drained { open: 1, aborted: 1 });
    assert_eq!(client.read(&mut b).await.expect("read"), 0, "the aborted connection is closed");
}
