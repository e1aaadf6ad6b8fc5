//! The HTTPS sink: events POSTed in batches to a collector (NDJSON, or one JSON array), over
//! one kept-alive HTTP/1.1 connection.
//!
//! A batch is what is queued, up to [`MAX_BATCH`] events, gathered for at most [`LINGER`].
//! A 2xx answer delivers it, once: the status line is what counts, so a collector that
//! closes the connection after answering (HTTP/1.0, `Connection: close`, or no TLS
//! close_notify) neither gets the batch again nor has it counted as dropped; such a
//! connection is simply not reused. It is tried [`ATTEMPTS`] times with doubling backoff
//! (from [`FIRST_BACKOFF`], with jitter); a connection failure, a timeout, 408, 429 or a 5xx
//! is retried, any other status is final. A batch that fails every attempt is
//! dropped (counted), and the next batch waits a cool-down first (doubling up to
//! [`MAX_COOLDOWN`]), so a dead collector costs a few connection attempts per second at most.
//! Meanwhile the sink's queue fills and the data plane drops at its door: it never waits.
//!
//! The collector is verified against `[events] ca_bundle`, or the system's CA bundle, and by
//! its DNS name or IP address as the URL gives it. Its TLS config is built here rather than
//! in `tls` because a collector is an ordinary web server (web PKI, TLS 1.2 or 1.3), not a
//! SPIFFE workload.
//!
//! `[events] auth_header_file` names a file whose one line is a header every POST carries
//! (`Authorization: Splunk <token>` for Splunk HEC, `Authorization: ApiKey <key>` for
//! Elasticsearch). It is read at start (so `mesh-proxy check` sees a bad one), its value is
//! marked sensitive and appears in no log, error or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use mesh_config::sidecar::{Host, HttpsFormat, HttpsUrl};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{format, Batch, EventFormat, Feed};

const MAX_BATCH: usize = 500;
const LINGER: Duration = Duration::from_millis(200);
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_COOLDOWN: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The collector's answer is read (to keep the connection usable) up to this much, then ignored.
const MAX_RESPONSE: usize = 64 * 1024;
const MAX_BUNDLE: u64 = 4 * 1024 * 1024;
/// The auth header file holds one line: a header name and a token or key.
const MAX_AUTH_FILE: u64 = 8 * 1024;
/// Where Debian, Alpine, Fedora and macOS keep the system's CA bundle.
const SYSTEM_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// An HTTPS collector.
#[derive(Debug, Clone)]
pub struct HttpsTarget {
    pub url: HttpsUrl,
    /// The body: NDJSON or one JSON array.
    pub format: HttpsFormat,
    /// The schema of each event in it.
    pub schema: EventFormat,
    pub roots: Arc<RootCertStore>,
    /// The file the roots came from, for `/config` and errors.
    pub roots_file: PathBuf,
    /// The header every POST carries (a collector's token), if configured.
    pub auth: Option<AuthHeader>,
}

/// A header read from `[events] auth_header_file`. Its value is a secret: `Debug` shows
/// only the file and the header's name.
#[derive(Clone)]
pub struct AuthHeader {
    pub file: PathBuf,
    name: HeaderName,
    value: HeaderValue,
}

impl fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthHeader")
            .field("file", &self.file)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl AuthHeader {
    /// Reads `Name: value` from `path` (one line; a final newline is allowed). Errors name
    /// the file and what is wrong, never the value.
    pub fn read(path: &Path) -> Result<Self, String> {
        let at = path.display();
        let raw = mesh_identity::fsutil::read_bounded(path, MAX_AUTH_FILE).map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(&raw).map_err(|_| format!("{at}: is not text"))?;
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains(['\n', '\r']) {
            return Err(format!(
                "{at}: holds more than one line; write one header, e.g. \"Authorization: Splunk <token>\""
            ));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "{at}: is not a header; write one line \"Name: value\", e.g. \"Authorization: ApiKey <key>\""
            ));
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{at}: {:?} is not a header name", name.trim()))?;
        let framing = [
            hyper::header::HOST,
            hyper::header::CONTENT_LENGTH,
            hyper::header::CONTENT_TYPE,
            hyper::header::TRANSFER_ENCODING,
            hyper::header::CONNECTION,
        ];
        if framing.contains(&name) {
            return Err(format!("{at}: {name} is set by the sink itself; name an authentication header"));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{at}: the {name} header has no value"));
        }
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            format!("{at}: the {name} header's value is not printable ASCII (value not shown)")
        })?;
        value.set_sensitive(true);
        Ok(Self { file: path.to_owned(), name, value })
    }
}

