//! Events as OCSF [`OCSF_VERSION`] event classes, each with the class's required attributes:
//!
//! | class | kinds |
//! |---|---|
//! | Network Activity (4001, `security_control` profile) | `connection` (Close, or Reset; action Allowed), `policy.deny` (Refuse; Denied, disposition Blocked), `upstream.connect_failed` (Fail; Allowed), `listener.shed` / `ca.connections_shed` (Refuse; Denied, disposition Dropped), `listener.accept_failed` / `ca.accept_failed` (Fail) |
//! | Authentication (3002) | `tls.handshake_failed`, `tls.resumption_refused` (Logon, Failure; the peer's SPIFFE ID, when known, is `user.uid`), `token.used` / `token.rejected` (a join token presented: Logon, Success / Failure) |
//! | API Activity (6003) | the CA's `cert.issued` (Create), `cert.renewed` (Update), `cert.revoked` (Other: Revoke), `enroll.refused` (Create, Failure), `renew.refused` (Update, Failure) |
//! | Application Lifecycle (6002) | the rest: started (Start), stopping / stopped (Stop), reloads, rotations and renewals of the process's own certificate (Update), everything else Other with the event name as `activity_name` |
//!
//! A policy decision is Network Activity with `action_id` Allowed or Denied, not Authorize
//! Session (3003): OCSF defines 3003 as privileges or groups assigned to a user's new session
//! at logon, while the sidecar's decision is whether a connection between two workloads may
//! exist, which is what 4001's `action_id` / `disposition_id` (the `security_control`
//! profile) describe, beside the endpoints, traffic and the deciding rule
//! (`firewall_rule.name`).
//!
//! SPIFFE IDs are the endpoints' `uid`; the zt-mesh event name is `metadata.event_code`;
//! fields OCSF has no place for go in `unmapped`. `time` is milliseconds since the epoch,
//! `duration` milliseconds.

use serde_json::{json, Map, Value};

use super::format::{epoch_ms, put, Addr, Flat, PRODUCT, VERSION};
use super::{Event, EventKind, Severity};

/// The OCSF release the classes and attributes follow.
pub const OCSF_VERSION: &str = "1.5.0";

/// Whether a network activity was allowed, and what became of it.
#[derive(Clone, Copy)]
enum Action {
    /// Allowed (action 1, disposition 1).
    Allowed,
    /// Denied (action 2), disposition Blocked (2).
    Blocked,
    /// Denied (action 2), disposition Dropped (6): closed unread, over a budget.
    Dropped,
    /// No decision was made.
    None,
}

