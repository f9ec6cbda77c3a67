//! Partner trust profiles: which issuers a partner vouches through, with which keys and
//! algorithms, under which limits; and validation of the JWTs those issuers sign.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::scopes::ScopeSet;

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
    /// The JOSE `typ` the partner's JWTs must carry, if the profile fixes one.
    pub required_typ: Option<String>,
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
    required_typ: Option<String>,
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
            required_typ: row.required_typ,
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
                p.scopes, p.region, p.status, p.required_typ
           FROM trust_issuers i
           JOIN trust_profile_heads h ON h.partner_id = i.partner_id
           JOIN trust_profiles p
             ON p.partner_id = h.partner_id AND p.version = h.active_version
          WHERE i.issuer = $1 AND $1 = ANY (p.issuers)",
    )
    .bind(issuer)
    .fetch_optional(pool)
    .await?;
    row.map(TrustProfile::try_from)
        .transpose()
        .map_err(TrustError::Malformed)
}

/// The CA certificates of every active profile, by partner: each partner's clients'
/// certificates chain to its own.
pub async fn client_cas(
    pool: &PgPool,
) -> Result<Vec<(String, Vec<rustls::pki_types::CertificateDer<'static>>)>, TrustError> {
    use rustls::pki_types::pem::PemObject;
    let pems: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.partner_id, p.client_ca_pem FROM trust_profiles p
           JOIN trust_profile_heads h
             ON h.partner_id = p.partner_id AND h.active_version = p.version
          WHERE p.status = 'active' AND p.client_ca_pem IS NOT NULL
          ORDER BY p.partner_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(pems
        .into_iter()
        .map(|(partner, pem)| {
            let roots = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
            (partner, roots)
        })
        .collect())
}

/// What a data owner's trust profile still lets its subjects reach: the audiences and scopes
/// of both the version a subject was accepted under and the active version.
#[derive(Debug, Clone)]
pub struct Reach {
    pub audiences: Vec<String>,
    pub scopes: ScopeSet,
}

/// The reach of `partner`'s profile `version` as limited by its active version; `None` when
/// the partner, its active profile or the version is not usable any more.
pub async fn reach(
    pool: &PgPool,
    partner: &str,
    version: i32,
) -> Result<Option<Reach>, TrustError> {
    #[derive(sqlx::FromRow)]
    struct Versions {
        issued_audiences: Vec<String>,
        issued_scopes: Vec<String>,
        audiences: Vec<String>,
        scopes: Vec<String>,
    }
    let row: Option<Versions> = sqlx::query_as(
        "SELECT v.audiences AS issued_audiences, v.scopes AS issued_scopes, a.audiences, a.scopes
           FROM trust_profiles v
           JOIN trust_profile_heads h ON h.partner_id = v.partner_id
           JOIN trust_profiles a ON a.partner_id = h.partner_id AND a.version = h.active_version
           JOIN partners p ON p.id = v.partner_id
          WHERE v.partner_id = $1 AND v.version = $2
            AND a.status = 'active' AND p.status = 'active'",
    )
    .bind(partner)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| Reach {
        audiences: row
            .issued_audiences
            .into_iter()
            .filter(|audience| row.audiences.contains(audience))
            .collect(),
        scopes: ScopeSet::from_stored(&row.issued_scopes)
            .intersection(&ScopeSet::from_stored(&row.scopes)),
    }))
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
    // One issuer vouches for one partner: otherwise a partner could speak for another's
    // subjects. The first partner to claim an issuer keeps it; the key on `trust_issuers`
    // serialises concurrent claims.
    sqlx::query(
        "INSERT INTO trust_issuers (issuer, partner_id) SELECT unnest($1::text[]), $2
         ON CONFLICT (issuer) DO NOTHING",
    )
    .bind(&profile.issuers)
    .bind(partner)
    .execute(&mut *tx)
    .await?;
    let claimed: Option<String> = sqlx::query_scalar(
        "SELECT partner_id FROM trust_issuers WHERE issuer = ANY ($1) AND partner_id <> $2
          LIMIT 1",
    )
    .bind(&profile.issuers)
    .bind(partner)
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
             created_by, required_typ)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
    .bind(&profile.required_typ)
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

/// Key sets fetched from `jwks_uri`, shared by all requests of a node. A partner's endpoint
/// is never driven by the requests: one fetch at a time per endpoint, at most one fetch per
/// interval after a failure or for an unknown `kid`, and a known key set keeps serving for a
/// bounded time while its endpoint fails.
pub struct JwksCache {
    http: reqwest::Client,
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<CachedKeys>>>>,
}

#[derive(Default)]
struct CachedKeys {
    /// The last key set fetched, and when.
    keys: Option<(JwkSet, Instant)>,
    /// When an unknown `kid` last caused a fetch.
    refetched_for_unknown_kid: Option<Instant>,
    /// When the last fetch failed.
    failed: Option<Instant>,
}

/// A fetched key set is used this long before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers at most one refetch per issuer in this interval.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, none is tried again for this long (requests fail fast meanwhile).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How long past its TTL a key set keeps serving while its endpoint fails.
const SERVE_STALE_FOR: Duration = Duration::from_secs(3600);
/// The longest key set accepted, and how long a fetch may take in all.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

