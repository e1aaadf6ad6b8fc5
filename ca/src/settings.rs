//! `ca.toml`: the authority's own settings, written by `init` and read by every other command.

use std::path::Path;

use mesh_config::{TrustDomain, Ttl};
use mesh_identity::token::{MAX_TOKEN_TTL, MAX_TOKEN_USES};
use serde::{Deserialize, Serialize};

use crate::error::CaError;
use crate::store::StoreConfig;

/// Hard bounds of the mesh: no leaf lives less than a minute or more than a day, whatever
/// an operator configures (DESIGN.md, Identity).
pub const LEAF_TTL_FLOOR: Ttl = Ttl::from_secs(60);
pub const LEAF_TTL_CEILING: Ttl = Ttl::from_secs(24 * 3600);
/// The longest root or intermediate lifetime `init` accepts: 50 years (`438000h`). Far more
/// than a CA should live (the defaults are 10 years and 1 year), and far from where the
/// arithmetic on certificate times could overflow (X.509 times end in the year 9999).
pub const CA_TTL_CEILING: Ttl = Ttl::from_secs(50 * 365 * 24 * 3600);

/// What the CA enforces on every certificate it issues.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The trust domain every issued SPIFFE ID belongs to.
    pub trust_domain: TrustDomain,
    /// Shortest leaf TTL a caller may ask for.
    pub min_leaf_ttl: Ttl,
    /// Longest leaf TTL a caller may ask for.
    pub max_leaf_ttl: Ttl,
    /// TTL used when a caller does not ask for one.
    pub default_leaf_ttl: Ttl,
    /// Where the certificate store is (`store = "sqlite:store.db"`; that is also what a
    /// `ca.toml` without the line means, so CA directories made before it keep working).
    pub store: StoreConfig,
    /// Longest a join token of this CA may live (`init --max-token-ttl`; at most
    /// [`MAX_TOKEN_TTL`], which a `ca.toml` without the line means).
    pub max_token_ttl: Ttl,
    /// Most enrollments one join token of this CA may allow (`init --max-token-uses`; at
    /// most [`MAX_TOKEN_USES`], which a `ca.toml` without the line means).
    pub max_token_uses: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    trust_domain: String,
    min_leaf_ttl: String,
    max_leaf_ttl: String,
    default_leaf_ttl: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_token_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_token_uses: Option<u32>,
}

impl Settings {
    /// Checks the bounds against each other and the mesh's hard limits.
    pub fn new(trust_domain: TrustDomain, min: Ttl, max: Ttl, default: Ttl) -> Result<Self, CaError> {
        if min < LEAF_TTL_FLOOR || max > LEAF_TTL_CEILING {
            return Err(CaError::Refused(format!(
                "leaf TTL bounds must lie within [{LEAF_TTL_FLOOR}, {LEAF_TTL_CEILING}], got [{min}, {max}]"
            )));
        }
        if min > max || default < min || default > max {
            return Err(CaError::Refused(format!(
                "--default-leaf-ttl {default} must lie within --min-leaf-ttl {min} and --max-leaf-ttl {max}"
            )));
        }
        Ok(Self {
            trust_domain,
            min_leaf_ttl: min,
            max_leaf_ttl: max,
            default_leaf_ttl: default,
            store: StoreConfig::default(),
            max_token_ttl: MAX_TOKEN_TTL,
            max_token_uses: MAX_TOKEN_USES,
        })
    }

    /// The same settings with these bounds on join tokens, each within the mesh's hard
    /// limits ([`MAX_TOKEN_TTL`], [`MAX_TOKEN_USES`]).
    pub fn with_token_bounds(self, max_ttl: Ttl, max_uses: u32) -> Result<Self, CaError> {
        if max_ttl > MAX_TOKEN_TTL || max_ttl.as_secs() == 0 {
            return Err(CaError::Refused(format!(
                "--max-token-ttl {max_ttl} must lie within 1s and {MAX_TOKEN_TTL} (30 days)"
            )));
        }
        if max_uses == 0 || max_uses > MAX_TOKEN_USES {
            return Err(CaError::Refused(format!(
                "--max-token-uses {max_uses} must lie within 1 and {MAX_TOKEN_USES}"
            )));
        }
        Ok(Self { max_token_ttl: max_ttl, max_token_uses: max_uses, ..self })
    }

