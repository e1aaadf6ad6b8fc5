//! sidecar.toml text -> [`SidecarConfig`]. Each value is checked where it is converted, so each
//! error names its own key and position; cross-field rules (one identity mode, distinct
//! listeners, distinct sinks) are checked last.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::addr::{Endpoint, HttpsUrl};
use super::DEFAULT_ADMIN_LISTEN;
use super::{
    Admin, EventFormat, EventOptions, EventSink, HttpsFormat, IdentitySource, Inbound, Limits, Outbound,
    Protocol, SidecarConfig, SyslogFacility, SyslogTransport, TlsOptions,
};
use crate::error::{ConfigError, Source};

/// Port syslog collectors listen on unless told otherwise.
const SYSLOG_PORT: u16 = 514;
/// Port of syslog over TLS (RFC 5425) unless told otherwise.
const SYSLOG_TLS_PORT: u16 = 6514;

/// The largest `[events] queue_size`: past a million waiting events a sink is not coming back.
const MAX_QUEUE: usize = 1_000_000;

const SINKS_HELP: &str = "write \"stdout\", \"stderr\", \"file:/path/to/events.log\", \
                          \"syslog+udp://host:port\", \"syslog+tcp://host:port\", \"syslog+tls://host:port\" or \"https://collector/path\"";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    policy: Spanned<String>,
    identity: Spanned<RawIdentity>,
    inbound: Option<RawInbound>,
    #[serde(default)]
    outbound: Vec<RawOutbound>,
    admin: Option<RawAdmin>,
    events: Option<RawEvents>,
    limits: Option<RawLimits>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    resumption: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    bundle: Option<Spanned<String>>,
    ca_url: Option<Spanned<String>>,
    ca_bundle: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: Spanned<String>,
    forward: Spanned<String>,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    listen: Spanned<String>,
    connect: Spanned<String>,
    server: Spanned<String>,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    sink: Option<Spanned<RawSinks>>,
    queue_size: Option<Spanned<i64>>,
    syslog_facility: Option<Spanned<String>>,
    https_format: Option<Spanned<String>>,
    ca_bundle: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    stdout_format: Option<Spanned<String>>,
    auth_header_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_admin_connections: Option<Spanned<i64>>,
    max_pending: Option<Spanned<i64>>,
    max_pending_per_source: Option<Spanned<i64>>,
}

/// `sink = "stdout"` or `sink = ["stdout", "file:/var/log/mesh.log"]`. Hand-written rather than
/// `#[serde(untagged)]`, which would buffer the value and lose the elements' positions.
enum RawSinks {
    One(String),
    Many(Vec<Spanned<String>>),
}

/// Converts raw values, knowing the source (for errors) and the directory paths are relative to.
struct Conv<'a> {
    src: &'a Source<'a>,
    base: &'a Path,
}

