//! The CA server's own Prometheus metrics and probes, served on `--metrics-listen`
//! (loopback is the sensible choice; nothing there changes state): `/metrics`, `/live` and
//! `/ready` (the store answers and the server's own certificate is valid now). Names follow
//! the sidecar's rules: prefix `mesh_ca_`, base units, bounded labels (`via` is enroll|renew,
//! `reason` one of the API's fixed error codes, `route` a path of the API's route table or
//! `other`, `status` the HTTP status the API answered; never identities or serials). Series
//! whose labels are known at start are registered at zero; the exposition is in a stable
//! order, with the `process_*` series after it. Served on mesh-runtime's accept loop and
//! HTTP limits, at most 16 scrapers at once.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use mesh_runtime::exposition::{self, ProcessStats};
use mesh_runtime::http::HttpLimits;
use mesh_runtime::serve::{accept_loop, Budget, Tasks};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{OwnCertificate, Shared};

pub const REQUESTS: &str = "mesh_ca_requests_total";
pub const ISSUED: &str = "mesh_ca_certificates_issued_total";
pub const REFUSED: &str = "mesh_ca_requests_refused_total";
pub const ISSUE_DURATION: &str = "mesh_ca_issue_duration_seconds";
pub const BATCH_SIZE: &str = "mesh_ca_enroll_batch_size";
pub const AUTHORITY_EXPIRY: &str = "mesh_ca_authority_expiry_timestamp_seconds";
pub const BUILD_INFO: &str = "mesh_ca_build_info";

/// Every family, in the README's order (and the exposition's).
pub const ALL: [&str; 7] =
    [REQUESTS, ISSUED, REFUSED, ISSUE_DURATION, BATCH_SIZE, AUTHORITY_EXPIRY, BUILD_INFO];

/// The `route` of a request whose path is not in the route table.
pub const OTHER_ROUTE: &str = "other";

/// Every error code the API answers with, for `mesh_ca_requests_refused_total` at zero (a
/// test holds it to the codes `api.rs` passes to its `error` function).
pub const REFUSAL_CODES: [&str; 20] = [
    "rate_limited",
    "method_not_allowed",
    "not_found",
    "no_client_certificate",
    "body_timeout",
    "body_too_large",
    "bad_json",
    "bad_query",
    "token_rejected",
    "revoked",
    "expired",
    "refused",
    "ca_unavailable",
    "store_unavailable",
    "busy",
    "internal",
    "csr_too_large",
    "csr_malformed",
    "csr_bad_signature",
    "csr_weak_key",
];

/// An API request was answered: its route (a table path, or [`OTHER_ROUTE`]) and status.
pub fn request(route: &'static str, status: hyper::StatusCode) {
    counter!(REQUESTS, "route" => route, "status" => status.as_u16().to_string()).increment(1);
}

pub fn issued(via: &'static str) {
    counter!(ISSUED, "via" => via).increment(1);
}

pub fn refused(reason: &str) {
    counter!(REFUSED, "reason" => reason.to_owned()).increment(1);
}

/// How long one issued certificate took to sign and record (refusals are not timed).
pub fn issue_duration(d: Duration) {
    histogram!(ISSUE_DURATION).record(d.as_secs_f64());
}

pub fn batch_size(n: usize) {
    histogram!(BATCH_SIZE).record(n as f64);
}

pub fn authority_expiry(cert: &'static str, not_after: i64) {
    gauge!(AUTHORITY_EXPIRY, "cert" => cert).set(not_after as f64);
}

/// Installs the recorder (once per process), describes every metric and registers at zero
/// the series whose labels are known: each route of the table answered 200, each way of
/// issuing, each refusal code.
pub fn install(routes: &[&'static str]) -> Option<PrometheusHandle> {
    const SECONDS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    const BATCHES: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ISSUE_DURATION.into()), &SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCHES))
        .ok()?
        .install_recorder()
        .ok()?;
    describe_counter!(
        REQUESTS,
        "API requests answered, by route (a path of the API, or other) and HTTP status."
    );
    describe_counter!(ISSUED, "Certificates issued, by how they were asked for (enroll, renew).");
    describe_counter!(REFUSED, "API requests refused, by the error code returned.");
    describe_histogram!(
        ISSUE_DURATION,
        "Time to sign and durably record each issued certificate (for enrollments: its group-committed batch), in seconds; refusals are not timed."
    );
    describe_histogram!(BATCH_SIZE, "Enrollments committed together in one store transaction.");
    describe_gauge!(AUTHORITY_EXPIRY, "notAfter of the root and intermediate CA certificates, Unix seconds.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label says which mesh-ca is running.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for route in routes.iter().copied().chain([OTHER_ROUTE]) {
        counter!(REQUESTS, "route" => route, "status" => "200").increment(0);
    }
    for via in ["enroll", "renew"] {
        counter!(ISSUED, "via" => via).increment(0);
    }
    for code in REFUSAL_CODES {
        counter!(REFUSED, "reason" => code).increment(0);
    }
    let _ = histogram!(ISSUE_DURATION);
    let _ = histogram!(BATCH_SIZE);
    Some(handle)
}

