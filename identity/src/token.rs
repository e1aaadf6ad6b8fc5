//! Join tokens: 256 random bits, printed once, stored only as a SHA-256 hash. A token binds
//! an identity (zone and workload) and a number of uses; whoever presents it may enroll as
//! that identity, so it is a secret and never appears in logs, events or errors.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::error::IdentityError;

/// Tokens start with this so that a leaked one is recognisable in a secret scanner.
const PREFIX: &str = "ztm1_";
/// A token is short; anything longer is not one.
pub const MAX_TOKEN_LEN: usize = 128;
/// The longest a join token may stay usable: 30 days (`720h`). A token is a bearer secret
/// that waits in a file for a workload to start; one that never expires is a standing key.
pub const MAX_TOKEN_TTL: mesh_config::Ttl = mesh_config::Ttl::from_secs(30 * 24 * 3600);
/// The most enrollments one token may allow: enough for a fleet of replicas, not unbounded.
pub const MAX_TOKEN_USES: u32 = 1000;
/// Hex characters of a token's id ([`Token::id`]): 48 bits, so ids stay distinct among far
/// more tokens than a CA holds, and far too few to find the token (or its hash) from.
pub const TOKEN_ID_LEN: usize = 12;

/// A join token's secret value. `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut raw = [0u8; 32];
        crate::random::fill(&mut raw)?;
        Ok(Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))))
    }

    /// Takes a token as presented (from a file or a request); surrounding whitespace is not
    /// part of it.
    pub fn from_presented(s: &str) -> Option<Self> {
        let s = s.trim();
        (s.starts_with(PREFIX) && s.len() <= MAX_TOKEN_LEN).then(|| Self(s.to_owned()))
    }

    /// The secret itself, for printing once at creation and for sending to the CA.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the store keeps: lowercase hex SHA-256.
    pub fn hash(&self) -> String {
        crate::random::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes()).as_ref())
    }

    /// What operators name the token by (`mesh-ca token list`, `mesh-ca token revoke ID`): the
    /// first [`TOKEN_ID_LEN`] hex characters of [`Token::hash`]. Not a secret.
    pub fn id(&self) -> String {
        let mut hash = self.hash();
        hash.truncate(TOKEN_ID_LEN);
        hash
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_hashed_and_redacted() {
        let a = Token::generate().expect("rng");
        let b = Token::generate().expect("rng");
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.hash().len(), 64);
        assert!(!format!("{a:?}").contains(&a.expose()[PREFIX.len()..]));
        assert_eq!(Token::from_presented(&format!(" {}\n", a.expose())).expect("parse").hash(), a.hash());
        assert!(Token::from_presented("nope").is_none());
        assert_eq!(a.id().len(), TOKEN_ID_LEN);
        assert!(a.hash().starts_with(&a.id()));
        assert!(!a.expose().contains(&a.id()));
    }
}
