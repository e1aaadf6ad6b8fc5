//! A TCP relay on `127.0.0.1:0` standing between a sidecar and the CA, so a test can cut the
//! CA off at a chosen moment without killing it: the first `pass` connections (and every one
//! after [`Relay::open`]) are forwarded byte for byte; the others are accepted and closed at
//! once, as a CA behind a broken network path would look. TLS stays end to end: the relay
//! sees only ciphertext.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections closed without being forwarded.
    cut: Arc<AtomicUsize>,
}

impl Relay {
    /// Forwards the first `pass` connections to `target`, cuts the rest until [`Relay::open`].
    pub fn start(target: SocketAddr, pass: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay on 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let open = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let (o, a, c) = (open.clone(), accepted.clone(), cut.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let n = a.fetch_add(1, Ordering::SeqCst);
                if n < pass || o.load(Ordering::SeqCst) {
                    std::thread::spawn(move || forward(conn, target));
                } else {
                    c.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.shutdown(Shutdown::Both);
                }
            }
        });
        Self { addr, open, accepted, cut }
    }

    /// Forwards every connection from now on.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Copies both ways until either side closes (or is silent for a minute).
fn forward(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else { return };
    for s in [&client, &server] {
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let up = std::thread::spawn(move || pipe(client, server));
    pipe(s2, c2);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
