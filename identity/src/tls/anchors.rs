//! Trust anchors bound to the trust domain each one vouches for.
//!
//! A bundle may hold several roots: a root migration (old and new root of one trust domain)
//! or a federation (roots of other trust domains). A plain root store would let any listed
//! root mint identities in any trust domain, so a leaf of `example.org` signed under
//! `partner.net`'s root would pass. Here every anchor is bound to the trust domain its
//! `spiffe://<td>` URI SAN names (every mesh-ca root carries one), and a verifier for trust
//! domain T is built from T's anchors only.
//!
//! An anchor that names no trust domain (a PKI made with plain openssl) is taken to belong to
//! the bundle's *local* trust domain, but only in a bundle where no anchor names one: once
//! any root is bound, an unbound root beside it could be anyone's (a federated partner's
//! made without SPIFFE SANs), so such a mixed bundle is refused. An anchor whose URIs name
//! more than one trust domain is refused too.
//!
//! What this module does not do: fetch or rotate bundles, or verify anything itself.

use std::sync::Arc;

use mesh_config::identity::parse_spiffe_uri;
use mesh_config::TrustDomain;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use x509_parser::extensions::GeneralName;

use super::TlsConfigError;

/// One anchor and the trust domain it vouches for (`None`: it names none).
#[derive(Debug, Clone)]
struct Anchor {
    der: CertificateDer<'static>,
    td: Option<TrustDomain>,
}

/// The anchors a workload trusts, each bound to a trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    /// The workload's own trust domain: unnamed anchors count for it.
    local: TrustDomain,
    anchors: Vec<Anchor>,
}

impl TrustBundle {
    /// Binds `anchors` for a workload of trust domain `local`. Every anchor must be usable
    /// as a trust anchor; at least one must vouch for `local`.
    pub fn new(local: TrustDomain, anchors: Vec<CertificateDer<'static>>) -> Result<Self, TlsConfigError> {
        let mut bound = Vec::with_capacity(anchors.len());
        for (i, der) in anchors.into_iter().enumerate() {
            RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| TlsConfigError::Bundle(format!("unusable trust anchor #{}: {e}", i + 1)))?;
            let named = trust_domains_named(&der);
            if named.len() > 1 {
                let list: Vec<String> = named.iter().map(ToString::to_string).collect();
                return Err(TlsConfigError::Bundle(format!(
                    "trust anchor #{} names several trust domains ({}); a root vouches for one",
                    i + 1,
                    list.join(", ")
                )));
            }
            bound.push(Anchor { td: named.into_iter().next(), der });
        }
        let unnamed = bound.iter().position(|a| a.td.is_none());
        if let (Some(i), true) = (unnamed, bound.iter().any(|a| a.td.is_some())) {
            return Err(TlsConfigError::Bundle(format!(
                "trust anchor #{} names no trust domain (no spiffe:// URI SAN) in a bundle whose other \
                 roots do: it could vouch for anyone's identities, so the bundle is refused. Give \
                 every root a spiffe://<trust-domain> URI SAN (mesh-ca roots have one), or keep \
                 unnamed roots in a bundle of their own",
                i + 1
            )));
        }
        let bundle = Self { local, anchors: bound };
        if bundle.anchors_for(&bundle.local).next().is_none() {
            return Err(TlsConfigError::Bundle(format!(
                "no anchor in the bundle is for trust domain {} (its roots name {})",
                bundle.local,
                bundle.named().join(", ")
            )));
        }
        Ok(bundle)
    }

    /// The workload's own trust domain.
    pub fn local(&self) -> &TrustDomain {
        &self.local
    }

    /// Every anchor, in the order given.
    pub fn ders(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.anchors.iter().map(|a| &a.der)
    }

    /// Whether `der` is one of the anchors (byte for byte).
    pub fn contains(&self, der: &CertificateDer<'_>) -> bool {
        self.anchors.iter().any(|a| a.der.as_ref() == der.as_ref())
    }

    /// The root store a verifier for peers of trust domain `td` uses: `td`'s anchors only.
    /// An error when there is none (a foreign trust domain the bundle does not federate with).
    pub fn roots_for(&self, td: &TrustDomain) -> Result<Arc<RootCertStore>, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for der in self.anchors_for(td) {
            roots.add(der.clone()).map_err(|e| TlsConfigError::Bundle(format!("trust anchor: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsConfigError::Bundle(format!(
                "the trust bundle has no anchor for trust domain {td}"
            )));
        }
        Ok(Arc::new(roots))
    }

    fn anchors_for<'a>(&'a self, td: &'a TrustDomain) -> impl Iterator<Item = &'a CertificateDer<'static>> {
        self.anchors
            .iter()
            .filter(move |a| match &a.td {
                Some(named) => named == td,
                None => td == &self.local,
            })
            .map(|a| &a.der)
    }

    fn named(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.anchors.iter().filter_map(|a| a.td.as_ref().map(|t| t.to_string())).collect();
        if names.is_empty() {
            names.push("none".into());
        }
        names
    }
}

/// The trust domain a CA certificate names in its `spiffe://<td>` URI SAN, when it names
/// exactly one.
pub fn trust_domain_of(der: &CertificateDer<'_>) -> Option<TrustDomain> {
    let mut named = trust_domains_named(der);
    (named.len() == 1).then(|| named.remove(0))
}

/// Every trust domain the `spiffe://` URI SANs of a certificate name, with or without a
/// path (`spiffe://partner.net/ca` binds the anchor to partner.net just as well).
fn trust_domains_named(der: &CertificateDer<'_>) -> Vec<TrustDomain> {
    let Ok(cert) = crate::profile::parse(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    let mut named: Vec<TrustDomain> = Vec::new();
    for n in &san.value.general_names {
        if let GeneralName::URI(u) = n {
            if let Ok((td, _)) = parse_spiffe_uri(u) {
                if !named.contains(&td) {
                    named.push(td);
                }
            }
        }
    }
    named
}
