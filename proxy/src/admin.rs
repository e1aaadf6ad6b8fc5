//! The admin listener (HTTP/1.1, plaintext, meant for loopback): `/live` and `/ready` for
//! orchestrators, `/metrics` for Prometheus, `/identity` and `/config` for operators.
//!
//! Read-only: every answer is computed from state others own, nothing here changes it, and
//! only GET (and HEAD) are served. Bounded: at most `[limits] max_admin_connections` (64)
//! connections, a budget of its own that no other listener's flood touches, headers
//! within [`MAX_HEADER_BYTES`] and [`HEADER_TIMEOUT`], each connection closed after
//! [`CONNECTION_LIFETIME`] (the accept loop and the HTTP limits are mesh-runtime's, shared
//! with every other listener). No private key, token or key material is ever served: `/identity`
//! describes the certificate, `/config` shows paths, never file contents.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use mesh_runtime::http::HttpLimits;
use mesh_runtime::serve::{accept_loop, Budget};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::events::Sink;
use crate::plan::{IdentityPlan, Plan};
use crate::state::Shared;
use crate::tls::Resumption;

const MAX_HEADER_BYTES: usize = 16 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for keep-alive scrapes, short enough that no client holds a slot for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the admin listener serves besides the shared state.
pub struct Admin {
    /// Renders `/metrics`; `None` if this process could not install its recorder.
    pub metrics: Option<PrometheusHandle>,
    /// The effective configuration, rendered once at start (see [`config_json`]).
    pub config: Value,
    /// The policy file: while it is missing the sidecar denies everything and is not ready.
    pub policy_file: PathBuf,
}

/// What each admin connection may do (see the module doc).
const LIMITS: HttpLimits = HttpLimits {
    header_read_timeout: HEADER_TIMEOUT,
    max_header_bytes: MAX_HEADER_BYTES,
    max_headers: 100,
    keep_alive: true,
    lifetime: Some(CONNECTION_LIFETIME),
};

/// Serves the admin endpoints until shutdown, on the shared accept loop, within the admin
/// budget; connections are tracked with the others and closed gracefully at shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, admin: Arc<Admin>) {
    let name = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let budget = Budget::new(shared.limits.max_admin_connections);
    let tasks = shared.tasks.clone();
    let report = crate::listener::report(name, shared.events.clone());
    let stop = shared.shutdown.clone();
    accept_loop(listener, budget, tasks, stop, report, move |stream, _peer, slot| {
        let (shared, admin) = (shared.clone(), admin.clone());
        async move {
            let _slot = slot;
            let stop = shared.shutdown.clone();
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &shared, &admin);
                async move { Ok::<_, Infallible>(answer) }
            });
            LIMITS.serve(stream, &stop, service).await;
        }
    })
    .await
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.into())
}

fn json_response(v: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    respond(StatusCode::OK, "application/json", body)
}

fn answer(req: &Request<Incoming>, shared: &Shared, admin: &Admin) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET: the admin endpoints change nothing\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match readiness(shared, admin) {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        "/metrics" => match &admin.metrics {
            Some(h) => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(h, shared.tls().cred.not_after),
            ),
            None => {
                text(StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable: another recorder is installed\n")
            }
        },
        "/identity" => json_response(&identity(shared)),
        "/config" => json_response(&admin.config),
        _ => text(StatusCode::NOT_FOUND, "not found: try /live, /ready, /metrics, /identity or /config\n"),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Ready: a certificate valid now, the CA's revocation list loaded (in enrollment mode), and
/// a policy file (without one everything is denied).
fn readiness(shared: &Shared, admin: &Admin) -> Result<(), String> {
    let tls = shared.tls();
    let now = now();
    if tls.cred.not_after <= now {
        return Err(format!("the certificate expired at {}", rfc3339(tls.cred.not_after)));
    }
    if tls.cred.not_before > now {
        return Err(format!("the certificate is valid only from {}", rfc3339(tls.cred.not_before)));
    }
    if let Some(why) = shared.revocations.as_ref().and_then(|r| r.borrow().not_ready()) {
        return Err(why.to_string());
    }
    if !admin.policy_file.exists() {
        return Err(format!(
            "the policy file {} is missing: denying everything",
            admin.policy_file.display()
        ));
    }
    Ok(())
}

/// The current certificate, described; never the key.
fn identity(shared: &Shared) -> Value {
    let tls = shared.tls();
    let c = &tls.cred;
    let leaf = c.identity.chain.first();
    let issuer = leaf.and_then(|d| mesh_identity::profile::parse(d).ok()).map(|x| x.issuer().to_string());
    json!({
        "spiffe_id": c.id.to_string(),
        "trust_domain": c.id.trust_domain().to_string(),
        "zone": c.id.zone().as_str(),
        "workload": c.id.workload().as_str(),
        "serial": c.serial,
        "issuer": issuer,
        "not_before": rfc3339(c.not_before),
        "not_after": rfc3339(c.not_after),
        "seconds_left": (c.not_after - now()).max(0),
        "chain_length": c.identity.chain.len(),
    })
}

/// The effective configuration as JSON: every value the sidecar runs with, defaults filled in
/// and paths resolved. Files holding secrets (the key, the join token) are named, never read.
pub fn config_json(plan: &Plan) -> Value {
    let secret = |p: &std::path::Path| json!({ "path": p.display().to_string(), "contents": "[redacted]" });
    let identity = match &plan.identity {
        IdentityPlan::Files(f) => json!({
            "mode": "files",
            "cert": f.cert.display().to_string(),
            "key": secret(&f.key),
            "bundle": f.bundle.display().to_string(),
        }),
        IdentityPlan::Enroll { ca_address, ca_bundle, token_file } => json!({
            "mode": "enroll",
            "ca_address": ca_address,
            "ca_bundle": ca_bundle.display().to_string(),
            "token_file": secret(token_file),
        }),
    };
    let sinks: Vec<Value> = plan
        .sinks
        .iter()
        .map(|s| match s {
            Sink::Syslog(t) => json!({ "sink": s.to_string(), "facility": t.facility.name() }),
            Sink::Https(t) => json!({
                "sink": s.to_string(),
                "format": t.format.to_string(),
                "ca_bundle": t.roots_file.display().to_string(),
            }),
            _ => json!({ "sink": s.to_string() }),
        })
        .collect();
    let l = &plan.limits;
    json!({
        "policy": plan.policy.display().to_string(),
        "identity": identity,
        "inbound": plan.inbound.as_ref().map(|i| json!({ "listen": i.listen.to_string(), "forward": i.forward.to_string() })),
        "outbound": plan.outbound.iter().map(|o| json!({
            "listen": o.listen.to_string(), "connect": o.connect.to_string(), "server": o.server.to_string(),
        })).collect::<Vec<_>>(),
        "admin": plan.admin.map(|a| json!({ "listen": a.to_string() })),
        "events": { "sinks": sinks, "queue_size": plan.event_queue },
        "limits": {
            "handshake_timeout_seconds": l.handshake_timeout.as_secs_f64(),
            "connect_timeout_seconds": l.connect_timeout.as_secs_f64(),
            "idle_timeout_seconds": l.idle_timeout.as_secs_f64(),
            "drain_timeout_seconds": l.drain_timeout.as_secs_f64(),
            "max_connections": l.max_connections,
            "max_admin_connections": l.max_admin_connections,
            "max_pending": l.max_pending,
            "max_pending_per_source": l.max_pending_per_source,
        },
        "tls": { "resumption": plan.resumption == Resumption::Allowed },
    })
}
