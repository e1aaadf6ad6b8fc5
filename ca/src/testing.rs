//! A throwaway trust domain for tests and benchmarks (feature `test-util`, and this crate's
//! own tests): a CA made by `Authority::init` in a temporary directory, with unencrypted
//! keys (PBKDF2 would only slow tests down), and identities issued from it. Never part of a
//! release build: the binaries do not enable the feature.

use mesh_config::{SpiffeId, TrustDomain, Ttl};
use rustls::pki_types::PrivateKeyDer;

use crate::authority::{Authority, InitOptions};
use crate::settings::Settings;
use crate::tls::{Identity, TrustBundle};

/// A CA of one trust domain, its bundle, and the directory it lives in (removed on drop).
pub struct TestPki {
    _dir: tempfile::TempDir,
    pub authority: Authority,
    /// The root, bound to the trust domain.
    pub bundle: TrustBundle,
    pub td: TrustDomain,
}

impl TestPki {
    /// A CA for `example.org`.
    pub fn new() -> Self {
        Self::for_domain("example.org")
    }

    /// A CA for trust domain `td`: leaf TTLs between 1 minute and a day (1 hour by default),
    /// an intermediate of a year, a root of ten.
    pub fn for_domain(td: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the test CA");
        let td: TrustDomain = td.parse().expect("a valid trust domain");
        let settings =
            Settings::new(td.clone(), Ttl::from_secs(60), Ttl::from_secs(86_400), Ttl::from_secs(3_600))
                .expect("valid TTL bounds");
        let opts = InitOptions {
            settings,
            root_ttl: Ttl::from_secs(86_400 * 3_650),
            intermediate_ttl: Ttl::from_secs(86_400 * 365),
        };
        let made = Authority::init(&dir.path().join("ca"), &opts, None).expect("CA init in a temp dir");
        let authority = Authority::open(made, None).expect("open the CA just made");
        let bundle = TrustBundle::new(td.clone(), vec![authority.dir().root.clone()])
            .expect("the CA's root is an anchor");
        Self { _dir: dir, authority, bundle, td }
    }

    /// A fresh key and a certificate for `id` (default TTL), as a sidecar presents them.
    pub fn identity(&self, id: &SpiffeId) -> Identity {
        let key = crate::keys::generate().expect("P-256 key generation");
        let leaf = self.authority.issue(id, None, &[], &key, "test").expect("issue a test leaf");
        Identity {
            chain: vec![leaf.der, self.authority.dir().intermediate.clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