pub(super) fn parse(src: &Source<'_>, base: &Path) -> Result<SidecarConfig, ConfigError> {
    let raw: RawSidecar = src.parse()?;
    let c = Conv { src, base };
    let policy = c.path(&raw.policy, "policy")?;
    let identity = c.identity(&raw.identity)?;
    // Every listener, for the collision check; the default admin address goes first so a
    // collision with it is reported on the line that was actually written.
    let mut listeners = Vec::new();
    if raw.admin.as_ref().is_some_and(|a| a.listen.is_none()) {
        listeners.push(("admin.listen (default)".to_owned(), None, DEFAULT_ADMIN_LISTEN));
    }
    let mut listen = |raw: &Spanned<String>, key: String| {
        let addr = c.listen(raw, &key)?;
        listeners.push((key, Some(raw.span()), addr));
        Ok::<_, ConfigError>(addr)
    };
    let inbound = match &raw.inbound {
        Some(i) => Some(Inbound {
            listen: listen(&i.listen, "inbound.listen".to_owned())?,
            forward: c.endpoint(&i.forward, "inbound.forward")?,
            protocol: c.protocol(i.protocol.as_ref(), "inbound.protocol")?,
        }),
        None => None,
    };
    let mut outbound = Vec::with_capacity(raw.outbound.len());
    for (i, o) in raw.outbound.iter().enumerate() {
        let key = |k: &str| format!("outbound[{i}].{k}");
        let server = o.server.get_ref();
        outbound.push(Outbound {
            listen: listen(&o.listen, key("listen"))?,
            connect: c.endpoint(&o.connect, &key("connect"))?,
            server: server.parse().map_err(|e| {
                let msg = format!("{server:?} is not a workload SPIFFE ID: {e}");
                src.invalid(o.server.span(), key("server"), msg)
            })?,
            protocol: c.protocol(o.protocol.as_ref(), &key("protocol"))?,
        });
    }
    let admin = match raw.admin.as_ref().map(|a| a.listen.as_ref()) {
        Some(Some(raw)) => Some(Admin { listen: listen(raw, "admin.listen".to_owned())? }),
        Some(None) => Some(Admin { listen: DEFAULT_ADMIN_LISTEN }),
        None => None,
    };
    let events = match raw.events.as_ref().and_then(|e| e.sink.as_ref()) {
        Some(sinks) => c.sinks(sinks)?,
        None => vec![EventSink::Stdout],
    };
    let event_options = match &raw.events {
        Some(e) => c.event_options(e)?,
        None => EventOptions::default(),
    };
    let limits = match &raw.limits {
        Some(l) => c.limits(l)?,
        None => Limits::default(),
    };
    let tls = TlsOptions {
        resumption: raw.tls.as_ref().and_then(|t| t.resumption).unwrap_or(TlsOptions::default().resumption),
    };
    check_listeners(src, &listeners)?;
    Ok(SidecarConfig { policy, identity, inbound, outbound, admin, events, event_options, limits, tls })
}

