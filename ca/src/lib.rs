//! mesh-ca: the zt-mesh certificate authority: the authority itself (issuing, enrollment,
//! renewal, revocation), its store, its HTTPS API server and the `mesh-ca` CLI.
//!
//! What the sidecar shares with the CA (the SVID profile and templates, the rustls configs,
//! PEM, CSRs, join tokens as presented, the API's wire types and client) is in
//! `mesh-identity`; what both binaries run on (output streams, connection budgets) is in
//! `mesh-runtime`. The `mesh-ca` binary is a thin CLI over [`authority::Authority`].

pub mod authority;
pub mod bundle;
pub mod error;
pub mod fsutil;
pub mod inspect;
pub mod keys;
pub mod server;
pub mod settings;
pub mod store;

pub use authority::{Authority, CaDir, InitOptions, IssuedLeaf};
pub use error::CaError;
