//! Access tokens (RFC 9068 JWTs): their claims, minting, validation of our own tokens, and the
//! revocation list. Tokens are stateless; only revocations are stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::keys::{KeyError, KeySet};

/// Allowance for clocks other than ours (partner assertions); our own tokens get none.
pub const FOREIGN_CLOCK_LEEWAY: Duration = Duration::from_secs(10);

/// RFC 8705 §3.1 confirmation: the SHA-256 thumbprint of the client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub sub: String,
    /// Exactly one audience, always a string.
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// The version of the partner trust profile a partner's JWT was accepted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_profile_version: Option<i32>,
    /// The data owner: the partner whose subject this token is about, and its region. Every
    /// later exchange decides consent, trust profile and residency against them, whoever holds
    /// the token then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_partner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_region: Option<String>,
    /// RFC 8693 §4.4: who may act for the subject; carried so that no later hop drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub may_act: Option<serde_json::Value>,
}

pub fn mint(keys: &KeySet, claims: &AccessTokenClaims) -> Result<String, KeyError> {
    let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Crypto)?;
    keys.active.sign_access_token(&payload)
}

/// The shortest of the caps, as whole seconds (at least one).
pub fn lifetime(caps: &[Duration]) -> Duration {
    let shortest = caps.iter().min().copied().unwrap_or(Duration::from_secs(1));
    Duration::from_secs(shortest.as_secs().max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("not a JWT")]
    Malformed,
    #[error("not an access token (typ)")]
    WrongType,
    #[error("signed by a key this server does not publish")]
    UnknownKey,
    #[error("signature, issuer or claims invalid")]
    Invalid,
    #[error("expired")]
    Expired,
}

/// Validates a token this server issued: `typ: at+jwt`, a published `kid`, the pinned
/// algorithm of that key, our issuer, numeric `exp`/`iat`/`nbf`, not expired.
pub fn validate_own(
    keys: &KeySet,
    issuer: &str,
    token: &str,
    now: i64,
) -> Result<AccessTokenClaims, TokenRejection> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
    if header.typ.as_deref() != Some("at+jwt") {
        return Err(TokenRejection::WrongType);
    }
    let kid = header.kid.as_deref().ok_or(TokenRejection::UnknownKey)?;
    let (algorithm, key) = keys.verifier(kid).ok_or(TokenRejection::UnknownKey)?;
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_aud = false;
    validation.validate_exp = false;
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<AccessTokenClaims>(token, &key, &validation)
        .map_err(|_| TokenRejection::Invalid)?
        .claims;
    if claims.exp <= now {
        return Err(TokenRejection::Expired);
    }
    Ok(claims)
}

/// Whether the token, or any token it was exchanged from, is revoked.
pub async fn is_revoked(pool: &PgPool, jti: &str) -> Result<bool, sqlx::Error> {
    let Ok(jti) = uuid::Uuid::parse_str(jti) else {
        return Ok(false);
    };
    sqlx::query_scalar(
        "WITH RECURSIVE ancestry (jti) AS (
             SELECT $1::uuid
             UNION
             SELECT ancestor.jti
               FROM token_lineage l JOIN ancestry a ON l.jti = a.jti,
                    LATERAL (VALUES (l.parent_jti), (l.actor_jti)) AS ancestor (jti)
              WHERE ancestor.jti IS NOT NULL
         )
         SELECT EXISTS (SELECT 1 FROM revoked_tokens r JOIN ancestry a ON r.jti = a.jti)",
    )
    .bind(jti)
    .fetch_one(pool)
    .await
}

/// A node's memory of recent revocation checks. An answer is reused for at most `ttl`, so a
/// revocation made on another node is seen here within it; revocations made on this node clear
/// the memory at once.
pub struct RevocationCache {
    checked: crate::cache::Cache<String, bool>,
    /// Bumped before and after every local revocation: an answer read while one was under way
    /// is not remembered, so this node cannot keep a stale "not revoked" after revoking.
    revocations: std::sync::atomic::AtomicU64,
}

/// Distinct tokens remembered; beyond it the oldest answer is forgotten first.
const REVOCATION_CACHE_ENTRIES: usize = 16_384;

impl RevocationCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        Self {
            checked: crate::cache::Cache::new(REVOCATION_CACHE_ENTRIES, Some(ttl)),
            revocations: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the token or an ancestor is revoked, asking the database when the remembered
    /// answer is missing or older than the TTL.
    pub async fn is_revoked(&self, pool: &PgPool, jti: &str) -> Result<bool, sqlx::Error> {
        if let Some(revoked) = self.checked.get(&jti.to_owned()) {
            return Ok(revoked);
        }
        let before = self.revocations.load(std::sync::atomic::Ordering::Acquire);
        let revoked = is_revoked(pool, jti).await?;
        if self.revocations.load(std::sync::atomic::Ordering::Acquire) == before {
            self.checked.insert(jti.to_owned(), revoked);
        }
        Ok(revoked)
    }

    /// Records the revocation (and its descendants'); this node forgets every remembered
    /// answer at once, other nodes within their TTL.
    pub async fn revoke(
        &self,
        pool: &PgPool,
        claims: &AccessTokenClaims,
        revoked_by: &str,
    ) -> Result<(), sqlx::Error> {
        use std::sync::atomic::Ordering;
        self.revocations.fetch_add(1, Ordering::AcqRel);
        let recorded = revoke(pool, claims, revoked_by).await;
        self.revocations.fetch_add(1, Ordering::AcqRel);
        self.checked.clear();
        recorded
    }
}

/// Records the revocation; idempotent. The row is kept until the token would have expired.
async fn revoke(
    pool: &PgPool,
    claims: &AccessTokenClaims,
    revoked_by: &str,
) -> Result<(), sqlx::Error> {
    let Ok(jti) = uuid::Uuid::parse_str(&claims.jti) else {
        return Ok(());
    };
    let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
        .unwrap_or(OffsetDateTime::now_utc() + time::Duration::hours(24));
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, client_id, revoked_by, expires_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(&claims.client_id)
    .bind(revoked_by)
    .bind(expires_at)
    .execute(pool)
    .await?;
    // Every token exchanged from it or issued with it as the actor, transitively, goes with it.
    sqlx::query(
        "WITH RECURSIVE descendants (jti, client_id, expires_at) AS (
             SELECT jti, client_id, expires_at FROM token_lineage
              WHERE parent_jti = $1 OR actor_jti = $1
             UNION
             SELECT l.jti, l.client_id, l.expires_at
               FROM token_lineage l JOIN descendants d
                 ON l.parent_jti = d.jti OR l.actor_jti = d.jti
         )
         INSERT INTO revoked_tokens (jti, client_id, revoked_by, expires_at)
         SELECT jti, client_id, $2, expires_at FROM descendants
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(revoked_by)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_is_the_smallest_cap() {
        let caps = [
            Duration::from_secs(300),
            Duration::from_secs(120),
            Duration::from_secs(900),
        ];
        assert_eq!(lifetime(&caps), Duration::from_secs(120));
        assert_eq!(
            lifetime(&[Duration::from_millis(10)]),
            Duration::from_secs(1)
        );
    }
}