impl Conv<'_> {
    /// A file path, resolved against the config's directory. Refuses values that look like an
    /// inline secret, without echoing them.
    fn path(&self, raw: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let value = raw.get_ref();
        let problem = if value.trim().is_empty() {
            Some("is empty; write a file path")
        } else if value.contains(['\n', '\r', '\0']) || value.contains("-----BEGIN") {
            Some("must be a file path; inline keys, tokens and certificates are not accepted (value not shown)")
        } else if value.starts_with('~') {
            Some(
                "starts with '~', which is not expanded; write an absolute path or one relative to this file",
            )
        } else {
            None
        };
        match problem {
            Some(msg) => Err(self.src.invalid(raw.span(), key, msg)),
            None => Ok(self.base.join(value)),
        }
    }

    fn listen(&self, raw: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        let value = raw.get_ref();
        value.parse().map_err(|_| {
            let msg = format!(
                "{value:?} is not a listen address; write an IP address and port such as \"127.0.0.1:15001\" \
                 or \"[::1]:15001\" (names are not accepted: they can resolve to several addresses)"
            );
            self.src.invalid(raw.span(), key, msg)
        })
    }

    fn endpoint(&self, raw: &Spanned<String>, key: &str) -> Result<Endpoint, ConfigError> {
        let value = raw.get_ref();
        value.parse().map_err(|e| {
            let msg = format!(
                "{value:?} is not a host:port address: {e} (e.g. \"10.0.0.7:15443\" or \"app:8080\")"
            );
            self.src.invalid(raw.span(), key, msg)
        })
    }

    fn protocol(&self, raw: Option<&Spanned<String>>, key: &str) -> Result<Protocol, ConfigError> {
        match raw.map(|r| (r, r.get_ref().as_str())) {
            None | Some((_, "tcp")) => Ok(Protocol::Tcp),
            Some((_, "http")) => Ok(Protocol::Http),
            Some((r, other)) => {
                let msg = format!("{other:?} is not a protocol; write \"tcp\" or \"http\"");
                Err(self.src.invalid(r.span(), key, msg))
            }
        }
    }

    fn identity(&self, raw: &Spanned<RawIdentity>) -> Result<IdentitySource, ConfigError> {
        let id = raw.get_ref();
        let files = [("cert", &id.cert), ("key", &id.key), ("bundle", &id.bundle)];
        let enroll = [("ca_url", &id.ca_url), ("ca_bundle", &id.ca_bundle), ("token_file", &id.token_file)];
        let first = |set: &[(&'static str, &Option<Spanned<String>>)]| {
            set.iter().find_map(|(k, v)| v.as_ref().map(|v| (*k, v.span())))
        };
        let modes = "files mode (cert, key, bundle) or enrollment mode (ca_url, ca_bundle, token_file)";
        match (first(&files), first(&enroll)) {
            (Some(_), Some((k, span))) => {
                let msg = format!("cannot be combined with cert, key or bundle; choose {modes}");
                Err(self.src.invalid(span, format!("identity.{k}"), msg))
            }
            (None, None) => Err(self.src.invalid(raw.span(), "identity", format!("is empty; give {modes}"))),
            (Some(_), None) => Ok(IdentitySource::Files {
                cert: self.path(self.required(raw, &id.cert, "files mode", "cert")?, "identity.cert")?,
                key: self.path(self.required(raw, &id.key, "files mode", "key")?, "identity.key")?,
                bundle: self
                    .path(self.required(raw, &id.bundle, "files mode", "bundle")?, "identity.bundle")?,
            }),
            (None, Some(_)) => {
                let url = self.required(raw, &id.ca_url, "enrollment mode", "ca_url")?;
                let ca_bundle = self.required(raw, &id.ca_bundle, "enrollment mode", "ca_bundle")?;
                let token_file = self.required(raw, &id.token_file, "enrollment mode", "token_file")?;
                Ok(IdentitySource::Enroll {
                    ca_url: url.get_ref().parse::<HttpsUrl>().map_err(|e| {
                        let msg = format!("{:?} is not usable: {e}", url.get_ref());
                        self.src.invalid(url.span(), "identity.ca_url", msg)
                    })?,
                    ca_bundle: self.path(ca_bundle, "identity.ca_bundle")?,
                    token_file: self.path(token_file, "identity.token_file")?,
                })
            }
        }
    }

    /// A key the chosen identity mode cannot do without; its absence is reported on the table.
    fn required<'v>(
        &self,
        table: &Spanned<RawIdentity>,
        value: &'v Option<Spanned<String>>,
        mode: &str,
        key: &str,
    ) -> Result<&'v Spanned<String>, ConfigError> {
        value
            .as_ref()
            .ok_or_else(|| self.src.invalid(table.span(), "identity", format!("{mode} needs {key} too")))
    }

    fn sinks(&self, raw: &Spanned<RawSinks>) -> Result<Vec<EventSink>, ConfigError> {
        let items: Vec<(String, Spanned<String>)> = match raw.get_ref() {
            RawSinks::One(s) => vec![("events.sink".to_owned(), Spanned::new(raw.span(), s.clone()))],
            RawSinks::Many(v) => {
                v.iter().enumerate().map(|(i, s)| (format!("events.sink[{i}]"), s.clone())).collect()
            }
        };
        if items.is_empty() {
            let msg = format!("is empty; events need at least one sink: {SINKS_HELP}");
            return Err(self.src.invalid(raw.span(), "events.sink", msg));
        }
        let mut sinks = Vec::with_capacity(items.len());
        for (key, item) in &items {
            let sink = self.sink(item, key)?;
            if sinks.contains(&sink) {
                let msg = format!("{:?} is listed twice; every event would be written twice", item.get_ref());
                return Err(self.src.invalid(item.span(), key, msg));
            }
            sinks.push(sink);
        }
        Ok(sinks)
    }

    fn sink(&self, raw: &Spanned<String>, key: &str) -> Result<EventSink, ConfigError> {
        let value = raw.get_ref().as_str();
        let bad = |why: String| self.src.invalid(raw.span(), key, format!("{value:?} {why}"));
        let syslog = |rest: &str, transport| {
            let port = if transport == SyslogTransport::Tls { SYSLOG_TLS_PORT } else { SYSLOG_PORT };
            Endpoint::parse_with_default(rest, Some(port))
                .map(|server| EventSink::Syslog { transport, server })
                .map_err(|e| bad(format!("is not a usable syslog address: {e}")))
        };
        match value {
            "stdout" => Ok(EventSink::Stdout),
            "stderr" => Ok(EventSink::Stderr),
            _ if value.starts_with("https://") => {
                value.parse().map(EventSink::Https).map_err(|e| bad(format!("is not usable: {e}")))
            }
            _ if value.starts_with("http://") => {
                Err(bad("uses plain http; events carry identities, use https://".into()))
            }
            _ => {
                if let Some(path) = value.strip_prefix("file:") {
                    self.path(&Spanned::new(raw.span(), path.to_owned()), key).map(EventSink::File)
                } else if let Some(rest) = value.strip_prefix("syslog+udp://") {
                    syslog(rest, SyslogTransport::Udp)
                } else if let Some(rest) = value.strip_prefix("syslog+tcp://") {
                    syslog(rest, SyslogTransport::Tcp)
                } else if let Some(rest) = value.strip_prefix("syslog+tls://") {
                    syslog(rest, SyslogTransport::Tls)
                } else {
                    Err(bad(format!("is not an event sink; {SINKS_HELP}")))
                }
            }
        }
    }

    fn event_options(&self, raw: &RawEvents) -> Result<EventOptions, ConfigError> {
        let default = EventOptions::default();
        let queue_size = match &raw.queue_size {
            None => default.queue_size,
            Some(n) => usize::try_from(*n.get_ref())
                .ok()
                .filter(|n| (1..=MAX_QUEUE).contains(n))
                .ok_or_else(|| {
                    let msg = format!("{} must be from 1 to {MAX_QUEUE}", n.get_ref());
                    self.src.invalid(n.span(), "events.queue_size", msg)
                })?,
        };
        let syslog_facility = match &raw.syslog_facility {
            None => default.syslog_facility,
            Some(f) => SyslogFacility::from_name(f.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = SyslogFacility::names().collect();
                let msg = format!("{:?} is not a facility; write one of {}", f.get_ref(), names.join(", "));
                self.src.invalid(f.span(), "events.syslog_facility", msg)
            })?,
        };
        let https_format = match raw.https_format.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "ndjson")) => HttpsFormat::Ndjson,
            Some((_, "json")) => HttpsFormat::Json,
            Some((f, other)) => {
                let msg = format!(
                    "{other:?} is not a body format; write \"ndjson\" (one object per line) or \"json\" (an array)"
                );
                return Err(self.src.invalid(f.span(), "events.https_format", msg));
            }
        };
        let ca_bundle = match &raw.ca_bundle {
            None => None,
            Some(p) => Some(self.path(p, "events.ca_bundle")?),
        };
        let format = |raw: &Option<Spanned<String>>, key: &str| match raw {
            None => Ok(None),
            Some(f) => f
                .get_ref()
                .parse::<EventFormat>()
                .map(Some)
                .map_err(|msg| self.src.invalid(f.span(), key, msg)),
        };
        let auth_header_file = match &raw.auth_header_file {
            None => None,
            Some(p) => Some(self.path(p, "events.auth_header_file")?),
        };
        Ok(EventOptions {
            queue_size,
            syslog_facility,
            https_format,
            ca_bundle,
            format: format(&raw.format, "events.format")?.unwrap_or_default(),
            stdout_format: format(&raw.stdout_format, "events.stdout_format")?,
            auth_header_file,
        })
    }

    fn limits(&self, raw: &RawLimits) -> Result<Limits, ConfigError> {
        let default = Limits::default();
        let duration = |raw: &Option<Spanned<String>>, key: &str, default: Duration| {
            let Some(raw) = raw else { return Ok(default) };
            let value = raw.get_ref();
            let msg = match humantime::parse_duration(value.trim()) {
                Ok(d) if !d.is_zero() => return Ok(d),
                Ok(_) => format!("{value:?} is zero; limits must be longer than zero"),
                Err(_) => format!("{value:?} is not a duration; write it like 500ms, 10s, 5m or 1h"),
            };
            Err(self.src.invalid(raw.span(), format!("limits.{key}"), msg))
        };
        let count = |raw: &Option<Spanned<i64>>, key: &str, default: usize| match raw {
            None => Ok(default),
            Some(n) => usize::try_from(*n.get_ref()).ok().filter(|&n| n > 0).ok_or_else(|| {
                self.src.invalid(
                    n.span(),
                    format!("limits.{key}"),
                    format!("{} must be at least 1", n.get_ref()),
                )
            }),
        };
        let max_connections = count(&raw.max_connections, "max_connections", default.max_connections)?;
        let max_pending = count(&raw.max_pending, "max_pending", default.max_pending)?;
        let max_pending_per_source =
            count(&raw.max_pending_per_source, "max_pending_per_source", default.max_pending_per_source)?;
        // The defaults agree; a file that sets one of the two may not make them disagree.
        let given = match (&raw.max_pending_per_source, &raw.max_pending) {
            (Some(n), _) => Some((n, "limits.max_pending_per_source")),
            (None, Some(n)) => Some((n, "limits.max_pending")),
            (None, None) => None,
        };
        if let Some((n, key)) = given.filter(|_| max_pending_per_source > max_pending) {
            let msg = format!(
                "max_pending_per_source ({max_pending_per_source}) is more than max_pending \
                 ({max_pending}); make it at most max_pending"
            );
            return Err(self.src.invalid(n.span(), key, msg));
        }
        Ok(Limits {
            handshake_timeout: duration(
                &raw.handshake_timeout,
                "handshake_timeout",
                default.handshake_timeout,
            )?,
            connect_timeout: duration(&raw.connect_timeout, "connect_timeout", default.connect_timeout)?,
            idle_timeout: duration(&raw.idle_timeout, "idle_timeout", default.idle_timeout)?,
            drain_timeout: duration(&raw.drain_timeout, "drain_timeout", default.drain_timeout)?,
            max_connections,
            max_admin_connections: count(
                &raw.max_admin_connections,
                "max_admin_connections",
                default.max_admin_connections,
            )?,
            max_pending,
            max_pending_per_source,
        })
    }
}

