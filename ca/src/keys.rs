//! Private keys at rest: PKCS#8 PEM, encrypted with PBES2 (PBKDF2-HMAC-SHA256 + AES-256-CBC)
//! so that `openssl pkcs8` reads them, and plain PKCS#8 for workload keys handed to a sidecar.
//! Generating keys is shared with the sidecar ([`mesh_identity::keys`]); encrypting them is the
//! CA's alone, so the sidecar links no key-encryption code.
//!
//! The passphrase type never prints its contents; key material never reaches an error message.

use std::fmt;
use std::path::Path;

pub use mesh_identity::keys::{generate, KeyPair};
use pkcs8::der::pem::LineEnding;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};

use crate::error::CaError;

/// PBKDF2 rounds for CA keys. OWASP's 2023 figure for PBKDF2-HMAC-SHA256 is 600,000; CA keys
/// are decrypted once per process start, so the cost is paid rarely.
const PBKDF2_ROUNDS: u32 = 600_000;
/// Bounds a passphrase file read: a passphrase is a line, not a document.
const MAX_PASSPHRASE_LEN: usize = 4096;
/// Bounds a key file read.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// The shortest passphrase `init` accepts for a new CA (a passphrase guessed offline from a
/// copied key file is the whole CA). Opening an existing CA takes whatever it was made with.
pub const MIN_NEW_PASSPHRASE_CHARS: usize = 12;

/// A passphrase that protects CA keys at rest. Debug and Display never show it.
#[derive(Clone)]
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    /// Reads a passphrase file; one trailing newline is not part of the passphrase. Warns on
    /// stderr when group or others can read the file.
    pub fn from_file(path: &Path) -> Result<Self, CaError> {
        crate::fsutil::warn_if_exposed(path, "passphrase file");
        let raw = mesh_identity::fsutil::read_bounded(path, MAX_PASSPHRASE_LEN as u64)?;
        Self::from_bytes(raw, &path.display().to_string())
    }

    /// Takes a passphrase from an environment variable's value; `source` names it in errors.
    pub fn from_bytes(mut raw: Vec<u8>, source: &str) -> Result<Self, CaError> {
        if raw.ends_with(b"\n") {
            raw.pop();
            if raw.ends_with(b"\r") {
                raw.pop();
            }
        }
        if raw.is_empty() {
            return Err(CaError::Passphrase(format!("the passphrase from {source} is empty")));
        }
        if raw.len() > MAX_PASSPHRASE_LEN {
            return Err(CaError::Passphrase(format!(
                "the passphrase from {source} is longer than 4096 bytes"
            )));
        }
        Ok(Self(raw))
    }

    /// Refuses a passphrase too short to protect a new CA's keys ([`MIN_NEW_PASSPHRASE_CHARS`]
    /// characters); `source` names where it came from. Never shows the passphrase.
    pub fn check_new(&self, source: &str) -> Result<(), CaError> {
        let chars = String::from_utf8_lossy(&self.0).chars().count();
        if chars < MIN_NEW_PASSPHRASE_CHARS {
            return Err(CaError::Passphrase(format!(
                "the passphrase from {source} has {chars} characters; a new CA needs at least \
                 {MIN_NEW_PASSPHRASE_CHARS} (a few random words make a good one)"
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// PEM of the key, encrypted with `pass` when given, plain PKCS#8 otherwise.
pub fn to_pem(key: &KeyPair, pass: Option<&Passphrase>) -> Result<String, CaError> {
    let Some(pass) = pass else {
        return Ok(key.serialize_pem());
    };
    let der = key.serialize_der();
    let info = PrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| CaError::Crypto(format!("encoding private key: {e}")))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    mesh_identity::random::fill(&mut salt)?;
    mesh_identity::random::fill(&mut iv)?;
    let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, &iv)
        .map_err(|e| CaError::Crypto(format!("key encryption parameters: {e}")))?;
    let doc = info
        .encrypt_with_params(params, &pass.0)
        .map_err(|e| CaError::Crypto(format!("encrypting private key: {e}")))?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| CaError::Crypto(format!("encoding private key: {e}")))?;
    Ok(pem.to_string())
}

/// Reads a key file written by [`to_pem`]. An encrypted key needs `pass`; a wrong one is
/// reported as such (PBES2 with CBC padding cannot tell "wrong passphrase" from "corrupt file"
/// with certainty, so the message names both).
pub fn read(path: &Path, pass: Option<&Passphrase>) -> Result<KeyPair, CaError> {
    crate::fsutil::warn_if_exposed(path, "key file");
    let raw = mesh_identity::fsutil::read_bounded(path, MAX_KEY_FILE_LEN)?;
    let text = String::from_utf8(raw).map_err(|_| CaError::bad_file(path, "is not a PEM file"))?;
    let (label, der) = pkcs8::der::pem::decode_vec(text.as_bytes())
        .map_err(|_| CaError::bad_file(path, "is not a PEM file"))?;
    let plain = match label {
        "ENCRYPTED PRIVATE KEY" => {
            let pass = pass.ok_or_else(|| {
                CaError::Passphrase(format!(
                    "{} is encrypted: set MESH_CA_PASSPHRASE or pass --passphrase-file",
                    path.display()
                ))
            })?;
            let info = EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|_| CaError::bad_file(path, "is not an encrypted PKCS#8 key"))?;
            let doc = info.decrypt(&pass.0).map_err(|_| {
                CaError::Passphrase(format!(
                    "wrong passphrase for {} (or the key file is damaged)",
                    path.display()
                ))
            })?;
            doc.as_bytes().to_vec()
        }
        "PRIVATE KEY" => der,
        other => {
            return Err(CaError::bad_file(path, &format!("holds a {other:?}, not a PKCS#8 private key")))
        }
    };
    KeyPair::try_from(plain)
        .map_err(|_| CaError::bad_file(path, "holds a key that is not ECDSA P-256 PKCS#8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        let key = generate().expect("keygen");
        let pass = Passphrase::from_bytes(b"correct horse\n".to_vec(), "test").expect("pass");
        let pem = to_pem(&key, Some(&pass)).expect("encrypt");
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        std::fs::write(&path, pem).expect("write");
        let back = read(&path, Some(&pass)).expect("decrypt");
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        let wrong = Passphrase::from_bytes(b"wrong".to_vec(), "test").expect("pass");
        assert!(matches!(read(&path, Some(&wrong)), Err(CaError::Passphrase(_))));
        assert!(matches!(read(&path, None), Err(CaError::Passphrase(_))));
    }

    #[test]
    fn a_new_ca_needs_twelve_characters() {
        let short = Passphrase::from_bytes("elevenchars".into(), "test").expect("pass");
        assert!(matches!(short.check_new("test"), Err(CaError::Passphrase(m)) if !m.contains("elevenchars")));
        let twelve = Passphrase::from_bytes("twelve chars".into(), "test").expect("pass");
        twelve.check_new("test").expect("twelve is enough");
        // Characters, not bytes: eleven two-byte characters are still too short.
        let multi = Passphrase::from_bytes("ééééééééééé".into(), "test").expect("pass");
        assert!(multi.check_new("test").is_err());
    }

    #[test]
    fn passphrase_debug_is_redacted() {
        let pass = Passphrase::from_bytes(b"hunter2".to_vec(), "test").expect("pass");
        assert!(!format!("{pass:?}").contains("hunter2"));
    }
}
