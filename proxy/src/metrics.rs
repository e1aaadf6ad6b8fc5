//! Every metric the sidecar exports, in one place: name, type, labels and help text, and the
//! few functions that record them. Nothing else in the crate names a metric.
//!
//! Naming, for the sidecar and for any other zt-mesh process that exports metrics (the CA
//! follows the same rules with its own `mesh_ca_` names):
//! - the `mesh_` prefix, base units in the name (`_seconds`, `_bytes`), counters end in
//!   `_total`, timestamps are `_timestamp_seconds` since the Unix epoch;
//! - label values come from fixed sets (`&'static str` in the code: direction, result,
//!   reason, outcome, decision) or from configuration (sink names, zones declared in the
//!   policy, the outbound's position in sidecar.toml). Never from a peer: zone labels come
//!   from verified identities and only for zones the policy declares (the first
//!   [`MAX_ZONE_LABELS`]); every other zone, and every foreign trust domain, is `other`.
//!   Never paths, serials, addresses or SPIFFE IDs.
//!
//! The recorder is the Prometheus exporter's, installed once per process by [`install`];
//! the admin listener renders it from the [`PrometheusHandle`]. No exporter HTTP server runs.
//! Without an installed recorder (unit tests, `mesh-proxy check`) every call is a no-op.
//! Every series whose labels are known at start is registered at zero then ([`install`] for
//! the fixed sets, from the typed enums' `as_str`; [`register`] for the ones that come from
//! the policy and the outbounds), so dashboards and alerts see 0 rather than nothing; the
//! exposition is rendered in [`ALL`]'s order, series sorted by their labels, with the
//! `process_*` series after it ([`render`]).
//!
//! Connection metrics are written by the per-connection outcome record (`outcome`), together
//! with the connection's event; bytes by the forwarder as they move ([`byte_meter`]).
//! Lifecycle metrics (reloads, renewals, accept errors) are
//! derived from the lifecycle events themselves in [`on_event`], so a count and the events it
//! counts cannot disagree; which metric each [`EventKind`] feeds is one exhaustive `match`
//! ([`feeds`]), so a new or renamed kind does not compile until it is decided.

use std::sync::OnceLock;
use std::time::Duration;

use mesh_config::policy::Policy;
use mesh_config::SpiffeId;
use mesh_runtime::exposition::{self, ProcessStats};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventKind, Recorder};
use crate::forward::{End, Meter};
use crate::handshake::{Failure, NotReady};
use crate::outcome::Direction;
use crate::stop::Stop;
use crate::tls::FailureReason;

/// The kind of a metric, for [`Def`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: what the README's metrics table lists, and what `# HELP` says.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, [$($label:literal),*], $help:literal) => {
        #[doc = $help]
        pub const $id: Def = Def { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help };
    };
}

metric!(
    CONNECTIONS_OPENED,
    "mesh_connections_opened_total",
    Counter,
    ["direction"],
    "Connections accepted, by direction (inbound: from peer sidecars; outbound: from the local app)."
);
metric!(CONNECTIONS_CLOSED, "mesh_connections_closed_total", Counter, ["direction", "outcome"],
    "Connections finished, by direction and outcome (closed, idle_timeout, reset, revoked, denied, handshake_failed, upstream_failed, aborted).");
