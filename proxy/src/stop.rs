//! Why an open connection must end now although it was allowed when it began: its peer was
//! revoked (the CA's revocation list), or a reloaded policy no longer allows its (from, to)
//! pair. One future per connection, [`watch`], is the stop signal `forward::forward` is
//! given, made from the connection's `Permit`; it resolves with the typed reason, which the
//! outcome record reports.
//!
//! Not here: the idle timeout (the forwarder's), the shutdown drain (`run`'s), and the
//! decision for a new connection (`inbound`/`outbound` decide before forwarding).

use std::future::Future;
use std::sync::Arc;

use mesh_config::policy::{Policy, Request};
use mesh_config::SpiffeId;

use crate::authorize::Permit;
use crate::enroll;
use crate::state::Shared;
use crate::tls::Peer;

/// Why a connection was stopped from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The peer's certificate or identity is on the CA's revocation list.
    Revoked,
    /// The current policy denies the connection's pair.
    PolicyRevoked {
        /// The deciding rule of the new policy (a deny rule); `None` when no rule allows the
        /// pair any more.
        rule: Option<String>,
        /// The new decision in words (`DENY <from> -> <to> by <rule>`).
        detail: String,
    },
}

impl Stop {
    /// The bounded reason code for events and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Stop::Revoked => "revoked",
            Stop::PolicyRevoked { .. } => "policy_revoked",
        }
    }
}

/// A stop signal that carries no reason (a plain `()` future) is a revocation of the peer,
/// which is what such signals meant before policies could stop connections.
impl From<()> for Stop {
    fn from(_: ()) -> Self {
        Stop::Revoked
    }
}

/// Resolves when the connection `permit` allowed must end: its verified `peer` (the caller
/// inbound, the server outbound) is revoked, or the policy on `shared.policy` now denies the
/// permit's pair (exactly the pair that was authorized). The policy is decided once when first
/// polled (a reload may have landed between the connection's decision and now) and again on
/// every reload; never otherwise, so a connection costs nothing while the policy is unchanged.
pub fn watch(shared: &Shared, permit: &Permit, peer: &Peer) -> impl Future<Output = Stop> + Send + 'static {
    let revoked = enroll::revoked(shared.revocations.clone(), peer.serial.clone(), peer.id.clone());
    let denied = policy_denies(shared.policy.clone(), permit.from().clone(), permit.to().clone());
    async move {
        tokio::select! {
            biased;
            () = revoked => Stop::Revoked,
            stop = denied => stop,
        }
    }
}

/// Resolves once the policy on `policy` denies `from -> to`; never if the policy's sender is
/// gone (the sidecar is stopping; the drain ends connections).
async fn policy_denies(
    mut policy: tokio::sync::watch::Receiver<Arc<Policy>>,
    from: SpiffeId,
    to: SpiffeId,
) -> Stop {
    loop {
        let current = policy.borrow_and_update().clone();
        let d = current.decide(&Request { from: &from, to: &to, http: None });
        if !d.allowed() {
            return Stop::PolicyRevoked {
                rule: d.rule().map(|r| r.text().to_owned()),
                detail: d.to_string(),
            };
        }
        if policy.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::task::Poll;

    use crate::SAMPLE_POLICY as ALLOW;

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("a valid SPIFFE ID")
    }

    fn policy(text: &str) -> Arc<Policy> {
        Arc::new(Policy::from_str_named(text, "policy.toml").expect("a valid policy"))
    }

    fn pending_now<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn a_reload_that_denies_the_pair_stops_it_with_the_deciding_rule() {
        let (tx, rx) = tokio::sync::watch::channel(policy(ALLOW));
        let web = id("spiffe://example.org/ns/frontend/sa/web");
        let api = id("spiffe://example.org/ns/orders/sa/api");
        let mut stop = pin!(policy_denies(rx, web, api));
        assert!(pending_now(stop.as_mut()), "allowed: keeps going");
        // A reload that still allows it changes nothing.
        tx.send_replace(policy(&format!("{ALLOW}\n[[allow]]\nfrom = \"payments\"\nto = \"orders\"\n")));
        assert!(pending_now(stop.as_mut()));
        let denying = format!("{ALLOW}\n[[deny]]\nfrom = \"frontend/web\"\nto = \"orders\"\n");
        tx.send_replace(policy(&denying));
        let Poll::Ready(Stop::PolicyRevoked { rule, detail }) =
            stop.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        else {
            panic!("a denying reload stops the connection");
        };
        let rule = rule.expect("a deny rule decided");
        assert!(rule.contains("deny") && rule.contains("frontend/web"), "{rule}");
        assert!(detail.starts_with("DENY"), "{detail}");
    }

    #[tokio::test]
    async fn a_pair_the_policy_already_denies_is_stopped_at_once() {
        // A reload between the connection's own decision and the first poll is not missed.
        let (_tx, rx) = tokio::sync::watch::channel(policy(ALLOW));
        let web = id("spiffe://example.org/ns/frontend/sa/web");
        let api = id("spiffe://example.org/ns/orders/sa/api");
        let stop = policy_denies(rx, api, web).await;
        assert_eq!(stop.as_str(), "policy_revoked");
        assert!(matches!(stop, Stop::PolicyRevoked { rule: None, .. }), "no rule allows it: {stop:?}");
    }
}
