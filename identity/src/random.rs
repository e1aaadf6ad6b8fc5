//! Randomness from the operating system via aws-lc (the same source rustls uses), and the
//! bytes of fresh serial numbers ([`crate::serial::Serial`] is their printed form).

use crate::error::IdentityError;

/// Serial numbers are 16 random bytes with the top bit cleared (DER INTEGERs are signed and
/// RFC 5280 wants them positive) and the top byte non-zero (so the encoding keeps all 16 bytes):
/// 126 bits of entropy, far above the 64 the CA/B Forum and the SPIFFE profile ask for.
pub const SERIAL_LEN: usize = 16;

pub fn fill(buf: &mut [u8]) -> Result<(), IdentityError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| IdentityError::Crypto("the system random source failed".into()))
}

/// A fresh random serial number.
pub fn serial() -> Result<[u8; SERIAL_LEN], IdentityError> {
    let mut s = [0u8; SERIAL_LEN];
    fill(&mut s)?;
    s[0] &= 0x7f;
    if s[0] == 0 {
        s[0] = 1;
    }
    Ok(s)
}

/// Lowercase hex, two digits per byte (token hashes; serials are [`crate::serial::Serial`]).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn serials_are_positive_full_length_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..20_000 {
            let s = serial().expect("rng");
            assert!(s[0] & 0x80 == 0 && s[0] != 0);
            assert!(seen.insert(s), "serial repeated");
        }
    }
}
