//! The schemas an event can be written in (`[events] format`, `mesh-ca serve --events-format`):
//! zt-mesh's own flat JSON ([`Event`]'s serde form, unchanged), the Elastic Common Schema
//! ([`super::ecs`]) and OCSF ([`super::ocsf`]).
//!
//! Both SIEM schemas start from the event's own JSON object ([`Flat`]): each mapping takes the
//! keys it knows and turns them into typed schema fields, and whatever is left goes into the
//! schema's place for custom data (`zt_mesh.*` in ECS, `unmapped` in OCSF), so a field added
//! to an event later is never lost nor mistyped. What a kind *is* (category, class, activity,
//! outcome) is an exhaustive `match` on [`EventKind`] in each mapping: a new kind without a
//! mapping does not compile.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::{Event, EventFormat};

/// The product every mapped event names (`observer.product`, `metadata.product.name`).
pub(super) const PRODUCT: &str = "zt-mesh";
pub(super) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes `e` as one JSON object (no newline) in `format`.
pub(super) fn encode(e: &Event, format: EventFormat, out: &mut Vec<u8>) {
    let done = match format {
        EventFormat::Json => serde_json::to_writer(&mut *out, e).is_ok(),
        EventFormat::Ecs => serde_json::to_writer(&mut *out, &super::ecs::map(e)).is_ok(),
        EventFormat::Ocsf => serde_json::to_writer(&mut *out, &super::ocsf::map(e)).is_ok(),
    };
    if !done {
        // Serializing these plain fields cannot fail; write a valid object anyway.
        out.extend_from_slice(br#"{"event":"events.serialize_failed","severity":"error"}"#);
    }
}

/// The event's own JSON object, taken apart key by key by a mapping.
pub(super) struct Flat(Map<String, Value>);

impl Flat {
    pub(super) fn of(e: &Event) -> Self {
        let mut m = match serde_json::to_value(e) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        // Said by every mapping in its own terms.
        for k in ["timestamp", "event", "severity"] {
            m.remove(k);
        }
        Self(m)
    }

    /// Takes a string value.
    pub(super) fn str(&mut self, key: &str) -> Option<String> {
        match self.0.remove(key)? {
            Value::String(s) => Some(s),
            other => {
                self.0.insert(key.to_owned(), other);
                None
            }
        }
    }

    /// Takes a number, or a string holding one (the CA prints counts as strings).
    pub(super) fn u64(&mut self, key: &str) -> Option<u64> {
        let v = self.0.remove(key)?;
        let n = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        if n.is_none() {
            self.0.insert(key.to_owned(), v);
        }
        n
    }

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
        match self.0.remove(key)? {
            Value::Bool(b) => Some(b),
            other => {
                self.0.insert(key.to_owned(), other);
                None
            }
        }
    }

    /// What no mapping took.
    pub(super) fn rest(self) -> Map<String, Value> {
        self.0
    }
}

/// An address as events write it (`ip:port`, `host:port`, or a bare name).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Addr {
    pub ip: Option<IpAddr>,
    pub host: Option<String>,
    pub port: Option<u16>,
}

impl Addr {
    pub(super) fn parse(s: &str) -> Self {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Self { ip: Some(a.ip()), host: None, port: Some(a.port()) };
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Self { ip: Some(ip), host: None, port: None };
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                Self { ip: None, host: Some(h.to_owned()), port: p.parse().ok() }
            }
            _ => Self { ip: None, host: Some(s.to_owned()), port: None },
        }
    }
}

/// This machine's name (RFC 1123 characters only), read once.
pub(super) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).take(255).collect()
    })
}

/// Milliseconds since the Unix epoch.
pub(super) fn epoch_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Sets `obj[path...] = v`, making the objects on the way.
pub(super) fn put(obj: &mut Map<String, Value>, path: &[&str], v: impl Into<Value>) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = obj;
    for p in parents {
        let slot = at.entry((*p).to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(next) = slot else { return };
        at = next;
    }
    at.insert((*last).to_owned(), v.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_events_write_them() {
        let a = Addr::parse("127.0.0.1:8443");
        assert_eq!((a.ip, a.port, a.host), (Some([127, 0, 0, 1].into()), Some(8443), None));
        let a = Addr::parse("[::1]:15443");
        assert_eq!((a.ip.map(|i| i.is_ipv6()), a.port), (Some(true), Some(15443)));
        assert_eq!(Addr::parse("app.internal:8080").host.as_deref(), Some("app.internal"));
        assert_eq!(Addr::parse("api"), Addr { host: Some("api".into()), ..Addr::default() });
    }

    #[test]
    fn put_makes_the_path() {
        let mut m = Map::new();
        put(&mut m, &["a", "b", "c"], 1);
        put(&mut m, &["a", "d"], "x");
        assert_eq!(Value::Object(m), serde_json::json!({"a": {"b": {"c": 1}, "d": "x"}}));
    }
}