metric!(
    CONNECTIONS_OPEN,
    "mesh_connections_open",
    Gauge,
    ["direction"],
    "Connections open now, by direction."
);
metric!(
    CONNECTION_DURATION,
    "mesh_connection_duration_seconds",
    Histogram,
    ["direction"],
    "How long connections lasted, from accept to close, in seconds."
);
metric!(
    BYTES,
    "mesh_bytes_total",
    Counter,
    ["direction", "sender"],
    "Bytes forwarded, counted as they flow (at least every 64 KiB or second); sender is source (the connecting side) or destination."
);
metric!(
    OUTBOUND_CONNECTIONS,
    "mesh_outbound_connections_closed_total",
    Counter,
    ["outbound", "outcome"],
    "Outbound connections finished, by outbound (its position in sidecar.toml, from 0) and outcome."
);
metric!(
    OUTBOUND_BYTES,
    "mesh_outbound_bytes_total",
    Counter,
    ["outbound", "sender"],
    "Bytes forwarded through each outbound (its position in sidecar.toml, from 0), counted as they flow."
);
metric!(
    HANDSHAKES,
    "mesh_tls_handshakes_total",
    Counter,
    ["direction", "result", "reason"],
    "mTLS handshakes, by result (ok or failed) and failure reason (none when ok)."
);
metric!(
    HANDSHAKE_DURATION,
    "mesh_tls_handshake_duration_seconds",
    Histogram,
    ["direction", "result"],
    "How long mTLS handshakes took, in seconds."
);
metric!(POLICY_DECISIONS, "mesh_policy_decisions_total", Counter, ["direction", "decision", "src_zone", "dst_zone"],
    "Policy decisions, by direction, decision (allow or deny) and zone pair (zones the policy does not declare are other).");
metric!(
    CERT_EXPIRY,
    "mesh_cert_expiry_timestamp_seconds",
    Gauge,
    [],
    "When this sidecar's current certificate expires, in seconds since the Unix epoch."
);
metric!(
    CERT_RENEWALS,
    "mesh_cert_renewals_total",
    Counter,
    ["result"],
    "Certificate renewals with the CA (enrollment mode), by result (ok or failed)."
);
metric!(
    CERT_ENROLLMENTS,
    "mesh_cert_enrollments_total",
    Counter,
    ["result"],
    "Enrollments with a join token (enrollment mode), by result (ok or failed)."
);
metric!(
    REVOCATIONS,
    "mesh_revocations_received_total",
    Counter,
    [],
    "Revocations learnt from the CA's revocation log."
);
metric!(RELOADS, "mesh_reloads_total", Counter, ["kind", "result"],
    "File reloads, by kind (policy or cert) and result (ok or failed; a failed one keeps the last good version).");
metric!(
    ACCEPT_ERRORS,
    "mesh_accept_errors_total",
    Counter,
    [],
    "Errors accepting connections (such as running out of file descriptors)."
);
metric!(EVENTS, "mesh_events_total", Counter, ["event"], "Events emitted, by event name.");
metric!(
    EVENTS_DROPPED,
    "mesh_events_dropped_total",
    Counter,
    ["sink"],
    "Events a sink lost: its queue was full, or delivery failed after its retries."
);
metric!(
    BUILD_INFO,
    "mesh_build_info",
    Gauge,
    ["version"],
    "Always 1; the version label says which mesh-proxy is running."
);

/// Every metric, in the README's order (and the exposition's).
pub const ALL: [Def; 19] = [
    CONNECTIONS_OPENED,
    CONNECTIONS_CLOSED,
    CONNECTIONS_OPEN,
    CONNECTION_DURATION,
    BYTES,
    OUTBOUND_CONNECTIONS,
    OUTBOUND_BYTES,
    HANDSHAKES,
    HANDSHAKE_DURATION,
    POLICY_DECISIONS,
    CERT_EXPIRY,
    CERT_RENEWALS,
    CERT_ENROLLMENTS,
    REVOCATIONS,
    RELOADS,
    ACCEPT_ERRORS,
    EVENTS,
    EVENTS_DROPPED,
    BUILD_INFO,
];

/// Zones past this many in the policy's list share the `other` label, so a policy with
/// thousands of zones cannot make `mesh_policy_decisions_total` explode either.
pub const MAX_ZONE_LABELS: usize = 32;

/// Label value for anything outside the bounded set.
pub const OTHER: &str = "other";

/// Outbounds past this many share the `other` label (sidecar.toml bounds them anyway).
pub const MAX_OUTBOUND_LABELS: usize = 64;

