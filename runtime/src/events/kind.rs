//! Every event zt-mesh emits, by kind: the sidecar's and the CA's in one enum, so a name is
//! spelled once ([`EventKind::as_str`]), and every consumer that maps kinds to something (the
//! sidecar's metrics, a detector) is a `match` the compiler checks for exhaustiveness.
//!
//! Names are a stable interface: tests, the README, dashboards and collectors read them. Two
//! kinds may share a name when two processes report the same thing in their own terms
//! (`cert.revoked`, `cert.renewed`: the sidecar learnt of it, the CA recorded it).

use serde::{Serialize, Serializer};

/// What happened. The payload each kind carries is in [`super::Fields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    // The sidecar's connections: one per connection, written by its outcome record.
    /// An allowed connection ended (however it ended).
    Connection,
    TlsHandshakeFailed,
    PolicyDeny,
    UpstreamConnectFailed,
    // The sidecar's lifecycle.
    ProxyStarted,
    ProxyStopping,
    ProxyDrainTimeout,
    ConfigSecretExposed,
    ListenerAcceptFailed,
    ListenerShed,
    PolicyReloaded,
    PolicyReloadFailed,
    CertRotated,
    CertReloadFailed,
    CertEnrolled,
    CertEnrollFailed,
    CertRenewed,
    CertRenewFailed,
    CertExpired,
    /// A revocation the sidecar learnt from the CA's log.
    CertRevoked,
    /// This sidecar's own certificate is revoked: it is not ready until it enrolls again.
    CertRevokedSelf,
    RevocationsLoaded,
    RevocationsUnavailable,
    RevocationsPollFailed,
    // Both processes.
    /// A sink lost events; sent in that sink's own stream once it delivers again.
    EventsDropped,
    // The CA.
    CaStarted,
    /// The CA stopped: how many connections were still open, and how many were cut.
    CaStopped,
    CaAcceptFailed,
    /// Connections closed unread: too many without a certificate from one source.
    CaConnectionsShed,
    CaOwnCertificateRenewed,
    CaRenewOwnFailed,
    CaOwnCertificateRevoked,
    /// A resumed session whose stored chain no longer passes (expired, revoked).
    CaTlsResumptionRefused,
    /// A revocation entered the CA's log (by the API's caller or `mesh-ca revoke`).
    CaCertRevoked,
    CaCertIssued,
    CaCertRenewed,
    CaTokenUsed,
    CaTokenRejected,
    CaEnrollRefused,
    CaRenewRefused,
}

impl EventKind {
    /// Every kind, for documentation checks and exhaustive tests.
    pub const ALL: [EventKind; 40] = [
        EventKind::Connection,
        EventKind::TlsHandshakeFailed,
        EventKind::PolicyDeny,
        EventKind::UpstreamConnectFailed,
        EventKind::ProxyStarted,
        EventKind::ProxyStopping,
        EventKind::ProxyDrainTimeout,
        EventKind::ConfigSecretExposed,
        EventKind::ListenerAcceptFailed,
        EventKind::ListenerShed,
        EventKind::PolicyReloaded,
        EventKind::PolicyReloadFailed,
        EventKind::CertRotated,
        EventKind::CertReloadFailed,
        EventKind::CertEnrolled,
        EventKind::CertEnrollFailed,
        EventKind::CertRenewed,
        EventKind::CertRenewFailed,
        EventKind::CertExpired,
        EventKind::CertRevoked,
        EventKind::CertRevokedSelf,
        EventKind::RevocationsLoaded,
        EventKind::RevocationsUnavailable,
        EventKind::RevocationsPollFailed,
        EventKind::EventsDropped,
        EventKind::CaStarted,
        EventKind::CaStopped,
        EventKind::CaAcceptFailed,
        EventKind::CaConnectionsShed,
        EventKind::CaOwnCertificateRenewed,
        EventKind::CaRenewOwnFailed,
        EventKind::CaOwnCertificateRevoked,
        EventKind::CaTlsResumptionRefused,
        EventKind::CaCertRevoked,
        EventKind::CaCertIssued,
        EventKind::CaCertRenewed,
        EventKind::CaTokenUsed,
        EventKind::CaTokenRejected,
        EventKind::CaEnrollRefused,
        EventKind::CaRenewRefused,
    ];

    /// The event's name, the `event` field of every record.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connection => "connection",
            EventKind::TlsHandshakeFailed => "tls.handshake_failed",
            EventKind::PolicyDeny => "policy.deny",
            EventKind::UpstreamConnectFailed => "upstream.connect_failed",
            EventKind::ProxyStarted => "proxy.started",
            EventKind::ProxyStopping => "proxy.stopping",
            EventKind::ProxyDrainTimeout => "proxy.drain_timeout",
            EventKind::ConfigSecretExposed => "config.secret_exposed",
            EventKind::ListenerAcceptFailed => "listener.accept_failed",
            EventKind::ListenerShed => "listener.shed",
            EventKind::PolicyReloaded => "policy.reloaded",
            EventKind::PolicyReloadFailed => "policy.reload_failed",
            EventKind::CertRotated => "cert.rotated",
            EventKind::CertReloadFailed => "cert.reload_failed",
            EventKind::CertEnrolled => "cert.enrolled",
            EventKind::CertEnrollFailed => "cert.enroll_failed",
            EventKind::CertRenewed | EventKind::CaCertRenewed => "cert.renewed",
            EventKind::CertRenewFailed => "cert.renew_failed",
            EventKind::CertExpired => "cert.expired",
            EventKind::CertRevoked | EventKind::CaCertRevoked => "cert.revoked",
            EventKind::CertRevokedSelf => "cert.revoked_self",
            EventKind::RevocationsLoaded => "revocations.loaded",
            EventKind::RevocationsUnavailable => "revocations.unavailable",
            EventKind::RevocationsPollFailed => "revocations.poll_failed",
            EventKind::EventsDropped => "events.dropped",
            EventKind::CaStarted => "ca.started",
            EventKind::CaStopped => "ca.stopped",
            EventKind::CaAcceptFailed => "ca.accept_failed",
            EventKind::CaConnectionsShed => "ca.connections_shed",
            EventKind::CaOwnCertificateRenewed => "ca.own_certificate_renewed",
            EventKind::CaRenewOwnFailed => "ca.renew_own_failed",
            EventKind::CaOwnCertificateRevoked => "ca.own_certificate_revoked",
            EventKind::CaTlsResumptionRefused => "tls.resumption_refused",
            EventKind::CaCertIssued => "cert.issued",
            EventKind::CaTokenUsed => "token.used",
            EventKind::CaTokenRejected => "token.rejected",
            EventKind::CaEnrollRefused => "enroll.refused",
            EventKind::CaRenewRefused => "renew.refused",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