    /// Refuses a join token this CA's bounds do not allow, naming the bound and where it is set.
    pub fn check_token(&self, ttl: Ttl, uses: u32) -> Result<(), CaError> {
        if uses == 0 || uses > self.max_token_uses {
            return Err(CaError::Refused(format!(
                "--uses {uses} must lie within 1..={} (this CA's max_token_uses in ca.toml, set by \
                 `mesh-ca init --max-token-uses`; at most {MAX_TOKEN_USES})",
                self.max_token_uses
            )));
        }
        if ttl > self.max_token_ttl {
            return Err(CaError::Refused(format!(
                "--ttl {ttl} is longer than a join token of this CA may live ({}: max_token_ttl in \
                 ca.toml, set by `mesh-ca init --max-token-ttl`; at most {MAX_TOKEN_TTL})",
                self.max_token_ttl
            )));
        }
        Ok(())
    }

    /// The TTL to issue for a request, or a refusal naming the allowed range.
    pub fn leaf_ttl(&self, asked: Option<Ttl>) -> Result<Ttl, CaError> {
        let ttl = asked.unwrap_or(self.default_leaf_ttl);
        if ttl < self.min_leaf_ttl || ttl > self.max_leaf_ttl {
            return Err(CaError::Refused(format!(
                "--ttl {ttl} is outside this CA's range [{}, {}]",
                self.min_leaf_ttl, self.max_leaf_ttl
            )));
        }
        Ok(ttl)
    }

