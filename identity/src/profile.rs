//! The X.509-SVID profile check: does a certificate follow the SPIFFE X.509-SVID spec and
//! the mesh's identity shape? Used by `mesh-ca inspect` (for certificates made anywhere) and
//! inside the sidecar's rustls verifiers, so a bad peer fails the handshake itself.
//!
//! This checks the certificate's *contents* only. Chain building, signatures and validity
//! against the clock are webpki's job; the verifier runs both.

use std::fmt;

use mesh_config::{identity::parse_spiffe_uri, SpiffeId, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

/// The zone of the CA's own identity; no workload may have it.
pub const RESERVED_ZONE: &str = "mesh-system";
/// The workload name of the CA server's own identity (in [`RESERVED_ZONE`]).
pub const CA_WORKLOAD: &str = "ca";

/// Whether `zone` is reserved for the mesh itself.
pub fn is_reserved_zone(zone: &mesh_config::Zone) -> bool {
    zone.as_str() == RESERVED_ZONE
}

/// The CA server's own SPIFFE ID in a trust domain: `spiffe://<td>/ns/mesh-system/sa/ca`.
pub fn ca_server_id(td: &TrustDomain) -> SpiffeId {
    let zone = RESERVED_ZONE.parse().expect("a valid static label");
    let workload = CA_WORKLOAD.parse().expect("a valid static label");
    SpiffeId::new(td.clone(), zone, workload)
}

/// Serials shorter than this cannot carry the 64 bits of entropy the profile asks for.
const MIN_SERIAL_BYTES: usize = 8;

/// One broken rule: a stable short name (for scripts and events) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// What a leaf check found: the identity if the URI SAN parsed, and every rule it breaks.
#[derive(Debug, Clone)]
pub struct LeafReport {
    pub id: Option<SpiffeId>,
    pub violations: Vec<Violation>,
}

impl LeafReport {
    /// The identity, only when no rule is broken.
    pub fn into_identity(self) -> Result<SpiffeId, Vec<Violation>> {
        match (self.id, self.violations.is_empty()) {
            (Some(id), true) => Ok(id),
            (_, _) => Err(self.violations),
        }
    }
}

fn v(rule: &'static str, message: impl Into<String>) -> Violation {
    Violation { rule, message: message.into() }
}

/// Parses DER, reporting an unparsable certificate as a violation rather than an error.
pub fn parse(der: &[u8]) -> Result<X509Certificate<'_>, Violation> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(v("der", "trailing bytes after the certificate")),
        Err(e) => Err(v("der", format!("not a parsable X.509 certificate: {e}"))),
    }
}

/// The URI SANs of a certificate, or a violation if the SAN extension is malformed.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, Violation> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => Ok(san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(v("subject-alt-name", format!("malformed or duplicated extension: {e}"))),
    }
}

fn check_key_algorithm(cert: &X509Certificate<'_>, out: &mut Vec<Violation>) {
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve.as_ref() != Some(&OID_EC_P256) {
        out.push(v("key-algorithm", "the public key is not ECDSA P-256, the only key type the mesh uses"));
    }
}

fn check_validity(cert: &X509Certificate<'_>, out: &mut Vec<Violation>) {
    let validity = cert.validity();
    if validity.not_before.timestamp() >= validity.not_after.timestamp() {
        out.push(v("validity", "notBefore is not before notAfter"));
    }
}

/// Checks an end-entity certificate (an X.509-SVID leaf). `expected_td`, when given, is the
/// only trust domain accepted.
pub fn check_leaf(der: &[u8], expected_td: Option<&TrustDomain>) -> LeafReport {
    let cert = match parse(der) {
        Ok(c) => c,
        Err(e) => return LeafReport { id: None, violations: vec![e] },
    };
    check_leaf_parsed(&cert, expected_td)
}

