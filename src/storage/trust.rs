//! Trust profile rows: versions, the active head, the issuers each partner claims.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::domain::admin::{PartnerStatus, TrustProfileDoc, TrustProfileVersion};
use crate::domain::jwks::PublicKeys;
use crate::domain::scopes::ScopeSet;
use crate::domain::trust::{KeySource, NewProfile, Reach, TrustProfile};

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

fn profile(row: ProfileRow) -> Result<TrustProfile, String> {
    {
        let keys = match (row.jwks, row.jwks_uri) {
            (Some(jwks), None) => KeySource::Inline(
                PublicKeys::from_document(&jwks).ok_or("inline JWKS is not a key set")?,
            ),
            (None, Some(uri)) => KeySource::Uri(uri),
            _ => return Err("a profile needs exactly one of jwks and jwks_uri".into()),
        };
        if let Some(name) = row
            .algorithms
            .iter()
            .find(|name| !crate::crypto::jwt::is_algorithm(name))
        {
            return Err(format!("algorithm {name}"));
        }
        let algorithms = row.algorithms;
        Ok(TrustProfile {
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
    row.map(profile).transpose().map_err(TrustError::Malformed)
}

/// The CA certificates of every active profile, by partner: each partner's clients'
/// certificates chain to its own.
pub async fn client_cas(pool: &PgPool) -> Result<Vec<(String, String)>, TrustError> {
    let pems: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.partner_id, p.client_ca_pem FROM trust_profiles p
           JOIN trust_profile_heads h
             ON h.partner_id = p.partner_id AND h.active_version = p.version
          WHERE p.status = 'active' AND p.client_ca_pem IS NOT NULL
          ORDER BY p.partner_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(pems)
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

#[derive(sqlx::FromRow)]
struct ProfileVersionRow {
    partner_id: String,
    version: i32,
    active: bool,
    created_by: String,
    issuers: Vec<String>,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
    algorithms: Vec<String>,
    max_assertion_lifetime_s: i32,
    required_claims: serde_json::Value,
    single_use: bool,
    client_ca_pem: Option<String>,
    audiences: Vec<String>,
    scopes: Vec<String>,
    region: String,
    status: String,
    required_typ: Option<String>,
}

impl From<ProfileVersionRow> for TrustProfileVersion {
    fn from(row: ProfileVersionRow) -> Self {
        Self {
            partner: row.partner_id,
            version: row.version,
            active: row.active,
            created_by: row.created_by,
            profile: TrustProfileDoc {
                issuers: row.issuers,
                jwks: row.jwks,
                jwks_uri: row.jwks_uri,
                algorithms: row.algorithms,
                max_assertion_lifetime_s: row.max_assertion_lifetime_s,
                required_claims: row.required_claims.as_object().cloned().unwrap_or_default(),
                single_use: row.single_use,
                client_ca_pem: row.client_ca_pem,
                audiences: row.audiences,
                scopes: row.scopes,
                region: row.region,
                status: if row.status == "active" {
                    PartnerStatus::Active
                } else {
                    PartnerStatus::Suspended
                },
                required_typ: row.required_typ,
            },
        }
    }
}

const PROFILE_SELECT: &str = "SELECT p.partner_id, p.version,
        COALESCE(h.active_version = p.version, false) AS active, p.created_by, p.issuers,
        p.jwks, p.jwks_uri, p.algorithms, p.max_assertion_lifetime_s, p.required_claims,
        p.single_use, p.client_ca_pem, p.audiences, p.scopes, p.region, p.status,
        p.required_typ
   FROM trust_profiles p LEFT JOIN trust_profile_heads h ON h.partner_id = p.partner_id";

/// Every version of the partner's trust profile, newest first.
pub async fn profile_versions(
    conn: &mut PgConnection,
    partner: &str,
) -> Result<Vec<TrustProfileVersion>, sqlx::Error> {
    let rows: Vec<ProfileVersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PROFILE_SELECT} WHERE p.partner_id = $1 ORDER BY p.version DESC"
    )))
    .bind(partner)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(TrustProfileVersion::from).collect())
}

pub async fn profile_version(
    conn: &mut PgConnection,
    partner: &str,
    version: i32,
) -> Result<Option<TrustProfileVersion>, sqlx::Error> {
    let row: Option<ProfileVersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PROFILE_SELECT} WHERE p.partner_id = $1 AND p.version = $2"
    )))
    .bind(partner)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(TrustProfileVersion::from))
}

/// The partner's active version (0 when it has none), locked against concurrent activation
/// until the transaction ends (through the partner's row, which exists before any head).
pub async fn lock_active_version(
    conn: &mut PgConnection,
    partner: &str,
) -> Result<Option<i32>, sqlx::Error> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM partners WHERE id = $1 FOR UPDATE")
        .bind(partner)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let active: Option<i32> =
        sqlx::query_scalar("SELECT active_version FROM trust_profile_heads WHERE partner_id = $1")
            .bind(partner)
            .fetch_optional(conn)
            .await?;
    Ok(Some(active.unwrap_or(0)))
}

/// Stores the next version (not active); returns its number.
pub async fn insert_profile_version(
    conn: &mut PgConnection,
    partner: &str,
    profile: &TrustProfileDoc,
    by: &str,
) -> Result<i32, sqlx::Error> {
    let version: i32 = sqlx::query_scalar(
        "SELECT COALESCE(max(version), 0) + 1 FROM trust_profiles WHERE partner_id = $1",
    )
    .bind(partner)
    .fetch_one(&mut *conn)
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
    .bind(serde_json::Value::Object(profile.required_claims.clone()))
    .bind(profile.single_use)
    .bind(&profile.client_ca_pem)
    .bind(&profile.audiences)
    .bind(&profile.scopes)
    .bind(&profile.region)
    .bind(profile.status.as_str())
    .bind(by)
    .bind(&profile.required_typ)
    .execute(conn)
    .await?;
    Ok(version)
}

/// Those of `audiences` that are not registered.
pub async fn unknown_audiences(
    conn: &mut PgConnection,
    audiences: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT a FROM unnest($1::text[]) AS a
          WHERE NOT EXISTS (SELECT 1 FROM audiences WHERE id = a)",
    )
    .bind(audiences)
    .fetch_all(conn)
    .await
}

/// Makes `version` the partner's active profile after claiming its issuers; returns the
/// partner that already holds one of them instead, if any (one issuer, one partner).
pub async fn activate_profile(
    conn: &mut PgConnection,
    partner: &str,
    version: i32,
    issuers: &[String],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO trust_issuers (issuer, partner_id) SELECT unnest($1::text[]), $2
         ON CONFLICT (issuer) DO NOTHING",
    )
    .bind(issuers)
    .bind(partner)
    .execute(&mut *conn)
    .await?;
    let claimed: Option<String> = sqlx::query_scalar(
        "SELECT partner_id FROM trust_issuers WHERE issuer = ANY ($1) AND partner_id <> $2
          LIMIT 1",
    )
    .bind(issuers)
    .bind(partner)
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        return Ok(claimed);
    }
    sqlx::query(
        "INSERT INTO trust_profile_heads (partner_id, active_version) VALUES ($1, $2)
         ON CONFLICT (partner_id) DO UPDATE SET active_version = EXCLUDED.active_version",
    )
    .bind(partner)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(None)
}