impl fmt::Display for HttpsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Reads the trust anchors for collectors: `path`, or the first system bundle that exists.
pub fn load_roots(path: Option<&Path>) -> Result<(Arc<RootCertStore>, PathBuf), String> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
            format!(
                "no system CA bundle ({}); set [events] ca_bundle for the https sink",
                SYSTEM_BUNDLES.join(", ")
            )
        })?,
    };
    let raw = mesh_identity::fsutil::read_bounded(&path, MAX_BUNDLE).map_err(|e| e.to_string())?;
    let certs = mesh_identity::pem::parse_certs(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: holds no usable CA certificate", path.display()));
    }
    Ok((Arc::new(roots), path))
}

fn server_name(url: &HttpsUrl) -> Result<ServerName<'static>, String> {
    match url.endpoint().host() {
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Dns(name) => ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}")),
    }
}

/// The request body and its content type.
fn body(batch: &Batch, format: HttpsFormat, schema: EventFormat) -> (Vec<u8>, &'static str) {
    let mut out = Vec::with_capacity(batch.events.len() * 512 + 2);
    match format {
        HttpsFormat::Ndjson => {
            for e in batch.all() {
                format::encode(e, schema, &mut out);
                out.push(b'\n');
            }
            (out, "application/x-ndjson")
        }
        HttpsFormat::Json => {
            out.push(b'[');
            for (i, e) in batch.all().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                format::encode(e, schema, &mut out);
            }
            out.push(b']');
            (out, "application/json")
        }
    }
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try (the connection is dropped).
    Retry(String),
    /// The collector refused the batch for good.
    Refused(StatusCode),
}

