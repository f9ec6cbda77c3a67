//! Partner trust profiles: which issuers a partner vouches through, with which keys and
//! algorithms, under which limits; and validation of the JWTs those issuers sign.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::scopes::ScopeSet;
use crate::tokens::FOREIGN_CLOCK_LEEWAY;

/// A fetched key set is used this long before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers at most one refetch per issuer in this interval.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct TrustProfile {
    pub partner: String,
    pub version: i32,
    pub issuers: Vec<String>,
    pub keys: KeySource,
    pub algorithms: Vec<Algorithm>,
    pub max_assertion_lifetime: i64,
    pub required_claims: serde_json::Map<String, Value>,
    pub single_use: bool,
    pub audiences: Vec<String>,
    pub scopes: ScopeSet,
    pub region: String,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Inline(JwkSet),
    Uri(String),
}

#[derive(sqlx::FromRow)]
struct ProfileRow {
    partner_id: String,
    version: i32,
    issuers: Vec<String>,
    jwks: Option<Value>,
    jwks_uri: Option<String>,
    algorithms: Vec<String>,
    max_assertion_lifetime_s: i32,
    required_claims: Value,
    single_use: bool,
    audiences: Vec<String>,
    scopes: Vec<String>,
    region: String,
    status: String,
}

impl TryFrom<ProfileRow> for TrustProfile {
    type Error = String;

