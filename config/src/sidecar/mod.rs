//! sidecar.toml parsed into a typed [`SidecarConfig`]: where the identity comes from, which
//! listeners to open, where events go, and the limits that bound every connection.
//!
//! Relative paths are resolved against the config file's directory, so a config works
//! whatever the process's working directory. Secrets are never inline: the key, join token
//! and bundles are named by path only, so `Debug` output and config dumps are safe to log.
//!
//! This module opens no sockets and reads no file besides sidecar.toml: it does not load the
//! policy or the certificates it points at, nor resolve DNS names.

mod addr;
mod file;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use addr::{AddrError, Endpoint, Host, HttpsUrl};

use crate::error::{read_file, ConfigError, Source};
use crate::identity::SpiffeId;

/// Where `[admin]` listens when the table is present without `listen`: loopback only, since
/// the admin port exposes metrics and health.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);

/// A sidecar's whole configuration, every value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    /// The policy file (absolute or relative to the working directory once resolved).
    pub policy: PathBuf,
    /// Where the sidecar's own certificate and key come from.
    pub identity: IdentitySource,
    /// The listener other sidecars call over mTLS, forwarding to the local app; `None` for a
    /// workload that only calls out.
    pub inbound: Option<Inbound>,
    /// Listeners the local app calls in plaintext, each bridged over mTLS to one remote sidecar.
    pub outbound: Vec<Outbound>,
    /// Admin endpoints (`/metrics`, `/ready`, `/live`); `None` when `[admin]` is absent.
    pub admin: Option<Admin>,
    /// Where events are written; never empty (stdout unless configured).
    pub events: Vec<EventSink>,
    /// How events are delivered: queue size, syslog facility, HTTPS body and trust anchors.
    pub event_options: EventOptions,
    /// Timeouts and the connection cap.
    pub limits: Limits,
    /// TLS session settings shared by the inbound and every outbound.
    pub tls: TlsOptions,
}

/// How the sidecar obtains its identity: exactly one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// Files issued by `mesh-ca issue`, re-read when they change.
    Files {
        /// Leaf certificate followed by its chain (PEM).
        cert: PathBuf,
        /// The leaf's private key (PEM); its contents are never logged.
        key: PathBuf,
        /// Trust bundle used to verify peers (PEM).
        bundle: PathBuf,
    },
    /// Enrollment with `mesh-ca serve`: the key is generated in memory, the CA signs it.
    Enroll {
        /// The CA's API; https only.
        ca_url: HttpsUrl,
        /// Trust anchor for the CA's API certificate (PEM).
        ca_bundle: PathBuf,
        /// File holding the one-time join token; its contents are never logged.
        token_file: PathBuf,
    },
}

/// Plain TCP or HTTP-aware (HTTP/1.1 parsed for per-request policy and events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
}

/// The inbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Where other sidecars connect over mTLS.
    pub listen: SocketAddr,
    /// The local app that authorized traffic is forwarded to, in plaintext.
    pub forward: Endpoint,
    /// Whether requests are parsed as HTTP for L7 policy.
    pub protocol: Protocol,
}

/// One outbound listener: a fixed route from the local app to one remote sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Where the local app connects in plaintext.
    pub listen: SocketAddr,
    /// The remote sidecar; a DNS host is resolved at connect time.
    pub connect: Endpoint,
    /// The identity the remote sidecar must present; anything else fails the handshake.
    pub server: SpiffeId,
    /// Whether requests are parsed as HTTP for L7 policy.
    pub protocol: Protocol,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where `/metrics`, `/ready` and `/live` are served.
    pub listen: SocketAddr,
}

/// One destination for events (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    Stdout,
    Stderr,
    /// Appended to this file.
    File(PathBuf),
    /// RFC 5424 syslog to a collector.
    Syslog {
        transport: SyslogTransport,
        server: Endpoint,
    },
    /// POSTed to an HTTPS collector.
    Https(HttpsUrl),
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyslogTransport {
    Udp,
    Tcp,
    /// RFC 5425: octet-counted messages over TLS, the relay verified against `[events]
    /// ca_bundle` (or the system's bundle) and the host name.
    Tls,
}

/// The schema events are written in (`[events] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EventFormat {
    /// zt-mesh's own flat JSON (`timestamp`, `event`, `severity`, `src_id`, ...).
    #[default]
    Json,
    /// Elastic Common Schema: `@timestamp`, `event.*`, `source.*`, `destination.*`, `tls.*`.
    Ecs,
    /// Open Cybersecurity Schema Framework: `class_uid`, `type_uid`, `activity_id`, ...
    Ocsf,
}

impl EventFormat {
    /// Every format by name, as sidecar.toml and `mesh-ca serve --events-format` write them.
    pub const ALL: [EventFormat; 3] = [EventFormat::Json, EventFormat::Ecs, EventFormat::Ocsf];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Ecs => "ecs",
            Self::Ocsf => "ocsf",
        }
    }
}

impl fmt::Display for EventFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            format!("{s:?} is not an event format; write \"json\" (zt-mesh's own), \"ecs\" or \"ocsf\"")
        })
    }
}

