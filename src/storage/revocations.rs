//! Revocations of our own tokens, and the lineage that makes a revocation reach every token
//! exchanged from (or acting with) the revoked one.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::domain::tokens::AccessTokenClaims;

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
    let Ok(jti) = uuid::Uuid::parse_str(claims.jti.as_str()) else {
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
