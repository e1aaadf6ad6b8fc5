//! A throwaway trust domain for tests and benchmarks (feature `test-util`, and this crate's
//! own tests): a root and an intermediate made in memory from the same templates the CA
//! issues from ([`crate::template`]), and leaves signed by that intermediate. No store, no
//! files: a sidecar's tests need no CA. Never part of a release build: the binaries do not
//! enable the feature.

use std::time::Duration;

use mesh_config::{SpiffeId, TrustDomain};
use rcgen::{Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::template::{self, LeafKind, NOT_BEFORE_BACKDATE};
use crate::tls::{Identity, TrustBundle};

/// Default lifetime of a test leaf.
const LEAF_TTL: Duration = Duration::from_secs(3_600);

/// A CA of one trust domain: its root, intermediate and bundle.
pub struct TestPki {
    pub td: TrustDomain,
    /// The root, bound to the trust domain.
    pub bundle: TrustBundle,
    root: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf as the CA would hand it out: the certificate and its serial.
pub struct TestLeaf {
    pub der: CertificateDer<'static>,
    pub serial: crate::serial::Serial,
}

impl TestPki {
    /// A CA for `example.org`.
    pub fn new() -> Self {
        Self::for_domain("example.org")
    }

    /// A CA for trust domain `td`: a root of ten years, an intermediate of one.
    pub fn for_domain(td: &str) -> Self {
        let td: TrustDomain = td.parse().expect("a valid trust domain");
        let now = OffsetDateTime::now_utc();
        let root_key = crate::keys::generate().expect("P-256 key generation");
        let root_params =
            template::ca(&td, "test root", &serial(), now - NOT_BEFORE_BACKDATE, now + years(10), 1)
                .expect("root template");
        let root = root_params.self_signed(&root_key).expect("self-signing the test root");
        let root_issuer = Issuer::new(root_params, root_key);
        let inter_key = crate::keys::generate().expect("P-256 key generation");
        let inter_params =
            template::ca(&td, "test intermediate", &serial(), now - NOT_BEFORE_BACKDATE, now + years(1), 0)
                .expect("intermediate template");
        let intermediate =
            inter_params.signed_by(&inter_key, &root_issuer).expect("signing the intermediate");
        let issuer = Issuer::new(inter_params, inter_key);
        let bundle = TrustBundle::new(td.clone(), vec![root.der().clone()]).expect("the root is an anchor");
        Self { td, bundle, root: root.der().clone(), intermediate: intermediate.der().clone(), issuer }
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    pub fn intermediate(&self) -> &CertificateDer<'static> {
        &self.intermediate
    }

    /// A workload leaf for `key`, valid from now for an hour. Unlike the CA, this signs any
    /// identity, another trust domain's or the reserved zone's included: what a rogue or
    /// federated CA could make, for tests of the verifiers.
    pub fn leaf(&self, id: &SpiffeId, key: &KeyPair) -> TestLeaf {
        let now = OffsetDateTime::now_utc();
        self.leaf_valid(id, key, now - NOT_BEFORE_BACKDATE, now + LEAF_TTL, LeafKind::Workload)
    }

    /// The CA server's own leaf (its identity and marker) for `key`.
    pub fn ca_server_leaf(&self, key: &KeyPair) -> TestLeaf {
        let now = OffsetDateTime::now_utc();
        let id = crate::profile::ca_server_id(&self.td);
        self.leaf_valid(&id, key, now - NOT_BEFORE_BACKDATE, now + LEAF_TTL, LeafKind::CaServer)
    }

    /// A leaf with the given validity window, for tests of expiry.
    pub fn leaf_valid(
        &self,
        id: &SpiffeId,
        key: &KeyPair,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        kind: LeafKind,
    ) -> TestLeaf {
        let serial = serial();
        let params = template::leaf(id, &[], &serial, not_before, not_after, kind).expect("leaf template");
        let der = params.signed_by(key, &self.issuer).expect("signing a test leaf").der().clone();
        TestLeaf { der, serial: crate::serial::Serial::from_der(&serial) }
    }

    /// A fresh key and a workload certificate for `id`, as a sidecar presents them.
    pub fn identity(&self, id: &SpiffeId) -> Identity {
        let key = crate::keys::generate().expect("P-256 key generation");
        let leaf = self.leaf(id, &key);
        self.identity_of(leaf, &key)
    }

    /// The CA server's identity, marker included.
    pub fn ca_server_identity(&self) -> Identity {
        let key = crate::keys::generate().expect("P-256 key generation");
        let leaf = self.ca_server_leaf(&key);
        self.identity_of(leaf, &key)
    }

    /// `leaf` and `key` as a presented identity: the leaf, then the intermediate.
    pub fn identity_of(&self, leaf: TestLeaf, key: &KeyPair) -> Identity {
        Identity {
            chain: vec![leaf.der, self.intermediate.clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn serial() -> [u8; crate::random::SERIAL_LEN] {
    crate::random::serial().expect("the system random source")
}

fn years(n: u64) -> Duration {
    Duration::from_secs(n * 365 * 86_400)
}
