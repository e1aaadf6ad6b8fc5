//! The CA API's wire types, version 1: what the CA server answers and its client reads, in one
//! module both compile against. JSON; every refusal is a 4xx with an [`ErrorBody`]
//! (`{"error": <stable code>, "reason": <sentence>}`). The routes and their rules are the
//! server's (`mesh_ca::server`).

use serde::{Deserialize, Serialize};

use crate::serial::Serial;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    pub csr: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct IssuedBody {
    pub spiffe_id: String,
    /// A JSON string, lowercase hex.
    pub serial: Serial,
    pub not_after: i64,
    /// Leaf then intermediate, PEM.
    pub cert_chain: String,
    /// Trust anchors, PEM.
    pub bundle: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
    pub reason: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct BundleBody {
    pub sequence: u64,
    pub bundle: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RevocationsBody {
    /// The log position this page covers (compacted entries included); ask for
    /// `since=<this>` next.
    pub sequence: i64,
    pub revoked: Vec<RevocationJson>,
    /// More entries follow `sequence` already: ask again at once, without waiting. Absent
    /// (false) from servers that served the whole log in one answer.
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct RevocationJson {
    pub seq: i64,
    /// A JSON string (lowercase hex) or null.
    pub serial: Option<Serial>,
    pub spiffe_id: Option<String>,
    pub reason: String,
    pub revoked_at: i64,
    /// An identity whose earlier revocations this entry lifts (`mesh-ca reinstate`); then
    /// `serial` and `spiffe_id` are both null, so a follower that does not know the field
    /// skips the entry (and keeps the identity revoked, as it had it) instead of reading it
    /// as a revocation. The identity's certificates from before have serial entries of their
    /// own ahead of this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinstated: Option<String>,
}
