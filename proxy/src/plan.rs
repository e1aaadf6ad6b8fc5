//! Turns a parsed `sidecar.toml` into the [`Plan`] that `run` executes, refusing (with a
//! clear message, never silently) settings this version of the sidecar does not serve yet.

use std::path::Path;

use mesh_config::sidecar::{IdentitySource, Protocol, SidecarConfig};

use crate::events::Sink;
use crate::reload::CredFiles;
pub use crate::run::IdentityPlan;
pub use crate::run::Plan;
use crate::state::Limits;
use crate::tls::Resumption;

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
        sinks.push(Sink::Stdout);
    }
    Ok(Plan {
        policy: cfg.policy,
        identity,
        inbound: cfg.inbound.map(|i| (i.listen, i.forward.to_string())),
        outbound: cfg.outbound.into_iter().map(|o| (o.listen, o.connect.to_string(), o.server)).collect(),
        admin: cfg.admin.map(|a| a.listen),
        sinks,
        event_queue: cfg.event_options.queue_size,
        limits: Limits {
            handshake_timeout: cfg.limits.handshake_timeout,
            connect_timeout: cfg.limits.connect_timeout,
            idle_timeout: cfg.limits.idle_timeout,
            drain_timeout: cfg.limits.drain_timeout,
            max_connections: cfg.limits.max_connections,
            max_admin_connections: cfg.limits.max_admin_connections,
            max_pending: cfg.limits.max_pending,
            max_pending_per_source: cfg.limits.max_pending_per_source,
        },
        resumption: if cfg.tls.resumption { Resumption::Allowed } else { Resumption::Off },
    })
}
