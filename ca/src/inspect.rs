//! `mesh-ca inspect`: what a certificate says (identity, validity, issuer) and whether it
//! keeps the X.509-SVID profile, for certificates made by us or anyone else.

use std::borrow::Cow;
use std::fmt::Write as _;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use mesh_identity::profile::{self, Violation};
use mesh_identity::Serial;

#[derive(Debug, Serialize)]
pub struct Report {
    pub spiffe_id: Option<String>,
    pub trust_domain: Option<String>,
    pub zone: Option<String>,
    pub workload: Option<String>,
    pub serial: Serial,
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// Negative once expired.
    pub seconds_left: i64,
    pub is_ca: bool,
    /// Subjects of the certificates after the first in the file (the chain it carries).
    pub chain: Vec<String>,
    pub profile: ProfileReport,
}

#[derive(Debug, Serialize)]
pub struct ProfileReport {
    pub ok: bool,
    pub checked_as: &'static str,
    pub violations: Vec<ViolationJson>,
}

#[derive(Debug, Serialize)]
pub struct ViolationJson {
    pub rule: &'static str,
    pub message: String,
}

impl From<Violation> for ViolationJson {
    fn from(v: Violation) -> Self {
        Self { rule: v.rule, message: v.message }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Inspects the first certificate of `certs`; the rest are listed as its chain.
pub fn inspect(certs: &[CertificateDer<'_>]) -> Result<Report, Violation> {
    let first = certs.first().ok_or_else(|| Violation { rule: "der", message: "no certificate".into() })?;
    let cert = profile::parse(first)?;
    let is_ca = cert.is_ca();
    let (id, violations, checked_as) = if is_ca {
        let v = profile::check_ca_parsed(&cert, None);
        let id = cert.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(profile::truncate(u).to_owned()),
                _ => None,
            })
        });
        (id.map(|s| (s, None)), v, "ca")
    } else {
        let r = profile::check_leaf_parsed(&cert, None);
        (r.id.map(|id| (id.to_string(), Some(id))), r.violations, "leaf")
    };
    let mut violations = violations;
    if let Some(issuer) = certs.get(1).and_then(|d| profile::parse(d).ok()) {
        violations.extend(within_issuer(&cert, &issuer));
    }
    let (spiffe_id, parsed) = match id {
        Some((s, p)) => (Some(s), p),
        None => (None, None),
    };
    let validity = cert.validity();
    let not_after = validity.not_after.to_datetime();
    let chain = certs[1..]
        .iter()
        .map(|d| profile::parse(d).map(|c| c.subject().to_string()).unwrap_or_else(|v| v.to_string()))
        .collect();
    Ok(Report {
        trust_domain: parsed
            .as_ref()
            .map(|p| p.trust_domain().to_string())
            .or_else(|| spiffe_id.as_deref().and_then(|s| s.strip_prefix("spiffe://")).map(|s| s.to_owned())),
        zone: parsed.as_ref().map(|p| p.zone().to_string()),
        workload: parsed.as_ref().map(|p| p.workload().to_string()),
        spiffe_id,
        serial: Serial::from_der(cert.raw_serial()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: rfc3339(validity.not_before.to_datetime()),
        not_after: rfc3339(not_after),
        seconds_left: (not_after - OffsetDateTime::now_utc()).whole_seconds(),
        is_ca,
        chain,
        profile: ProfileReport {
            ok: violations.is_empty(),
            checked_as,
            violations: violations.into_iter().map(Into::into).collect(),
        },
    })
}

/// RFC 5280 path validation does not require it, but a CA that issues a certificate
/// outliving (or predating) its own is misconfigured: the profile flags it when the issuer is
/// in the same file.
fn within_issuer(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    issuer: &x509_parser::certificate::X509Certificate<'_>,
) -> Option<Violation> {
    let (c, i) = (cert.validity(), issuer.validity());
    let starts_before = c.not_before.timestamp() < i.not_before.timestamp();
    let ends_after = c.not_after.timestamp() > i.not_after.timestamp();
    (starts_before || ends_after).then(|| Violation {
        rule: "validity-within-issuer",
        message: format!(
            "validity {} .. {} is not within the issuer's {} .. {}",
            c.not_before, c.not_after, i.not_before, i.not_after
        ),
    })
}

/// A certificate-controlled string made safe for a terminal line: control characters (newline
/// and carriage return included, so no value can forge a line such as `profile: ok`), and the
/// invisible and bidirectional formatting characters that can make text read differently from
/// what it is, are shown as `\u{..}` escapes; a backslash is doubled so escapes stay
/// unambiguous. Everything else is printed as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

impl Report {
    /// The human form: aligned `key: value` lines, then the profile verdict. Every value is
    /// passed through [`escape`]: the text is one line per field whatever the certificate says.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let none = "-".to_string();
        let serial = self.serial.to_string();
        let left = if self.seconds_left >= 0 {
            humantime::format_duration(std::time::Duration::from_secs(self.seconds_left as u64)).to_string()
        } else {
            format!(
                "EXPIRED {} ago",
                humantime::format_duration(std::time::Duration::from_secs(self.seconds_left.unsigned_abs()))
            )
        };
        let rows = [
            ("SPIFFE ID", self.spiffe_id.as_ref().unwrap_or(&none)),
            ("trust domain", self.trust_domain.as_ref().unwrap_or(&none)),
            ("zone", self.zone.as_ref().unwrap_or(&none)),
            ("workload", self.workload.as_ref().unwrap_or(&none)),
            ("serial", &serial),
            ("subject", &self.subject),
            ("issuer", &self.issuer),
            ("not before", &self.not_before),
            ("not after", &self.not_after),
            ("time left", &left),
            ("CA", &self.is_ca.to_string()),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "{k:>13}: {}", escape(v));
        }
        for (i, c) in self.chain.iter().enumerate() {
            let _ = writeln!(s, "{:>13}: {}", format!("chain[{}]", i + 1), escape(c));
        }
        if self.profile.ok {
            let _ = writeln!(s, "{:>13}: ok (X.509-SVID {} profile)", "profile", self.profile.checked_as);
        } else {
            let _ =
                writeln!(s, "{:>13}: VIOLATED (X.509-SVID {} profile)", "profile", self.profile.checked_as);
            for v in &self.profile.violations {
                let _ = writeln!(s, "{:>13}  - {}: {}", "", v.rule, escape(&v.message));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_leaves_plain_text_and_neutralises_line_forgery() {
        assert!(matches!(escape("spiffe://example.org/ns/a/sa/b"), Cow::Borrowed(_)));
        let e = escape("CN=x\nprofile: ok\r\t\u{1b}[31m\u{7f}\u{85}\u{202e}\u{200b}a\\b");
        assert!(!e.chars().any(|c| c.is_control() || c == '\u{202e}' || c == '\u{200b}'), "{e}");
        assert_eq!(e, "CN=x\\u{a}profile: ok\\u{d}\\u{9}\\u{1b}[31m\\u{7f}\\u{85}\\u{202e}\\u{200b}a\\\\b");
        assert_eq!(escape("é ü 漢"), "é ü 漢");
    }
}