struct Client {
    target: HttpsTarget,
    tls: TlsConnector,
    name: ServerName<'static>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let address = self.target.url.endpoint().to_string();
        let work = async {
            let tcp = TcpStream::connect(&address).await.map_err(|e| format!("{address}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let tls =
                self.tls.connect(self.name.clone(), tcp).await.map_err(|e| format!("{address}: TLS: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            // Ends when the sender is dropped or the collector closes the connection.
            tokio::spawn(conn);
            Ok(sender)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(format!("{address}: connect timed out")))
    }

    async fn attempt(&mut self, body: Bytes, content_type: &'static str) -> Attempt {
        let mut sender = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => match self.connect().await {
                Ok(s) => s,
                Err(e) => return Attempt::Retry(e),
            },
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.target.url.path())
            .header(hyper::header::HOST, self.target.url.endpoint().to_string())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::USER_AGENT, concat!("mesh-proxy/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = &self.target.auth {
            request = request.header(a.name.clone(), a.value.clone());
        }
        let request = request.body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let head = async {
            sender.ready().await.map_err(|e| e.to_string())?;
            sender.send_request(request).await.map_err(|e| e.to_string())
        };
        let response = match tokio::time::timeout_at(deadline, head).await {
            Err(_) => return Attempt::Retry("request timed out".into()),
            Ok(Err(e)) => return Attempt::Retry(e),
            Ok(Ok(r)) => r,
        };
        // The answer is the status line: the batch's fate is decided here, whatever happens
        // to the rest of the response.
        let status = response.status();
        let closes = response.version() < Version::HTTP_11
            || response
                .headers()
                .get(hyper::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        // Read (bounded) so the connection can carry the next batch; a body that fails to
        // arrive whole (a collector closing without close_notify) only ends the connection.
        let body = Limited::new(response.into_body(), MAX_RESPONSE).collect();
        let reusable = matches!(tokio::time::timeout_at(deadline, body).await, Ok(Ok(_))) && !closes;
        if reusable {
            self.conn = Some(sender);
        }
        if status.is_success() {
            Attempt::Delivered
        } else if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            self.conn = None;
            Attempt::Retry(format!("answered {status}"))
        } else {
            Attempt::Refused(status)
        }
    }
}

/// `d` plus up to a quarter of it, so sidecars that lost one collector together do not
/// retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

pub(super) async fn run(mut feed: Feed, target: HttpsTarget) {
    let setup = mesh_identity::tls::web_client_config(target.roots.clone())
        .map_err(|e| e.to_string())
        .and_then(|c| Ok((c, server_name(&target.url)?)));
    let (config, name) = match setup {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("event sink {target} unusable, dropping its events: {e}");
            while let Some(batch) = feed.next(MAX_BATCH, Duration::ZERO).await {
                feed.lost(batch.events.len());
            }
            return;
        }
    };
    let mut client = Client { target, tls: TlsConnector::from(config), name, conn: None };
    let mut cooldown: Option<Duration> = None;
    while let Some(batch) = feed.next(MAX_BATCH, LINGER).await {
        if let Some(wait) = cooldown {
            tokio::time::sleep(wait).await;
        }
        let (bytes, content_type) = body(&batch, client.target.format, client.target.schema);
        let bytes = Bytes::from(bytes);
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::new();
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(jitter(backoff)).await;
                backoff *= 2;
            }
            match client.attempt(bytes.clone(), content_type).await {
                Attempt::Delivered => {
                    delivered = true;
                    break;
                }
                Attempt::Retry(why) => last = why,
                Attempt::Refused(status) => {
                    last = format!("refused the batch: {status}");
                    break;
                }
            }
        }
        if delivered {
            if cooldown.take().is_some() {
                tracing::info!("event sink {} delivers again", client.target);
            }
            feed.delivered(&batch);
        } else {
            if cooldown.is_none() {
                tracing::warn!("event sink {} failing, dropping events: {last}", client.target);
            }
            cooldown = Some(cooldown.map_or(Duration::from_secs(1), |c| (c * 2).min(MAX_COOLDOWN)));
            feed.lost(batch.events.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind, Severity};

    #[test]
    fn bodies_are_ndjson_or_one_array() {
        let batch = Batch {
            events: vec![
                Arc::new(Event::new(EventKind::ProxyStarted, Severity::Info)),
                Arc::new(Event::new(EventKind::PolicyReloadFailed, Severity::Warning)),
            ],
            notice: None,
        };
        let (nd, ct) = body(&batch, HttpsFormat::Ndjson, EventFormat::Json);
        assert_eq!(ct, "application/x-ndjson");
        let lines: Vec<serde_json::Value> = String::from_utf8(nd)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!((lines.len(), lines[1]["event"].as_str()), (2, Some("policy.reload_failed")));
        let (js, ct) = body(&batch, HttpsFormat::Json, EventFormat::Json);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&js).expect("one JSON array");
        assert_eq!(v.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn auth_headers_are_one_line_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("mesh-https-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let a = AuthHeader::read(&file("ok", "Authorization: Splunk s3cr3t-token\n")).expect("a header");
        assert_eq!((a.name.as_str(), a.value.to_str().ok()), ("authorization", Some("Splunk s3cr3t-token")));
        assert!(a.value.is_sensitive());
        assert!(!format!("{a:?}").contains("s3cr3t"), "{a:?}");
        for (name, text) in [
            ("two", "Authorization: a\nX-Other: b\n"),
            ("colon", "just-a-token\n"),
            ("empty", "Authorization:  \n"),
            ("framing", "Content-Length: 5\n"),
            ("ctl", "Authorization: Splunk s3cr3t\u{7}\n"),
        ] {
            let e = AuthHeader::read(&file(name, text)).expect_err(name);
            assert!(!e.contains("s3cr3t"), "{name}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_empty_bundles_are_refused() {
        let dir = std::env::temp_dir().join(format!("mesh-https-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        assert!(load_roots(Some(&empty)).is_err());
        assert!(load_roots(Some(&dir.join("missing.pem"))).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