/// Both directions.
const DIRECTIONS: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

/// How connections end before they are forwarded (the outcome record's own outcomes);
/// forwarded ones end as an [`End`] says ([`outcomes`]).
const PRE_FORWARD_OUTCOMES: [&str; 4] = ["denied", "handshake_failed", "upstream_failed", "aborted"];

// The lists above name every variant: these matches have no wildcard, so a new variant does
// not compile until it is listed (and gets its zero series).
#[allow(dead_code)]
fn every_variant_is_listed(e: &End, f: &Failure, n: &NotReady) {
    match e {
        End::Closed | End::Idle | End::Error | End::Stopped(Stop::Revoked | Stop::PolicyRevoked { .. }) => {}
    }
    match f {
        Failure::NotReady(_) | Failure::NoConfig(_) | Failure::Tls { .. } => {}
    }
    match n {
        NotReady::OwnCertificateExpired
        | NotReady::RevocationsLoading
        | NotReady::RevocationsUnavailable { .. }
        | NotReady::OwnCertificateRevoked => {}
    }
}

/// Every `outcome` of `mesh_connections_closed_total`, in a fixed order.
pub fn outcomes() -> Vec<&'static str> {
    let policy_revoked = Stop::PolicyRevoked { rule: None, detail: String::new() };
    let ends =
        [End::Closed, End::Idle, End::Error, End::Stopped(Stop::Revoked), End::Stopped(policy_revoked)];
    ends.iter().map(End::as_str).chain(PRE_FORWARD_OUTCOMES).collect()
}

/// Every `reason` of a failed handshake: [`Failure::as_str`] over all its variants.
pub fn handshake_reasons() -> Vec<&'static str> {
    let not_ready = [
        NotReady::OwnCertificateExpired,
        NotReady::RevocationsLoading,
        NotReady::RevocationsUnavailable { problem: String::new() },
        NotReady::OwnCertificateRevoked,
    ];
    let mut v: Vec<&'static str> = not_ready.into_iter().map(|n| Failure::from(n).as_str()).collect();
    v.push(Failure::NoConfig("").as_str());
    // FailureReason::ALL is kept complete by mesh-identity itself.
    v.extend(FailureReason::ALL.iter().map(|r| r.as_str()));
    v
}

/// The `event` values the sidecar can emit: every kind but the CA's.
fn sidecar_event_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> =
        EventKind::ALL.into_iter().filter(|k| !emitted_by_the_ca_only(*k)).map(EventKind::as_str).collect();
    v.dedup();
    v
}

fn emitted_by_the_ca_only(kind: EventKind) -> bool {
    use EventKind as K;
    matches!(
        kind,
        K::CaStarted
            | K::CaStopped
            | K::CaAcceptFailed
            | K::CaConnectionsShed
            | K::CaOwnCertificateRenewed
            | K::CaRenewOwnFailed
            | K::CaOwnCertificateRevoked
            | K::CaTlsResumptionRefused
            | K::CaCertRevoked
            | K::CaCertIssued
            | K::CaCertRenewed
            | K::CaTokenUsed
            | K::CaTokenRejected
            | K::CaEnrollRefused
            | K::CaRenewRefused
    )
}

/// The `outbound` label of the outbound at `index` in sidecar.toml.
pub fn outbound_label(index: usize) -> String {
    if index < MAX_OUTBOUND_LABELS {
        index.to_string()
    } else {
        OTHER.to_owned()
    }
}

/// Histogram buckets (seconds): connections run from milliseconds to hours.
const CONNECTION_BUCKETS: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
/// Handshakes take a few milliseconds on a quiet machine, seconds under a flood.
const HANDSHAKE_BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// How often histograms are drained into their buckets when nobody scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's metrics recorder (once; later calls
/// return the same handle) and describes every metric. `None` if another recorder was
/// installed first, in which case metrics go there.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(CONNECTION_DURATION.name.into()), &CONNECTION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(HANDSHAKE_DURATION.name.into()),
                        &HANDSHAKE_BUCKETS,
                    )
                })
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            gauge!(BUILD_INFO.name, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            at_zero();
            Some(handle)
        })
        .clone()
}

