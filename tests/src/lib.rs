//! Test support for the zt-mesh end-to-end tests: find and run the real binaries, set up a
//! throwaway CA, and validate what it issues with checkers that share no code with it
//! (`openssl`, the Python `cryptography` checker in `tests/py`, and rustls-webpki).
//!
//! This module only drives processes and reads files; it holds no certificate logic of its
//! own beyond calling webpki, so that a bug in mesh-ca cannot be mirrored here.

mod ca;
pub mod ca_server;
mod files;
pub mod monitoring;
mod process;
pub mod proxy;
pub mod relay;
pub mod scanners;
mod validate;

pub use ca::{serial_bits, serial_from_issue_stdout, TestCa};
pub use files::{mode, now_unix, running_as_root, snapshot};
pub use process::{binary, py_script, target_dir, workspace_root, Cmd, Output, PROCESS_TIMEOUT};
pub use validate::{
    cert_times, openssl_cert_pubkey, openssl_key_pubkey, openssl_verify, read_pem_certs, squash, svid_check,
    webpki_verify, write_pem_certs,
};

/// The passphrase every test CA is created with.
pub const PASSPHRASE: &str = "correct horse battery staple";
/// The trust domain every test CA is created with unless a test says otherwise.
pub const TRUST_DOMAIN: &str = "example.org";
/// The environment variable mesh-ca reads a passphrase from.
pub const PASSPHRASE_ENV: &str = "MESH_CA_PASSPHRASE";
