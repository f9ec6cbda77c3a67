//! RFC 7009 revocation. Only the client the token was issued to, or an admin, may revoke it;
//! an unknown or invalid token is answered as revoked; a store that cannot record the
//! revocation is a 503.

use crate::audit::{EventDetails, EventKind, Outcome};
use crate::crypto::jwt::validate_own;
use crate::crypto::keys::unix_now;
use crate::service::Services;
use crate::service::authenticate;
use crate::service::{Caller, OAuthError};

pub async fn revoke(
    services: &Services,
    caller: Caller<'_>,
    token: Result<&str, OAuthError>,
) -> Result<(), OAuthError> {
    let (request_id, facts) = (caller.request_id, caller.facts);
    let caller = authenticate::caller(services, caller).await?;
    let call = services.call(request_id, facts, &caller);
    let token = call.parsed(EventKind::TokenRevoked, token).await?;
    let Ok(claims) = validate_own(
        &services.keys.current(),
        &services.tokens.issuer,
        token,
        unix_now(),
    ) else {
        return Ok(());
    };
    let details = EventDetails {
        jti: Some(claims.jti.to_string()),
        audience: Some(claims.aud.clone()),
        subject: Some(claims.sub.clone()),
        ..call.details()
    };
    if caller.client.id.as_str() != claims.client_id && !caller.client.is_admin {
        let error =
            OAuthError::UnauthorizedClient("the token was not issued to this client".into());
        return Err(call.deny(EventKind::TokenRevoked, error, details).await);
    }
    services
        .revocations
        .revoke(&services.pool, &claims, caller.client.id.as_str())
        .await
        .map_err(|error| {
            tracing::error!(%error, "revocation not recorded");
            OAuthError::TemporarilyUnavailable
        })?;
    services
        .audit
        .record(EventKind::TokenRevoked, Outcome::Allow, details)
        .await
        .map_err(|_| OAuthError::TemporarilyUnavailable)?;
    Ok(())
}