/// Registers, at zero, every series whose labels are fixed sets.
fn at_zero() {
    let (outcomes, reasons) = (outcomes(), handshake_reasons());
    for direction in DIRECTIONS.map(Direction::as_str) {
        gauge!(CONNECTIONS_OPEN.name, "direction" => direction).set(0.0);
        counter!(CONNECTIONS_OPENED.name, "direction" => direction).increment(0);
        for outcome in &outcomes {
            counter!(CONNECTIONS_CLOSED.name, "direction" => direction, "outcome" => *outcome).increment(0);
        }
        let _ = histogram!(CONNECTION_DURATION.name, "direction" => direction);
        for sender in ["source", "destination"] {
            counter!(BYTES.name, "direction" => direction, "sender" => sender).increment(0);
        }
        counter!(HANDSHAKES.name, "direction" => direction, "result" => "ok", "reason" => "none")
            .increment(0);
        for reason in &reasons {
            counter!(HANDSHAKES.name, "direction" => direction, "result" => "failed", "reason" => *reason)
                .increment(0);
        }
        for result in ["ok", "failed"] {
            let _ = histogram!(HANDSHAKE_DURATION.name, "direction" => direction, "result" => result);
        }
    }
    gauge!(CERT_EXPIRY.name).set(0.0);
    for result in ["ok", "failed"] {
        counter!(CERT_RENEWALS.name, "result" => result).increment(0);
        counter!(CERT_ENROLLMENTS.name, "result" => result).increment(0);
        for kind in ["policy", "cert"] {
            counter!(RELOADS.name, "kind" => kind, "result" => result).increment(0);
        }
    }
    counter!(REVOCATIONS.name).increment(0);
    counter!(ACCEPT_ERRORS.name).increment(0);
    for event in sidecar_event_names() {
        counter!(EVENTS.name, "event" => event).increment(0);
    }
}

/// Registers, at zero, the series whose labels come from the configuration: per outbound
/// (its index) and the policy decisions this sidecar can make with its zone on its side
/// (inbound: every declared zone, and `other`, to `own`; outbound: `own` to each outbound's
/// server). Called once the identity and the policy are known.
pub fn register(own: &SpiffeId, policy: &Policy, outbound_servers: &[SpiffeId]) {
    let outcomes = outcomes();
    for (i, _) in outbound_servers.iter().enumerate().take(MAX_OUTBOUND_LABELS) {
        let label = outbound_label(i);
        for outcome in &outcomes {
            counter!(OUTBOUND_CONNECTIONS.name, "outbound" => label.clone(), "outcome" => *outcome)
                .increment(0);
        }
        for sender in ["source", "destination"] {
            counter!(OUTBOUND_BYTES.name, "outbound" => label.clone(), "sender" => sender).increment(0);
        }
    }
    let own_zone = zone_label(policy, own);
    let mut sources: Vec<String> =
        policy.zones().iter().take(MAX_ZONE_LABELS).map(|z| z.as_str().to_owned()).collect();
    sources.push(OTHER.to_owned());
    let mut servers: Vec<String> = outbound_servers.iter().map(|s| zone_label(policy, s)).collect();
    servers.sort();
    servers.dedup();
    for decision in ["allow", "deny"] {
        for src in &sources {
            counter!(POLICY_DECISIONS.name, "direction" => "inbound", "decision" => decision,
                "src_zone" => src.clone(), "dst_zone" => own_zone.clone())
            .increment(0);
        }
        for dst in &servers {
            counter!(POLICY_DECISIONS.name, "direction" => "outbound", "decision" => decision,
                "src_zone" => own_zone.clone(), "dst_zone" => dst.clone())
            .increment(0);
        }
    }
}

