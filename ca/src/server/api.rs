//! The CA API, version 1. JSON in and out; every refusal is a 4xx with
//! `{"error": <stable code>, "reason": <sentence>}`.
//!
//! - `POST /v1/enroll`  `{"token", "csr"}` -> a certificate for the token's identity
//! - `POST /v1/renew`   `{"csr"}` over mutual TLS -> a new certificate for the caller's identity
//! - `GET  /v1/bundle`  -> the trust bundle
//! - `GET  /v1/revocations?since=N&wait=S&limit=L` -> one page of at most L (<= 1,000, the
//!   default) entries after N, compacted (serial revocations of expired certificates left out)
//!   and `more: true` while further pages follow; waits up to S (<= 60) seconds for one when
//!   there is none yet, for callers with a client certificate only (an anonymous `wait` is
//!   answered at once), within the long-poll budget (else 503 `busy`: retry with backoff)
//!
//! Requests are routed by one table ([`ROUTES`]: method, path, who may call): an unknown path
//! is 404 `not_found`, a known path with another method 405 `method_not_allowed` with `Allow`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use mesh_config::SpiffeId;
use serde::{Deserialize, Serialize};

use mesh_identity::api::{
    BundleBody, EnrollRequest, ErrorBody, IssuedBody, RenewRequest, RevocationJson, RevocationsBody,
};

use mesh_runtime::events::{Ca, Event, Severity};

use super::Shared;
use crate::authority::{EnrollError, EnrollJob, IssuedLeaf};
use crate::store::Revocation;
use mesh_identity::token::Token;

/// Largest request body: a CSR and a token are well under this.
const MAX_BODY: usize = 64 * 1024;
/// Time to read a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest long-poll, seconds.
pub const MAX_WAIT: u64 = 60;
/// Long-polls waiting at once, in total and per caller identity; a sidecar needs one.
pub const MAX_LONG_POLLS: usize = 256;
pub const MAX_LONG_POLLS_PER_ID: usize = 4;
/// Entries per revocation page, at most and by default.
pub const MAX_PAGE_ENTRIES: usize = 1_000;
/// Bytes of entries per page, at most: well under what clients accept (1 MiB), whatever the
/// entries hold.
const MAX_PAGE_BYTES: usize = 512 * 1024;

impl From<Revocation> for RevocationJson {
    fn from(r: Revocation) -> Self {
        // A reinstatement names its identity in its own field only (see RevocationJson).
        let (spiffe_id, reinstated) = match r.action {
            crate::store::RevocationAction::Revoke => (r.spiffe_id, None),
            crate::store::RevocationAction::Reinstate => (None, r.spiffe_id),
        };
        Self {
            seq: r.seq,
            serial: r.serial,
            spiffe_id,
            reason: mesh_identity::profile::truncate(&r.reason).to_owned(),
            revoked_at: r.revoked_at,
            reinstated,
        }
    }
}

/// A caller that presented a certificate the handshake verified (chain, profile, not revoked).
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: SpiffeId,
    pub serial: mesh_identity::Serial,
}

