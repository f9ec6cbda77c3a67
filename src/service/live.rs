//! Whether one of our own tokens may still be used: the one check that exchange (for subject
//! and actor tokens) and introspection share.

use time::OffsetDateTime;

use crate::crypto::jwt::validate_own;
use crate::domain::tokens::{AccessTokenClaims, TokenRejection};
use crate::service::Services;

/// Why a token of ours is not live; the audit trail keeps it, introspection says "inactive".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotLive {
    #[error("{0}")]
    Invalid(TokenRejection),
    #[error("revoked, or exchanged from a revoked token")]
    Revoked,
    #[error("issued under a consent that is no longer active")]
    ConsentInactive,
}

/// Valid at `at`, not revoked (nor any token it descends from), its consent still active. The
/// outer error is storage being unavailable, which callers answer with 503. `at` keeps its
/// sub-second part: a consent that took effect a moment ago is in force.
pub async fn live_token(
    services: &Services,
    token: &str,
    at: OffsetDateTime,
) -> Result<Result<AccessTokenClaims, NotLive>, sqlx::Error> {
    let claims = match validate_own(
        &services.keys.current(),
        &services.tokens.issuer,
        token,
        at.unix_timestamp(),
    ) {
        Ok(claims) => claims,
        Err(rejection) => return Ok(Err(NotLive::Invalid(rejection))),
    };
    if services
        .revocations
        .is_revoked(&services.pool, claims.jti.as_str())
        .await?
    {
        services.metrics.revoked_presentations.inc();
        return Ok(Err(NotLive::Revoked));
    }
    if let Some(consent) = &claims.consent_id
        && !crate::storage::consents::still_active(&services.pool, consent, at).await?
    {
        return Ok(Err(NotLive::ConsentInactive));
    }
    Ok(Ok(claims))
}
