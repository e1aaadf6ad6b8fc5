//! Every event kind, with the fields it carries in practice, rendered as ECS and as OCSF and
//! checked by the independent validator the end-to-end tests use (tests/py/siem_validate.py:
//! OCSF 1.5.0's JSON Schemas from the `ocsf-json-schema` package, ECS 9.4.0's field
//! reference). The end-to-end tests (tests/tests/siem_formats.rs) cover the kinds a running
//! pair and CA produce; this covers the rest (drains, shed listeners, failed renewals, ...).
//! The sample is an exhaustive `match`: a new kind needs one here before this compiles.

use std::path::PathBuf;
use std::process::Command;

use mesh_runtime::events::{Ca, Connection, Dropped, Event, EventFormat, EventKind, Fields, Severity};

const WEB: &str = "spiffe://example.org/ns/frontend/sa/web";
const API: &str = "spiffe://example.org/ns/orders/sa/api";

fn conn(kind: EventKind) -> Event {
    let mut c = Connection {
        direction: "inbound",
        listener: "0.0.0.0:15443".into(),
        src_id: Some(WEB.into()),
        dst_id: Some(API.into()),
        src_addr: "10.0.0.5:40122".into(),
        dst_addr: Some("app.internal:8080".into()),
        duration_ms: 12,
        ..Connection::default()
    };
    match kind {
        EventKind::Connection => {
            c.decision = Some("allow");
            c.rule = Some("allow[0] (policy.toml:5) frontend -> orders".into());
            c.bytes_in = Some(100);
            c.bytes_out = Some(2000);
            c.tls_resumed = Some(true);
            c.reason("reset", "connection reset by peer");
        }
        EventKind::PolicyDeny => {
            c.direction = "outbound";
            c.decision = Some("deny");
            c.dst_addr = Some("[fd00::7]:15443".into());
            c.reason("no_rule", "DENY: no rule allows it");
        }
        EventKind::TlsHandshakeFailed => {
            c.src_id = None;
            c.dst_addr = None;
            c.reason("unknown_ca", "peer certificate from an unknown CA \"x]\"");
        }
        _ => {
            c.decision = Some("allow");
            c.rule = Some("allow[0]".into());
            c.reason("connect_error", "127.0.0.1:9: Connection refused");
        }
    }
    Event::connection(kind, Severity::Warning, c)
}

fn life(kind: EventKind) -> Event {
    Event::new(kind, Severity::Info)
        .src_id(API)
        .listener("127.0.0.1:15001")
        .count(3)
        .reason("x", "why")
        .detail("what")
}

fn ca(what: Ca) -> Event {
    Event::ca(Severity::Info, what)
}

/// One realistic event of `kind`.
fn sample(kind: EventKind) -> Event {
    use EventKind as K;
    let s = |v: &str| v.to_owned();
    match kind {
        K::Connection | K::TlsHandshakeFailed | K::PolicyDeny | K::UpstreamConnectFailed => conn(kind),
        K::ProxyStarted
        | K::ProxyStopping
        | K::ProxyDrainTimeout
        | K::ConfigSecretExposed
        | K::ListenerAcceptFailed
        | K::ListenerShed
        | K::PolicyReloaded
        | K::PolicyReloadFailed
        | K::CertRotated
        | K::CertReloadFailed
        | K::CertEnrolled
        | K::CertEnrollFailed
        | K::CertRenewed
        | K::CertRenewFailed
        | K::CertExpired
        | K::CertRevoked
        | K::CertRevokedSelf
        | K::RevocationsLoaded
        | K::RevocationsUnavailable
        | K::RevocationsPollFailed => life(kind),
        K::EventsDropped => {
            let d = Dropped { sink: s("https"), count: 44, detail: s("44 event(s) lost by sink https") };
            Event {
                timestamp: time::OffsetDateTime::now_utc(),
                event: kind,
                severity: Severity::Warning,
                fields: Fields::Dropped(d),
            }
        }
        K::CaStarted => ca(Ca::Started {
            listen: s("0.0.0.0:8443"),
            trust_domain: s("example.org"),
            metrics: Some(s("127.0.0.1:9443")),
        }),
        K::CaStopped => ca(Ca::Stopped { connections_open: s("3"), connections_cut: s("1") }),
        K::CaAcceptFailed => {
            ca(Ca::AcceptFailed { listener: "api", reason: s("EMFILE"), retry_in_ms: s("100") })
        }
        K::CaConnectionsShed => ca(Ca::ConnectionsShed {
            listener: "api",
            reason: "too_many_anonymous",
            count: s("12"),
            latest_source: s("10.0.0.9"),
        }),
        K::CaOwnCertificateRenewed => ca(Ca::OwnCertificateRenewed { not_after: s("1764000000") }),
        K::CaRenewOwnFailed => ca(Ca::RenewOwnFailed {
            reason: s("store unavailable"),
            retry_in_seconds: Some(s("30")),
            not_after: None,
        }),
        K::CaOwnCertificateRevoked => ca(Ca::OwnCertificateRevoked { serial: s("ab12") }),
        K::CaTlsResumptionRefused => ca(Ca::TlsResumptionRefused {
            peer: s("10.0.0.5:4000"),
            reason: "revoked",
            reason_detail: s("the session's chain is revoked"),
        }),
        K::CaCertRevoked => {
            ca(Ca::CertRevoked { serial: s("-"), spiffe_id: s(API), reason: s("key compromise") })
        }
        K::CaCertIssued => ca(Ca::CertIssued { spiffe_id: s(API), serial: s("ab12"), via: "enroll" }),
        K::CaCertRenewed => {
            ca(Ca::CertRenewed { spiffe_id: s(API), serial: s("cd34"), previous_serial: s("ab12") })
        }
        K::CaTokenUsed => ca(Ca::TokenUsed { peer: s("10.0.0.5:4000"), spiffe_id: s(API) }),
        K::CaTokenRejected => ca(Ca::TokenRejected { peer: s("[::1]:4000"), reason: s("used up") }),
        K::CaEnrollRefused => ca(Ca::EnrollRefused { peer: s("10.0.0.5:4000"), reason: s("bad CSR") }),
        K::CaRenewRefused => ca(Ca::RenewRefused { spiffe_id: s(API), reason: s("revoked") }),
    }
}

#[test]
fn every_kind_validates_as_ecs_and_as_ocsf() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("mesh-siem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (format, name) in [(EventFormat::Ecs, "ecs"), (EventFormat::Ocsf, "ocsf")] {
        let file = dir.join(format!("{name}.jsonl"));
        let text: String = EventKind::ALL.iter().map(|k| sample(*k).render(format) + "\n").collect();
        std::fs::write(&file, text).expect("write");
        let o = Command::new("python3")
            .arg(root.join("tests/py/siem_validate.py"))
            .arg(name)
            .arg(&file)
            .output()
            .expect("python3 runs (scripts/test installs the validators)");
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}: {report}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(report.contains(&format!("\"checked\": {}", EventKind::ALL.len())), "{name}: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