impl From<mesh_identity::tls::Peer> for Caller {
    fn from(p: mesh_identity::tls::Peer) -> Self {
        Self { id: p.id, serial: p.serial }
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Response<Full<Bytes>> {
    super::metrics::refused(code);
    json(status, &ErrorBody { error: code.into(), reason: reason.into() })
}

/// The methods the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
}

impl Verb {
    fn of(m: &Method) -> Option<Self> {
        match *m {
            Method::GET => Some(Self::Get),
            Method::POST => Some(Self::Post),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone: a caller with a certificate is told apart by the handler, if it cares.
    Anyone,
    /// Only a caller whose client certificate the handshake verified; anyone else is
    /// answered 401 `no_client_certificate` with this reason.
    ClientCertificate(&'static str),
}

/// What a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Enroll,
    Renew,
    Bundle,
    Revocations,
}

/// One line of the API's table.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    verb: Verb,
    path: &'static str,
    access: Access,
    endpoint: Endpoint,
}

/// Every route. An admin route is one more line here (with its access rule) and one more
/// [`Endpoint`]; unknown paths are 404, a known path with another method 405 with `Allow`.
const ROUTES: &[Route] = &[
    Route { verb: Verb::Post, path: "/v1/enroll", access: Access::Anyone, endpoint: Endpoint::Enroll },
    Route {
        verb: Verb::Post,
        path: "/v1/renew",
        access: Access::ClientCertificate("renewal needs the current certificate over mutual TLS"),
        endpoint: Endpoint::Renew,
    },
    Route { verb: Verb::Get, path: "/v1/bundle", access: Access::Anyone, endpoint: Endpoint::Bundle },
    Route {
        verb: Verb::Get,
        path: "/v1/revocations",
        access: Access::Anyone,
        endpoint: Endpoint::Revocations,
    },
];

/// Where a request goes: a route, or why none.
#[derive(Debug, PartialEq, Eq)]
enum Routed<'a> {
    Found(&'a Route),
    /// The path is known, the method is not one of these.
    WrongMethod(Vec<Verb>),
    NotFound,
}

fn route<'a>(table: &'a [Route], method: &Method, path: &str) -> Routed<'a> {
    let verb = Verb::of(method);
    let mut allowed = Vec::new();
    for r in table.iter().filter(|r| r.path == path) {
        if Some(r.verb) == verb {
            return Routed::Found(r);
        }
        allowed.push(r.verb);
    }
    if allowed.is_empty() {
        Routed::NotFound
    } else {
        Routed::WrongMethod(allowed)
    }
}

/// The paths of the route table, for the metrics' `route` label.
pub(super) fn route_paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = ROUTES.iter().map(|r| r.path).collect();
    paths.dedup();
    paths
}

/// The `route` label of a request: its path if the table knows it (whatever the method),
/// else `other`; never the caller's own text.
fn route_label(path: &str) -> &'static str {
    ROUTES.iter().find(|r| r.path == path).map_or(super::metrics::OTHER_ROUTE, |r| r.path)
}

/// Answers one API request and counts it by route and status.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    caller: Option<Caller>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let route = route_label(req.uri().path());
    let resp = answer(shared, peer, caller, req).await;
    super::metrics::request(route, resp.status());
    resp
}

async fn answer(
    shared: Arc<Shared>,
    peer: SocketAddr,
    caller: Option<Caller>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !shared.limiter.allow(peer.ip()) {
        return error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests from this address");
    }
    let r = match route(ROUTES, req.method(), req.uri().path()) {
        Routed::Found(r) => r,
        Routed::WrongMethod(allowed) => {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the API reference in the README",
            );
            let allow = allowed.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(hyper::header::ALLOW, v);
            }
            return resp;
        }
        Routed::NotFound => {
            return error(StatusCode::NOT_FOUND, "not_found", "unknown path; the API lives under /v1/")
        }
    };
    let caller = match (r.access, caller) {
        (Access::ClientCertificate(why), None) => {
            return error(StatusCode::UNAUTHORIZED, "no_client_certificate", why);
        }
        (_, caller) => caller,
    };
    match r.endpoint {
        Endpoint::Enroll => match body::<EnrollRequest>(req).await {
            Ok(b) => enroll(shared, peer, b).await,
            Err(resp) => resp,
        },
        Endpoint::Renew => {
            // The table requires a certificate here; without one the request never gets this far.
            let Some(caller) = caller else {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "no_client_certificate",
                    "a client certificate is needed",
                );
            };
            match body::<RenewRequest>(req).await {
                Ok(b) => renew(shared, caller, b).await,
                Err(resp) => resp,
            }
        }
        Endpoint::Bundle => {
            json(StatusCode::OK, &BundleBody { sequence: 1, bundle: shared.authority.dir().bundle_pem() })
        }
        Endpoint::Revocations => {
            let query = req.uri().query().unwrap_or_default();
            revocations(shared, caller.as_ref(), query).await
        }
    }
}