    fn try_from(row: ProfileRow) -> Result<Self, String> {
        let keys = match (row.jwks, row.jwks_uri) {
            (Some(jwks), None) => KeySource::Inline(
                serde_json::from_value(jwks).map_err(|_| "inline JWKS is not a key set")?,
            ),
            (None, Some(uri)) => KeySource::Uri(uri),
            _ => return Err("a profile needs exactly one of jwks and jwks_uri".into()),
        };
        let algorithms = row
            .algorithms
            .iter()
            .map(|name| {
                name.parse::<Algorithm>()
                    .map_err(|_| format!("algorithm {name}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            partner: row.partner_id,
            version: row.version,
            issuers: row.issuers,
            keys,
            algorithms,
            max_assertion_lifetime: i64::from(row.max_assertion_lifetime_s),
            required_claims: row.required_claims.as_object().cloned().unwrap_or_default(),
            single_use: row.single_use,
            audiences: row.audiences,
            scopes: ScopeSet::from_stored(&row.scopes),
            region: row.region,
            active: row.status == "active",
        })
    }
}

/// The active profile version of the partner that vouches for `issuer`, if any.
pub async fn profile_for_issuer(
    pool: &PgPool,
    issuer: &str,
) -> Result<Option<TrustProfile>, TrustError> {
    let row: Option<ProfileRow> = sqlx::query_as(
        "SELECT p.partner_id, p.version, p.issuers, p.jwks, p.jwks_uri, p.algorithms,
                p.max_assertion_lifetime_s, p.required_claims, p.single_use, p.audiences,
                p.scopes, p.region, p.status
           FROM trust_profiles p
           JOIN trust_profile_heads h
             ON h.partner_id = p.partner_id AND h.active_version = p.version
          WHERE $1 = ANY (p.issuers)",
    )
    .bind(issuer)
    .fetch_optional(pool)
    .await?;
    row.map(TrustProfile::try_from)
        .transpose()
        .map_err(TrustError::Malformed)
}

/// The CA certificates of every active profile: partner clients' certificates chain to these.
pub async fn client_cas(
    pool: &PgPool,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TrustError> {
    use rustls::pki_types::pem::PemObject;
    let pems: Vec<String> = sqlx::query_scalar(
        "SELECT p.client_ca_pem FROM trust_profiles p
           JOIN trust_profile_heads h
             ON h.partner_id = p.partner_id AND h.active_version = p.version
          WHERE p.status = 'active' AND p.client_ca_pem IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(pems
        .iter()
        .flat_map(|pem| {
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .collect())
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
}

/// Writes the next version of the partner's profile, makes it the active one, and audits the
/// change.
pub async fn publish(
    pool: &PgPool,
    audit: &crate::audit::AuditLog,
    partner: &str,
    profile: &NewProfile,
    by: &str,
) -> Result<i32, TrustError> {
    let mut tx = pool.begin().await?;
    // One issuer vouches for one partner: otherwise a partner could speak for another's subjects.
    let claimed: Option<String> = sqlx::query_scalar(
        "SELECT p.partner_id FROM trust_profiles p
           JOIN trust_profile_heads h
             ON h.partner_id = p.partner_id AND h.active_version = p.version
          WHERE p.partner_id <> $1 AND p.issuers && $2
          LIMIT 1",
    )
    .bind(partner)
    .bind(&profile.issuers)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(other) = claimed {
        return Err(TrustError::Malformed(format!(
            "an issuer of this profile already vouches for partner {other}"
        )));
    }
    let version: i32 = sqlx::query_scalar(
        "SELECT COALESCE(max(version), 0) + 1 FROM trust_profiles WHERE partner_id = $1",
    )
    .bind(partner)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO trust_profiles
            (partner_id, version, issuers, jwks, jwks_uri, algorithms, max_assertion_lifetime_s,
             required_claims, single_use, client_ca_pem, audiences, scopes, region, status,
             created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(partner)
    .bind(version)
    .bind(&profile.issuers)
    .bind(&profile.jwks)
    .bind(&profile.jwks_uri)
    .bind(&profile.algorithms)
    .bind(profile.max_assertion_lifetime_s)
    .bind(&profile.required_claims)
    .bind(profile.single_use)
    .bind(&profile.client_ca_pem)
    .bind(&profile.audiences)
    .bind(&profile.scopes)
    .bind(&profile.region)
    .bind(if profile.active {
        "active"
    } else {
        "suspended"
    })
    .bind(by)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO trust_profile_heads (partner_id, active_version) VALUES ($1, $2)
         ON CONFLICT (partner_id) DO UPDATE SET active_version = EXCLUDED.active_version",
    )
    .bind(partner)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    audit
        .record(
            crate::audit::EventKind::TrustProfileChanged,
            crate::audit::Outcome::Allow,
            crate::audit::EventDetails {
                partner: Some(partner.to_owned()),
                trust_profile_version: Some(i64::from(version)),
                reason: Some(format!("version {version} published by {by}")),
                changes: Some(serde_json::json!({
                    "issuers": profile.issuers,
                    "jwks_uri": profile.jwks_uri,
                    "algorithms": profile.algorithms,
                    "audiences": profile.audiences,
                    "scopes": profile.scopes,
                    "region": profile.region,
                    "active": profile.active,
                })),
                ..crate::audit::EventDetails::default()
            },
        )
        .await
        .map_err(|error| TrustError::Malformed(format!("change not audited: {error}")))?;
    Ok(version)
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust profiles: {0}")]
    Database(#[from] sqlx::Error),
    #[error("trust profile unusable: {0}")]
    Malformed(String),
    #[error("the partner's key set could not be fetched: {0}")]
    KeysUnreachable(String),
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

/// Key sets fetched from `jwks_uri`, shared by all requests of a node.
pub struct JwksCache {
    http: reqwest::Client,
    entries: Mutex<HashMap<String, CachedKeys>>,
}

struct CachedKeys {
    keys: JwkSet,
    fetched: Instant,
    /// When an unknown `kid` last caused a fetch.
    refetched_for_unknown_kid: Option<Instant>,
}

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedKeys>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn fetch(&self, uri: &str, for_unknown_kid: bool) -> Result<JwkSet, TrustError> {
        let unreachable =
            |error: reqwest::Error| TrustError::KeysUnreachable(error.without_url().to_string());
        let keys: JwkSet = self
            .http
            .get(uri)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        let mut entries = self.entries();
        let previous_refetch = entries
            .get(uri)
            .and_then(|entry| entry.refetched_for_unknown_kid);
        entries.insert(
            uri.to_owned(),
            CachedKeys {
                keys: keys.clone(),
                fetched: Instant::now(),
                refetched_for_unknown_kid: if for_unknown_kid {
                    Some(Instant::now())
                } else {
                    previous_refetch
                },
            },
        );
        Ok(keys)
    }

    /// The key set for `uri`: fetched when absent or stale, and fetched again for an unknown
    /// `kid` (a partner rotating keys) at most once per refetch interval.
    async fn keys_for(&self, uri: &str, kid: Option<&str>) -> Result<JwkSet, TrustError> {
        let cached = self.entries().get(uri).map(|entry| {
            (
                entry.keys.clone(),
                entry.fetched,
                entry.refetched_for_unknown_kid,
            )
        });
        match cached {
            None => self.fetch(uri, false).await,
            Some((_, fetched, _)) if fetched.elapsed() >= JWKS_TTL => self.fetch(uri, false).await,
            Some((keys, _, refetched)) => {
                let known = kid.is_none_or(|kid| keys.find(kid).is_some());
                let may_refetch =
                    refetched.is_none_or(|refetched| refetched.elapsed() >= REFETCH_INTERVAL);
                if known || !may_refetch {
                    Ok(keys)
                } else {
                    self.fetch(uri, true).await
                }
            }
        }
    }
}

/// Why a partner JWT is refused (for the audit trail; the caller hears `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

fn rejected(reason: impl Into<String>) -> Rejected {
    Rejected(reason.into())
}

pub enum Validated {
    Accepted(Box<PartnerSubject>),
    Rejected(Rejected),
}

/// Validates a JWT from a partner's issuer against that partner's active trust profile.
pub async fn validate_partner_jwt(
    pool: &PgPool,
    cache: &JwksCache,
    token: &str,
    our_issuer: &str,
    now: i64,
) -> Result<Validated, TrustError> {
    let reject = |reason: &str| Ok(Validated::Rejected(rejected(reason)));
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return reject("not a JWT");
    };
    let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<Value>(token) else {
        return reject("unreadable claims");
    };
    let Some(issuer) = unverified.claims.get("iss").and_then(Value::as_str) else {
        return reject("no iss");
    };
    let Some(profile) = profile_for_issuer(pool, issuer).await? else {
        return reject("issuer is not in any trust profile");
    };
    if !profile.active {
        return reject("the partner's trust profile is suspended");
    }
    if !profile.algorithms.contains(&header.alg) {
        return reject("algorithm not allowed by the trust profile");
    }
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
        return reject("the JWT names its own key (jku, x5u or jwk)");
    }
    let keys = match &profile.keys {
        KeySource::Inline(keys) => keys.clone(),
        KeySource::Uri(uri) => cache.keys_for(uri, header.kid.as_deref()).await?,
    };
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => keys.find(kid).into_iter().collect(),
        None => keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return reject("signed by a key the partner does not publish");
    }
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[our_issuer]);
    validation.leeway = FOREIGN_CLOCK_LEEWAY.as_secs();
    let verified = candidates
        .iter()
        .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
        .find_map(|key| jsonwebtoken::decode::<PartnerClaims>(token, &key, &validation).ok());
    let Some(verified) = verified else {
        return reject("signature or claims invalid (issuer, audience, expiry, numeric dates)");
    };
    let claims = verified.claims;
    let Some(iat) = claims.iat else {
        return reject("iat is required to bound the assertion's lifetime");
    };
    if claims.exp - iat > profile.max_assertion_lifetime {
        return reject("the assertion lives longer than the trust profile allows");
    }
    if iat > now + FOREIGN_CLOCK_LEEWAY.as_secs() as i64 {
        return reject("iat is in the future");
    }
    for (name, expected) in &profile.required_claims {
        if unverified.claims.get(name) != Some(expected) {
            return Ok(Validated::Rejected(rejected(format!(
                "required claim `{name}` missing or different"
            ))));
        }
    }
    if profile.single_use {
        let Some(jti) = claims.jti.as_deref().filter(|jti| !jti.is_empty()) else {
            return reject("single-use assertions need a jti");
        };
        let expires_at =
            OffsetDateTime::from_unix_timestamp(claims.exp + FOREIGN_CLOCK_LEEWAY.as_secs() as i64)
                .map_err(|_| TrustError::Malformed("exp out of range".into()))?;
        let inserted = sqlx::query(
            "INSERT INTO partner_assertion_jtis (issuer, jti, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(issuer)
        .bind(jti)
        .bind(expires_at)
        .execute(pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return reject("assertion replayed (jti already used)");
        }
    }
    let scopes = claims
        .scope
        .as_deref()
        .map(|scope| ScopeSet::parse(scope).unwrap_or_default());
    Ok(Validated::Accepted(Box::new(PartnerSubject {
        issuer: issuer.to_owned(),
        subject: claims.sub,
        expires_at: claims.exp,
        scopes,
        may_act: claims.may_act,
        profile,
    })))
}

#[derive(serde::Deserialize)]
struct PartnerClaims {
    sub: String,
    exp: i64,
    iat: Option<i64>,
    /// Read so that a non-numeric `nbf` fails deserialisation (jsonwebtoken would skip it).
    #[serde(rename = "nbf")]
    _nbf: Option<i64>,
    jti: Option<String>,
    scope: Option<String>,
    may_act: Option<Value>,
}
