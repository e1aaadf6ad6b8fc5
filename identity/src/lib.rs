//! mesh-identity: the workload identity machinery that both the CA and the sidecar need, and
//! nothing either one alone does. The SVID profile ([`profile`]) and the templates the CA
//! issues from ([`template`]) sit side by side; [`tls`] is the one module that builds rustls
//! configs and verifiers; [`api`] holds the CA API's wire types, which the CA server and
//! [`client`] both compile against.
//!
//! No store, no key encryption at rest, no HTTP server: those are the CA's (`mesh-ca`), so a
//! sidecar links none of them (`cargo tree -p mesh-proxy -i rusqlite` prints nothing).

pub mod api;
pub mod client;
pub mod clock;
pub mod csr;
pub mod error;
pub mod fsutil;
pub mod keys;
pub mod pem;
pub mod profile;
pub mod random;
pub mod serial;
pub mod template;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tls;
pub mod token;
mod verified;

pub use error::IdentityError;
pub use serial::Serial;
