//! The parts of one policy rule: who it names (`Selector`), which HTTP requests it covers
//! (methods, `PathPattern`), and how a decision cites it (`RuleRef`). Parsing whole files and
//! indexing rules live in `file.rs` and `compiled.rs`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::HttpAttrs;
use crate::identity::{IdError, SpiffeId, Workload, Zone};

/// One side of a rule: every workload of a zone, or one workload in a zone. Compared as typed
/// values, so zone `pay` never matches `payments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// Every workload in the zone (`payments`).
    Zone(Zone),
    /// One workload (`payments/charge`).
    Workload(Zone, Workload),
}

/// Why a selector did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0}")]
    Name(IdError),
    #[error("has more than one '/'")]
    TooManyParts,
    #[error("is a SPIFFE ID; rules take only its zone or zone/workload part")]
    SpiffeId,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Allow,
    Deny,
}

/// A rule as a decision cites it: `allow[1] (policy.toml:9) orders/checkout -> payments/charge`.
/// Cheap to clone (the text is shared), so decisions can carry it into events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    kind: RuleKind,
    index: usize,
    line: usize,
    text: Arc<str>,
}

/// A path condition, matched against the proxy's normalized request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum PathPattern {
    /// The path must be exactly this.
    Exact(String),
    /// `"/v1/*"`, stored as `"/v1"`: matches `/v1` and every path below it, never `/v10`.
    Prefix(String),
}

/// A validated rule, ready to index.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub from: Selector,
    pub to: Selector,
    /// `None`: any method. Never empty.
    pub methods: Option<Vec<String>>,
    /// `None`: any path. Never empty.
    pub paths: Option<Vec<PathPattern>>,
    pub cite: RuleRef,
}

impl Selector {
    pub fn zone(&self) -> &Zone {
        match self {
            Self::Zone(z) | Self::Workload(z, _) => z,
        }
    }

