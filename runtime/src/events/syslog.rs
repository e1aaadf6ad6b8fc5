//! The syslog sink: each event is one RFC 5424 message whose MSG is the event's JSON object,
//! sent over UDP (RFC 5426, one message per datagram) or TCP (RFC 6587 octet counting:
//! `LEN SP MSG`, so a message can never be split or merged by a newline).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID - MSG`: PRI is the configured facility and the
//! event's severity (info 6, warning 4, error 3); TIMESTAMP is the event's, exactly as its
//! JSON says it (UTC, microseconds: the most the RFC allows); APP is the program
//! (`mesh-proxy`); MSGID is the event name; there is no
//! structured data. The JSON is pure ASCII (non-ASCII escaped as `\uXXXX`), so MSG needs no
//! BOM and every receiver reads it the same way.
//!
//! TCP: one connection, reconnected when it fails or the receiver closes it; each batch is
//! tried a few times with backoff, then counted as dropped.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_config::sidecar::{Endpoint, SyslogFacility, SyslogTransport};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::{format_timestamp, json_line, Batch, Event, Feed, Severity};

const MAX_BATCH: usize = 256;
/// Tries per batch over TCP, with backoff between them.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// RFC 5424: HOSTNAME is at most 255 printable ASCII characters.
const MAX_HOSTNAME: usize = 255;

/// A syslog collector.
#[derive(Debug, Clone)]
pub struct SyslogTarget {
    pub transport: SyslogTransport,
    pub server: Endpoint,
    pub facility: SyslogFacility,
}

impl SyslogTarget {
    pub(super) fn kind(&self) -> &'static str {
        match self.transport {
            SyslogTransport::Udp => "syslog_udp",
            SyslogTransport::Tcp => "syslog_tcp",
        }
    }
}

impl fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            SyslogTransport::Udp => write!(f, "syslog+udp://{}", self.server),
            SyslogTransport::Tcp => write!(f, "syslog+tcp://{}", self.server),
        }
    }
}

/// What every message of this process carries besides the event.
struct Header {
    facility: u8,
    /// APP-NAME: the program's file name.
    app: String,
    hostname: String,
    procid: String,
}

impl Header {
    fn new(facility: SyslogFacility) -> Self {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let hostname: String =
            raw.trim().chars().filter(|c| c.is_ascii_graphic()).take(MAX_HOSTNAME).collect();
        let hostname = if hostname.is_empty() { "-".to_owned() } else { hostname };
        let app: String =
            crate::output::program().chars().filter(|c| c.is_ascii_graphic()).take(48).collect();
        let app = if app.is_empty() { "-".to_owned() } else { app };
        Self { facility: facility.code(), app, hostname, procid: std::process::id().to_string() }
    }

