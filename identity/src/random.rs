//! Randomness from the operating system via aws-lc (the same source rustls uses), and serial
//! numbers built from it.

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

/// Lowercase hex, the form serials take in the store, the CLI and events.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A serial as an operator may type or paste it (any case, leading zeros dropped or kept,
/// `0x` in front, `:` between bytes as some tools print it) in the form of [`hex`]: lowercase,
/// two digits per byte, no leading zero byte (DER serials are minimal, and ours positive).
/// `None` if it is not hexadecimal.
pub fn canonical_serial(input: &str) -> Option<String> {
    let digits = input.trim().replace(':', "").to_ascii_lowercase();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    Some(if significant.len() % 2 == 1 { format!("0{significant}") } else { significant.to_owned() })
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

    #[test]
    fn every_spelling_of_a_serial_finds_the_stored_form() {
        // A first byte below 0x10 is where tools disagree: one in eight of our serials.
        let stored = hex(&[0x01, 0x37, 0x65, 0x96, 0x8f]);
        assert_eq!(stored, "013765968f");
        for typed in ["013765968f", "13765968f", "0x13765968F", "01:37:65:96:8F", " 0013765968f "] {
            assert_eq!(canonical_serial(typed).as_deref(), Some("013765968f"), "{typed}");
        }
        assert_eq!(canonical_serial("7f00").as_deref(), Some("7f00"), "trailing zeros stay");
        for bad in ["", "0x", "xyz", "12 34", "-1"] {
            assert_eq!(canonical_serial(bad), None, "{bad:?}");
        }
    }
}
