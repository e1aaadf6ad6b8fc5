//! What the CA issues, beside [`crate::profile`], which says what a certificate must be: the
//! certificate templates for workload leaves, the CA server's leaf, and the CA certificates.
//! The CA's rules (TTL bounds, the trust domain, reserved zones, the intermediate's lifetime)
//! decide the inputs; this module only shapes them, so the CA and the test PKI issue the same
//! certificates.

use std::time::Duration;

use mesh_config::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Leaves and CA certificates start this long before they are made, so that a peer whose
/// clock runs a little behind accepts a fresh certificate.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(60);

/// What a leaf is for: a workload (the only kind issue, enrollment and renewal make), or the
/// CA server's own serving certificate, which alone carries the CA server marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    Workload,
    CaServer,
}

/// Why a template could not be made; the text is for the operator who asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// The template of a leaf for `id`: URI SAN, optional DNS SANs (checked), digital signature
/// only, server and client auth, and the CA server marker for [`LeafKind::CaServer`].
pub fn leaf(
    id: &SpiffeId,
    dns: &[String],
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    kind: LeafKind,
) -> Result<CertificateParams, TemplateError> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params.distinguished_name = leaf_subject(id);
    params.subject_alt_names = vec![SanType::URI(ia5(&id.to_string())?)];
    for name in dns {
        check_dns_name(name)?;
        params.subject_alt_names.push(SanType::DnsName(ia5(name)?));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    if kind == LeafKind::CaServer {
        // id-kp-cmcCA, the CA server marker (`profile::CA_SERVER_EKU`).
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 27]));
    }
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The template of a CA certificate of trust domain `td`: the trust domain's URI SAN, key and
/// CRL signing, a path length of `path_len` (1 for the root, 0 for the intermediate).
pub fn ca(
    td: &TrustDomain,
    cn: &str,
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: u8,
) -> Result<CertificateParams, TemplateError> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = not_before;
    params.not_after = not_after;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td.as_str());
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(ia5(&td.id_uri())?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = path_len == 0;
    Ok(params)
}

fn leaf_subject(id: &SpiffeId) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, id.trust_domain().as_str());
    dn.push(DnType::OrganizationalUnitName, id.zone().as_str());
    dn.push(DnType::CommonName, id.workload().as_str());
    dn
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, TemplateError> {
    s.try_into().map_err(|_| TemplateError(format!("{s:?} is not ASCII")))
}

/// DNS SANs are optional extras (SPIFFE allows them beside the URI SAN) for clients that
/// check host names. Lowercase labels only; no wildcards: a workload has one identity.
pub fn check_dns_name(name: &str) -> Result<(), TemplateError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(TemplateError(format!(
            "--dns {name:?} is not a lowercase DNS name (labels of a-z, 0-9 and '-', no wildcards)"
        )))
    }
}