/// Reads a bounded JSON body within the time limit.
async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Full<Bytes>>> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            return Err(error(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body was too slow"))
        }
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("bodies are limited to {MAX_BODY} bytes"),
            ))
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(StatusCode::BAD_REQUEST, "bad_json", format!("the body is not the expected JSON: {e}"))
    })
}

fn issued(shared: &Shared, leaf: &IssuedLeaf) -> IssuedBody {
    let chain =
        mesh_identity::pem::cert(&leaf.der) + &mesh_identity::pem::cert(&shared.authority.dir().intermediate);
    IssuedBody {
        spiffe_id: leaf.id.to_string(),
        serial: leaf.serial.clone(),
        not_after: leaf.not_after.unix_timestamp(),
        cert_chain: chain,
        bundle: shared.authority.dir().bundle_pem(),
    }
}

fn refusal(e: &EnrollError) -> Response<Full<Bytes>> {
    match e {
        EnrollError::Csr(c) => error(StatusCode::BAD_REQUEST, c.code(), c.to_string()),
        EnrollError::Token(_) => {
            error(StatusCode::FORBIDDEN, "token_rejected", "the join token is not valid")
        }
        EnrollError::Revoked => error(StatusCode::FORBIDDEN, "revoked", e.to_string()),
        EnrollError::Expired => error(StatusCode::FORBIDDEN, "expired", e.to_string()),
        EnrollError::Ca(crate::CaError::Refused(r)) => error(StatusCode::FORBIDDEN, "refused", r.clone()),
        EnrollError::Ca(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ca_unavailable",
            "the CA could not record the certificate; nothing was issued",
        ),
    }
}

async fn enroll(shared: Arc<Shared>, peer: SocketAddr, b: EnrollRequest) -> Response<Full<Bytes>> {
    let Some(token) = Token::from_presented(&b.token) else {
        let what = Ca::TokenRejected { peer: peer.to_string(), reason: "malformed".into() };
        shared.events.emit(Event::ca(Severity::Warning, what));
        return error(StatusCode::FORBIDDEN, "token_rejected", "the join token is not valid");
    };
    // The CSR is checked here, on any core and outside the store's lock; the batcher does
    // only what must be serial: spend the token, sign, record.
    let public_key = match mesh_identity::csr::public_key(b.csr.as_bytes()) {
        Ok(k) => k,
        Err(e) => {
            let what = Ca::EnrollRefused { peer: peer.to_string(), reason: e.to_string() };
            shared.events.emit(Event::ca(Severity::Warning, what));
            return refusal(&EnrollError::Csr(e));
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = EnrollJob { token, public_key, ttl: shared.cert_ttl, actor: format!("enroll from {peer}") };
    if shared.enroll_queue.try_send((job, reply)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many enrollments in flight; retry shortly",
        );
    }
    match answer.await {
        Ok(Ok(leaf)) => {
            super::metrics::issued("enroll");
            let used = Ca::TokenUsed { peer: peer.to_string(), spiffe_id: leaf.id.to_string() };
            shared.events.emit(Event::ca(Severity::Info, used));
            let issued_leaf = Ca::CertIssued {
                spiffe_id: leaf.id.to_string(),
                serial: leaf.serial.to_string(),
                via: "enroll",
            };
            shared.events.emit(Event::ca(Severity::Info, issued_leaf));
            json(StatusCode::OK, &issued(&shared, &leaf))
        }
        Ok(Err(e)) => {
            let why = match &e {
                EnrollError::Token(r) => r.as_str().to_owned(),
                EnrollError::Revoked => crate::store::TokenRejection::IdentityRevoked.as_str().to_owned(),
                other => other.to_string(),
            };
            let what = Ca::TokenRejected { peer: peer.to_string(), reason: why };
            shared.events.emit(Event::ca(Severity::Warning, what));
            refusal(&e)
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request failed"),
    }
}

/// An enrollment waiting for the batcher, and where its answer goes.
pub type QueuedEnroll = (EnrollJob, tokio::sync::oneshot::Sender<Result<IssuedLeaf, EnrollError>>);

/// Group commit: takes whatever enrollments are queued (up to `MAX_BATCH`) and runs them as
/// one store transaction. Under load batches grow by themselves while the previous one syncs.
pub async fn batcher(shared: Arc<Shared>, mut queue: tokio::sync::mpsc::Receiver<QueuedEnroll>) {
    const MAX_BATCH: usize = 128;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let (jobs, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let sh = shared.clone();
        super::metrics::batch_size(jobs.len());
        let started = std::time::Instant::now();
        let results = tokio::task::spawn_blocking(move || sh.authority.enroll_batch(jobs)).await;
        let took = started.elapsed();
        match results {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // Each certificate the batch issued took the batch's time; refusals are not timed.
                    if result.is_ok() {
                        super::metrics::issue_duration(took);
                    }
                    let _ = reply.send(result);
                }
            }
            // A panic in the batch: every waiter gets an error (its sender drops); nothing was
            // committed, so nothing was handed out.
            Err(_) => drop(replies),
        }
    }
}

