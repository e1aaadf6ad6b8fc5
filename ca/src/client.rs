//! The client side of the CA API, for sidecars: enroll with a join token, renew over mutual
//! TLS, follow the revocation log. The CA must present its own SVID
//! (`spiffe://<td>/ns/mesh-system/sa/ca`) chained to the configured bundle; keys are made
//! by the caller and only their CSRs leave the process.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_config::{SpiffeId, TrustDomain};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::server::{ca_server_id, EnrollRequest, ErrorBody, IssuedBody, RenewRequest, RevocationsBody};
use crate::tls::{self, Identity};
use crate::token::Token;

/// Longest answer the CA sends (a chain, a bundle or a page of revocations).
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

/// A certificate the CA issued, parsed.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub serial: String,
}

pub struct CaClient {
    /// `host:port` of the CA.
    address: String,
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
}

impl CaClient {
    /// `address` is the CA's `host:port`; `anchors` the CA bundle. The trust domain, and
    /// so the identity the CA must present, comes from the root's `spiffe://<td>` SAN.
    pub fn new(address: String, anchors: Vec<CertificateDer<'static>>) -> Result<Self, ClientError> {
        let td = anchors.iter().find_map(trust_domain_of).ok_or_else(|| {
            ClientError::Protocol(
                "the CA bundle has no certificate with a spiffe://<trust-domain> URI SAN".into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for a in anchors {
            roots.add(a).map_err(|e| ClientError::Protocol(format!("CA bundle: {e}")))?;
        }
        Ok(Self { address, roots: Arc::new(roots), expected: ca_server_id(&td) })
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

    /// Revocations after `since`, waiting up to `wait` for one to appear.
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
        let config =
            tls::client_config(id, self.roots.clone(), &self.expected, None, tls::Resumption::Allowed)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(config).connect(tls::sni(), tcp))
                .await
                .map_err(|_| unreachable(&"TLS handshake timed out"))?
                .map_err(|e| unreachable(&tls::failure_detail(&e)))?;
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&e))?;
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
            let resp = sender.send_request(req).await.map_err(|e| unreachable(&e))?;
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

fn parse_issued(r: IssuedBody) -> Result<Issued, ClientError> {
    let chain = crate::pem::parse_certs(r.cert_chain.as_bytes())
        .map_err(|e| ClientError::Protocol(format!("chain {e}")))?;
    let bundle = crate::pem::parse_certs(r.bundle.as_bytes())
        .map_err(|e| ClientError::Protocol(format!("bundle {e}")))?;
    Ok(Issued { chain, bundle, serial: r.serial })
}

/// The trust domain a CA certificate names in its `spiffe://<td>` URI SAN.
fn trust_domain_of(der: &CertificateDer<'_>) -> Option<TrustDomain> {
    let cert = crate::profile::parse(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => match mesh_config::identity::parse_spiffe_uri(u) {
            Ok((td, path)) if path.is_empty() => Some(td),
            _ => None,
        },
        _ => None,
    })
}

/// Decodes the body of an enroll or renew answer as `enroll` and `renew` do: the JSON
/// [`IssuedBody`], then its chain and bundle PEM. Public so the decoding can be fuzzed alone.
pub fn decode_issued(body: &[u8]) -> Result<Issued, ClientError> {
    let r: IssuedBody = serde_json::from_slice(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    parse_issued(r)
}
