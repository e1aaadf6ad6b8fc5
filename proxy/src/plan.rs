//! Turns a parsed `sidecar.toml` into the typed [`Plan`] that [`crate::run`] executes,
//! refusing (with a clear message, never silently) settings this version of the sidecar does
//! not serve yet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mesh_config::sidecar::{Endpoint, IdentitySource, Protocol, SidecarConfig};
use mesh_config::SpiffeId;

use crate::events::Sink;
use crate::reload::CredFiles;
pub use crate::state::Limits;
use crate::tls::Resumption;

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub policy: PathBuf,
    pub identity: IdentityPlan,
    pub inbound: Option<InboundPlan>,
    /// In config order: outbound `i` uses client config `i`.
    pub outbound: Vec<OutboundPlan>,
    pub admin: Option<SocketAddr>,
    pub sinks: Vec<Sink>,
    /// Events each sink may hold waiting before it drops.
    pub event_queue: usize,
    pub limits: Limits,
    /// `[tls] resumption`, for the inbound and every outbound.
    pub resumption: Resumption,
}

/// `[inbound]`: where peer sidecars connect, and the local app allowed traffic goes to.
#[derive(Debug, Clone)]
pub struct InboundPlan {
    pub listen: SocketAddr,
    pub forward: Endpoint,
}

/// One `[[outbound]]`: where the local app connects, the remote sidecar, and the identity
/// that remote must prove.
#[derive(Debug, Clone)]
pub struct OutboundPlan {
    pub listen: SocketAddr,
    pub connect: Endpoint,
    pub server: SpiffeId,
}

/// Where the sidecar's identity comes from.
#[derive(Debug, Clone)]
pub enum IdentityPlan {
    /// Files from `mesh-ca issue`, re-read when they change.
    Files(CredFiles),
    /// Enrollment with `mesh-ca serve`: key in memory, renewed automatically.
    Enroll { ca_address: String, ca_bundle: PathBuf, token_file: PathBuf },
}

impl IdentityPlan {
    /// The secret files this identity reads (the private key, or the join token), each
    /// with what to call it in a warning.
    pub fn secret_files(&self) -> Vec<(&Path, &'static str)> {
        match self {
            Self::Files(f) => vec![(f.key.as_path(), "key file")],
            Self::Enroll { token_file, .. } => vec![(token_file.as_path(), "token file")],
        }
    }

    /// One warning per secret file that group or others can read (see
    /// `mesh_identity::fsutil::exposed_mode_warning`).
    pub fn exposed_secrets(&self) -> Vec<String> {
        self.secret_files()
            .into_iter()
            .filter_map(|(path, what)| mesh_identity::fsutil::exposed_mode_warning(path, what))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Config(#[from] mesh_config::error::ConfigError),
    #[error("{file}: {what}")]
    Unsupported { file: String, what: String },
    #[error("{file}: {what}")]
    Events { file: String, what: String },
}

/// Reads `sidecar.toml` and builds the plan.
pub fn load(path: &Path) -> Result<Plan, PlanError> {
    let cfg = SidecarConfig::from_file(path)?;
    let file = path.display().to_string();
    let unsupported = |what: &str| PlanError::Unsupported { file: file.clone(), what: what.to_owned() };
    let identity = match cfg.identity {
        IdentitySource::Files { cert, key, bundle } => IdentityPlan::Files(CredFiles { cert, key, bundle }),
        IdentitySource::Enroll { ca_url, ca_bundle, token_file } => {
            if !ca_url.path().is_empty() && ca_url.path() != "/" {
                return Err(unsupported("[identity] ca_url must be https://host:port without a path"));
            }
            IdentityPlan::Enroll { ca_address: ca_url.endpoint().to_string(), ca_bundle, token_file }
        }
    };
    let http = cfg.inbound.iter().map(|i| i.protocol).chain(cfg.outbound.iter().map(|o| o.protocol));
    if http.into_iter().any(|p| p == Protocol::Http) {
        return Err(unsupported("protocol = \"http\" is not served by this version yet; use \"tcp\""));
    }
    let mut sinks = Vec::new();
    for s in &cfg.events {
        let sink = Sink::from_config(s, &cfg.event_options);
        sinks.push(sink.map_err(|what| PlanError::Events { file: file.clone(), what })?);
    }
    if sinks.is_empty() {
        sinks.push(Sink::Stdout(cfg.event_options.format));
    }
    Ok(Plan {
        policy: cfg.policy,
        identity,
        inbound: cfg.inbound.map(|i| InboundPlan { listen: i.listen, forward: i.forward }),
        outbound: cfg
            .outbound
            .into_iter()
            .map(|o| OutboundPlan { listen: o.listen, connect: o.connect, server: o.server })
            .collect(),
        admin: cfg.admin.map(|a| a.listen),
        sinks,
        event_queue: cfg.event_options.queue_size,
        limits: cfg.limits,
        resumption: if cfg.tls.resumption { Resumption::Allowed } else { Resumption::Off },
    })
}
