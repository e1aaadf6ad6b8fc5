//! A bounded memo of peer chains that one TLS config's verifier has already accepted.
//!
//! A sidecar sees the same few peer certificates thousands of times an hour, and each full
//! handshake re-verified the chain: one ECDSA verification per certificate (the largest
//! single cost of a handshake after the key exchange), plus a DER parse and the SVID profile
//! check. Both results depend only on the chain's bytes, the trust anchors and the trust
//! domain; the anchors and trust domain are fixed for the life of a config (a bundle or
//! credential change builds new configs, and so a new, empty memo). What does change with
//! time is validity, so the memo keeps each chain's validity window and answers only inside
//! it; revocation is looked up on every handshake, outside the memo.
//!
//! What the memo never skips: the handshake signature (`CertificateVerify`, proof that the
//! peer holds the key), the key exchange, and the revocation check. A chain that failed is
//! never remembered, so a failure is re-verified (and re-reported) every time.
//!
//! Keys are SHA-256 over the length-prefixed DER of the leaf and every intermediate, so a
//! different set or order of intermediates is a different entry. The map holds at most
//! [`MAX_ENTRIES`]; when full it is emptied, so a peer cycling through many valid
//! certificates costs re-verification, never memory.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest;
use mesh_config::SpiffeId;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::serial::Serial;

/// Most chains remembered per config; a sidecar talks to far fewer distinct peers.
pub const MAX_ENTRIES: usize = 1024;

/// What a verified chain established: the leaf's identity and serial, and
/// the seconds (Unix time) between which every certificate in it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: SpiffeId,
    pub serial: Serial,
    not_before: u64,
    not_after: u64,
}

impl Verified {
    /// The facts for a chain that has just passed verification. `leaf` is its parsed
    /// end-entity certificate; `None` when some certificate in the chain does not parse,
    /// which leaves the chain unremembered.
    pub fn new(
        id: SpiffeId,
        leaf: &X509Certificate<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Self> {
        let mut not_before = timestamp(leaf.validity().not_before.timestamp())?;
        let mut not_after = timestamp(leaf.validity().not_after.timestamp())?;
        for der in intermediates {
            let (_, cert) = X509Certificate::from_der(der).ok()?;
            not_before = not_before.max(timestamp(cert.validity().not_before.timestamp())?);
            not_after = not_after.min(timestamp(cert.validity().not_after.timestamp())?);
        }
        let serial = Serial::from_der(leaf.raw_serial());
        Some(Self { id, serial, not_before, not_after })
    }

    /// Inside every certificate's validity period (inclusive, as webpki checks it).
    fn valid_at(&self, now: UnixTime) -> bool {
        (self.not_before..=self.not_after).contains(&now.as_secs())
    }
}

fn timestamp(t: i64) -> Option<u64> {
    u64::try_from(t).ok()
}

/// The memo's key for a presented chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainKey([u8; 32]);

impl ChainKey {
    pub fn of(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for der in std::iter::once(end_entity).chain(intermediates) {
            // Length-prefixed, so no two different chains hash the same bytes.
            ctx.update(&(der.len() as u64).to_be_bytes());
            ctx.update(der);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        Self(key)
    }
}

#[derive(Debug, Default)]
pub struct VerifiedChains {
    entries: Mutex<HashMap<ChainKey, Verified>>,
}

impl VerifiedChains {
    /// The remembered result for `key`, if it was verified and `now` is inside its window.
    pub fn get(&self, key: &ChainKey, now: UnixTime) -> Option<Verified> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|v| v.valid_at(now)).cloned()
    }

    /// Remembers a chain that passed every check.
    pub fn insert(&self, key: ChainKey, verified: Verified) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, verified);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(not_before: u64, not_after: u64) -> Verified {
        Verified {
            id: "spiffe://example.org/ns/a/sa/b".parse().expect("valid id"),
            serial: Serial::from_der(&[1]),
            not_before,
            not_after,
        }
    }

    fn der(bytes: &[u8]) -> CertificateDer<'static> {
        CertificateDer::from(bytes.to_vec())
    }

    #[test]
    fn keys_differ_with_any_certificate_or_their_boundaries() {
        let (a, b) = (der(b"leaf"), der(b"intermediate"));
        assert_eq!(ChainKey::of(&a, std::slice::from_ref(&b)), ChainKey::of(&a, std::slice::from_ref(&b)));
        assert_ne!(ChainKey::of(&a, &[]), ChainKey::of(&a, std::slice::from_ref(&b)));
        assert_ne!(ChainKey::of(&a, std::slice::from_ref(&b)), ChainKey::of(&b, std::slice::from_ref(&a)));
        // "le" + "afintermediate" is not "leaf" + "intermediate".
        let (c, d) = (der(b"le"), der(b"afintermediate"));
        assert_ne!(ChainKey::of(&a, std::slice::from_ref(&b)), ChainKey::of(&c, std::slice::from_ref(&d)));
    }

    #[test]
    fn answers_only_inside_the_validity_window() {
        let memo = VerifiedChains::default();
        let key = ChainKey::of(&der(b"leaf"), &[]);
        memo.insert(key, verified(100, 200));
        for (t, hit) in [(99, false), (100, true), (150, true), (200, true), (201, false)] {
            assert_eq!(
                memo.get(&key, UnixTime::since_unix_epoch(std::time::Duration::from_secs(t))).is_some(),
                hit,
                "t={t}"
            );
        }
        assert!(memo
            .get(
                &ChainKey::of(&der(b"other"), &[]),
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(150))
            )
            .is_none());
    }

    #[test]
    fn stays_bounded() {
        let memo = VerifiedChains::default();
        for i in 0..(MAX_ENTRIES * 3) {
            memo.insert(ChainKey::of(&der(&i.to_be_bytes()), &[]), verified(0, u64::MAX));
            assert!(memo.len() <= MAX_ENTRIES);
        }
    }
}
