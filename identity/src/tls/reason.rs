//! Why a handshake failed, as a bounded [`FailureReason`] (an event's `reason`, a metric's
//! label) and a detail sentence (an event's `reason_detail`). Never peer-controlled text in
//! the reason; the detail holds no key material (rustls errors never carry any).

use rustls::{AlertDescription, CertificateError, PeerMisbehaved};

use super::SvidError;

/// Why a TLS handshake (or the check of a resumed session after it) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The transport ended mid-handshake.
    Eof,
    /// The transport or the caller's limit timed out.
    Timeout,
    /// Not TLS, or TLS in an order no peer would send.
    Protocol,
    /// Another transport error.
    Io,
    /// The peer presented no certificate where one is required.
    NoCertificate,
    UnknownCa,
    Expired,
    NotYetValid,
    BadSignature,
    Revoked,
    BadPurpose,
    /// A valid SVID, but not the identity expected.
    WrongIdentity,
    /// The CA's SPIFFE ID without the CA server marker.
    NotTheCa,
    WrongTrustDomain,
    /// A chain of our CA whose leaf breaks the X.509-SVID profile.
    BadSvid,
    BadCertificate,
    /// The peer refused us with an alert.
    AlertReceived,
    /// No version, suite or group in common.
    Incompatible,
    /// The client offered only application protocols this side does not speak, or the server
    /// picked one the client did not offer, or refused every one the client offered.
    UnknownAlpn,
    TlsError,
}

impl FailureReason {
    /// Every reason, in a fixed order: for metrics registered at zero and for tests. A new
    /// variant does not compile until it is listed here (see `listed`).
    pub const ALL: [FailureReason; 20] = {
        use FailureReason as R;
        [
            R::Eof,
            R::Timeout,
            R::Protocol,
            R::Io,
            R::NoCertificate,
            R::UnknownCa,
            R::Expired,
            R::NotYetValid,
            R::BadSignature,
            R::Revoked,
            R::BadPurpose,
            R::WrongIdentity,
            R::NotTheCa,
            R::WrongTrustDomain,
            R::BadSvid,
            R::BadCertificate,
            R::AlertReceived,
            R::Incompatible,
            R::UnknownAlpn,
            R::TlsError,
        ]
    };
}

// No wildcard: adding a variant fails here until it is added to `ALL` above as well.
#[allow(dead_code)]
fn listed(r: FailureReason) {
    use FailureReason as R;
    match r {
        R::Eof
        | R::Timeout
        | R::Protocol
        | R::Io
        | R::NoCertificate
        | R::UnknownCa
        | R::Expired
        | R::NotYetValid
        | R::BadSignature
        | R::Revoked
        | R::BadPurpose
        | R::WrongIdentity
        | R::NotTheCa
        | R::WrongTrustDomain
        | R::BadSvid
        | R::BadCertificate
        | R::AlertReceived
        | R::Incompatible
        | R::UnknownAlpn
        | R::TlsError => {}
    }
}

impl FailureReason {
    /// The reason code: stable, from a bounded set.
    pub const fn as_str(self) -> &'static str {
        use FailureReason as R;
        match self {
            R::Eof => "eof",
            R::Timeout => "timeout",
            R::Protocol => "protocol",
            R::Io => "io",
            R::NoCertificate => "no_certificate",
            R::UnknownCa => "unknown_ca",
            R::Expired => "expired",
            R::NotYetValid => "not_yet_valid",
            R::BadSignature => "bad_signature",
            R::Revoked => "revoked",
            R::BadPurpose => "bad_purpose",
            R::WrongIdentity => "wrong_identity",
            R::NotTheCa => "not_the_ca",
            R::WrongTrustDomain => "wrong_trust_domain",
            R::BadSvid => "bad_svid",
            R::BadCertificate => "bad_certificate",
            R::AlertReceived => "alert_received",
            R::Incompatible => "incompatible",
            R::UnknownAlpn => "unknown_alpn",
            R::TlsError => "tls_error",
        }
    }

    /// The reason of a failed handshake as tokio-rustls reports it.
    pub fn of_io(err: &std::io::Error) -> Self {
        let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
            return match err.kind() {
                std::io::ErrorKind::UnexpectedEof => Self::Eof,
                std::io::ErrorKind::TimedOut => Self::Timeout,
                std::io::ErrorKind::InvalidData => Self::Protocol,
                _ => Self::Io,
            };
        };
        Self::of(tls)
    }

    /// The reason of a rustls error (also: a resumed session refused after its handshake).
    pub fn of(tls: &rustls::Error) -> Self {
        use rustls::Error as E;
        use FailureReason as R;
        match tls {
            E::NoCertificatesPresented => R::NoCertificate,
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => R::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => R::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => R::NotYetValid,
                CertificateError::BadSignature => R::BadSignature,
                CertificateError::Revoked => R::Revoked,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                    R::BadPurpose
                }
                CertificateError::Other(o) => match o.0.downcast_ref::<SvidError>() {
                    Some(SvidError::WrongIdentity { .. }) => R::WrongIdentity,
                    Some(SvidError::NotTheCa) => R::NotTheCa,
                    Some(SvidError::Profile(v)) if v.iter().any(|v| v.rule == "trust-domain") => {
                        R::WrongTrustDomain
                    }
                    Some(SvidError::Profile(_)) => R::BadSvid,
                    None => R::BadCertificate,
                },
                _ => R::BadCertificate,
            },
            E::NoApplicationProtocol
            | E::AlertReceived(AlertDescription::NoApplicationProtocol)
            | E::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedApplicationProtocol) => R::UnknownAlpn,
            E::AlertReceived(_) => R::AlertReceived,
            E::PeerIncompatible(_) => R::Incompatible,
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => R::Protocol,
            _ => R::TlsError,
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// [`FailureReason::of_io`], as its code.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    FailureReason::of_io(err).as_str()
}

/// [`FailureReason::of`], as its code.
pub fn tls_failure_reason(tls: &rustls::Error) -> &'static str {
    FailureReason::of(tls).as_str()
}

/// The full detail of a handshake failure for an event's `reason_detail`.
pub fn failure_detail(err: &std::io::Error) -> String {
    match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls_failure_detail(tls),
        None => err.to_string(),
    }
}

/// [`failure_detail`] for a rustls error.
pub fn tls_failure_detail(tls: &rustls::Error) -> String {
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => o.0.to_string(),
        rustls::Error::NoApplicationProtocol => {
            "the client offered no application protocol (ALPN) this server speaks".into()
        }
        tls => tls.to_string(),
    }
}