impl JwksCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, uri: &str) -> Arc<tokio::sync::Mutex<CachedKeys>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(uri.to_owned())
            .or_default()
            .clone()
    }

    #[tracing::instrument(name = "partner_jwks_fetch", skip_all)]
    async fn fetch(&self, uri: &str) -> Result<JwkSet, TrustError> {
        let unreachable = |reason: String| TrustError::KeysUnreachable(reason);
        let mut response = self
            .http
            .get(uri)
            .headers(crate::telemetry::outgoing_headers())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| unreachable(error.without_url().to_string()))?;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| unreachable(error.without_url().to_string()))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
                return Err(unreachable(format!(
                    "key set larger than {MAX_JWKS_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| unreachable("not a JWK set".into()))
    }

    /// The key set for `uri`: fetched when absent or stale, and fetched again for an unknown
    /// `kid` (a partner rotating keys) at most once per refetch interval.
    async fn keys_for(&self, uri: &str, kid: Option<&str>) -> Result<JwkSet, TrustError> {
        let entry = self.entry(uri);
        // Held across the fetch: concurrent requests for this endpoint wait for its result
        // instead of fetching again.
        let mut cached = entry.lock().await;
        let known = |keys: &JwkSet| kid.is_none_or(|kid| keys.find(kid).is_some());
        let may_fetch = cached
            .failed
            .is_none_or(|failed| failed.elapsed() >= RETRY_AFTER_FAILURE);
        let fetch = match &cached.keys {
            None => may_fetch,
            Some((_, fetched)) if fetched.elapsed() >= JWKS_TTL => may_fetch,
            Some((keys, _)) if known(keys) => false,
            Some(_) => {
                may_fetch
                    && cached
                        .refetched_for_unknown_kid
                        .is_none_or(|refetched| refetched.elapsed() >= REFETCH_INTERVAL)
            }
        };
        if fetch {
            if cached.keys.is_some() {
                cached.refetched_for_unknown_kid = Some(Instant::now());
            }
            match self.fetch(uri).await {
                Ok(keys) => {
                    cached.keys = Some((keys.clone(), Instant::now()));
                    cached.failed = None;
                    return Ok(keys);
                }
                Err(error) => {
                    tracing::warn!(%error, "a partner's key set could not be fetched");
                    cached.failed = Some(Instant::now());
                }
            }
        }
        match &cached.keys {
            Some((keys, fetched)) if fetched.elapsed() < JWKS_TTL + SERVE_STALE_FOR => {
                Ok(keys.clone())
            }
            _ => Err(TrustError::KeysUnreachable(
                "no usable key set (fetch failed recently)".into(),
            )),
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
    let Ok(header) = crate::jwt::header(token) else {
        return reject("not a JWT");
    };
    let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<Value>(token) else {
        return reject("unreadable claims");
    };
    let Some(issuer) = unverified.claims.get("iss").and_then(Value::as_str) else {
        return reject("no iss");
    };
    if issuer == our_issuer {
        return reject("this server's own issuer is never a partner's");
    }
    let Some(profile) = profile_for_issuer(pool, issuer).await? else {
        return reject("issuer is not in any trust profile");
    };
    if !profile.active {
        return reject("the partner's trust profile is suspended");
    }
    // Checked before any key is fetched, so that a token the profile refuses anyway cannot
    // make us call the partner's endpoint.
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
    let rules = crate::jwt::Rules {
        algorithms: &profile.algorithms,
        issuer,
        audience: our_issuer,
        audience_as_string: false,
        typ: profile
            .required_typ
            .as_deref()
            .map_or(crate::jwt::Typ::NotAccessToken, crate::jwt::Typ::Required),
        max_lifetime_s: profile.max_assertion_lifetime,
        require_iat: true,
        require_jti: profile.single_use,
    };
    let claims = match crate::jwt::validate(token, &keys.keys, &rules, now) {
        Ok(claims) => claims,
        Err(reason) => return reject(reason),
    };
    for (name, expected) in &profile.required_claims {
        if claims.other.get(name) != Some(expected) {
            return Ok(Validated::Rejected(rejected(format!(
                "required claim `{name}` missing or different"
            ))));
        }
    }
    if let (true, Some(jti)) = (profile.single_use, claims.jti.as_deref()) {
        let expires_at = claims
            .exp
            .checked_add(crate::jwt::FOREIGN_CLOCK_LEEWAY_S)
            .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
            .ok_or_else(|| TrustError::Malformed("exp out of range".into()))?;
        let first_use = crate::replay::first_use(
            pool,
            crate::replay::AssertionKind::Partner,
            issuer,
            jti,
            expires_at,
        )
        .await?;
        if !first_use {
            return reject("assertion replayed (jti already used)");
        }
    }
    let scopes = claims
        .other
        .get("scope")
        .map(|scope| scope.as_str().and_then(ScopeSet::parse).unwrap_or_default());
    Ok(Validated::Accepted(Box::new(PartnerSubject {
        issuer: issuer.to_owned(),
        subject: claims.sub,
        expires_at: claims.exp,
        scopes,
        may_act: claims.other.get("may_act").cloned(),
        profile,
    })))
}
