//! Events in the Elastic Common Schema ([`ECS_VERSION`]): `@timestamp`, `event.kind`,
//! `event.category`, `event.type`, `event.outcome`, `event.action` (the zt-mesh event name),
//! `event.reason`, `event.duration` (nanoseconds), `source.*` and `destination.*` (`ip`,
//! `port`, `address`, `bytes`), `network.*`, `tls.established`, `tls.resumed`, `tls.version`,
//! the SPIFFE IDs as the certificates' `tls.client.x509.alternative_names` /
//! `tls.server.x509.alternative_names` (when a handshake completed) and always as
//! `labels.src_id`, `labels.dst_id`, `labels.spiffe_id`; `rule.name`; `observer` and `service`
//! name the product and the program. Fields ECS has no place for go under `zt_mesh.*` (a
//! custom namespace, as ECS asks), with their JSON types.
//!
//! Categories and types are ECS's allowed values, each type one the category expects.

use serde_json::{json, Map, Value};

use super::format::{hostname, put, Addr, Flat, PRODUCT, VERSION};
use super::{format_timestamp, Event, EventKind, Fields, Severity};

/// The ECS release the field names and types follow.
pub const ECS_VERSION: &str = "9.4.0";

#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Unknown,
}

/// What a kind is in ECS terms: (categories, types, outcome).
fn categorize(kind: EventKind) -> (&'static [&'static str], &'static [&'static str], Outcome) {
    use EventKind as K;
    use Outcome::*;
    const NET: &[&str] = &["network"];
    const CONF: &[&str] = &["configuration"];
    const PROC: &[&str] = &["process"];
    const IAM: &[&str] = &["iam"];
    const API_IAM: &[&str] = &["api", "iam"];
    const AUTH: &[&str] = &["authentication", "network"];
    const TOKEN: &[&str] = &["authentication"];
    match kind {
        K::Connection => (NET, &["connection", "end", "allowed"], Success),
        K::TlsHandshakeFailed => (AUTH, &["start", "connection"], Failure),
        K::PolicyDeny => (NET, &["connection", "denied"], Failure),
        K::UpstreamConnectFailed => (NET, &["connection", "end"], Failure),
        K::ProxyStarted | K::CaStarted => (PROC, &["start"], Success),
        K::ProxyStopping | K::CaStopped => (PROC, &["end"], Success),
        K::ProxyDrainTimeout => (PROC, &["end"], Failure),
        K::ConfigSecretExposed => (CONF, &["info"], Unknown),
        K::ListenerAcceptFailed | K::CaAcceptFailed => (NET, &["info"], Failure),
        K::ListenerShed | K::CaConnectionsShed => (NET, &["connection", "denied"], Failure),
        K::PolicyReloaded | K::CertRotated => (CONF, &["change"], Success),
        K::PolicyReloadFailed | K::CertReloadFailed => (CONF, &["change"], Failure),
        K::CertEnrolled => (IAM, &["creation"], Success),
        K::CertEnrollFailed => (IAM, &["creation"], Failure),
        K::CertRenewed | K::CaOwnCertificateRenewed => (IAM, &["change"], Success),
        K::CertRenewFailed | K::CaRenewOwnFailed => (IAM, &["change"], Failure),
        K::CertExpired | K::CertRevokedSelf => (IAM, &["info"], Failure),
        K::CertRevoked | K::CaOwnCertificateRevoked => (IAM, &["deletion"], Success),
        K::RevocationsLoaded => (CONF, &["access"], Success),
        K::RevocationsUnavailable | K::RevocationsPollFailed => (CONF, &["access"], Failure),
        K::EventsDropped => (PROC, &["info"], Failure),
        K::CaTlsResumptionRefused => (AUTH, &["start", "denied"], Failure),
        K::CaCertRevoked => (API_IAM, &["deletion"], Success),
        K::CaCertIssued => (API_IAM, &["creation"], Success),
        K::CaCertRenewed => (API_IAM, &["change"], Success),
        K::CaTokenUsed => (TOKEN, &["start"], Success),
        K::CaTokenRejected => (TOKEN, &["start"], Failure),
        K::CaEnrollRefused => (API_IAM, &["creation", "denied"], Failure),
        K::CaRenewRefused => (API_IAM, &["change", "denied"], Failure),
    }
}