/// What a kind is in OCSF terms.
#[derive(Clone, Copy)]
enum Class {
    Network { activity: u32, action: Action, ok: bool },
    Auth { ok: bool, protocol: &'static str },
    Api { activity: u32, operation: &'static str, ok: bool },
    App { activity: u32, ok: bool },
}

fn classify(kind: EventKind) -> Class {
    use Class::*;
    use EventKind as K;
    const OTHER: u32 = 99;
    match kind {
        // Close (2); a reset connection is told apart below.
        K::Connection => Network { activity: 2, action: Action::Allowed, ok: true },
        K::PolicyDeny => Network { activity: 5, action: Action::Blocked, ok: false },
        K::UpstreamConnectFailed => Network { activity: 4, action: Action::Allowed, ok: false },
        K::ListenerShed | K::CaConnectionsShed => Network { activity: 5, action: Action::Dropped, ok: false },
        K::ListenerAcceptFailed | K::CaAcceptFailed => {
            Network { activity: 4, action: Action::None, ok: false }
        }
        K::TlsHandshakeFailed | K::CaTlsResumptionRefused => Auth { ok: false, protocol: "mTLS" },
        K::CaTokenUsed => Auth { ok: true, protocol: "join token" },
        K::CaTokenRejected => Auth { ok: false, protocol: "join token" },
        K::CaCertIssued => Api { activity: 1, operation: "IssueCertificate", ok: true },
        K::CaCertRenewed => Api { activity: 3, operation: "RenewCertificate", ok: true },
        K::CaCertRevoked => Api { activity: OTHER, operation: "RevokeCertificate", ok: true },
        K::CaEnrollRefused => Api { activity: 1, operation: "Enroll", ok: false },
        K::CaRenewRefused => Api { activity: 3, operation: "RenewCertificate", ok: false },
        K::ProxyStarted | K::CaStarted => App { activity: 3, ok: true },
        K::ProxyStopping | K::CaStopped => App { activity: 4, ok: true },
        K::PolicyReloaded
        | K::CertRotated
        | K::CertEnrolled
        | K::CertRenewed
        | K::CaOwnCertificateRenewed => App { activity: 8, ok: true },
        K::RevocationsLoaded => App { activity: OTHER, ok: true },
        K::CertRevoked | K::CaOwnCertificateRevoked => App { activity: OTHER, ok: true },
        K::CertRevokedSelf => App { activity: OTHER, ok: false },
        K::ProxyDrainTimeout
        | K::ConfigSecretExposed
        | K::PolicyReloadFailed
        | K::CertReloadFailed
        | K::CertEnrollFailed
        | K::CertRenewFailed
        | K::CertExpired
        | K::RevocationsUnavailable
        | K::RevocationsPollFailed
        | K::EventsDropped
        | K::CaRenewOwnFailed => App { activity: OTHER, ok: false },
    }
}

fn network_activity(id: u32) -> &'static str {
    match id {
        1 => "Open",
        2 => "Close",
        3 => "Reset",
        4 => "Fail",
        5 => "Refuse",
        _ => "Other",
    }
}

fn endpoint(raw: Option<&str>, uid: Option<String>) -> Option<Value> {
    let mut ep = Map::new();
    if let Some(raw) = raw {
        let a = Addr::parse(raw);
        match (a.ip, a.host) {
            (Some(ip), _) => put(&mut ep, &["ip"], ip.to_string()),
            (None, Some(h)) if a.port.is_some() => put(&mut ep, &["hostname"], h),
            (None, Some(name)) => put(&mut ep, &["name"], name),
            (None, None) => {}
        }
        if let Some(p) = a.port {
            put(&mut ep, &["port"], p);
        }
    }
    if let Some(uid) = uid {
        put(&mut ep, &["uid"], uid);
    }
    (!ep.is_empty()).then_some(Value::Object(ep))
}

/// The peer as an OCSF user: its SPIFFE ID when it proved one.
fn user(id: Option<String>) -> Value {
    match id {
        Some(id) => json!({ "uid": id.clone(), "name": id, "type_id": 99, "type": "Workload" }),
        None => json!({ "name": "unknown", "type_id": 0, "type": "Unknown" }),
    }
}

/// `e` as one OCSF event.
pub(super) fn map(e: &Event) -> Value {
    let program = crate::output::program();
    let mut f = Flat::of(e);
    let class = classify(e.event);
    let (class_uid, class_name, category_uid, category_name): (u32, _, u32, _) = match class {
        Class::Network { .. } => (4001, "Network Activity", 4, "Network Activity"),
        Class::Auth { .. } => (3002, "Authentication", 3, "Identity & Access Management"),
        Class::Api { .. } => (6003, "API Activity", 6, "Application Activity"),
        Class::App { .. } => (6002, "Application Lifecycle", 6, "Application Activity"),
    };
    let reason = f.str("reason");
    let (activity_id, activity_name, ok): (u32, String, bool) = match class {
        Class::Network { activity, ok, .. } => {
            let activity = if e.event == EventKind::Connection && reason.as_deref() == Some("reset") {
                3
            } else {
                activity
            };
            (activity, network_activity(activity).to_owned(), ok)
        }
        Class::Auth { ok, .. } => (1, "Logon".to_owned(), ok),
        Class::Api { activity, ok, .. } => {
            let name = match activity {
                1 => "Create",
                3 => "Update",
                _ => "Revoke",
            };
            (activity, name.to_owned(), ok)
        }
        Class::App { activity, ok } => {
            let name = match activity {
                3 => "Start".to_owned(),
                4 => "Stop".to_owned(),
                8 => "Update".to_owned(),
                _ => e.event.as_str().to_owned(),
            };
            (activity, name, ok)
        }
    };
    let (severity_id, severity) = match e.severity {
        Severity::Info => (1, "Informational"),
        Severity::Warning => (3, "Medium"),
        Severity::Error => (4, "High"),
    };
    let mut doc = match json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": u64::from(class_uid) * 100 + u64::from(activity_id),
        "severity_id": severity_id,
        "severity": severity,
        "time": epoch_ms(e.timestamp),
        "status_id": if ok { 1 } else { 2 },
        "status": if ok { "Success" } else { "Failure" },
        "metadata": {
            "version": OCSF_VERSION,
            "event_code": e.event.as_str(),
            "log_provider": program,
            "product": {
                "name": PRODUCT,
                "vendor_name": PRODUCT,
                "version": VERSION,
                "feature": { "name": program },
            },
        },
    }) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Some(r) = reason {
        doc.insert("status_code".into(), r.into());
    }
    if let Some(d) = f.str("reason_detail") {
        doc.insert("status_detail".into(), d.clone().into());
        doc.insert("message".into(), d.into());
    } else if let Some(d) = f.str("detail") {
        doc.insert("message".into(), d.into());
    }
    let src_id = f.str("src_id");
    let dst_id = f.str("dst_id");
    let spiffe_id = f.str("spiffe_id").filter(|s| s != "-");
    let src_addr = f.str("src_addr").or_else(|| f.str("peer")).or_else(|| f.str("latest_source"));
    let dst_addr = f.str("dst_addr");
    let resumed = f.bool("tls_resumed");
    match class {
        Class::Network { action, .. } => {
            put(&mut doc, &["metadata", "profiles"], json!(["security_control"]));
            let listener = f.str("listener");
            if let Some(ep) = endpoint(src_addr.as_deref(), src_id) {
                doc.insert("src_endpoint".into(), ep);
            }
            let dst = endpoint(dst_addr.as_deref().or(listener.as_deref()), dst_id)
                .or_else(|| Some(json!({ "svc_name": program })));
            if let Some(ep) = dst {
                doc.insert("dst_endpoint".into(), ep);
            }
            if dst_addr.is_some() {
                if let Some(l) = listener {
                    put(&mut doc, &["unmapped", "listener"], l);
                }
            }
            let (action_id, disposition_id) = match action {
                Action::Allowed => (Some((1, "Allowed")), Some((1, "Allowed"))),
                Action::Blocked => (Some((2, "Denied")), Some((2, "Blocked"))),
                Action::Dropped => (Some((2, "Denied")), Some((6, "Dropped"))),
                Action::None => (None, None),
            };
            if let Some((id, name)) = action_id {
                doc.insert("action_id".into(), id.into());
                doc.insert("action".into(), name.into());
            }
            if let Some((id, name)) = disposition_id {
                doc.insert("disposition_id".into(), id.into());
                doc.insert("disposition".into(), name.into());
            }
            if let Some(rule) = f.str("rule") {
                put(&mut doc, &["firewall_rule", "name"], rule);
            }
            if let Some(d) = f.str("direction") {
                let id = match d.as_str() {
                    "inbound" => 1,
                    "outbound" => 2,
                    _ => 0,
                };
                doc.insert(
                    "connection_info".into(),
                    json!({ "direction_id": id, "direction": d, "protocol_name": "tcp", "protocol_num": 6 }),
                );
            }
            // Ours are counted from the caller's side: `bytes_in` went from source to destination.
            let (sent, received) = (f.u64("bytes_in"), f.u64("bytes_out"));
            if let Some(b) = sent {
                put(&mut doc, &["traffic", "bytes_out"], b);
            }
            if let Some(b) = received {
                put(&mut doc, &["traffic", "bytes_in"], b);
            }
            if let (Some(a), Some(b)) = (sent, received) {
                put(&mut doc, &["traffic", "bytes"], a.saturating_add(b));
            }
            if let Some(ms) = f.u64("duration_ms") {
                doc.insert("duration".into(), ms.into());
            }
            if let Some(n) = f.u64("count") {
                doc.insert("count".into(), n.into());
            }
            if let Some(r) = resumed {
                // The only version sidecars speak to each other.
                doc.insert("tls".into(), json!({ "version": "1.3" }));
                put(&mut doc, &["unmapped", "tls_resumed"], r);
            }
        }
        Class::Auth { protocol, .. } => {
            doc.insert("user".into(), user(src_id.or(spiffe_id)));
            doc.insert("auth_protocol_id".into(), 99.into());
            doc.insert("auth_protocol".into(), protocol.into());
            doc.insert("is_remote".into(), true.into());
            doc.insert("service".into(), json!({ "name": program }));
            if let Some(ep) = endpoint(src_addr.as_deref(), None) {
                doc.insert("src_endpoint".into(), ep);
            }
            let listener = f.str("listener");
            if let Some(ep) = endpoint(dst_addr.as_deref().or(listener.as_deref()), dst_id) {
                doc.insert("dst_endpoint".into(), ep);
            }
            if let Some(d) = f.str("direction") {
                put(&mut doc, &["unmapped", "direction"], d);
            }
            if let Some(ms) = f.u64("duration_ms") {
                doc.insert("duration".into(), ms.into());
            }
        }
        Class::Api { operation, .. } => {
            let actor = match spiffe_id.or(src_id) {
                Some(id) => json!({ "user": user(Some(id)), "app_name": program }),
                None => json!({ "app_name": program }),
            };
            doc.insert("actor".into(), actor);
            doc.insert("api".into(), json!({ "operation": operation, "service": { "name": program } }));
            let via = f.str("via");
            let src = endpoint(src_addr.as_deref(), None)
                .unwrap_or_else(|| json!({ "svc_name": via.clone().unwrap_or_else(|| program.to_owned()) }));
            doc.insert("src_endpoint".into(), src);
            if let Some(v) = via {
                put(&mut doc, &["unmapped", "via"], v);
            }
        }
        Class::App { .. } => {
            doc.insert("app".into(), json!({ "name": program, "vendor_name": PRODUCT, "version": VERSION }));
            for (k, v) in [("src_id", src_id), ("dst_id", dst_id), ("spiffe_id", spiffe_id)] {
                if let Some(v) = v {
                    put(&mut doc, &["unmapped", k], v);
                }
            }
            if let Some(n) = f.u64("count") {
                doc.insert("count".into(), n.into());
            }
        }
    }
    let _ = f.str("source");
    for (k, v) in f.rest() {
        put(&mut doc, &["unmapped", &k], v);
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Ca, Connection};

    #[test]
    fn a_denied_connection_is_network_activity_refused_and_blocked() {
        let c = Connection {
            direction: "outbound",
            listener: "127.0.0.1:15001".into(),
            src_id: Some("spiffe://t/ns/a/sa/b".into()),
            dst_id: Some("spiffe://t/ns/c/sa/d".into()),
            src_addr: "127.0.0.1:4000".into(),
            decision: Some("deny"),
            ..Connection::default()
        };
        let v =
            map(&Event::connection(EventKind::PolicyDeny, Severity::Warning, c).reason("no_rule", "no rule"));
        assert_eq!((v["class_uid"].as_u64(), v["type_uid"].as_u64()), (Some(4001), Some(400105)));
        assert_eq!((v["action_id"].as_u64(), v["disposition_id"].as_u64()), (Some(2), Some(2)));
        assert_eq!(v["src_endpoint"]["uid"], "spiffe://t/ns/a/sa/b");
        assert_eq!(v["metadata"]["profiles"], json!(["security_control"]));
        assert_eq!(
            (v["connection_info"]["direction_id"].as_u64(), v["status_code"].as_str()),
            (Some(2), Some("no_rule"))
        );
        assert!(v["time"].is_i64() && v.get("tls").is_none(), "{v}");
    }

    #[test]
    fn the_cas_issuance_is_api_activity() {
        let v = map(&Event::ca(
            Severity::Info,
            Ca::CertIssued { spiffe_id: "spiffe://t/ns/a/sa/b".into(), serial: "ab".into(), via: "enroll" },
        ));
        assert_eq!((v["class_uid"].as_u64(), v["activity_id"].as_u64()), (Some(6003), Some(1)));
        assert_eq!(v["actor"]["user"]["uid"], "spiffe://t/ns/a/sa/b");
        assert_eq!(v["unmapped"]["serial"], "ab");
    }

    #[test]
    fn type_uid_is_class_times_100_plus_activity_for_every_kind() {
        for k in EventKind::ALL {
            let v = map(&Event::new(k, Severity::Info));
            let (class, activity) =
                (v["class_uid"].as_u64().unwrap_or(0), v["activity_id"].as_u64().unwrap_or(0));
            assert_eq!(v["type_uid"].as_u64(), Some(class * 100 + activity), "{k}");
            assert_eq!(v["category_uid"].as_u64(), Some(class / 1000), "{k}");
        }
    }
}
