//! Workload identity types: `TrustDomain`, `Zone`, `Workload` and `SpiffeId`.
//!
//! Parsing is strict and happens once, at the edge (CLI flags, config files, certificate
//! SANs). Everything after that compares typed values, never strings or string prefixes.
//! The rules follow the SPIFFE ID specification (lowercase trust domain of `[a-z0-9._-]`,
//! path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segments, no trailing `/`, no
//! percent-encoding, no query, fragment, port or userinfo) and then the mesh's own shape
//! `spiffe://<trust-domain>/ns/<zone>/sa/<workload>` where zone and workload are DNS labels.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID the spec lets a verifier accept (URI SAN limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name (a DNS name).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest zone or workload name (a DNS label).
pub const MAX_LABEL_LEN: usize = 63;

const SCHEME: &str = "spiffe://";

/// Why a trust domain, zone, workload or SPIFFE ID was refused. Each variant names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains {found:?}; allowed are lowercase letters, digits and {allowed}")]
    BadChar { found: char, allowed: &'static str },
    #[error("must start and end with a lowercase letter or digit")]
    BadEdge,
    #[error("must start with \"spiffe://\" (lowercase)")]
    BadScheme,
    #[error("has a port, user info, query or fragment, which SPIFFE IDs never carry")]
    UriExtras,
    #[error("contains percent-encoding, which SPIFFE IDs never carry")]
    PercentEncoded,
    #[error("has an empty path segment (\"//\") or a trailing \"/\"")]
    EmptySegment,
    #[error("has a \".\" or \"..\" path segment")]
    DotSegment,
    #[error("path segment contains {found:?}; allowed are letters, digits, '.', '-' and '_'")]
    BadPathChar { found: char },
    #[error("is not of the form spiffe://<trust-domain>/ns/<zone>/sa/<workload>")]
    NotMeshShape,
    #[error("zone {0}")]
    Zone(Box<IdError>),
    #[error("workload {0}")]
    Workload(Box<IdError>),
    #[error("trust domain {0}")]
    TrustDomain(Box<IdError>),
}

/// A SPIFFE trust domain, e.g. `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A zone: a lowercase DNS label naming a group of workloads (a namespace), e.g. `payments`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(String);

/// A workload inside a zone: a lowercase DNS label, e.g. `charge`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload(String);

/// A mesh workload identity, `spiffe://<td>/ns/<zone>/sa/<workload>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    zone: Zone,
    workload: Workload,
}

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID (`spiffe://<td>`), carried by CA certificates.
    pub fn id_uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(IdError::TooLong { len: s.len(), max: MAX_TRUST_DOMAIN_LEN });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
        {
            return Err(match found {
                ':' | '@' | '?' | '#' => IdError::UriExtras,
                '%' => IdError::PercentEncoded,
                _ => IdError::BadChar { found, allowed: "'.', '-', '_'" },
            });
        }
        Ok(Self(s.to_owned()))
    }
}

/// A lowercase DNS label (RFC 1123): `[a-z0-9-]`, 1 to 63 characters, no leading or trailing `-`.
fn parse_label(s: &str) -> Result<String, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(IdError::TooLong { len: s.len(), max: MAX_LABEL_LEN });
    }
    if let Some(found) = s.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(IdError::BadChar { found, allowed: "'-'" });
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(IdError::BadEdge);
    }
    Ok(s.to_owned())
}

impl FromStr for Zone {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_label(s).map(Self)
    }
}

impl FromStr for Workload {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_label(s).map(Self)
    }
}

impl Zone {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Workload {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl SpiffeId {
    pub fn new(trust_domain: TrustDomain, zone: Zone, workload: Workload) -> Self {
        Self { trust_domain, zone, workload }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }
}

/// Checks `s` against the generic SPIFFE ID grammar and returns (trust domain, path segments).
/// Separate from the mesh shape so errors can say which of the two rules was broken.
pub fn parse_spiffe_uri(s: &str) -> Result<(TrustDomain, Vec<&str>), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(IdError::TooLong { len: s.len(), max: MAX_SPIFFE_ID_LEN });
    }
    let rest = s.strip_prefix(SCHEME).ok_or(IdError::BadScheme)?;
    if rest.contains(['?', '#']) {
        return Err(IdError::UriExtras);
    }
    if rest.contains('%') {
        return Err(IdError::PercentEncoded);
    }
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let td: TrustDomain = td.parse().map_err(|e| IdError::TrustDomain(Box::new(e)))?;
    let mut segments = Vec::new();
    if let Some(path) = path {
        for seg in path.split('/') {
            if seg.is_empty() {
                return Err(IdError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(IdError::DotSegment);
            }
            if let Some(found) =
                seg.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
            {
                return Err(IdError::BadPathChar { found });
            }
            segments.push(seg);
        }
    }
    Ok((td, segments))
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let (trust_domain, segments) = parse_spiffe_uri(s)?;
        match segments.as_slice() {
            ["ns", zone, "sa", workload] => Ok(Self {
                trust_domain,
                zone: zone.parse().map_err(|e| IdError::Zone(Box::new(e)))?,
                workload: workload.parse().map_err(|e| IdError::Workload(Box::new(e)))?,
            }),
            _ => Err(IdError::NotMeshShape),
        }
    }
}

