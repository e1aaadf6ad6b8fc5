//! The syslog sink: each event is one RFC 5424 message whose MSG is the event's JSON object,
//! sent over UDP (RFC 5426, one message per datagram) or TCP (RFC 6587 octet counting:
//! `LEN SP MSG`, so a message can never be split or merged by a newline).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME mesh-proxy PROCID MSGID - MSG`: PRI is the configured facility
//! and the event's severity (info 6, warning 4, error 3); TIMESTAMP is the event's, in UTC with
//! at most microseconds (the RFC allows six digits); MSGID is the event name; there is no
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
use mesh_runtime::output;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::{json_line, Batch, Event, Feed, Severity};

const APP_NAME: &str = "mesh-proxy";
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
    hostname: String,
    procid: String,
}

impl Header {
    fn new(facility: SyslogFacility) -> Self {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let hostname: String =
            raw.trim().chars().filter(|c| c.is_ascii_graphic()).take(MAX_HOSTNAME).collect();
        let hostname = if hostname.is_empty() { "-".to_owned() } else { hostname };
        Self { facility: facility.code(), hostname, procid: std::process::id().to_string() }
    }

    /// One RFC 5424 message, without framing.
    fn message(&self, e: &Event) -> String {
        let severity = match e.severity {
            Severity::Info => 6,
            Severity::Warning => 4,
            Severity::Error => 3,
        };
        let msgid =
            if !e.event.is_empty() && e.event.len() <= 32 && e.event.chars().all(|c| c.is_ascii_graphic()) {
                e.event
            } else {
                "-"
            };
        let mut json = Vec::with_capacity(512);
        json_line(e, &mut json);
        format!(
            "<{}>1 {} {} {APP_NAME} {} {msgid} - {}",
            u16::from(self.facility) * 8 + severity,
            timestamp(&e.timestamp),
            self.hostname,
            self.procid,
            ascii(&String::from_utf8_lossy(&json)),
        )
    }
}

/// An RFC 3339 UTC timestamp with its fraction cut to the six digits RFC 5424 allows.
fn timestamp(ts: &str) -> String {
    let Some(dot) = ts.find('.') else { return ts.to_owned() };
    let digits = ts[dot + 1..].chars().take_while(char::is_ascii_digit).count();
    if digits <= 6 {
        return ts.to_owned();
    }
    format!("{}{}", &ts[..dot + 7], &ts[dot + 1 + digits..])
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
        output::stderr().line(&format!("mesh-proxy: event sink {target} failing, dropping events: {e}"));
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

    fn header() -> Header {
        Header { facility: 16, hostname: "host-1".into(), procid: "42".into() }
    }

    #[test]
    fn messages_follow_rfc_5424() {
        let mut e = Event::new("policy.deny", Severity::Warning).reason("no_rule", "caf\u{e9} \u{1F600}");
        e.timestamp = "2026-11-28T14:12:58.123456789Z".into();
        let m = header().message(&e);
        // local0 (16) * 8 + warning (4) = 132.
        let want = "<132>1 2026-11-28T14:12:58.123456Z host-1 mesh-proxy 42 policy.deny - {";
        assert!(m.starts_with(want), "{m}");
        assert!(m.is_ascii(), "{m}");
        assert!(m.contains(r"caf\u00e9 \ud83d\ude00"), "{m}");
        let json = &m[want.len() - 1..];
        let v: serde_json::Value = serde_json::from_str(json).expect("MSG is the event's JSON");
        assert_eq!(v["reason_detail"], "caf\u{e9} \u{1F600}");
        assert_eq!(timestamp("2026-11-28T14:12:58Z"), "2026-11-28T14:12:58Z");
        assert_eq!(timestamp("2026-11-28T14:12:58.5Z"), "2026-11-28T14:12:58.5Z");
    }

    #[test]
    fn tcp_frames_are_octet_counted() {
        let batch = Batch {
            events: vec![
                std::sync::Arc::new(Event::new("connection", Severity::Info)),
                std::sync::Arc::new(Event::new("proxy.started", Severity::Info).detail("\u{e9}")),
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
