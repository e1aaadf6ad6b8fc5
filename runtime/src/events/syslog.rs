//! The syslog sink: each event is one RFC 5424 message whose MSG is the event's JSON object
//! (in the sink's schema), sent over UDP (RFC 5426, one message per datagram), TCP (RFC 6587
//! octet counting: `LEN SP MSG`, so a message can never be split or merged by a newline) or
//! TLS (RFC 5425: the same octet counting inside TLS; the relay's certificate is verified
//! against `[events] ca_bundle`, or the system's bundle, and the host name or IP address the
//! sink names).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID SD MSG`: PRI is the configured facility and
//! the event's severity (info 6, warning 4, error 3); TIMESTAMP is the event's, exactly as its
//! JSON says it (UTC, microseconds: the most the RFC allows); APP is the program
//! (`mesh-proxy`); MSGID is the event name; SD is one element `[ztmesh@32473 ...]` carrying
//! identity and decision (`src_id`, `dst_id`, `spiffe_id`, `decision`, `rule`, `reason`,
//! those the event has; values escaped per RFC 5424 6.3.3), or `-` when it has none of them.
//! 32473 is the enterprise number RFC 5612 reserves for documentation, as RFC 5424's own
//! examples use. The JSON is pure ASCII (non-ASCII escaped as `\uXXXX`), so MSG needs no BOM
//! and every receiver reads it the same way.
//!
//! TCP and TLS: one connection, reconnected when it fails or the receiver closes it; each
//! batch is tried a few times with backoff, then counted as dropped.

use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::sidecar::{Endpoint, Host, SyslogFacility, SyslogTransport};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

use super::{format, format_timestamp, Batch, Event, EventFormat, Feed, Severity};

const MAX_BATCH: usize = 256;
/// Tries per batch over TCP, with backoff between them.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// RFC 5424: HOSTNAME is at most 255 printable ASCII characters.
const MAX_HOSTNAME: usize = 255;

/// The SD-ID of zt-mesh's structured data element.
const SD_ID: &str = "ztmesh@32473";
/// The event fields the structured data carries, in this order.
const SD_PARAMS: [&str; 6] = ["src_id", "dst_id", "spiffe_id", "decision", "rule", "reason"];

/// A syslog collector.
#[derive(Debug, Clone)]
pub struct SyslogTarget {
    pub transport: SyslogTransport,
    pub server: Endpoint,
    pub facility: SyslogFacility,
    /// The schema of the MSG part.
    pub format: EventFormat,
    /// TLS only: the anchors the relay's certificate must chain to.
    pub roots: Option<Arc<RootCertStore>>,
}

impl SyslogTarget {
    pub(super) fn kind(&self) -> &'static str {
        match self.transport {
            SyslogTransport::Udp => "syslog_udp",
            SyslogTransport::Tcp => "syslog_tcp",
            SyslogTransport::Tls => "syslog_tls",
        }
    }
}

impl fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            SyslogTransport::Udp => write!(f, "syslog+udp://{}", self.server),
            SyslogTransport::Tcp => write!(f, "syslog+tcp://{}", self.server),
            SyslogTransport::Tls => write!(f, "syslog+tls://{}", self.server),
        }
    }
}

/// RFC 5424 6.3.3: inside a PARAM-VALUE, `"`, `\` and `]` are escaped with a backslash.
/// Control characters, which no receiver displays safely, become `?`.
fn sd_escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '"' | '\\' | ']' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
}

/// The structured data of `e`: `[ztmesh@32473 src_id="..." ...]`, or `-`.
fn structured_data(e: &Event) -> String {
    let v = serde_json::to_value(e).unwrap_or_default();
    let mut sd = String::new();
    for name in SD_PARAMS {
        let Some(value) = v.get(name).and_then(|x| x.as_str()).filter(|s| !s.is_empty() && *s != "-") else {
            continue;
        };
        if sd.is_empty() {
            sd.push('[');
            sd.push_str(SD_ID);
        }
        sd.push(' ');
        sd.push_str(name);
        sd.push_str("=\"");
        sd_escape(value, &mut sd);
        sd.push('"');
    }
    if sd.is_empty() {
        "-".to_owned()
    } else {
        sd.push(']');
        sd
    }
}

/// What every message of this process carries besides the event.
struct Header {
    facility: u8,
    /// The schema of MSG.
    format: EventFormat,
    /// APP-NAME: the program's file name.
    app: String,
    hostname: String,
    procid: String,
}