async fn renew(shared: Arc<Shared>, caller: Caller, b: RenewRequest) -> Response<Full<Bytes>> {
    let sh = shared.clone();
    let c = caller.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        sh.authority.renew(&c.id, &c.serial, b.csr.as_bytes(), sh.cert_ttl, &format!("renew by {}", c.id))
    })
    .await;
    match result {
        Ok(Ok(leaf)) => {
            super::metrics::issue_duration(started.elapsed());
            super::metrics::issued("renew");
            let what = Ca::CertRenewed {
                spiffe_id: leaf.id.to_string(),
                serial: leaf.serial.to_string(),
                previous_serial: caller.serial.to_string(),
            };
            shared.events.emit(Event::ca(Severity::Info, what));
            json(StatusCode::OK, &issued(&shared, &leaf))
        }
        Ok(Err(e)) => {
            let what = Ca::RenewRefused { spiffe_id: caller.id.to_string(), reason: e.to_string() };
            shared.events.emit(Event::ca(Severity::Warning, what));
            refusal(&e)
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request failed"),
    }
}

async fn revocations(shared: Arc<Shared>, caller: Option<&Caller>, query: &str) -> Response<Full<Bytes>> {
    let mut since = 0i64;
    let mut wait = 0u64;
    let mut limit = MAX_PAGE_ENTRIES;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", v)) => match v.parse() {
                Ok(n) => since = n,
                Err(_) => return error(StatusCode::BAD_REQUEST, "bad_query", "since must be an integer"),
            },
            Some(("wait", v)) => match v.parse::<u64>() {
                Ok(n) => wait = n.min(MAX_WAIT),
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, "bad_query", "wait must be a number of seconds")
                }
            },
            Some(("limit", v)) => match v.parse::<usize>() {
                Ok(n) if n > 0 => limit = n.min(MAX_PAGE_ENTRIES),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        format!("limit must be a number of entries from 1 to {MAX_PAGE_ENTRIES}"),
                    )
                }
            },
            _ => return error(StatusCode::BAD_REQUEST, "bad_query", "known parameters: since, wait, limit"),
        }
    }
    let mut seq = shared.revocation_seq.clone();
    // Only a caller with a certificate waits, and only within the long-poll budget: an
    // anonymous caller holding connections open for a minute each could starve everyone.
    if let (Some(caller), true) = (caller, *seq.borrow() <= since && wait > 0) {
        let Some(_waiting) = shared.long_polls.try_hold(caller.id.clone()) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many long-polls waiting; retry with backoff",
            );
        };
        // A server shutting down answers at once with what it has: its drain is not held up.
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(wait), seq.wait_for(|s| *s > since)) => {}
            _ = shared.shutdown.cancelled() => {}
        }
    }
    let sh = shared.clone();
    // Compaction (expired certificates' entries left out) follows the authority's clock.
    let now = shared.authority.clock().unix();
    match tokio::task::spawn_blocking(move || sh.authority.store().revocation_page(since, now, limit)).await {
        Ok(Ok(page)) => json(StatusCode::OK, &page_body(page)),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the revocation log could not be read",
        ),
    }
}

