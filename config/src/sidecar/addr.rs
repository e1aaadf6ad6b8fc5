//! Addresses in sidecar.toml that are not plain socket addresses: [`Endpoint`] (`host:port`,
//! the host an IP or a DNS name) and [`HttpsUrl`]. Only syntax is checked here; names are
//! resolved when connecting, by whoever connects, so DNS changes are picked up.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_DNS_NAME_LEN: usize = 253;

/// The host part of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, resolved at connect time.
    Dns(String),
}

/// `host:port` to connect to, e.g. `10.0.0.7:15443`, `[fd00::7]:15443`, `charge.internal:15443`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: Host,
    port: u16,
}

/// An `https://` URL without user info, query or fragment (credentials belong in files, and a
/// URL ends up in logs). `path` is `/` when the URL has none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpsUrl {
    url: String,
    endpoint: Endpoint,
    path: String,
}

/// Why an endpoint or URL was refused; completes "<value> is not valid: <this>".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("it has no port; write host:port")]
    NoPort,
    #[error("the port must be a number from 1 to 65535")]
    BadPort,
    #[error("the host is neither an IP address nor a DNS name")]
    BadHost,
    #[error("IPv6 addresses go in brackets, e.g. [fd00::7]:15443")]
    UnbracketedIpv6,
    #[error("it must start with https:// (plain http would expose tokens and identities)")]
    NotHttps,
    #[error("user info, query and fragment are not accepted in URLs; credentials belong in files")]
    UrlExtras,
}

impl Endpoint {
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses `host[:port]`, using `default_port` when the port is left out (`None`: required).
    pub(crate) fn parse_with_default(s: &str, default_port: Option<u16>) -> Result<Self, AddrError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or(AddrError::BadHost)?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| AddrError::BadHost)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(AddrError::BadHost)?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            if host.contains(':') {
                return Err(AddrError::UnbracketedIpv6);
            }
            (parse_host(host)?, port)
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or(AddrError::BadPort)?,
            None => default_port.ok_or(AddrError::NoPort)?,
        };
        Ok(Self { host, port })
    }
}

fn parse_host(s: &str) -> Result<Host, AddrError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // An all-digit last label is a mistyped IPv4 address (10.0.0.256), not a name.
    let numeric_tld = s.rsplit('.').next().is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    if s.is_empty() || s.len() > MAX_DNS_NAME_LEN || numeric_tld || !s.split('.').all(label_ok) {
        return Err(AddrError::BadHost);
    }
    Ok(Host::Dns(s.to_owned()))
}

impl FromStr for Endpoint {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        Self::parse_with_default(s, None)
    }
}

impl HttpsUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// Host and port (443 unless given).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The path, `/` at least.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl FromStr for HttpsUrl {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        let rest = s.strip_prefix("https://").ok_or(AddrError::NotHttps)?;
        if rest.contains(['@', '?', '#']) {
            return Err(AddrError::UrlExtras);
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddrError::BadHost);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let endpoint = Endpoint::parse_with_default(authority, Some(443))?;
        Ok(Self { url: s.to_owned(), endpoint, path: path.to_owned() })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_ips_and_names() {
        for (input, shown) in [
            ("10.0.0.7:15443", "10.0.0.7:15443"),
            ("[fd00::7]:15443", "[fd00::7]:15443"),
            ("charge.internal:15443", "charge.internal:15443"),
            ("my_service:80", "my_service:80"),
        ] {
            assert_eq!(input.parse::<Endpoint>().expect(input).to_string(), shown);
        }
        let e: Endpoint = "app:8080".parse().expect("valid");
        assert_eq!((e.host(), e.port()), (&Host::Dns("app".into()), 8080));
    }

    #[test]
    fn endpoints_refuse_each_mistake() {
        let cases = [
            ("10.0.0.7", AddrError::NoPort),
            ("10.0.0.7:0", AddrError::BadPort),
            ("10.0.0.7:65536", AddrError::BadPort),
            ("10.0.0.7:", AddrError::BadPort),
            ("fd00::7:15443", AddrError::UnbracketedIpv6),
            ("[fd00::7", AddrError::BadHost),
            ("10.0.0.256:80", AddrError::BadHost),
            (":80", AddrError::BadHost),
            ("-bad.example:80", AddrError::BadHost),
            ("a..b:80", AddrError::BadHost),
            ("host name:80", AddrError::BadHost),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Endpoint>(), Err(want), "{input}");
        }
    }

    #[test]
    fn https_urls() {
        let u: HttpsUrl = "https://127.0.0.1:8443".parse().expect("valid");
        assert_eq!((u.endpoint().to_string(), u.path()), ("127.0.0.1:8443".into(), "/"));
        let u: HttpsUrl = "https://collector.example/v1/events".parse().expect("valid");
        assert_eq!(
            (u.endpoint().port(), u.path(), u.as_str()),
            (443, "/v1/events", "https://collector.example/v1/events")
        );
        assert_eq!("http://ca:8443".parse::<HttpsUrl>(), Err(AddrError::NotHttps));
        assert_eq!("https://u:p@ca".parse::<HttpsUrl>(), Err(AddrError::UrlExtras));
        assert_eq!("https://ca/x?token=1".parse::<HttpsUrl>(), Err(AddrError::UrlExtras));
        assert_eq!("https://".parse::<HttpsUrl>(), Err(AddrError::BadHost));
    }
}
