//! The authorization stage: the policy decides on a pair of identities, and an allowing
//! decision becomes a [`Permit`], a denying one a [`Denial`]. A `Permit` has no public
//! constructor and is made only by [`authorize`], and the forwarder takes one by value
//! (`forward::forward`), so no connection can be forwarded without a decision.
//!
//! The identities come only from verified certificates (inbound: the peer of the handshake;
//! outbound: this sidecar's own, and the configured server identity the handshake will
//! insist on). Not here: re-deciding an open connection after a reload (`stop`), and the
//! event and metrics of a decision (`outcome`).

use mesh_config::policy::{Policy, Reason, Request, RuleRef};
use mesh_config::{SpiffeId, Zone};

/// Leave to forward one connection from `from` to `to`, citing the allow rule that gave it.
#[derive(Debug)]
pub struct Permit {
    from: SpiffeId,
    to: SpiffeId,
    rule: RuleRef,
}

/// A refusal by the policy: why (a bounded reason), the deciding rule if one did, and the
/// decision in words (`DENY <from> -> <to> by <rule>`). Boxed: refusals are the cold path,
/// and `Result<Permit, Denial>` stays small.
#[derive(Debug, Clone)]
pub struct Denial(Box<Refused>);

#[derive(Debug, Clone)]
struct Refused {
    from: SpiffeId,
    to: SpiffeId,
    reason: Reason,
    rule: Option<RuleRef>,
    detail: String,
}

/// Asks `policy` whether `from` may reach `to` (both verified identities): a [`Permit`] for
/// an allowing decision, a [`Denial`] otherwise. The one way to obtain a `Permit`.
pub fn authorize(policy: &Policy, from: &SpiffeId, to: &SpiffeId) -> Result<Permit, Denial> {
    let decision = policy.decide(&Request { from, to, http: None });
    match (decision.allowed(), decision.rule()) {
        (true, Some(rule)) => Ok(Permit { from: from.clone(), to: to.clone(), rule: rule.clone() }),
        // An allowing decision always cites its allow rule; were one ever to come without,
        // it is refused rather than forwarded on no rule.
        _ => Err(Denial(Box::new(Refused {
            from: from.clone(),
            to: to.clone(),
            reason: decision.reason(),
            rule: decision.rule().cloned(),
            detail: decision.to_string(),
        }))),
    }
}

impl Permit {
    /// The caller.
    pub fn from(&self) -> &SpiffeId {
        &self.from
    }

    /// The callee.
    pub fn to(&self) -> &SpiffeId {
        &self.to
    }

    /// The allow rule the decision matched.
    pub fn rule(&self) -> &RuleRef {
        &self.rule
    }

    /// The caller's and the callee's zones, as the decision saw them.
    pub fn zones(&self) -> (&Zone, &Zone) {
        (self.from.zone(), self.to.zone())
    }
}

impl Denial {
    pub fn from(&self) -> &SpiffeId {
        &self.0.from
    }

    pub fn to(&self) -> &SpiffeId {
        &self.0.to
    }

    /// The bounded reason (`deny_rule`, `no_rule`, `foreign_trust_domain`).
    pub fn reason(&self) -> Reason {
        self.0.reason
    }

    /// The deny rule that decided; `None` when denied by default or for a foreign trust domain.
    pub fn rule(&self) -> Option<&RuleRef> {
        self.0.rule.as_ref()
    }

    /// The decision in words, for an event's `reason_detail`.
    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    /// The caller's and the callee's zones.
    pub fn zones(&self) -> (&Zone, &Zone) {
        (self.0.from.zone(), self.0.to.zone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::SAMPLE_POLICY as POLICY;

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("a valid SPIFFE ID")
    }

    #[test]
    fn an_allowed_pair_gets_a_permit_citing_its_rule_and_a_denied_one_a_typed_denial() {
        let policy = Policy::from_str_named(POLICY, "policy.toml").expect("policy");
        let web = id("spiffe://example.org/ns/frontend/sa/web");
        let api = id("spiffe://example.org/ns/orders/sa/api");
        let permit = authorize(&policy, &web, &api).expect("frontend -> orders is allowed");
        assert!(permit.rule().text().starts_with("allow[0]"), "{:?}", permit.rule());
        assert_eq!((permit.from(), permit.to()), (&web, &api));
        assert_eq!(permit.zones().0.as_str(), "frontend");

        let denied = authorize(&policy, &api, &web).expect_err("orders -> frontend has no rule");
        assert_eq!((denied.reason().as_str(), denied.rule()), ("no_rule", None));
        assert!(denied.detail().starts_with("DENY"), "{}", denied.detail());

        let rogue = id("spiffe://example.org/ns/frontend/sa/rogue");
        let denied = authorize(&policy, &rogue, &api).expect_err("a deny rule beats the allow");
        assert_eq!(denied.reason().as_str(), "deny_rule");
        assert!(denied.rule().is_some_and(|r| r.text().starts_with("deny[0]")), "{denied:?}");

        let foreign = id("spiffe://other.org/ns/frontend/sa/web");
        let denied = authorize(&policy, &foreign, &api).expect_err("another trust domain");
        assert_eq!(denied.reason().as_str(), "foreign_trust_domain");
    }
}