pub fn check_leaf_parsed(cert: &X509Certificate<'_>, expected_td: Option<&TrustDomain>) -> LeafReport {
    let mut out = Vec::new();
    let mut id = None;
    match uri_sans(cert) {
        Err(e) => out.push(e),
        Ok(uris) if uris.len() != 1 => out.push(v(
            "uri-san-count",
            format!("has {} URI SANs; an X.509-SVID has exactly one (the SPIFFE ID)", uris.len()),
        )),
        Ok(uris) => match uris[0].parse::<SpiffeId>() {
            Ok(parsed) => {
                if let Some(td) = expected_td {
                    if parsed.trust_domain() != td {
                        out.push(v(
                            "trust-domain",
                            format!("trust domain {} is not the expected {td}", parsed.trust_domain()),
                        ));
                    }
                }
                id = Some(parsed);
            }
            Err(e) => out.push(v("spiffe-id", format!("URI SAN {:?} {e}", truncate(uris[0])))),
        },
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => out.push(v("leaf-is-ca", "basicConstraints has cA=true on a leaf")),
        Ok(Some(_)) => {}
        Ok(None) => out.push(v("basic-constraints", "basicConstraints is missing; a leaf must say cA=false")),
        Err(e) => out.push(v("basic-constraints", format!("malformed or duplicated: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                out.push(v("key-usage", "keyUsage is not marked critical"));
            }
            if !ku.value.digital_signature() {
                out.push(v("key-usage", "keyUsage lacks digitalSignature"));
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                out.push(v("leaf-can-sign", "keyUsage of a leaf has keyCertSign or cRLSign"));
            }
        }
        Ok(None) => out.push(v("key-usage", "keyUsage is missing")),
        Err(e) => out.push(v("key-usage", format!("malformed or duplicated: {e}"))),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
        Ok(Some(_)) => out.push(v("extended-key-usage", "extKeyUsage lacks serverAuth or clientAuth")),
        Ok(None) => {
            out.push(v("extended-key-usage", "extKeyUsage is missing (needs serverAuth and clientAuth)"))
        }
        Err(e) => out.push(v("extended-key-usage", format!("malformed or duplicated: {e}"))),
    }
    if significant_serial_len(cert.raw_serial()) < MIN_SERIAL_BYTES {
        out.push(v("serial", "the serial number is shorter than 64 bits"));
    }
    check_key_algorithm(cert, &mut out);
    check_validity(cert, &mut out);
    LeafReport { id, violations: out }
}

/// The CA server marker: an extended key usage that only the CA puts in its own serving
/// certificate (never in a leaf issued to a workload, whose template has serverAuth and
/// clientAuth only). Clients of the CA API require it, so a certificate that merely names
/// `spiffe://<td>/ns/mesh-system/sa/ca` is not the CA. It is `id-kp-cmcCA` (RFC 6402: the
/// holder is a CA answering an enrollment protocol), a registered OID every X.509 parser
/// knows; these are its DER content octets.
pub const CA_SERVER_EKU: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x1b];
/// The marker's dotted form, for documentation and other tools.
pub const CA_SERVER_EKU_OID: &str = "1.3.6.1.5.5.7.3.27";

/// Whether a certificate carries the CA server marker ([`CA_SERVER_EKU`]).
pub fn is_ca_server(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.other.iter().any(|o| o.as_bytes() == CA_SERVER_EKU))
}

/// Checks a signing (CA) certificate of the trust domain.
pub fn check_ca(der: &[u8], expected_td: Option<&TrustDomain>) -> Vec<Violation> {
    match parse(der) {
        Ok(cert) => check_ca_parsed(&cert, expected_td),
        Err(e) => vec![e],
    }
}

pub fn check_ca_parsed(cert: &X509Certificate<'_>, expected_td: Option<&TrustDomain>) -> Vec<Violation> {
    let mut out = Vec::new();
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca && bc.critical => {}
        Ok(Some(bc)) if bc.value.ca => out.push(v("basic-constraints", "basicConstraints is not critical")),
        Ok(_) => out.push(v("ca-flag", "basicConstraints does not say cA=true")),
        Err(e) => out.push(v("basic-constraints", format!("malformed or duplicated: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.critical && ku.value.key_cert_sign() => {}
        Ok(Some(ku)) if !ku.critical => out.push(v("key-usage", "keyUsage is not marked critical")),
        Ok(Some(_)) => out.push(v("key-usage", "keyUsage of a CA lacks keyCertSign")),
        Ok(None) => out.push(v("key-usage", "keyUsage is missing")),
        Err(e) => out.push(v("key-usage", format!("malformed or duplicated: {e}"))),
    }
    match uri_sans(cert) {
        Err(e) => out.push(e),
        Ok(uris) if uris.len() > 1 => {
            out.push(v("uri-san-count", format!("has {} URI SANs; a CA has at most one", uris.len())))
        }
        Ok(uris) => {
            if let Some(uri) = uris.first() {
                match parse_spiffe_uri(uri) {
                    Ok((td, path)) if path.is_empty() => {
                        if expected_td.is_some_and(|want| *want != td) {
                            out.push(v(
                                "trust-domain",
                                format!("CA trust domain {td} is not the expected one"),
                            ));
                        }
                    }
                    Ok(_) => out.push(v("ca-spiffe-id", "a CA's SPIFFE ID has no path (spiffe://<td>)")),
                    Err(e) => out.push(v("spiffe-id", format!("URI SAN {:?} {e}", truncate(uri)))),
                }
            }
        }
    }
    if let Ok(Some(nc)) = cert.name_constraints() {
        let has_uri = |t: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
            t.iter().flatten().any(|s| matches!(s.base, GeneralName::URI(_)))
        };
        if has_uri(&nc.value.permitted_subtrees) || has_uri(&nc.value.excluded_subtrees) {
            out.push(v("name-constraints", "URI name constraints are not allowed on SPIFFE CAs"));
        }
    }
    check_validity(cert, &mut out);
    out
}

/// Length of a DER INTEGER's magnitude, without the sign-padding zero byte.
fn significant_serial_len(raw: &[u8]) -> usize {
    let skip = raw.iter().take_while(|b| **b == 0).count();
    raw.len() - skip
}

/// Peer-controlled text in messages is cut short; escaping is the printer's job (`{:?}`).
pub fn truncate(s: &str) -> &str {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
