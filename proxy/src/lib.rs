//! mesh-proxy: the zt-mesh sidecar data plane.
//!
//! Inbound, a peer sidecar's mutual TLS handshake is verified (chain and SPIFFE profile inside
//! the rustls verifier), the policy decides on the verified identity, and allowed connections
//! are forwarded to the local app. Outbound, the egress decision comes first, then the
//! remote must prove the configured identity before a byte of the app's data leaves.
//! Module map: `tls` builds every rustls config; `credentials` loads the workload's files;
//! `listener` is the shared accept loop; `inbound`/`outbound` are the per-connection stages;
//! `forward` copies bytes; `outcome` writes the one event and the metrics per connection;
//! `events` is `mesh_runtime::events` (the typed events and their sinks: stdout, files,
//! syslog, HTTPS), shared with the CA; `metrics` names every metric and maps each event kind
//! to the metric it feeds; `reload` follows files; `admin` serves probes, metrics, identity
//! and config; `plan` turns `sidecar.toml` into a typed plan; `run` assembles it all in three
//! steps (`prepare`: read and check every file; `bind`: every listener; `serve`: until a
//! shutdown future resolves, then drain), and `mesh-proxy check` is `prepare` plus printing.

pub mod admin;
pub mod authorize;
pub mod connect;
pub mod credentials;
pub mod enroll;
pub mod forward;
pub mod handshake;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod outcome;
pub mod plan;
pub mod reload;
pub mod run;
pub mod state;
pub mod stop;
pub mod tls;

pub use mesh_runtime::events;

/// The sample policy (examples/policy.toml, shown in the README, run by the demo), for unit tests.
#[cfg(test)]
pub(crate) const SAMPLE_POLICY: &str = include_str!("../../examples/policy.toml");
