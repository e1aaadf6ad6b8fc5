//! A certificate serial number as the mesh names it: lowercase hex, two digits per byte, no
//! leading zero byte. That one form is what the CA's store keys on, what `mesh-ca list`,
//! `revoke` and the CA API print, what events carry and what the sidecar's revocation set
//! holds, so a serial read from a certificate, typed by an operator or received from the CA
//! compares equal exactly when it is the same number.
//!
//! What this is not: a generator ([`crate::random::serial`] makes the bytes the CA signs) or a
//! DER encoder (rcgen encodes the bytes it is given).

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// A certificate serial number in the mesh's one form (see the module doc). Built only from a
/// certificate's serial bytes ([`Serial::from_der`]) or by parsing what an operator typed or a
/// peer sent ([`Serial::parse`]); it derefs to its text for printing and lookups.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(String);

/// The text was not a hexadecimal serial number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a hexadecimal serial number")]
pub struct InvalidSerial;

impl Serial {
    /// The serial whose big-endian bytes are `raw`: a certificate's serial field as
    /// x509-parser's `raw_serial()` returns it, or the bytes [`crate::random::serial`] made.
    /// A leading zero byte (DER's sign padding) is dropped, as [`Serial::parse`] drops it.
    pub fn from_der(raw: &[u8]) -> Self {
        let significant = &raw[raw.iter().position(|&b| b != 0).unwrap_or(raw.len())..];
        Self(if significant.is_empty() { "00".to_owned() } else { crate::random::hex(significant) })
    }

    /// A serial as an operator may type or paste it, or as a peer sends it: any case, leading
    /// zeros dropped or kept, `0x` in front, `:` between bytes as some tools print it.
    pub fn parse(input: &str) -> Result<Self, InvalidSerial> {
        let digits = input.trim().replace(':', "").to_ascii_lowercase();
        let digits = digits.strip_prefix("0x").unwrap_or(&digits);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidSerial);
        }
        let significant = digits.trim_start_matches('0');
        Ok(Self(match significant.len() {
            0 => "00".to_owned(),
            n if n % 2 == 1 => format!("0{significant}"),
            _ => significant.to_owned(),
        }))
    }

    /// The lowercase hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Serial {
    type Err = InvalidSerial;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::ops::Deref for Serial {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Hash and equality are the text's, so a set of serials answers a lookup by `&str`.
impl Borrow<str> for Serial {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Serial {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Serial {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Serial {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The lowercase hex form; width and alignment apply (`{:<32}` in `mesh-ca list`).
impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.0)
    }
}

/// A JSON string in the lowercase hex form: the wire and file formats are unchanged by the type.
impl serde::Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Read as [`Serial::parse`] reads it; anything else is a decoding error naming the text's
/// length, never the text.
impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(|_| {
            serde::de::Error::custom(format!(
                "serial: {} characters that are not a hexadecimal serial",
                text.len()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_serial_is_the_same_serial() {
        // A first byte below 0x10 is where tools disagree: one in eight of our serials.
        let stored = Serial::from_der(&[0x01, 0x37, 0x65, 0x96, 0x8f]);
        assert_eq!(stored.to_string(), "013765968f");
        for typed in ["013765968f", "13765968f", "0x13765968F", "01:37:65:96:8F", " 0013765968f "] {
            assert_eq!(Serial::parse(typed), Ok(stored.clone()), "{typed}");
        }
        assert_eq!(Serial::parse("7f00").map(|s| s.to_string()), Ok("7f00".into()), "trailing zeros stay");
        for bad in ["", "0x", "xyz", "12 34", "-1", "0x0x12"] {
            assert_eq!(Serial::parse(bad), Err(InvalidSerial), "{bad:?}");
        }
        assert_eq!(Serial::parse("0").map(|s| s.to_string()), Ok("00".into()));
    }

    #[test]
    fn der_sign_padding_is_dropped_like_a_typed_leading_zero() {
        let padded = Serial::from_der(&[0x00, 0x80, 0x01]);
        assert_eq!(padded.as_str(), "8001");
        assert_eq!(Serial::parse("00:80:01"), Ok(padded));
        assert_eq!(Serial::from_der(&[0, 0]).as_str(), "00");
        assert_eq!(Serial::from_der(&[]).as_str(), "00");
    }

    #[test]
    fn text_forms_are_the_lowercase_hex() {
        let s = Serial::from_der(&[0x3f, 0xab]);
        assert_eq!(format!("{s:<6}|"), "3fab  |");
        assert_eq!(serde_json::to_string(&s).expect("json"), r#""3fab""#);
        let back: Serial = serde_json::from_str(r#""3FAB""#).expect("json");
        assert_eq!(back, s);
        assert!(serde_json::from_str::<Serial>(r#""nope""#).is_err());
        let set: std::collections::HashSet<Serial> = [s.clone()].into();
        assert!(set.contains("3fab"), "a set of serials answers a lookup by text");
    }
}
