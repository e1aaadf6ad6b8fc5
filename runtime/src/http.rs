//! The one HTTP/1.1 connection builder of both binaries (the sidecar's admin listener, the
//! CA's API and metrics listeners): every connection is served under [`HttpLimits`] (a header
//! read timeout, a bound on header bytes and count, keep-alive or not, a longest lifetime),
//! and asked to close gracefully when the server shuts down (the request in flight is
//! answered, keep-alive ends; the drain in [`crate::serve`] bounds how long that may take).
//!
//! Not here: routing, bodies and their limits (each service reads its own, bounded), TLS.

use std::error::Error as StdError;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// Smallest read buffer hyper accepts (it panics below this).
const MIN_BUF: usize = 8192;

/// What one listener allows each HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to receive a request's headers, from the first byte (and for the first request,
    /// from accept); a slow client is cut off.
    pub header_read_timeout: Duration,
    /// Bytes of request line and headers; more is answered 431 and the connection closed.
    pub max_header_bytes: usize,
    /// Headers per request; more is answered 431.
    pub max_headers: usize,
    /// Whether a connection may carry more than one request.
    pub keep_alive: bool,
    /// Longest a connection lives, whatever it is doing: past it, it is closed.
    pub lifetime: Option<Duration>,
}

impl Default for HttpLimits {
    /// 5 s for headers, 16 KiB and 100 of them, keep-alive, no lifetime bound.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            keep_alive: true,
            lifetime: None,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it, or it closed after answering (keep-alive off, graceful shutdown).
    Closed,
    /// A protocol or I/O error (malformed request, header timeout, reset).
    Error,
    /// Its [`HttpLimits::lifetime`] ran out.
    LifetimeOver,
}

impl HttpLimits {
    /// Serves one connection with `service` under these limits until it ends; on `shutdown`
    /// the connection is asked to close after the request in flight.
    pub async fn serve<I, S, B>(&self, io: I, shutdown: &CancellationToken, service: S) -> Ended
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes.max(MIN_BUF))
            .max_header_size(self.max_header_bytes)
            .max_headers(self.max_headers)
            .keep_alive(self.keep_alive)
            .serve_connection(TokioIo::new(io), service);
        let run = async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if result.is_ok() {
                Ended::Closed
            } else {
                Ended::Error
            }
        };
        match self.lifetime {
            Some(lifetime) => tokio::time::timeout(lifetime, run).await.unwrap_or(Ended::LifetimeOver),
            None => run.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A service of a concrete type (an opaque `impl HttpService` would hide that it is `Send`).
    #[derive(Clone, Copy)]
    struct Hello;

    impl hyper::service::Service<Request<Incoming>> for Hello {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn call(&self, _req: Request<Incoming>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"hello")))))
        }
    }

    fn hello() -> Hello {
        Hello
    }

    async fn exchange(limits: HttpLimits, request: &[u8]) -> (String, Ended) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(async move { limits.serve(server, &shutdown, hello()).await });
        client.write_all(request).await.expect("write");
        let mut out = Vec::new();
        // The server closes after answering (keep-alive off or a refusal), so this ends.
        client.read_to_end(&mut out).await.expect("read");
        (String::from_utf8_lossy(&out).into_owned(), served.await.expect("joined"))
    }

    #[tokio::test]
    async fn a_request_is_answered_and_too_many_or_too_large_headers_are_refused() {
        let limits = HttpLimits { keep_alive: false, max_headers: 4, ..HttpLimits::default() };
        let (answer, ended) = exchange(limits, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "{answer}");
        assert_eq!(ended, Ended::Closed);

        let many: String = (0..8).map(|i| format!("x-h{i}: v\r\n")).collect();
        let (answer, _) =
            exchange(limits, format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "8 headers past a limit of 4: {answer}");

        let big = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
        let (answer, _) = exchange(limits, big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "20 kB of headers past 16 KiB: {answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off_and_a_connection_ends_with_its_lifetime() {
        // No request at all: the header read timeout closes it (virtual time, auto-advanced).
        let (_client, server) = tokio::io::duplex(1024);
        let limits = HttpLimits::default();
        let ended = limits.serve(server, &CancellationToken::new(), hello()).await;
        assert_eq!(ended, Ended::Error);

        // A keep-alive client that goes on sending requests is closed at its lifetime.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let limits = HttpLimits { lifetime: Some(Duration::from_secs(30)), ..HttpLimits::default() };
        let served =
            tokio::spawn(async move { limits.serve(server, &CancellationToken::new(), hello()).await });
        let mut buf = vec![0u8; 4096];
        let ended = loop {
            let sent = client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
            if sent.is_err() || client.read(&mut buf).await.map_or(true, |n| n == 0) {
                break served.await.expect("joined");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        assert_eq!(ended, Ended::LifetimeOver);
    }

    #[tokio::test]
    async fn shutdown_closes_a_keep_alive_connection() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let served =
            tokio::spawn(async move { HttpLimits::default().serve(server, &shutdown, hello()).await });
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = client.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stop.cancel();
        assert_eq!(served.await.expect("joined"), Ended::Closed, "idle keep-alive closed at shutdown");
        assert_eq!(client.read(&mut buf).await.expect("read"), 0);
    }
}