/// The `[events]` settings besides `sink`; they apply to every sink of the kind they name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOptions {
    /// Events each sink may hold waiting; past it, that sink drops (and counts) new events.
    pub queue_size: usize,
    /// The facility syslog messages carry.
    pub syslog_facility: SyslogFacility,
    /// The body of an HTTPS POST.
    pub https_format: HttpsFormat,
    /// Trust anchors (PEM) for HTTPS collectors and TLS syslog relays; `None`: the system's
    /// CA bundle.
    pub ca_bundle: Option<PathBuf>,
    /// The schema of every sink's events ...
    pub format: EventFormat,
    /// ... except stdout's and stderr's, when set (humans and `docker logs` keep reading
    /// zt-mesh's own JSON while the collectors get ECS or OCSF).
    pub stdout_format: Option<EventFormat>,
    /// A file whose one line is the header every HTTPS POST carries (`Authorization: Splunk
    /// <token>`, `Authorization: ApiKey <key>`); a secret, named by path only.
    pub auth_header_file: Option<PathBuf>,
}

impl EventOptions {
    /// The format `sink` writes.
    pub fn format_of(&self, sink: &EventSink) -> EventFormat {
        match sink {
            EventSink::Stdout | EventSink::Stderr => self.stdout_format.unwrap_or(self.format),
            _ => self.format,
        }
    }
}

/// The body of an HTTPS batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HttpsFormat {
    /// One JSON object per line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// One JSON array (`application/json`).
    Json,
}

/// An RFC 5424 facility, by its name (`local0`) and code (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyslogFacility {
    name: &'static str,
    code: u8,
}

/// The facilities sidecar.toml accepts, with their RFC 5424 codes.
const FACILITIES: [(&str, u8); 12] = [
    ("user", 1),
    ("daemon", 3),
    ("auth", 4),
    ("authpriv", 10),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl SyslogFacility {
    /// `local0`, the default: free for site use, so it never mixes with the system's own logs.
    pub const LOCAL0: Self = Self { name: "local0", code: 16 };

    pub fn code(self) -> u8 {
        self.code
    }

    pub fn name(self) -> &'static str {
        self.name
    }

    /// Looks a facility up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        FACILITIES.iter().find(|(n, _)| *n == name).map(|&(name, code)| Self { name, code })
    }

    /// Every accepted name, for error messages.
    pub fn names() -> impl Iterator<Item = &'static str> {
        FACILITIES.iter().map(|(n, _)| *n)
    }
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            queue_size: 8192,
            syslog_facility: SyslogFacility::LOCAL0,
            https_format: HttpsFormat::Ndjson,
            ca_bundle: None,
            format: EventFormat::Json,
            stdout_format: None,
            auth_header_file: None,
        }
    }
}

impl fmt::Display for HttpsFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ndjson => "ndjson",
            Self::Json => "json",
        })
    }
}

/// Bounds on every connection, so a slow or hostile peer cannot hold resources forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a TLS handshake may take before the connection is dropped (inbound, this is
    /// also how long a connection may stay unauthenticated).
    pub handshake_timeout: Duration,
    /// Longest a TCP connect (to the local app or a remote sidecar) may take.
    pub connect_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long live connections may finish before they are cut.
    pub drain_timeout: Duration,
    /// The most connections open at once on each listener: the inbound, and every outbound
    /// on its own, so that one listener's flood cannot starve another.
    pub max_connections: usize,
    /// The most connections open at once on the admin listener (its own budget).
    pub max_admin_connections: usize,
    /// Inbound connections not yet through the TLS handshake, from all sources together ...
    pub max_pending: usize,
    /// ... and from one source (an IPv4 address, an IPv6 /64). Past either cap a new inbound
    /// connection is closed as soon as it is accepted.
    pub max_pending_per_source: usize,
}

/// `[tls]`: how sessions are set up. Versions, suites and verification are not configurable:
/// TLS 1.3 with mutual authentication, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsOptions {
    /// Whether a returning peer may resume its session (an abbreviated handshake that skips
    /// the certificate exchange). Sessions live in memory only, and end whenever the
    /// certificate, the bundle or the revocation list changes. `false` makes every connection
    /// a full handshake: more CPU, nothing remembered between connections.
    pub resumption: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self { resumption: true }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5 * 60),
            drain_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            max_admin_connections: 64,
            max_pending: 1024,
            max_pending_per_source: 32,
        }
    }
}

impl SidecarConfig {
    /// Reads and validates sidecar.toml; relative paths in it are resolved against its directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read_file(path)?;
        let name = path.display().to_string();
        // Absolute, so resolved paths stay right if the working directory changes later.
        let absolute =
            std::path::absolute(path).map_err(|source| ConfigError::Read { file: name.clone(), source })?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        Self::from_str_named(&text, &name, base)
    }

    /// Validates sidecar.toml text; `name` is what errors call the file and relative paths are
    /// resolved against `base_dir`.
    pub fn from_str_named(text: &str, name: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        file::parse(&Source::new(name, text), base_dir)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
        })
    }
}

impl fmt::Display for EventSink {
    /// The sink as it would be written in sidecar.toml.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::Stderr => f.write_str("stderr"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Syslog { transport: SyslogTransport::Udp, server } => write!(f, "syslog+udp://{server}"),
            Self::Syslog { transport: SyslogTransport::Tcp, server } => write!(f, "syslog+tcp://{server}"),
            Self::Syslog { transport: SyslogTransport::Tls, server } => write!(f, "syslog+tls://{server}"),
            Self::Https(url) => write!(f, "{url}"),
        }
    }
}