fn describe() {
    for d in ALL {
        let unit = if d.name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else if d.name.ends_with("_bytes_total") || d.name == BYTES.name {
            Some(Unit::Bytes)
        } else {
            None
        };
        match (d.kind, unit) {
            (Kind::Counter, Some(u)) => describe_counter!(d.name, u, d.help),
            (Kind::Counter, None) => describe_counter!(d.name, d.help),
            (Kind::Gauge, Some(u)) => describe_gauge!(d.name, u, d.help),
            (Kind::Gauge, None) => describe_gauge!(d.name, d.help),
            (Kind::Histogram, Some(u)) => describe_histogram!(d.name, u, d.help),
            (Kind::Histogram, None) => describe_histogram!(d.name, d.help),
        }
    }
}

/// Drains histogram samples into buckets every few seconds, so memory stays flat between
/// scrapes; until `shutdown`.
pub async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The Prometheus text exposition, with the values that are read rather than counted
/// (the certificate's expiry) brought up to date first: the families in [`ALL`]'s order,
/// then the `process_*` ones, read from `/proc/self` now.
pub fn render(handle: &PrometheusHandle, cert_not_after: i64) -> String {
    gauge!(CERT_EXPIRY.name).set(cert_not_after as f64);
    let order: Vec<&str> = ALL.iter().map(|d| d.name).collect();
    let mut text = exposition::ordered(&handle.render(), &order);
    text.push_str(&ProcessStats::read().render());
    text
}

/// The zone label for a verified identity: its zone if the policy declares it (among the
/// first [`MAX_ZONE_LABELS`]) and it is in the policy's trust domain, else [`OTHER`].
pub fn zone_label(policy: &Policy, id: &SpiffeId) -> String {
    if id.trust_domain() != policy.trust_domain() {
        return OTHER.to_owned();
    }
    match policy.zones().iter().take(MAX_ZONE_LABELS).find(|z| *z == id.zone()) {
        Some(z) => z.as_str().to_owned(),
        None => OTHER.to_owned(),
    }
}

/// A connection was accepted.
pub fn connection_opened(direction: &'static str) {
    counter!(CONNECTIONS_OPENED.name, "direction" => direction).increment(1);
    gauge!(CONNECTIONS_OPEN.name, "direction" => direction).increment(1.0);
}

/// A connection finished, however it ended.
pub fn connection_closed(direction: &'static str, outcome: &'static str, lasted: Duration) {
    counter!(CONNECTIONS_CLOSED.name, "direction" => direction, "outcome" => outcome).increment(1);
    gauge!(CONNECTIONS_OPEN.name, "direction" => direction).decrement(1.0);
    histogram!(CONNECTION_DURATION.name, "direction" => direction).record(lasted.as_secs_f64());
}

/// An outbound connection finished, through the outbound at `index`.
pub fn outbound_closed(index: usize, outcome: &'static str) {
    counter!(OUTBOUND_CONNECTIONS.name, "outbound" => outbound_label(index), "outcome" => outcome)
        .increment(1);
}

/// Where a connection's bytes are counted as the forwarder moves them: from the connecting
/// side onward (`source`), and back; on an outbound, its own series too.
pub fn byte_meter(direction: &'static str, outbound: Option<usize>) -> Meter {
    let up = counter!(BYTES.name, "direction" => direction, "sender" => "source");
    let down = counter!(BYTES.name, "direction" => direction, "sender" => "destination");
    let (o_up, o_down) = match outbound {
        Some(i) => (
            counter!(OUTBOUND_BYTES.name, "outbound" => outbound_label(i), "sender" => "source"),
            counter!(OUTBOUND_BYTES.name, "outbound" => outbound_label(i), "sender" => "destination"),
        ),
        None => (metrics::Counter::noop(), metrics::Counter::noop()),
    };
    Meter::new([up, o_up], [down, o_down])
}

