//! The allowlist: policy.toml parsed into a [`Policy`] that answers "may A call B?" and names
//! the rule that decided.
//!
//! Semantics, in the order they are applied:
//! 1. A caller or callee outside the policy's trust domain is denied ("foreign trust domain").
//! 2. A matching `deny` rule denies. `deny` beats `allow`.
//! 3. A matching `allow` rule allows.
//! 4. Otherwise the request is denied: deny by default, between zones and inside one alike.
//!
//! Among several matching rules of the deciding kind, the first in file order is cited.
//!
//! A rule matches when its `from` selector names the caller, its `to` selector names the
//! callee, and its L7 conditions hold. Conditions (`methods`, `paths`) can only be checked on
//! HTTP requests, so a rule that has any never matches plain TCP (`http: None`):
//! - an `allow` with conditions does not allow TCP (fail closed);
//! - a `deny` with conditions only denies the HTTP requests it describes; a `deny` without
//!   conditions denies everything, TCP included. A conditional deny therefore does nothing on
//!   a TCP listener: to cut a caller off entirely, write the deny without conditions.
//!
//! On an HTTP listener, decide per request (with `http: Some`). Deciding the connection first
//! with `http: None` would refuse callers whose only allow rules carry conditions.
//!
//! Paths are compared, case-sensitively, with the path the proxy hands in; normalizing it
//! (dot segments, duplicate slashes, percent-encoding) is the proxy's job, not this module's.
//! `"/v1/*"` matches `/v1` and every path below it, never `/v10`. Methods compare exactly.
//!
//! This module does not watch files or swap policies; reloading is the proxy's job.

mod compiled;
mod file;
mod rule;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

pub use rule::{RuleKind, RuleRef, Selector, SelectorError};

use crate::error::{read_file, ConfigError, Source};
use crate::identity::{SpiffeId, TrustDomain, Zone};
use compiled::RuleSet;

/// A validated policy with its decision index. Immutable: share it behind an `Arc`.
pub struct Policy {
    /// The file it came from, as named to the parser.
    source: String,
    /// Only identities in this trust domain can be allowed.
    trust_domain: TrustDomain,
    /// Declared zones, in file order.
    zones: Vec<Zone>,
    allow: RuleSet,
    deny: RuleSet,
}

/// One question for the policy: may `from` call `to`?
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller, from its verified certificate.
    pub from: &'a SpiffeId,
    /// The callee.
    pub to: &'a SpiffeId,
    /// Method and normalized path on HTTP listeners; `None` for plain TCP.
    pub http: Option<HttpAttrs<'a>>,
}

/// The L7 attributes of an HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttrs<'a> {
    /// The request method, as sent (methods are case-sensitive).
    pub method: &'a str,
    /// The request path after the proxy's normalization, without the query.
    pub path: &'a str,
}

/// Why a decision came out the way it did. `as_str` gives a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An allow rule matched and no deny rule did.
    AllowRule,
    /// A deny rule matched.
    DenyRule,
    /// No rule matched: deny by default.
    NoRule,
    /// The caller or callee belongs to another trust domain than the policy's.
    ForeignTrustDomain,
}

/// The answer to a [`Request`], citing the deciding rule. Only a `Policy` makes these.
/// `Display` gives the explain line: `ALLOW <from> -> <to> by allow[0] (policy.toml:5) ...`.
#[derive(Debug, Clone)]
pub struct Decision<'r> {
    request: Request<'r>,
    reason: Reason,
    rule: Option<RuleRef>,
}

impl Policy {
    /// Reads and validates a policy file. Errors name the file, line, column and key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = read_file(path)?;
        Self::from_str_named(&text, &path.display().to_string())
    }

    /// Validates policy text; `name` is what errors and rule citations call the file.
    pub fn from_str_named(text: &str, name: &str) -> Result<Self, ConfigError> {
        let parsed = file::parse(&Source::new(name, text))?;
        Ok(Self {
            source: name.to_owned(),
            trust_domain: parsed.trust_domain,
            zones: parsed.zones,
            allow: RuleSet::new(parsed.allow),
            deny: RuleSet::new(parsed.deny),
        })
    }

    /// A policy with no rules: every request is denied. For a sidecar that has no policy yet.
    pub fn deny_all(trust_domain: TrustDomain) -> Self {
        Self {
            source: "(deny all)".to_owned(),
            trust_domain,
            zones: Vec::new(),
            allow: RuleSet::new(Vec::new()),
            deny: RuleSet::new(Vec::new()),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The declared zones, in file order (metrics label only these, so peers cannot add labels).
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Decides a request. Cost depends on the rules naming the request's selector pairs, not on
    /// the size of the policy, and nothing is allocated beyond the cited rule's shared text.
    pub fn decide<'r>(&self, req: &Request<'r>) -> Decision<'r> {
        let decision = |reason, rule: Option<&rule::Rule>| Decision {
            request: *req,
            reason,
            rule: rule.map(|r| r.cite.clone()),
        };
        if req.from.trust_domain() != &self.trust_domain || req.to.trust_domain() != &self.trust_domain {
            return decision(Reason::ForeignTrustDomain, None);
        }
        if let Some(rule) = self.deny.first_match(req) {
            return decision(Reason::DenyRule, Some(rule));
        }
        match self.allow.first_match(req) {
            Some(rule) => decision(Reason::AllowRule, Some(rule)),
            None => decision(Reason::NoRule, None),
        }
    }
}

impl fmt::Debug for Policy {
    // The rule index is large and unreadable; a summary says what matters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("trust_domain", &self.trust_domain)
            .field("zones", &self.zones)
            .field("allow_rules", &self.allow.len())
            .field("deny_rules", &self.deny.len())
            .finish()
    }
}

impl Reason {
    /// A stable, bounded label for metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowRule => "allow_rule",
            Self::DenyRule => "deny_rule",
            Self::NoRule => "no_rule",
            Self::ForeignTrustDomain => "foreign_trust_domain",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AllowRule => "allowed by a rule",
            Self::DenyRule => "denied by a rule",
            Self::NoRule => "no rule allows it (deny by default)",
            Self::ForeignTrustDomain => "foreign trust domain",
        })
    }
}

impl<'r> Decision<'r> {
    pub fn allowed(&self) -> bool {
        self.reason == Reason::AllowRule
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The deciding rule; `None` when denied by default or for a foreign trust domain.
    pub fn rule(&self) -> Option<&RuleRef> {
        self.rule.as_ref()
    }

    pub fn request(&self) -> &Request<'r> {
        &self.request
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed() { "ALLOW" } else { "DENY " };
        write!(f, "{verdict} {} -> {}", self.request.from, self.request.to)?;
        if let Some(http) = self.request.http {
            // Method and path come from the peer: escape them so they cannot forge output lines.
            write!(f, " {} {}", http.method.escape_debug(), http.path.escape_debug())?;
        }
        match &self.rule {
            Some(rule) => write!(f, " by {rule}"),
            None => write!(f, ": {}", self.reason),
        }
    }
}