impl Header {
    fn new(facility: SyslogFacility, format: EventFormat) -> Self {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let hostname: String =
            raw.trim().chars().filter(|c| c.is_ascii_graphic()).take(MAX_HOSTNAME).collect();
        let hostname = if hostname.is_empty() { "-".to_owned() } else { hostname };
        let app: String =
            crate::output::program().chars().filter(|c| c.is_ascii_graphic()).take(48).collect();
        let app = if app.is_empty() { "-".to_owned() } else { app };
        Self { facility: facility.code(), format, app, hostname, procid: std::process::id().to_string() }
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
        format::encode(e, self.format, &mut json);
        format!(
            "<{}>1 {} {} {} {} {msgid} {} {}",
            u16::from(self.facility) * 8 + severity,
            format_timestamp(e.timestamp),
            self.hostname,
            self.app,
            self.procid,
            ascii(&structured_data(e)),
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
    let header = Header::new(target.facility, target.format);
    match target.transport {
        SyslogTransport::Udp => udp(feed, &target, &header).await,
        SyslogTransport::Tcp | SyslogTransport::Tls => stream(feed, &target, &header).await,
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

/// A byte stream to the receiver: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Whether the receiver has closed its end (a write would still "succeed" into the buffer):
/// one read, polled once.
async fn closed_by_peer(s: &mut Box<dyn Io>) -> bool {
    let mut probe = [0u8; 64];
    match tokio::time::timeout(Duration::ZERO, s.read(&mut probe)).await {
        // Nothing to read: open.
        Err(_) => false,
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // Receivers send nothing in this protocol; whatever it is, ignore it.
        Ok(Ok(_)) => false,
    }
}

/// The TLS side of a `syslog+tls://` sink: the connector and the name the relay's
/// certificate must carry.
fn tls_setup(target: &SyslogTarget) -> Result<Option<(TlsConnector, ServerName<'static>)>, String> {
    let roots = match (&target.roots, target.transport) {
        (Some(r), SyslogTransport::Tls) => r,
        (None, SyslogTransport::Tls) => return Err("no trust anchors for the relay".into()),
        (_, SyslogTransport::Udp | SyslogTransport::Tcp) => return Ok(None),
    };
    let config = mesh_identity::tls::web_client_config(roots.clone()).map_err(|e| e.to_string())?;
    let name = match target.server.host() {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Dns(name) => ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?,
    };
    Ok(Some((TlsConnector::from(config), name)))
}

async fn connect(
    target: &SyslogTarget,
    tls: Option<&(TlsConnector, ServerName<'static>)>,
) -> Result<Box<dyn Io>, String> {
    let addr = resolve(&target.server).await.map_err(|e| e.to_string())?;
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    match tls {
        None => Ok(Box::new(s)),
        Some((connector, name)) => {
            let t = connector.connect(name.clone(), s).await.map_err(|e| format!("TLS: {e}"))?;
            Ok(Box::new(t))
        }
    }
}

/// TCP and TLS: octet-counted frames over one connection.
async fn stream(mut feed: Feed, target: &SyslogTarget, header: &Header) {
    let tls = match tls_setup(target) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("event sink {target} unusable, dropping its events: {e}");
            while let Some(batch) = feed.next(MAX_BATCH, Duration::ZERO).await {
                feed.lost(batch.events.len());
            }
            return;
        }
    };
    let mut conn: Option<Box<dyn Io>> = None;
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
            if let Some(c) = conn.as_mut() {
                if closed_by_peer(c).await {
                    conn = None;
                }
            }
            if conn.is_none() {
                match tokio::time::timeout(IO_TIMEOUT, connect(target, tls.as_ref())).await {
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
            let write = async {
                s.write_all(&bytes).await?;
                s.flush().await
            };
            match tokio::time::timeout(IO_TIMEOUT, write).await {
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
        Header {
            facility: 16,
            format: EventFormat::Json,
            app: "mesh-proxy".into(),
            hostname: "host-1".into(),
            procid: "42".into(),
        }
    }

    #[test]
    fn messages_follow_rfc_5424() {
        let mut e = Event::new(EventKind::PolicyReloadFailed, Severity::Warning)
            .reason("invalid_policy", "caf\u{e9} \u{1F600}");
        e.timestamp = time::macros::datetime!(2026-11-28 14:12:58.123456789 UTC);
        let m = header().message(&e);
        // local0 (16) * 8 + warning (4) = 132. The header and the JSON say the same instant.
        let want = "<132>1 2026-11-28T14:12:58.123456Z host-1 mesh-proxy 42 policy.reload_failed [ztmesh@32473 reason=\"invalid_policy\"] {";
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
    fn structured_data_carries_identity_and_decision_escaped() {
        let c = crate::events::Connection {
            direction: "inbound",
            src_id: Some("spiffe://t/ns/a/sa/b".into()),
            decision: Some("deny"),
            rule: Some("deny \"x\" [a]\\b\n".into()),
            ..Default::default()
        };
        let e = Event::connection(EventKind::PolicyDeny, Severity::Warning, c);
        assert_eq!(
            structured_data(&e),
            r#"[ztmesh@32473 src_id="spiffe://t/ns/a/sa/b" decision="deny" rule="deny \"x\" [a\]\\b?"]"#
        );
        assert_eq!(structured_data(&Event::new(EventKind::ProxyStarted, Severity::Info)), "-");
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