    /// One RFC 5424 message, without framing.
    fn message(&self, e: &Event) -> String {
        let severity = match e.severity {
            Severity::Info => 6,
            Severity::Warning => 4,
            Severity::Error => 3,
        };
        let name = e.event.as_str();
        let msgid = if !name.is_empty() && name.len() <= 32 && name.chars().all(|c| c.is_ascii_graphic()) {
            name
        } else {
            "-"
        };
        let mut json = Vec::with_capacity(512);
        json_line(e, &mut json);
        format!(
            "<{}>1 {} {} {} {} {msgid} - {}",
            u16::from(self.facility) * 8 + severity,
            format_timestamp(e.timestamp),
            self.hostname,
            self.app,
            self.procid,
            ascii(&String::from_utf8_lossy(&json)),
        )
    }
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`, surrogate pairs beyond the
/// BMP). Non-ASCII can only occur inside JSON strings, where the escape means the same.
fn ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

async fn resolve(server: &Endpoint) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(server.to_string())
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "resolves to no address"))
}

pub(super) async fn run(feed: Feed, target: SyslogTarget) {
    let header = Header::new(target.facility);
    match target.transport {
        SyslogTransport::Udp => udp(feed, &target, &header).await,
        SyslogTransport::Tcp => tcp(feed, &target, &header).await,
    }
}

async fn udp_socket(server: &Endpoint) -> std::io::Result<UdpSocket> {
    let addr = resolve(server).await?;
    let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(addr).await?;
    Ok(sock)
}

async fn udp(mut feed: Feed, target: &SyslogTarget, header: &Header) {
    let mut sock: Option<UdpSocket> = None;
    let mut failing = false;
    while let Some(batch) = feed.next(MAX_BATCH, Duration::ZERO).await {
        if sock.is_none() {
            match udp_socket(&target.server).await {
                Ok(s) => sock = Some(s),
                Err(e) => {
                    warn_once(&mut failing, target, &e);
                    feed.lost(batch.events.len());
                    continue;
                }
            }
        }
        let Some(s) = sock.as_ref() else { continue };
        let (mut ok, mut failed, mut notice_ok) = (0, 0, false);
        for (i, e) in batch.all().enumerate() {
            let is_notice = i >= batch.events.len();
            match s.send(header.message(e).as_bytes()).await {
                Ok(_) if is_notice => notice_ok = true,
                Ok(_) => ok += 1,
                Err(err) => {
                    // Typically the ICMP "port unreachable" of an earlier datagram.
                    warn_once(&mut failing, target, &err);
                    failed += usize::from(!is_notice);
                }
            }
        }
        if failed == 0 {
            failing = false;
        } else {
            sock = None;
        }
        feed.partly(&batch, ok, failed, notice_ok);
    }
}

fn warn_once(failing: &mut bool, target: &SyslogTarget, e: &dyn fmt::Display) {
    if !*failing {
        tracing::warn!("event sink {target} failing, dropping events: {e}");
        *failing = true;
    }
}

/// RFC 6587 octet counting: `LEN SP MSG` per message, back to back.
fn frames(batch: &Batch, header: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.events.len() * 512);
    for e in batch.all() {
        let m = header.message(e);
        out.extend_from_slice(format!("{} ", m.len()).as_bytes());
        out.extend_from_slice(m.as_bytes());
    }
    out
}

/// Whether the receiver has closed its end (a write would still "succeed" into the buffer).
fn closed_by_peer(s: &TcpStream) -> bool {
    let mut probe = [0u8; 64];
    match s.try_read(&mut probe) {
        Ok(0) => true,
        // Receivers send nothing in this protocol; whatever it is, ignore it.
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

async fn tcp(mut feed: Feed, target: &SyslogTarget, header: &Header) {
    let mut conn: Option<TcpStream> = None;
    let mut failing = false;
    while let Some(batch) = feed.next(MAX_BATCH, Duration::ZERO).await {
        let bytes = frames(&batch, header);
        let mut backoff = FIRST_BACKOFF;
        let mut sent = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            if conn.as_ref().is_some_and(closed_by_peer) {
                conn = None;
            }
            if conn.is_none() {
                let connect = async {
                    let addr = resolve(&target.server).await?;
                    let s = TcpStream::connect(addr).await?;
                    let _ = s.set_nodelay(true);
                    Ok::<_, std::io::Error>(s)
                };
                match tokio::time::timeout(IO_TIMEOUT, connect).await {
                    Ok(Ok(s)) => conn = Some(s),
                    Ok(Err(e)) => {
                        warn_once(&mut failing, target, &e);
                        continue;
                    }
                    Err(_) => {
                        warn_once(&mut failing, target, &"connect timed out");
                        continue;
                    }
                }
            }
            let Some(s) = conn.as_mut() else { continue };
            match tokio::time::timeout(IO_TIMEOUT, s.write_all(&bytes)).await {
                Ok(Ok(())) => {
                    sent = true;
                    break;
                }
                Ok(Err(e)) => warn_once(&mut failing, target, &e),
                Err(_) => warn_once(&mut failing, target, &"write timed out"),
            }
            conn = None;
        }
        if sent {
            failing = false;
            feed.delivered(&batch);
        } else {
            feed.lost(batch.events.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn header() -> Header {
        Header { facility: 16, app: "mesh-proxy".into(), hostname: "host-1".into(), procid: "42".into() }
    }

    #[test]
    fn messages_follow_rfc_5424() {
        let mut e = Event::new(EventKind::PolicyReloadFailed, Severity::Warning)
            .reason("invalid_policy", "caf\u{e9} \u{1F600}");
        e.timestamp = time::macros::datetime!(2026-11-28 14:12:58.123456789 UTC);
        let m = header().message(&e);
        // local0 (16) * 8 + warning (4) = 132. The header and the JSON say the same instant.
        let want = "<132>1 2026-11-28T14:12:58.123456Z host-1 mesh-proxy 42 policy.reload_failed - {";
        assert!(m.starts_with(want), "{m}");
        assert!(m.is_ascii(), "{m}");
        assert!(m.contains(r"caf\u00e9 \ud83d\ude00"), "{m}");
        let json = &m[want.len() - 1..];
        let v: serde_json::Value = serde_json::from_str(json).expect("MSG is the event's JSON");
        assert_eq!(v["reason_detail"], "caf\u{e9} \u{1F600}");
        assert_eq!(v["timestamp"], "2026-11-28T14:12:58.123456Z");
        e.timestamp = time::macros::datetime!(2026-11-28 14:12:58 UTC);
        assert!(header().message(&e).contains(" 2026-11-28T14:12:58.000000Z "), "fixed precision");
    }

    #[test]
    fn tcp_frames_are_octet_counted() {
        let batch = Batch {
            events: vec![
                std::sync::Arc::new(Event::new(EventKind::ProxyStopping, Severity::Info)),
                std::sync::Arc::new(Event::new(EventKind::ProxyStarted, Severity::Info).detail("\u{e9}")),
            ],
            notice: None,
        };
        let bytes = frames(&batch, &header());
        let mut rest = &bytes[..];
        let mut n = 0;
        while !rest.is_empty() {
            let sp = rest.iter().position(|b| *b == b' ').expect("LEN SP");
            let len: usize = std::str::from_utf8(&rest[..sp]).expect("digits").parse().expect("a length");
            let msg = &rest[sp + 1..sp + 1 + len];
            assert!(msg.starts_with(b"<134>1 "), "{}", String::from_utf8_lossy(msg));
            rest = &rest[sp + 1 + len..];
            n += 1;
        }
        assert_eq!(n, 2);
    }
}