macro_rules! display_and_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
    )*};
}
display_and_debug!(TrustDomain, Zone, Workload);

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.zone, self.workload)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_mesh_shape() {
        let id: SpiffeId = "spiffe://example.org/ns/payments/sa/charge".parse().expect("valid");
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.zone().as_str(), "payments");
        assert_eq!(id.workload().as_str(), "charge");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/payments/sa/charge");
    }

    #[test]
    fn rejects_each_rule() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("SPIFFE://example.org/ns/a/sa/b", IdError::BadScheme),
            ("https://example.org/ns/a/sa/b", IdError::BadScheme),
            (
                "spiffe://Example.org/ns/a/sa/b",
                IdError::TrustDomain(Box::new(IdError::BadChar { found: 'E', allowed: "'.', '-', '_'" })),
            ),
            ("spiffe://example.org:8443/ns/a/sa/b", IdError::TrustDomain(Box::new(IdError::UriExtras))),
            ("spiffe://user@example.org/ns/a/sa/b", IdError::TrustDomain(Box::new(IdError::UriExtras))),
            ("spiffe://example.org/ns/a/sa/b?x=1", IdError::UriExtras),
            ("spiffe://example.org/ns/a/sa/b#f", IdError::UriExtras),
            ("spiffe://example.org/ns/a/sa/b/", IdError::EmptySegment),
            ("spiffe://example.org/ns//sa/b", IdError::EmptySegment),
            ("spiffe://example.org/ns/../sa/b", IdError::DotSegment),
            ("spiffe://example.org/ns/./sa/b", IdError::DotSegment),
            ("spiffe://example.org/ns/a%2Fb/sa/c", IdError::PercentEncoded),
            ("spiffe://example.org/ns/a/sa/b/c", IdError::NotMeshShape),
            ("spiffe://example.org/zone/a/sa/b", IdError::NotMeshShape),
            ("spiffe://example.org", IdError::NotMeshShape),
            ("spiffe:///ns/a/sa/b", IdError::TrustDomain(Box::new(IdError::Empty))),
            (
                "spiffe://example.org/ns/Pay/sa/b",
                IdError::Zone(Box::new(IdError::BadChar { found: 'P', allowed: "'-'" })),
            ),
            ("spiffe://example.org/ns/a/sa/-b", IdError::Workload(Box::new(IdError::BadEdge))),
            ("spiffe://example.org/ns/a b/sa/c", IdError::BadPathChar { found: ' ' }),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<SpiffeId>().as_ref(), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn rejects_over_long() {
        let long = format!("spiffe://example.org/ns/a/sa/{}", "b".repeat(MAX_SPIFFE_ID_LEN));
        assert!(matches!(long.parse::<SpiffeId>(), Err(IdError::TooLong { .. })));
        let label = "z".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(label.parse::<Zone>(), Err(IdError::TooLong { .. })));
        assert!("z".repeat(MAX_LABEL_LEN).parse::<Zone>().is_ok());
    }

    #[test]
    fn near_miss_names_are_different_values() {
        let a: Zone = "pay".parse().expect("valid");
        let b: Zone = "payments".parse().expect("valid");
        assert_ne!(a, b);
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn round_trips(td in "[a-z0-9]{1,10}(\\.[a-z0-9-_]{1,10}){0,3}", z in label(), w in label()) {
            let s = format!("spiffe://{td}/ns/{z}/sa/{w}");
            let id: SpiffeId = s.parse().expect("generated ids are valid");
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(id.to_string().parse::<SpiffeId>().expect("reparse"), id);
        }

        #[test]
        fn upper_case_anywhere_in_labels_is_refused(z in label(), pos in 0usize..20) {
            let mut chars: Vec<char> = z.chars().collect();
            let i = pos % chars.len();
            if chars[i].is_ascii_lowercase() {
                chars[i] = chars[i].to_ascii_uppercase();
                let upper: String = chars.into_iter().collect();
                prop_assert!(upper.parse::<Zone>().is_err());
                let id = format!("spiffe://example.org/ns/{upper}/sa/w");
                prop_assert!(id.parse::<SpiffeId>().is_err());
            }
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<SpiffeId>();
            let _ = format!("spiffe://{s}").parse::<SpiffeId>();
        }

        #[test]
        fn parsed_ids_are_canonical(s in "spiffe://[a-z.]{1,5}/[a-z/.%-]{0,30}") {
            if let Ok(id) = s.parse::<SpiffeId>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
