//! mesh-ca: the zt-mesh certificate authority, and the workload identity machinery that both
//! the CA and the sidecar need (SVID profile checks, key handling, PEM).
//!
//! The `mesh-ca` binary is a thin CLI over [`authority::Authority`]; the sidecar links this
//! crate for [`profile`], [`pem`] and [`tls`] (the one module that builds rustls configs).

pub mod authority;
pub mod bundle;
pub mod client;
pub mod csr;
pub mod error;
pub mod fsutil;
pub mod inspect;
pub mod keys;
pub mod output;
pub mod pem;
pub mod profile;
pub mod random;
pub mod server;
pub mod settings;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tls;
pub mod token;
mod verified;

pub use authority::{Authority, CaDir, InitOptions, IssuedLeaf};
pub use error::CaError;