/// A handshake ended; `reason` is `None` when it succeeded.
pub fn handshake(direction: &'static str, reason: Option<&'static str>, took: Option<Duration>) {
    let result = if reason.is_some() { "failed" } else { "ok" };
    counter!(HANDSHAKES.name, "direction" => direction, "result" => result, "reason" => reason.unwrap_or("none"))
        .increment(1);
    if let Some(took) = took {
        histogram!(HANDSHAKE_DURATION.name, "direction" => direction, "result" => result)
            .record(took.as_secs_f64());
    }
}

/// The policy decided; zones are labels from [`zone_label`].
pub fn decision(direction: &'static str, allowed: bool, src_zone: String, dst_zone: String) {
    let decision = if allowed { "allow" } else { "deny" };
    counter!(POLICY_DECISIONS.name, "direction" => direction, "decision" => decision,
        "src_zone" => src_zone, "dst_zone" => dst_zone)
    .increment(1);
}

/// `n` events lost by the sink labelled `sink` (a label from configuration).
pub fn events_dropped(sink: &str, n: u64) {
    counter!(EVENTS_DROPPED.name, "sink" => sink.to_owned()).increment(n);
}

/// What the sidecar's events record: [`on_event`] and [`events_dropped`].
pub const RECORDER: Recorder = Recorder { emitted: on_event, dropped: events_dropped };

