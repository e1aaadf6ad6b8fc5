//! The client side of the CA API, for sidecars: enroll with a join token, renew over mutual
//! TLS, follow the revocation log. The CA must present its own SVID
//! (`spiffe://<td>/ns/mesh-system/sa/ca`) with the CA server marker, chained to the
//! operator's configured bundle and not revoked; keys are made by the caller and only their
//! CSRs leave the process.
//!
//! The configured bundle is the only source of trust: a chain the CA hands out is checked
//! against it by the caller, and the bundle in a CA answer is never adopted (a CA answer
//! cannot add trust anchors the operator did not configure).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::api::{EnrollRequest, ErrorBody, IssuedBody, RenewRequest, RevocationsBody};
use crate::profile::ca_server_id;
use crate::tls::{self, ClientSettings, Identity, PeerKind, RevocationCheck, TrustBundle};
use crate::token::Token;

/// Longest answer the CA sends (a chain, a bundle or a page of revocations: the CA cuts
/// pages at 512 KiB, so a page always fits).
const MAX_RESPONSE: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA could not be reached or the connection failed: worth retrying.
    #[error("CA unreachable: {0}")]
    Unreachable(String),
    /// The CA answered with a refusal: retrying the same request will not help.
    #[error("CA refused ({status}): {code}: {reason}")]
    Refused { status: u16, code: String, reason: String },
    /// The CA's answer was not what the API promises.
    #[error("unexpected answer from the CA: {0}")]
    Protocol(String),
}

/// A certificate the CA issued, parsed, not yet checked: the caller verifies the chain
/// against the configured bundle before using it. No trust anchors come with it.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub serial: crate::serial::Serial,
}

pub struct CaClient {
    /// `host:port` of the CA.
    address: String,
    /// The operator's `ca_bundle`: what the CA's certificate and every chain it hands out
    /// are checked against, and the only anchors a sidecar enrolled by it trusts.
    bundle: Arc<TrustBundle>,
    /// How the CA's client config is made: the CA's identity, the CA server marker, and
    /// the caller's revocation list (a revoked CA certificate is refused).
    settings: ClientSettings,
}

impl CaClient {
    /// `address` is the CA's `host:port`; `anchors` the CA bundle. The trust domain, and
    /// so the identity the CA must present, comes from the root's `spiffe://<td>` SAN.
    /// `access` is consulted for the CA's certificate in every handshake.
    pub fn new(
        address: String,
        anchors: Vec<CertificateDer<'static>>,
        access: Arc<dyn RevocationCheck>,
    ) -> Result<Self, ClientError> {
        // The CA bundle is the CA's own: its roots name one trust domain, which is the one
        // the CA must present and the sidecar enrolls in. Taking "the first root's" would let
        // the order of a mixed file decide whom the sidecar trusts to enroll it.
        let mut named = Vec::new();
        for td in anchors.iter().filter_map(tls::trust_domain_of) {
            if !named.contains(&td) {
                named.push(td);
            }
        }
        let td = match named.as_slice() {
            [] => {
                return Err(ClientError::Protocol(
                    "the CA bundle has no certificate with a spiffe://<trust-domain> URI SAN".into(),
                ))
            }
            [td] => td.clone(),
            _ => {
                let list: Vec<String> = named.iter().map(ToString::to_string).collect();
                return Err(ClientError::Protocol(format!(
                    "the CA bundle names several trust domains ({}): it must hold the CA's own roots only",
                    list.join(", ")
                )));
            }
        };
        let bundle = TrustBundle::new(td.clone(), anchors)
            .map_err(|e| ClientError::Protocol(format!("CA bundle: {e}")))?;
        let settings = ClientSettings {
            expected: ca_server_id(&td),
            kind: PeerKind::CaServer,
            // Each call builds its config (the caller's identity changes with every renewal),
            // so there is no session to resume: every call is a full handshake.
            resumption: tls::Resumption::Off,
            access,
            // The CA API names no application protocol (see mesh_identity::tls::alpn).
            alpn: tls::Alpn::none(),
        };
        Ok(Self { address, bundle: Arc::new(bundle), settings })
    }

    /// The configured CA bundle.
    pub fn bundle(&self) -> &Arc<TrustBundle> {
        &self.bundle
    }

    pub async fn enroll(&self, token: &Token, csr_pem: String) -> Result<Issued, ClientError> {
        let body = EnrollRequest { token: token.expose().to_owned(), csr: csr_pem };
        let r: IssuedBody = self.call(None, Method::POST, "/v1/enroll", Some(&body)).await?;
        parse_issued(r)
    }

    pub async fn renew(&self, current: &Identity, csr_pem: String) -> Result<Issued, ClientError> {
        let r: IssuedBody =
            self.call(Some(current), Method::POST, "/v1/renew", Some(&RenewRequest { csr: csr_pem })).await?;
        parse_issued(r)
    }

    /// One page of revocations after `since`, waiting up to `wait` for one to appear (the CA
    /// waits only for callers with a certificate). Follow `more` with `wait` zero.
    pub async fn revocations(
        &self,
        current: Option<&Identity>,
        since: i64,
        wait: Duration,
    ) -> Result<RevocationsBody, ClientError> {
        let path = format!("/v1/revocations?since={since}&wait={}", wait.as_secs());
        self.call::<(), _>(current, Method::GET, &path, None).await
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        id: Option<&Identity>,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let unreachable =
            |e: &dyn std::fmt::Display| ClientError::Unreachable(format!("{}: {e}", self.address));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| unreachable(&"connect timed out"))?
            .map_err(|e| unreachable(&e))?;
        let config = tls::client_config(id, &self.bundle, &self.settings)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tcp)).await {
            Err(_) => return Err(unreachable(&"TLS handshake timed out")),
            Ok(Err(tls::HandshakeError::Handshake(e))) => return Err(unreachable(&tls::failure_detail(&e))),
            Ok(Err(tls::HandshakeError::Peer { error, .. })) => {
                return Err(unreachable(&tls::tls_failure_detail(&error)))
            }
            Ok(Ok(c)) => c.stream,
        };
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&with_causes(&e)))?;
            tokio::spawn(conn);
            let bytes = match body {
                Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?,
                None => Vec::new(),
            };
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "mesh-ca")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            // hyper's own text is only "connection error": its causes say what happened (a
            // TLS alert from the CA, such as certificate_revoked, arrives here).
            let resp = sender.send_request(req).await.map_err(|e| unreachable(&with_causes(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        // Long-polls wait on the server side; give them their wait on top of the usual limit.
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(60), exchange)
            .await
            .map_err(|_| unreachable(&"request timed out"))??;
        if status != StatusCode::OK {
            let e: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
                error: "unknown".into(),
                reason: String::from_utf8_lossy(&body).into_owned(),
            });
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(ClientError::Unreachable(format!("{status}: {}", e.reason)));
            }
            return Err(ClientError::Refused { status: status.as_u16(), code: e.error, reason: e.reason });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The chain of an answer. Its `bundle` field is ignored on purpose: trust comes from the
/// configured bundle only, and the caller checks the chain against it.
fn parse_issued(r: IssuedBody) -> Result<Issued, ClientError> {
    let chain = crate::pem::parse_certs(r.cert_chain.as_bytes())
        .map_err(|e| ClientError::Protocol(format!("chain {e}")))?;
    Ok(Issued { chain, serial: r.serial })
}

/// An error and its chain of causes, `outer: inner: ...` (at most 8 deep).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}
