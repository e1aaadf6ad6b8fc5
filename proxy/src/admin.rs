//! The admin listener: `/live` and `/ready` for orchestrators. Read-only: nothing here
//! changes state. Requests are bounded in size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::state::Shared;

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shared.shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        shared.tracker.clone().spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &shared)).await;
        });
    }
}

async fn answer(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = buf[..n].split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, body) = match (method, path) {
        (b"GET", b"/live") => ("200 OK", "live\n".to_string()),
        (b"GET", b"/ready") if shared.ready() => ("200 OK", "ready\n".to_string()),
        (b"GET", b"/ready") => ("503 Service Unavailable", "not ready: no valid certificate\n".to_string()),
        (b"GET", _) => ("404 Not Found", "not found: try /live or /ready\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}
