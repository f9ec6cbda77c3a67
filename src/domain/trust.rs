//! Partner trust profiles: which issuers a partner vouches through, with which keys and
//! algorithms (JOSE names), under which limits; and what a partner JWT that passed one says.

use serde_json::Value;

use crate::domain::jwks::PublicKeys;
use crate::domain::scopes::ScopeSet;

#[derive(Debug, Clone)]
pub struct TrustProfile {
    pub partner: String,
    pub version: i32,
    pub issuers: Vec<String>,
    pub keys: KeySource,
    /// JOSE `alg` names.
    pub algorithms: Vec<String>,
    pub max_assertion_lifetime: i64,
    pub required_claims: serde_json::Map<String, Value>,
    pub single_use: bool,
    pub audiences: Vec<String>,
    pub scopes: ScopeSet,
    pub region: String,
    pub active: bool,
    /// The JOSE `typ` the partner's JWTs must carry, if the profile fixes one.
    pub required_typ: Option<String>,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Inline(PublicKeys),
    Uri(String),
}

/// What a data owner's trust profile still lets its subjects reach: the audiences and scopes
/// of both the version a subject was accepted under and the active version.
#[derive(Debug, Clone)]
pub struct Reach {
    pub audiences: Vec<String>,
    pub scopes: ScopeSet,
}

#[derive(Debug, Clone, Default)]
pub struct NewProfile {
    pub issuers: Vec<String>,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<String>,
    pub max_assertion_lifetime_s: i32,
    pub required_claims: Value,
    pub single_use: bool,
    pub client_ca_pem: Option<String>,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub region: String,
    pub active: bool,
    pub required_typ: Option<String>,
}

/// A partner JWT that passed its profile: who it vouches for.
#[derive(Debug, Clone)]
pub struct PartnerSubject {
    pub profile: TrustProfile,
    pub issuer: String,
    pub subject: String,
    pub expires_at: i64,
    pub scopes: Option<ScopeSet>,
    pub may_act: Option<Value>,
}

/// Why a partner JWT is refused (for the audit trail; the caller hears `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

pub enum Validated {
    Accepted(Box<PartnerSubject>),
    Rejected(Rejected),
}