/// Two listeners on one port would fail at bind time, far from the line that caused it.
/// Each listener is (key, position if written in the file, address); a conflict is reported
/// on the later one. Port 0 (pick any free port, as tests do) never conflicts.
fn check_listeners(
    src: &Source<'_>,
    listeners: &[(String, Option<Range<usize>>, SocketAddr)],
) -> Result<(), ConfigError> {
    for (i, (key, span, addr)) in listeners.iter().enumerate() {
        for (other_key, _, other) in &listeners[..i] {
            if overlaps(*addr, *other) {
                let msg =
                    format!("{addr} conflicts with {other_key} ({other}); each listener needs its own port");
                return Err(src.invalid(span.clone().unwrap_or(0..0), key.as_str(), msg));
            }
        }
    }
    Ok(())
}

/// Whether binding both addresses would collide: same port, and the same IP or a wildcard of
/// the same family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl<'de> Deserialize<'de> for RawSinks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSinks;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sink string or an array of sink strings")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSinks, E> {
                Ok(RawSinks::One(v.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawSinks, A::Error> {
                let mut sinks = Vec::new();
                while let Some(sink) = seq.next_element::<Spanned<String>>()? {
                    sinks.push(sink);
                }
                Ok(RawSinks::Many(sinks))
            }
        }
        d.deserialize_any(Visitor)
    }
}