    /// Whether `id` is one of the workloads this selector names. The trust domain is not
    /// looked at: the policy refuses foreign trust domains before any rule is consulted.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Zone(z) => id.zone() == z,
            Self::Workload(z, w) => id.zone() == z && id.workload() == w,
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, SelectorError> {
        if s.starts_with("spiffe:") {
            return Err(SelectorError::SpiffeId);
        }
        let zone = |z: &str| z.parse::<Zone>().map_err(|e| SelectorError::Name(IdError::Zone(Box::new(e))));
        match s.split_once('/') {
            None => Ok(Self::Zone(zone(s)?)),
            Some((_, w)) if w.contains('/') => Err(SelectorError::TooManyParts),
            Some((z, w)) => Ok(Self::Workload(
                zone(z)?,
                w.parse().map_err(|e| SelectorError::Name(IdError::Workload(Box::new(e))))?,
            )),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zone(z) => write!(f, "{z}"),
            Self::Workload(z, w) => write!(f, "{z}/{w}"),
        }
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

impl RuleRef {
    pub(crate) fn new(kind: RuleKind, index: usize, line: usize, text: String) -> Self {
        Self { kind, index, line, text: text.into() }
    }

    pub fn kind(&self) -> RuleKind {
        self.kind
    }

    /// Position among the rules of its kind: `allow[index]` or `deny[index]`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// 1-based line of the rule's `from` key.
    pub fn line(&self) -> usize {
        self.line
    }

    /// `allow[1] (policy.toml:9) orders/checkout -> payments/charge methods=POST paths=/charge`.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a method or path condition was refused; completes "... is not valid: <this>".
pub(crate) fn check_method(m: &str) -> Result<(), &'static str> {
    const TCHAR_SYMBOLS: &str = "!#$%&'*+-.^_`|~";
    if m.is_empty() || m.len() > 32 {
        return Err("write an HTTP method such as GET or POST");
    }
    if !m.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || TCHAR_SYMBOLS.contains(c)) {
        return Err("methods are uppercase HTTP tokens such as GET or POST (methods are case-sensitive)");
    }
    Ok(())
}

impl PathPattern {
    /// Parses an exact path (`/charge`) or a segment prefix (`/v1/*`).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if !s.starts_with('/') {
            return Err("paths start with '/'");
        }
        if s.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("paths hold no query, fragment, whitespace or control characters");
        }
        let (pattern, body) = match s.strip_suffix("/*") {
            Some(prefix) => (Self::Prefix(prefix.to_owned()), prefix),
            None => (Self::Exact(s.to_owned()), s),
        };
        if body.contains('*') {
            return Err("'*' is only allowed as a final \"/*\" segment");
        }
        // Requests are matched on normalized paths, which never hold these: such a pattern could
        // never match, which is surely not what was meant. A trailing '/' is significant.
        let inner = body.strip_prefix('/').unwrap_or(body);
        let segments: Vec<&str> = inner.split('/').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            if *seg == "." || *seg == ".." {
                return Err(
                    "paths hold no \".\" or \"..\" segments (requests are matched after normalization)",
                );
            }
            if seg.is_empty() && i != last {
                return Err("paths hold no empty segments (\"//\")");
            }
        }
        Ok(pattern)
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => {
                path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(p) => f.write_str(p),
            Self::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

impl Rule {
    /// L7 conditions. A rule with conditions never matches plain TCP: it cannot be checked, so
    /// such an allow does not allow and such a deny does not deny (see the module docs).
    pub fn conditions_match(&self, http: Option<HttpAttrs<'_>>) -> bool {
        if self.methods.is_none() && self.paths.is_none() {
            return true;
        }
        let Some(http) = http else { return false };
        self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m == http.method))
            && self.paths.as_ref().is_none_or(|ps| ps.iter().any(|p| p.matches(http.path)))
    }

    /// The human text a `RuleRef` carries.
    pub fn describe(&self, kind: RuleKind, index: usize, file: &str, line: usize) -> String {
        let mut s = format!("{kind}[{index}] ({file}:{line}) {} -> {}", self.from, self.to);
        if let Some(ms) = &self.methods {
            s += &format!(" methods={}", ms.join(","));
        }
        if let Some(ps) = &self.paths {
            let ps: Vec<String> = ps.iter().map(ToString::to_string).collect();
            s += &format!(" paths={}", ps.join(","));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_and_print() {
        for s in ["payments", "payments/charge"] {
            assert_eq!(s.parse::<Selector>().expect("valid").to_string(), s);
        }
        assert_eq!("a/b/c".parse::<Selector>(), Err(SelectorError::TooManyParts));
        assert_eq!("spiffe://x/ns/a/sa/b".parse::<Selector>(), Err(SelectorError::SpiffeId));
        let e = "Pay".parse::<Selector>().expect_err("upper case");
        assert_eq!(e.to_string(), "zone contains 'P'; allowed are lowercase letters, digits and '-'");
        let e = "pay/".parse::<Selector>().expect_err("empty workload");
        assert_eq!(e.to_string(), "workload is empty");
    }

    #[test]
    fn selectors_match_typed_values_not_prefixes() {
        let id: SpiffeId = "spiffe://td/ns/payments/sa/charge".parse().expect("valid");
        let sel = |s: &str| s.parse::<Selector>().expect("valid");
        assert!(sel("payments").matches(&id));
        assert!(sel("payments/charge").matches(&id));
        assert!(!sel("pay").matches(&id));
        assert!(!sel("payments/char").matches(&id));
        assert!(!sel("charge").matches(&id));
    }

    #[test]
    fn methods_are_uppercase_tokens() {
        for ok in ["GET", "POST", "M-SEARCH", "PROPFIND"] {
            assert_eq!(check_method(ok), Ok(()), "{ok}");
        }
        for bad in ["", "post", "Get", "GE T", "GET\n", "PÖST"] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_match_exactly_or_on_segment_boundaries() {
        let p = |s: &str| PathPattern::parse(s).expect("valid");
        assert!(p("/charge").matches("/charge"));
        assert!(!p("/charge").matches("/charge/"));
        assert!(!p("/charge").matches("/charges"));
        let v1 = p("/v1/*");
        for yes in ["/v1", "/v1/", "/v1/x", "/v1/x/y"] {
            assert!(v1.matches(yes), "{yes}");
        }
        for no in ["/v10", "/v1x", "/", "/v", "v1/x"] {
            assert!(!v1.matches(no), "{no}");
        }
        assert!(p("/*").matches("/"));
        assert!(p("/*").matches("/anything/at/all"));
        assert_eq!(v1.to_string(), "/v1/*");
    }

    #[test]
    fn paths_that_could_never_match_are_refused() {
        for bad in ["charge", "", "/a?b=1", "/a#f", "/a b", "/v1*", "/*/x", "/a//b", "/a/../b", "/./a"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["/", "/a/", "/a-b_c.d~e", "/*"] {
            assert!(PathPattern::parse(ok).is_ok(), "{ok:?}");
        }
    }
}
