//! mesh-config: the operator's words turned into typed values.
//!
//! Identities (`SpiffeId` and its parts) and lifetimes (`Ttl`) are parsed here once and used
//! everywhere else; the sidecar and policy files are parsed here too. This crate does no I/O
//! beyond reading the files it is asked to parse, and holds no cryptography.

pub mod error;
pub mod identity;
pub mod policy;
pub mod sidecar;
pub mod ttl;

pub use error::{ConfigError, Location};
pub use identity::{IdError, SpiffeId, TrustDomain, Workload, Zone};
pub use policy::{Decision, HttpAttrs, Policy, Reason, Request, RuleKind, RuleRef, Selector};
pub use sidecar::{
    Admin, Endpoint, EventSink, Host, HttpsUrl, IdentitySource, Inbound, Limits, Outbound, Protocol,
    SidecarConfig, SyslogTransport,
};
pub use ttl::{Ttl, TtlError};
