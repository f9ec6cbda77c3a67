//! The replay store for single-use assertions: a unique insert whose row outlives the
//! assertion's `exp` plus leeway (RFC 7523 §3). Client assertions and partner JWTs share it,
//! each under its own kind so that an issuer of one kind can never burn the other's `jti`s.

use sqlx::PgPool;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy)]
pub enum AssertionKind {
    /// RFC 7523 client assertions, by client id.
    Client,
    /// Partner JWTs presented as subject tokens, by issuer.
    Partner,
}

impl AssertionKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client_assertion",
            Self::Partner => "partner_assertion",
        }
    }
}

/// Records the `jti`; `false` when it was seen before.
pub async fn first_use(
    pool: &PgPool,
    kind: AssertionKind,
    issuer: &str,
    jti: &str,
    expires_at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO assertion_jtis (kind, issuer, jti, expires_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(kind.as_str())
    .bind(issuer)
    .bind(jti)
    .bind(expires_at)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