/// The answer for a page, cut short (with `more`) where its entries pass [`MAX_PAGE_BYTES`].
fn page_body(page: crate::store::RevocationPage) -> RevocationsBody {
    let (mut sequence, mut more) = (page.sequence, page.more);
    let mut revoked: Vec<RevocationJson> = Vec::with_capacity(page.entries.len());
    let mut bytes = 0;
    for r in page.entries {
        let entry = RevocationJson::from(r);
        bytes += serde_json::to_vec(&entry).map(|v| v.len() + 1).unwrap_or(0);
        if let Some(last) = revoked.last().filter(|_| bytes > MAX_PAGE_BYTES) {
            // Cut here: the next page starts after the last entry served.
            (sequence, more) = (last.seq, true);
            break;
        }
        revoked.push(entry);
    }
    RevocationsBody { sequence, revoked, more }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Revocation, RevocationPage};

    #[test]
    fn the_route_table_finds_routes_and_says_which_methods_a_known_path_takes() {
        let found = |m: Method, p| match route(ROUTES, &m, p) {
            Routed::Found(r) => Some(r.endpoint),
            _ => None,
        };
        assert_eq!(found(Method::POST, "/v1/enroll"), Some(Endpoint::Enroll));
        assert_eq!(found(Method::POST, "/v1/renew"), Some(Endpoint::Renew));
        assert_eq!(found(Method::GET, "/v1/bundle"), Some(Endpoint::Bundle));
        assert_eq!(found(Method::GET, "/v1/revocations"), Some(Endpoint::Revocations));
        assert_eq!(route(ROUTES, &Method::GET, "/v1/enroll"), Routed::WrongMethod(vec![Verb::Post]));
        assert_eq!(route(ROUTES, &Method::DELETE, "/v1/bundle"), Routed::WrongMethod(vec![Verb::Get]));
        assert_eq!(route(ROUTES, &Method::HEAD, "/v1/bundle"), Routed::WrongMethod(vec![Verb::Get]));
        assert_eq!(route(ROUTES, &Method::GET, "/v1/enroll/"), Routed::NotFound, "exact paths only");
        assert_eq!(route(ROUTES, &Method::GET, "/"), Routed::NotFound);
        // Renewal is the one route that needs a client certificate today.
        let needs: Vec<_> = ROUTES
            .iter()
            .filter(|r| matches!(r.access, Access::ClientCertificate(_)))
            .map(|r| r.path)
            .collect();
        assert_eq!(needs, ["/v1/renew"]);
        // One line per (method, path): a duplicate would shadow the second.
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(ROUTES[i + 1..].iter().all(|b| (a.verb, a.path) != (b.verb, b.path)), "{a:?}");
        }
    }

    #[test]
    fn a_page_of_large_entries_is_cut_by_bytes_and_says_more() {
        let big = |seq| Revocation {
            seq,
            serial: None,
            spiffe_id: Some(format!("spiffe://example.org/ns/{}/sa/w", "z".repeat(63))),
            reason: "\u{1}".repeat(4096),
            revoked_at: 0,
            action: crate::store::RevocationAction::Revoke,
        };
        let page = RevocationPage { entries: (1..=1000).map(big).collect(), sequence: 1000, more: false };
        let body = page_body(page);
        let len = serde_json::to_vec(&body).expect("serializes").len();
        assert!(body.more && len <= MAX_PAGE_BYTES + 1024, "{len} bytes, more={}", body.more);
        assert_eq!(body.sequence, body.revoked.last().map(|r| r.seq).unwrap_or(-1));
        assert!(body.revoked[0].reason.len() <= 128, "reasons are truncated");
        let small = RevocationPage { entries: vec![big(7)], sequence: 9, more: false };
        let body = page_body(small);
        assert_eq!((body.revoked.len(), body.sequence, body.more), (1, 9, false));
    }
}
