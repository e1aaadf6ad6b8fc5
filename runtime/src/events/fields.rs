//! What each kind of event carries, serialized flat beside `timestamp`, `event` and
//! `severity`. Field names are the README's (with their ECS and OCSF equivalents); absent
//! optional fields are omitted. Peer-controlled text is cut by [`super::truncate`] where it
//! enters (the constructors and builders), and JSON escaping is serde_json's.

use serde::Serialize;

use super::{truncate, EventKind};

/// The payload of one event: its shape follows from its kind.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Fields {
    /// The sidecar's per-connection events (`connection`, `tls.handshake_failed`,
    /// `policy.deny`, `upstream.connect_failed`), written by its outcome record.
    Connection(Connection),
    /// The sidecar's lifecycle events: what happened and why.
    Lifecycle(Lifecycle),
    /// `events.dropped`.
    Dropped(Dropped),
    /// The CA's events, each with its own fields.
    Ca(CaFields),
}

/// One connection's record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connection {
    pub direction: &'static str,
    pub listener: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_id: Option<String>,
    pub src_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<String>,
    /// `allow` or `deny`; none when no decision was reached (a failed handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// A short reason from a bounded set (e.g. `unknown_ca`, `no_rule`, `closed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The full explanation; may quote peer-controlled text (truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    pub duration_ms: u64,
    /// Whether the connection's handshake resumed an earlier session (no certificates were
    /// exchanged this time; the identity is the one verified when the session began). None
    /// when no handshake completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_resumed: Option<bool>,
}

impl Connection {
    /// Sets the bounded reason and its (truncated) explanation.
    pub fn reason(&mut self, reason: &'static str, detail: impl Into<String>) {
        self.reason = Some(reason);
        self.reason_detail = Some(truncate(detail.into()));
    }
}

/// A lifecycle event of the sidecar.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lifecycle {
    /// The identity concerned: this sidecar's (started, rotated, enrolled) or a revoked one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_detail: Option<String>,
    /// How many (`listener.shed`: connections closed unread since the last report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `events.dropped`: the sink that lost events, and how many.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub sink: String,
    pub count: u64,
    pub detail: String,
}

/// A CA event: `source` is always `mesh-ca`. Values are strings, as the CA has always
/// printed them (`not_after` is Unix seconds as a decimal string).
#[derive(Debug, Clone, Serialize)]
pub struct CaFields {
    pub source: &'static str,
    #[serde(flatten)]
    pub what: Ca,
}

/// The CA's events, each variant one kind ([`Ca::kind`]).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Ca {
    Started {
        listen: String,
        trust_domain: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        metrics: Option<String>,
    },
    Stopped {
        connections_open: String,
        connections_cut: String,
    },
    /// `listener` is `api` or `metrics`.
    AcceptFailed {
        listener: &'static str,
        reason: String,
        retry_in_ms: String,
    },
    ConnectionsShed {
        listener: &'static str,
        reason: &'static str,
        count: String,
        latest_source: String,
    },
    OwnCertificateRenewed {
        not_after: String,
    },
    RenewOwnFailed {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_seconds: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        not_after: Option<String>,
    },
    OwnCertificateRevoked {
        serial: String,
    },
    TlsResumptionRefused {
        peer: String,
        reason: &'static str,
        reason_detail: String,
    },
    /// `serial` and `spiffe_id` are `-` when the entry has none.
    CertRevoked {
        serial: String,
        spiffe_id: String,
        reason: String,
    },
    CertIssued {
        spiffe_id: String,
        serial: String,
        via: &'static str,
    },
    CertRenewed {
        spiffe_id: String,
        serial: String,
        previous_serial: String,
    },
    TokenUsed {
        peer: String,
        spiffe_id: String,
    },
    TokenRejected {
        peer: String,
        reason: String,
    },
    EnrollRefused {
        peer: String,
        reason: String,
    },
    RenewRefused {
        spiffe_id: String,
        reason: String,
    },
}

impl Ca {
    pub fn kind(&self) -> EventKind {
        match self {
            Ca::Started { .. } => EventKind::CaStarted,
            Ca::Stopped { .. } => EventKind::CaStopped,
            Ca::AcceptFailed { .. } => EventKind::CaAcceptFailed,
            Ca::ConnectionsShed { .. } => EventKind::CaConnectionsShed,
            Ca::OwnCertificateRenewed { .. } => EventKind::CaOwnCertificateRenewed,
            Ca::RenewOwnFailed { .. } => EventKind::CaRenewOwnFailed,
            Ca::OwnCertificateRevoked { .. } => EventKind::CaOwnCertificateRevoked,
            Ca::TlsResumptionRefused { .. } => EventKind::CaTlsResumptionRefused,
            Ca::CertRevoked { .. } => EventKind::CaCertRevoked,
            Ca::CertIssued { .. } => EventKind::CaCertIssued,
            Ca::CertRenewed { .. } => EventKind::CaCertRenewed,
            Ca::TokenUsed { .. } => EventKind::CaTokenUsed,
            Ca::TokenRejected { .. } => EventKind::CaTokenRejected,
            Ca::EnrollRefused { .. } => EventKind::CaEnrollRefused,
            Ca::RenewRefused { .. } => EventKind::CaRenewRefused,
        }
    }

    /// Cuts every string that may hold peer- or store-controlled text.
    fn truncated(self) -> Self {
        let t = truncate;
        match self {
            Ca::RenewOwnFailed { reason, retry_in_seconds, not_after } => {
                Ca::RenewOwnFailed { reason: t(reason), retry_in_seconds, not_after }
            }
            Ca::AcceptFailed { listener, reason, retry_in_ms } => {
                Ca::AcceptFailed { listener, reason: t(reason), retry_in_ms }
            }
            Ca::TlsResumptionRefused { peer, reason, reason_detail } => {
                Ca::TlsResumptionRefused { peer, reason, reason_detail: t(reason_detail) }
            }
            Ca::CertRevoked { serial, spiffe_id, reason } => {
                Ca::CertRevoked { serial: t(serial), spiffe_id: t(spiffe_id), reason: t(reason) }
            }
            Ca::TokenRejected { peer, reason } => Ca::TokenRejected { peer, reason: t(reason) },
            Ca::EnrollRefused { peer, reason } => Ca::EnrollRefused { peer, reason: t(reason) },
            Ca::RenewRefused { spiffe_id, reason } => Ca::RenewRefused { spiffe_id, reason: t(reason) },
            other => other,
        }
    }
}

impl From<Ca> for CaFields {
    fn from(what: Ca) -> Self {
        CaFields { source: "mesh-ca", what: what.truncated() }
    }
}
