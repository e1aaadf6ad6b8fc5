//! The CA server's revocation set, in memory: what its TLS verifier consults in every
//! handshake and resumption, so no handshake waits on the store (a slow or locked store would
//! otherwise stall, or with fail-closed answers refuse, every caller with a certificate).
//!
//! Loaded from the store's whole log at start; then every entry the server learns of is
//! [`RevokedSet::record`]ed: those the revocation follower reads from the store (which also
//! brings in `mesh-ca revoke` run by other processes on the same directory) and those the
//! server writes itself. The set grows, except that a reinstatement (`mesh-ca reinstate`) takes
//! its identity out again (its certificates from before stay in, by serial).
//!
//! Not the only check: renewal asks the store again before it issues (fail closed there), so a
//! certificate revoked a moment before the follower saw it still gets nothing new.

use std::collections::HashSet;
use std::sync::RwLock;

use mesh_config::SpiffeId;
use mesh_identity::tls::RevocationCheck;

use crate::store::{Revocation, Store, StoreError};

/// Revoked serials and identities (as the store writes them).
#[derive(Default)]
pub(crate) struct RevokedSet {
    inner: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    serials: HashSet<String>,
    ids: HashSet<String>,
}

impl RevokedSet {
    /// Every revocation in `store`'s log. Fails (and the server does not start) if the log
    /// cannot be read: a server that cannot tell revoked callers apart must not serve them.
    pub fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let set = Self::default();
        set.record(&store.revocations_since(0)?);
        Ok(set)
    }

    /// Adds `entries` (new or already known: adding twice changes nothing).
    pub fn record(&self, entries: &[Revocation]) {
        if entries.is_empty() {
            return;
        }
        let mut e = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for r in entries {
            if r.action == crate::store::RevocationAction::Reinstate {
                // Lifted; its certificates from before came as serial entries ahead of this.
                if let Some(id) = r.spiffe_id.as_deref() {
                    e.ids.remove(id);
                }
                continue;
            }
            if let Some(s) = r.serial.as_deref() {
                e.serials.insert(s.to_owned());
            }
            if let Some(id) = r.spiffe_id.as_deref() {
                e.ids.insert(id.to_owned());
            }
        }
    }

    /// Whether the certificate `serial`, or its identity `id`, is revoked.
    pub fn contains(&self, serial: &str, id: &SpiffeId) -> bool {
        let e = self.inner.read().unwrap_or_else(|p| p.into_inner());
        e.serials.contains(serial) || (!e.ids.is_empty() && e.ids.contains(&id.to_string()))
    }

    /// Serials and identities held.
    pub fn len(&self) -> usize {
        let e = self.inner.read().unwrap_or_else(|p| p.into_inner());
        e.serials.len() + e.ids.len()
    }
}

impl std::fmt::Debug for RevokedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RevokedSet({} entries)", self.len())
    }
}

impl RevocationCheck for RevokedSet {
    fn is_revoked(&self, serial_hex: &str, id: &SpiffeId) -> bool {
        self.contains(serial_hex, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    #[test]
    fn loads_the_whole_log_then_learns_what_is_recorded_and_answers_without_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::create(&StoreConfig::Sqlite(dir.path().join("s.db"))).expect("store");
        let serial = |s: &str| mesh_identity::Serial::parse(s).expect("serial");
        let (a, b) = (serial("0a01"), serial("0b02"));
        let api: SpiffeId = "spiffe://example.org/ns/orders/sa/api".parse().expect("id");
        let web: SpiffeId = "spiffe://example.org/ns/frontend/sa/web".parse().expect("id");
        store.revoke(Some(&a), None, "key-compromise", "test", 1).expect("revoke a");
        store.revoke(None, Some(&web.to_string()), "retired", "test", 2).expect("revoke web");

        let set = RevokedSet::load(store.as_ref()).expect("load");
        assert!(set.contains(&a, &api), "a serial revoked before the start");
        assert!(set.contains("ff", &web), "every certificate of an identity revoked before the start");
        assert!(!set.contains(&b, &api), "another certificate of the same identity is not revoked");

        // Written after the load (by `mesh-ca revoke`, say): unknown until recorded, then known.
        let head = store.revocation_head().expect("head");
        store.revoke(Some(&b), None, "key-compromise", "test", 3).expect("revoke b");
        assert!(!set.contains(&b, &api), "the set is memory: it does not read the store");
        set.record(&store.revocations_since(head).expect("since"));
        assert!(set.contains(&b, &api));
        // Recording the same entries again changes nothing.
        set.record(&store.revocations_since(0).expect("all"));
        assert_eq!(set.len(), 3);
    }
}