/// A counter and its labels.
pub type Feed = (Def, &'static [(&'static str, &'static str)]);

/// The lifecycle counter an event kind feeds, besides [`EVENTS`] (which every event feeds);
/// `None` for a kind that feeds nothing else, and why. No wildcard: a new kind must be
/// decided here.
pub fn feeds(kind: EventKind) -> Option<Feed> {
    match kind {
        EventKind::PolicyReloaded => Some((RELOADS, &[("kind", "policy"), ("result", "ok")])),
        EventKind::PolicyReloadFailed => Some((RELOADS, &[("kind", "policy"), ("result", "failed")])),
        EventKind::CertRotated => Some((RELOADS, &[("kind", "cert"), ("result", "ok")])),
        EventKind::CertReloadFailed => Some((RELOADS, &[("kind", "cert"), ("result", "failed")])),
        EventKind::CertRenewed => Some((CERT_RENEWALS, &[("result", "ok")])),
        EventKind::CertRenewFailed => Some((CERT_RENEWALS, &[("result", "failed")])),
        EventKind::CertEnrolled => Some((CERT_ENROLLMENTS, &[("result", "ok")])),
        EventKind::CertEnrollFailed => Some((CERT_ENROLLMENTS, &[("result", "failed")])),
        EventKind::CertRevoked => Some((REVOCATIONS, &[])),
        EventKind::ListenerAcceptFailed => Some((ACCEPT_ERRORS, &[])),
        // Connection metrics are written by the outcome record with more labels than the
        // event has (zones, durations), not derived from the event.
        EventKind::Connection
        | EventKind::TlsHandshakeFailed
        | EventKind::PolicyDeny
        | EventKind::UpstreamConnectFailed => None,
        // Counted by `mesh_events_total` alone: one-off or already visible elsewhere
        // (readiness, `mesh_events_dropped_total`, the cert expiry gauge).
        EventKind::ProxyStarted
        | EventKind::ProxyStopping
        | EventKind::ProxyDrainTimeout
        | EventKind::ConfigSecretExposed
        | EventKind::ListenerShed
        | EventKind::CertExpired
        | EventKind::CertRevokedSelf
        | EventKind::RevocationsLoaded
        | EventKind::RevocationsUnavailable
        | EventKind::RevocationsPollFailed
        | EventKind::EventsDropped => None,
        // The CA's: the sidecar never emits them (the CA's metrics are its handlers').
        EventKind::CaStarted
        | EventKind::CaStopped
        | EventKind::CaAcceptFailed
        | EventKind::CaConnectionsShed
        | EventKind::CaOwnCertificateRenewed
        | EventKind::CaRenewOwnFailed
        | EventKind::CaOwnCertificateRevoked
        | EventKind::CaTlsResumptionRefused
        | EventKind::CaCertRevoked
        | EventKind::CaCertIssued
        | EventKind::CaCertRenewed
        | EventKind::CaTokenUsed
        | EventKind::CaTokenRejected
        | EventKind::CaEnrollRefused
        | EventKind::CaRenewRefused => None,
    }
}

/// Counts an event, and the lifecycle metric it stands for. Called for every event emitted.
pub fn on_event(e: &Event) {
    counter!(EVENTS.name, "event" => e.event.as_str()).increment(1);
    if let Some((def, labels)) = feeds(e.event) {
        counter!(def.name, labels).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Severity;

    #[test]
    fn names_follow_the_conventions() {
        for d in ALL {
            assert!(d.name.starts_with("mesh_"), "{}", d.name);
            assert_eq!(d.kind == Kind::Counter, d.name.ends_with("_total"), "{}", d.name);
            assert!(!d.help.is_empty() && d.help.ends_with('.'), "{}", d.name);
            for l in d.labels {
                assert!(!["path", "serial", "spiffe_id", "addr", "peer"].contains(l), "{}: {l}", d.name);
            }
        }
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "metric names are unique");
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("the workspace README");
        for d in ALL {
            assert!(readme.contains(&format!("`{}`", d.name)), "README lacks {}", d.name);
        }
    }

    #[test]
    fn zone_labels_are_bounded_by_the_policy() {
        let mut text = String::from("trust_domain = \"example.org\"\nzones = [");
        for i in 0..40 {
            text.push_str(&format!("\"z{i}\", "));
        }
        text.push_str("]\n");
        let policy = Policy::from_str_named(&text, "policy.toml").expect("policy");
        let id = |s: &str| s.parse::<SpiffeId>().expect("id");
        assert_eq!(zone_label(&policy, &id("spiffe://example.org/ns/z3/sa/a")), "z3");
        assert_eq!(zone_label(&policy, &id("spiffe://example.org/ns/z31/sa/a")), "z31");
        // Declared, but past the cap.
        assert_eq!(zone_label(&policy, &id("spiffe://example.org/ns/z32/sa/a")), OTHER);
        // Not declared: a peer with a valid certificate for an unknown zone adds no label.
        assert_eq!(zone_label(&policy, &id("spiffe://example.org/ns/attacker1/sa/a")), OTHER);
        // The right zone name in another trust domain.
        assert_eq!(zone_label(&policy, &id("spiffe://evil.org/ns/z3/sa/a")), OTHER);
    }

    #[test]
    fn lifecycle_events_count_as_metrics() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for kind in [
                EventKind::PolicyReloaded,
                EventKind::PolicyReloadFailed,
                EventKind::CertRotated,
                EventKind::CertRenewFailed,
            ] {
                on_event(&Event::new(kind, Severity::Info));
            }
            on_event(&Event::new(EventKind::CertRenewFailed, Severity::Warning));
        });
        let text = handle.render();
        for line in [
            "mesh_reloads_total{kind=\"policy\",result=\"ok\"} 1",
            "mesh_reloads_total{kind=\"policy\",result=\"failed\"} 1",
            "mesh_reloads_total{kind=\"cert\",result=\"ok\"} 1",
            "mesh_cert_renewals_total{result=\"failed\"} 2",
            "mesh_events_total{event=\"cert.renew_failed\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn every_counter_an_event_feeds_is_a_counter_with_those_labels() {
        for kind in EventKind::ALL {
            if let Some((def, labels)) = feeds(kind) {
                assert_eq!(def.kind, Kind::Counter, "{kind}");
                let names: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
                assert_eq!(names, def.labels, "{kind} feeds {} with its labels", def.name);
            }
        }
    }
}
