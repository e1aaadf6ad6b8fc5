//! The CA server's own Prometheus metrics, served on `--metrics-listen` (loopback is the
//! sensible choice; nothing there changes state). Names follow the sidecar's rules: prefix
//! `mesh_ca_`, base units, bounded labels (`via` is enroll|renew, `reason` is one of
//! the API's fixed error codes; never identities or serials). Served on mesh-runtime's
//! accept loop and HTTP limits, at most 16 scrapers at once.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use mesh_runtime::http::HttpLimits;
use mesh_runtime::serve::{accept_loop, Budget, Tasks};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const ISSUED: &str = "mesh_ca_certificates_issued_total";
pub const REFUSED: &str = "mesh_ca_requests_refused_total";
pub const ISSUE_DURATION: &str = "mesh_ca_issue_duration_seconds";
pub const BATCH_SIZE: &str = "mesh_ca_enroll_batch_size";
pub const AUTHORITY_EXPIRY: &str = "mesh_ca_authority_expiry_timestamp_seconds";

pub fn issued(via: &'static str) {
    counter!(ISSUED, "via" => via).increment(1);
}

pub fn refused(reason: &str) {
    counter!(REFUSED, "reason" => reason.to_owned()).increment(1);
}

pub fn issue_duration(d: Duration) {
    histogram!(ISSUE_DURATION).record(d.as_secs_f64());
}

pub fn batch_size(n: usize) {
    histogram!(BATCH_SIZE).record(n as f64);
}

pub fn authority_expiry(cert: &'static str, not_after: i64) {
    gauge!(AUTHORITY_EXPIRY, "cert" => cert).set(not_after as f64);
}

/// Installs the recorder (once per process) and describes every metric.
pub fn install() -> Option<PrometheusHandle> {
    const SECONDS: [f64; 11] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    const BATCHES: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ISSUE_DURATION.into()), &SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCHES))
        .ok()?
        .install_recorder()
        .ok()?;
    describe_counter!(ISSUED, "Certificates issued, by how they were asked for (enroll, renew).");
    describe_counter!(REFUSED, "API requests refused, by the error code returned.");
    describe_histogram!(ISSUE_DURATION, "Time to sign and durably record a certificate, in seconds.");
    describe_histogram!(BATCH_SIZE, "Enrollments committed together in one store transaction.");
    describe_gauge!(AUTHORITY_EXPIRY, "notAfter of the root and intermediate CA certificates, Unix seconds.");
    Some(handle)
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

/// Serves `GET /metrics` until shutdown, on the shared accept loop, its connections tracked in
/// `tasks` (the server drains them with the API's).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    tasks: Tasks,
    shutdown: CancellationToken,
    events: mesh_runtime::events::Events,
) {
    let stop = shutdown.clone();
    accept_loop(
        listener,
        Budget::new(MAX_CONNECTIONS),
        tasks,
        shutdown,
        super::report("metrics", events),
        move |stream, _peer, slot| {
            let (handle, stop) = (handle.clone(), stop.clone());
            async move {
                let _slot = slot;
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&req, &handle)) }
                    });
                LIMITS.serve(stream, &stop, service).await;
            }
        },
    )
    .await
}

fn answer(req: &hyper::Request<hyper::body::Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, handle.render()),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found: try /metrics\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
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
