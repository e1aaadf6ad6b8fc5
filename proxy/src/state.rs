//! What every connection task reads: the current TLS configs (rebuilt on each credential
//! change and published on a `watch`, so rotation is a pointer swap), the current policy, the
//! event handle, limits and the shutdown signal. Connection budgets are per listener (see
//! [`crate::listener`]), so they are not here.

use std::sync::Arc;

use mesh_config::policy::Policy;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::credentials::Credential;
use crate::events::Events;
use crate::reload::TlsShape;
use crate::tls::{self, ClientAuth, ClientTls, PeerKind, RevocationCheck, ServerTls, TlsConfigError};

/// The credential and the rustls configs built from it, swapped as one.
pub struct Tls {
    pub cred: Credential,
    /// Present when the sidecar has an inbound listener.
    pub server: Option<ServerTls>,
    /// One per `[[outbound]]`, in config order: each pins its own expected server identity.
    pub clients: Vec<ClientTls>,
}

impl Tls {
    /// Builds the configs for a credential. `access` (the CA's revocation list the sidecar
    /// follows; nothing in files mode) is consulted in every handshake and resumption.
    pub fn build(
        cred: Credential,
        shape: &TlsShape,
        access: Arc<dyn RevocationCheck>,
    ) -> Result<Self, TlsConfigError> {
        let server = if shape.inbound {
            let settings = tls::ServerSettings {
                client_auth: ClientAuth::Required,
                resumption: shape.resumption,
                access: access.clone(),
                alpn: tls::Alpn::mesh(),
            };
            Some(tls::server_config(&cred.identity, &cred.bundle, &settings)?)
        } else {
            None
        };
        let clients = shape
            .servers
            .iter()
            .map(|s| {
                let settings = tls::ClientSettings {
                    expected: s.clone(),
                    kind: PeerKind::Workload,
                    resumption: shape.resumption,
                    access: access.clone(),
                    alpn: tls::Alpn::mesh(),
                };
                tls::client_config(Some(&cred.identity), &cred.bundle, &settings)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { cred, server, clients })
    }
}

/// Timeouts and caps, from `[limits]`: the config's own type, so nothing is copied field by
/// field (see `mesh_config::sidecar::Limits` for each).
pub use mesh_config::sidecar::Limits;

pub struct Shared {
    pub tls: watch::Receiver<Arc<Tls>>,
    pub policy: watch::Receiver<Arc<Policy>>,
    pub events: Events,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    /// Every listener's connection tasks: the shutdown drain waits for them, then aborts the
    /// rest.
    pub tasks: mesh_runtime::serve::Tasks,
    /// Addresses this sidecar listens on, so a hop that would connect back to itself (an
    /// outbound or forward pointed at our own port) is refused instead of looping.
    pub own_addrs: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// The CA's revocation list, in enrollment mode: connection handlers watch it to close
    /// connections whose peer gets revoked.
    pub revocations: Option<watch::Receiver<Arc<crate::enroll::RevocationSet>>>,
}

impl Shared {
    pub fn tls(&self) -> Arc<Tls> {
        self.tls.borrow().clone()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// True when `addr` is one of this sidecar's listeners. A wildcard listener (0.0.0.0 or
    /// [::]) counts for loopback and wildcard targets on its port; other local interface
    /// addresses are not enumerated.
    pub fn is_own(&self, addr: std::net::SocketAddr) -> bool {
        self.own_addrs.get().is_some_and(|own| {
            own.iter().any(|l| {
                l.port() == addr.port()
                    && (l.ip() == addr.ip()
                        || (l.ip().is_unspecified()
                            && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
            })
        })
    }

    /// Ready: a certificate that has not expired and, when the sidecar follows the CA, a
    /// revocation list it has loaded. New connections are refused while not ready.
    pub fn ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the sidecar must not serve new connections, if it must not.
    pub fn not_ready(&self) -> Option<crate::handshake::NotReady> {
        if self.tls().cred.not_after <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return Some(crate::handshake::NotReady::OwnCertificateExpired);
        }
        self.revocations.as_ref().and_then(|r| r.borrow().not_ready())
    }
}