fn address(doc: &mut Map<String, Value>, side: &str, raw: &str) {
    let a = Addr::parse(raw);
    put(doc, &[side, "address"], raw);
    if let Some(ip) = a.ip {
        put(doc, &[side, "ip"], ip.to_string());
    }
    if let Some(host) = a.host {
        put(doc, &[side, "domain"], host);
    }
    if let Some(port) = a.port {
        put(doc, &[side, "port"], port);
    }
}

/// `e` as one ECS document.
pub(super) fn map(e: &Event) -> Value {
    let (category, types, outcome) = categorize(e.event);
    let program = crate::output::program();
    let (severity, level) = match e.severity {
        Severity::Info => (6, "info"),
        Severity::Warning => (4, "warning"),
        Severity::Error => (3, "error"),
    };
    let outcome = match outcome {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Unknown => "unknown",
    };
    let observer_type = if matches!(e.fields, Fields::Ca(_)) { "certificate-authority" } else { "proxy" };
    let mut doc = match json!({
        "@timestamp": format_timestamp(e.timestamp),
        "ecs": { "version": ECS_VERSION },
        "event": {
            "kind": "event",
            "category": category,
            "type": types,
            "outcome": outcome,
            "action": e.event.as_str(),
            "module": "zt_mesh",
            "dataset": "zt_mesh.events",
            "provider": program,
            "severity": severity,
        },
        "log": { "level": level },
        "observer": {
            "product": PRODUCT,
            "vendor": PRODUCT,
            "type": observer_type,
            "version": VERSION,
            "hostname": hostname(),
        },
        "service": { "name": program, "type": PRODUCT, "version": VERSION },
        "process": { "pid": std::process::id() },
    }) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut f = Flat::of(e);
    let established = f.bool("tls_resumed").map(|resumed| {
        put(&mut doc, &["tls", "established"], true);
        put(&mut doc, &["tls", "resumed"], resumed);
        // The only version sidecars speak to each other.
        put(&mut doc, &["tls", "version"], "1.3");
        put(&mut doc, &["tls", "version_protocol"], "tls");
    });
    if e.event == EventKind::TlsHandshakeFailed {
        put(&mut doc, &["tls", "established"], false);
    }
    if let Some(d) = f.str("direction") {
        put(&mut doc, &["network", "direction"], d);
        put(&mut doc, &["network", "transport"], "tcp");
    }
    for (key, side, x509) in [("src_id", "src_id", "client"), ("dst_id", "dst_id", "server")] {
        if let Some(id) = f.str(key) {
            if established.is_some() {
                put(&mut doc, &["tls", x509, "x509", "alternative_names"], json!([id]));
            }
            put(&mut doc, &["labels", side], id);
        }
    }
    if let Some(id) = f.str("spiffe_id").filter(|s| s != "-") {
        put(&mut doc, &["labels", "spiffe_id"], id);
    }
    for key in ["src_addr", "peer", "latest_source"] {
        if let Some(a) = f.str(key) {
            address(&mut doc, "source", &a);
        }
    }
    if let Some(a) = f.str("dst_addr") {
        address(&mut doc, "destination", &a);
    }
    if let Some(d) = f.str("decision") {
        put(&mut doc, &["labels", "decision"], d);
    }
    if let Some(r) = f.str("rule") {
        put(&mut doc, &["rule", "name"], r);
    }
    if let Some(r) = f.str("reason") {
        put(&mut doc, &["event", "reason"], r);
    }
    if let Some(m) = f.str("reason_detail").or_else(|| f.str("detail")) {
        doc.insert("message".into(), m.into());
    }
    let bytes_in = f.u64("bytes_in");
    let bytes_out = f.u64("bytes_out");
    if let Some(b) = bytes_in {
        put(&mut doc, &["source", "bytes"], b);
    }
    if let Some(b) = bytes_out {
        put(&mut doc, &["destination", "bytes"], b);
    }
    if let (Some(a), Some(b)) = (bytes_in, bytes_out) {
        put(&mut doc, &["network", "bytes"], a.saturating_add(b));
    }
    if let Some(ms) = f.u64("duration_ms") {
        put(&mut doc, &["event", "duration"], ms.saturating_mul(1_000_000));
    }
    // `source` is `mesh-ca` on the CA's events: `service.name` says it.
    let _ = f.str("source");
    let rest = f.rest();
    if !rest.is_empty() {
        doc.insert("zt_mesh".into(), Value::Object(rest));
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Ca, Connection};

    #[test]
    fn connections_map_to_network_fields_with_nanosecond_durations() {
        let c = Connection {
            direction: "inbound",
            listener: "127.0.0.1:15443".into(),
            src_id: Some("spiffe://example.org/ns/a/sa/b".into()),
            dst_id: Some("spiffe://example.org/ns/c/sa/d".into()),
            src_addr: "127.0.0.1:40000".into(),
            dst_addr: Some("app.internal:8080".into()),
            decision: Some("allow"),
            rule: Some("allow[0]".into()),
            bytes_in: Some(5),
            bytes_out: Some(7),
            duration_ms: 12,
            tls_resumed: Some(false),
            ..Connection::default()
        };
        let v = map(&Event::connection(EventKind::Connection, Severity::Info, c).reason("closed", "EOF"));
        assert_eq!(v["event"]["duration"], 12_000_000);
        assert_eq!(v["event"]["category"], json!(["network"]));
        assert_eq!(
            (v["source"]["ip"].as_str(), v["source"]["port"].as_u64()),
            (Some("127.0.0.1"), Some(40000))
        );
        assert_eq!(v["destination"]["domain"], "app.internal");
        assert_eq!(
            v["tls"]["client"]["x509"]["alternative_names"],
            json!(["spiffe://example.org/ns/a/sa/b"])
        );
        assert_eq!(
            (v["tls"]["established"].as_bool(), v["tls"]["resumed"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(
            (v["rule"]["name"].as_str(), v["event"]["reason"].as_str()),
            (Some("allow[0]"), Some("closed"))
        );
        assert_eq!(v["zt_mesh"]["listener"], "127.0.0.1:15443");
        assert!(v.get("timestamp").is_none() && v["@timestamp"].is_string(), "{v}");
    }

    #[test]
    fn ca_events_keep_unknown_fields_in_the_custom_namespace() {
        let e = Event::ca(
            Severity::Info,
            Ca::CertIssued { spiffe_id: "spiffe://t/ns/a/sa/b".into(), serial: "ab".into(), via: "enroll" },
        );
        let v = map(&e);
        assert_eq!(v["labels"]["spiffe_id"], "spiffe://t/ns/a/sa/b");
        assert_eq!(
            (v["zt_mesh"]["serial"].as_str(), v["zt_mesh"]["via"].as_str()),
            (Some("ab"), Some("enroll"))
        );
        assert_eq!(v["event"]["category"], json!(["api", "iam"]));
        assert_eq!(v["observer"]["type"], "certificate-authority");
    }

    #[test]
    fn every_kind_is_categorized_with_types_its_categories_expect() {
        // ECS 9.4.0's expected event types per category (the categories this mapping uses).
        let expected = |c: &str| -> &[&str] {
            match c {
                "network" => {
                    &["access", "allowed", "connection", "denied", "end", "info", "protocol", "start"]
                }
                "authentication" => &["start", "end", "info"],
                "configuration" => &["access", "change", "creation", "deletion", "info"],
                "process" => &["access", "change", "end", "info", "start"],
                "iam" => &["admin", "change", "creation", "deletion", "group", "info", "user"],
                "api" => &[
                    "access", "admin", "allowed", "change", "creation", "deletion", "denied", "end", "info",
                    "start", "user",
                ],
                other => panic!("category {other} not expected"),
            }
        };
        for k in EventKind::ALL {
            let (cats, types, _) = categorize(k);
            for t in types {
                assert!(cats.iter().any(|c| expected(c).contains(t)), "{k}: {t} fits none of {cats:?}");
            }
        }
    }
}
