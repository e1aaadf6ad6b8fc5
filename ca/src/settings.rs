//! `ca.toml`: the authority's own settings, written by `init` and read by every other command.

use std::path::Path;

use mesh_config::{TrustDomain, Ttl};
use serde::{Deserialize, Serialize};

use crate::error::CaError;

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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    trust_domain: String,
    min_leaf_ttl: String,
    max_leaf_ttl: String,
    default_leaf_ttl: String,
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
        Ok(Self { trust_domain, min_leaf_ttl: min, max_leaf_ttl: max, default_leaf_ttl: default })
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
        Self::new(
            td,
            parse_ttl("min_leaf_ttl", &file.min_leaf_ttl)?,
            parse_ttl("max_leaf_ttl", &file.max_leaf_ttl)?,
            parse_ttl("default_leaf_ttl", &file.default_leaf_ttl)?,
        )
        .map_err(|e| CaError::bad_file(path, &e.to_string()))
    }
}