    pub fn to_toml(&self) -> String {
        let file = SettingsFile {
            trust_domain: self.trust_domain.to_string(),
            min_leaf_ttl: self.min_leaf_ttl.to_string(),
            max_leaf_ttl: self.max_leaf_ttl.to_string(),
            default_leaf_ttl: self.default_leaf_ttl.to_string(),
            store: Some(self.store.to_string()),
            max_token_ttl: Some(self.max_token_ttl.to_string()),
            max_token_uses: Some(self.max_token_uses),
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!("# zt-mesh CA settings, written by `mesh-ca init`.\n{body}")
    }

    pub fn load(path: &Path) -> Result<Self, CaError> {
        let raw = crate::fsutil::read_bounded(path, 64 * 1024)?;
        let text = String::from_utf8(raw).map_err(|_| CaError::bad_file(path, "is not UTF-8"))?;
        let file: SettingsFile = toml::from_str(&text).map_err(|e| CaError::bad_file(path, e.message()))?;
        let parse_ttl = |key: &str, v: &str| {
            v.parse::<Ttl>().map_err(|e| CaError::bad_file(path, &format!("{key}: {e}")))
        };
        let td =
            file.trust_domain.parse().map_err(|e| CaError::bad_file(path, &format!("trust_domain {e}")))?;
        let store = match &file.store {
            None => StoreConfig::default(),
            Some(v) => v.parse().map_err(|e| CaError::bad_file(path, &format!("store: {e}")))?,
        };
        let settings = Self::new(
            td,
            parse_ttl("min_leaf_ttl", &file.min_leaf_ttl)?,
            parse_ttl("max_leaf_ttl", &file.max_leaf_ttl)?,
            parse_ttl("default_leaf_ttl", &file.default_leaf_ttl)?,
        )
        .map_err(|e| CaError::bad_file(path, &e.to_string()))?;
        let max_ttl = match &file.max_token_ttl {
            None => MAX_TOKEN_TTL,
            Some(v) => parse_ttl("max_token_ttl", v)?,
        };
        let settings = settings
            .with_token_bounds(max_ttl, file.max_token_uses.unwrap_or(MAX_TOKEN_USES))
            .map_err(|e| CaError::bad_file(path, &e.to_string().replace("--max-token-", "max_token_")))?;
        Ok(Self { store, ..settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("ca.toml");
        std::fs::write(&p, body).expect("write");
        p
    }

    const BASE: &str = "trust_domain = \"example.org\"\nmin_leaf_ttl = \"1m\"\nmax_leaf_ttl = \"24h\"\ndefault_leaf_ttl = \"1h\"\n";

    #[test]
    fn store_defaults_to_sqlite_store_db_and_is_written_by_init() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Settings::load(&write(dir.path(), BASE)).expect("a ca.toml from before the store line");
        assert_eq!(old.store, StoreConfig::Sqlite("store.db".into()));
        assert!(old.to_toml().contains("store = \"sqlite:store.db\""), "{}", old.to_toml());
        let again = Settings::load(&write(dir.path(), &old.to_toml())).expect("round trip");
        assert_eq!(again.store, old.store);
        let elsewhere =
            Settings::load(&write(dir.path(), &format!("{BASE}store = \"sqlite:/var/lib/ca.db\"\n")))
                .expect("an absolute path");
        assert_eq!(elsewhere.store.in_dir(dir.path()), StoreConfig::Sqlite("/var/lib/ca.db".into()));
        assert_eq!(old.store.in_dir(Path::new("/ca")), StoreConfig::Sqlite("/ca/store.db".into()));
    }

    #[test]
    fn token_bounds_are_written_read_back_defaulted_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Settings::load(&write(dir.path(), BASE)).expect("a ca.toml from before the token lines");
        assert_eq!((old.max_token_ttl, old.max_token_uses), (MAX_TOKEN_TTL, MAX_TOKEN_USES));
        let set = old.with_token_bounds(Ttl::from_secs(3600), 5).expect("within the caps");
        let text = set.to_toml();
        assert!(text.contains("max_token_ttl = \"1h\"") && text.contains("max_token_uses = 5"), "{text}");
        let again = Settings::load(&write(dir.path(), &text)).expect("round trip");
        assert_eq!((again.max_token_ttl, again.max_token_uses), (Ttl::from_secs(3600), 5));
        assert!(again.check_token(Ttl::from_secs(3600), 5).is_ok());
        let e = again.check_token(Ttl::from_secs(3601), 1).expect_err("past the CA's bound");
        assert!(e.to_string().contains("max_token_ttl"), "{e}");
        let e = again.check_token(Ttl::from_secs(60), 6).expect_err("past the CA's bound");
        assert!(e.to_string().contains("max_token_uses"), "{e}");
        assert!(again.clone().with_token_bounds(Ttl::from_secs(721 * 3600), 1).is_err());
        assert!(again.with_token_bounds(Ttl::from_secs(60), 1001).is_err());
        let e = Settings::load(&write(dir.path(), &format!("{BASE}max_token_uses = 5000\n")))
            .expect_err("above the hard cap");
        assert!(e.to_string().contains("max_token_uses 5000"), "{e}");
    }

    #[test]
    fn unknown_and_postgres_stores_are_refused_with_what_is_supported() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (value, says) in [
            ("mysql://db/ca", "unknown store scheme \"mysql\""),
            ("store.db", "no store scheme"),
            ("sqlite:", "sqlite:PATH"),
            ("postgres://ca:secret@db/ca", "not in this build yet"),
            ("postgresql://db/ca", "not in this build yet"),
        ] {
            let e =
                Settings::load(&write(dir.path(), &format!("{BASE}store = {value:?}\n"))).expect_err(value);
            let msg = e.to_string();
            assert!(msg.contains("ca.toml: store: ") && msg.contains(says), "{value}: {msg}");
            assert!(msg.contains("sqlite:PATH"), "names what is supported: {msg}");
            assert!(!msg.contains("secret"), "never echoes a URL's password: {msg}");
        }
    }
}
