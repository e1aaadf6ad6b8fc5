//! The sidecar's TLS: every rustls config is built by `mesh_identity::tls`, the one module that
//! builds TLS configs for the sidecar and the CA server alike; this re-exports it.

pub use mesh_identity::tls::*;
