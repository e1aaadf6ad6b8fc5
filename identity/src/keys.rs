//! Workload keys: ECDSA P-256, the only algorithm the mesh issues for. Keys at rest under a
//! passphrase are the CA's alone (`mesh_ca::keys`).

pub use rcgen::KeyPair;

use crate::error::IdentityError;

/// Generates a fresh ECDSA P-256 key.
pub fn generate() -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Crypto(format!("key generation: {e}")))
}