/// The exposition: the families in [`ALL`]'s order, then `process_*`, read now.
fn render(handle: &PrometheusHandle) -> String {
    let mut text = exposition::ordered(&handle.render(), &ALL);
    text.push_str(&ProcessStats::read().render());
    text
}

/// What `/ready` looks at.
pub(super) struct Probe {
    pub shared: Arc<Shared>,
    pub own: Arc<OwnCertificate>,
}

/// How long `/ready` waits for the store.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Probe {
    /// Ready: the server's own certificate is valid now, and the store answers a read within
    /// [`STORE_PROBE_TIMEOUT`]. Otherwise why not.
    async fn ready(&self) -> Result<(), String> {
        let not_after = self.own.not_after.load(Ordering::Relaxed);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if not_after <= now {
            return Err(format!("the CA server's own certificate expired {}s ago", now - not_after));
        }
        let shared = self.shared.clone();
        let read = tokio::task::spawn_blocking(move || shared.authority.store().revocation_head());
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, read).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("the store cannot be read: {e}")),
            Ok(Err(_)) => Err("the store check failed".to_owned()),
            Err(_) => Err(format!("the store did not answer within {}s", STORE_PROBE_TIMEOUT.as_secs())),
        }
    }
}

/// Scrapers served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 16;
/// What each scrape connection may do: headers within 5 s and 16 KiB, closed after 30 s.
const LIMITS: HttpLimits = HttpLimits {
    header_read_timeout: Duration::from_secs(5),
    max_header_bytes: 16 * 1024,
    max_headers: 100,
    keep_alive: true,
    lifetime: Some(Duration::from_secs(30)),
};

/// Serves `GET /metrics`, `/live` and `/ready` until shutdown, on the shared accept loop, its
/// connections tracked in `tasks` (the server drains them with the API's).
pub(super) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    probe: Probe,
    tasks: Tasks,
    shutdown: CancellationToken,
    events: mesh_runtime::events::Events,
) {
    let probe = Arc::new(probe);
    let stop = shutdown.clone();
    accept_loop(
        listener,
        Budget::new(MAX_CONNECTIONS),
        tasks,
        shutdown,
        super::report("metrics", events),
        move |stream, _peer, slot| {
            let (handle, probe, stop) = (handle.clone(), probe.clone(), stop.clone());
            async move {
                let _slot = slot;
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handle, probe) = (handle.clone(), probe.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(&req, &handle, &probe).await) }
                    });
                LIMITS.serve(stream, &stop, service).await;
            }
        },
    )
    .await
}

async fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    handle: &PrometheusHandle,
    probe: &Probe,
) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, render(handle)),
        (&Method::GET, "/live") => (StatusCode::OK, "live\n".to_owned()),
        (&Method::GET, "/ready") => match probe.ready().await {
            Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found: try /metrics, /live or /ready\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let content_type = if req.uri().path() == "/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain; charset=utf-8"
    };
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET"));
    }
    resp
}

/// Binds the metrics listener; its address goes into the `ca.started` event.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((l, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes `api.rs` passes to `error(StatusCode::..., "code", ...)`, read from its source.
    fn codes_in_api_source() -> Vec<String> {
        let src = include_str!("api.rs");
        let mut codes = Vec::new();
        for (i, _) in src.match_indices("error(") {
            let rest = src[i + "error(".len()..].trim_start();
            let Some(rest) = rest.strip_prefix("StatusCode::") else { continue };
            let Some((_, after)) = rest.split_once(',') else { continue };
            let after = after.trim_start();
            if let Some(lit) = after.strip_prefix('"').and_then(|a| a.split_once('"')).map(|(c, _)| c) {
                codes.push(lit.to_owned());
            }
        }
        codes
    }

    #[test]
    fn every_refusal_code_of_the_api_is_registered_at_zero() {
        let codes = codes_in_api_source();
        assert!(codes.len() > 10, "the scan found the API's error calls: {codes:?}");
        for c in &codes {
            assert!(REFUSAL_CODES.contains(&c.as_str()), "{c} is not in REFUSAL_CODES");
        }
        use mesh_identity::csr::CsrError;
        for e in
            [CsrError::TooLarge, CsrError::Malformed, CsrError::BadSignature, CsrError::WeakOrUnsupportedKey]
        {
            assert!(REFUSAL_CODES.contains(&e.code()), "{}", e.code());
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        for name in ALL {
            assert!(name.starts_with("mesh_ca_"), "{name}");
        }
        let readme = include_str!("../../../README.md");
        for name in ALL {
            assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
        }
    }
}
