//! RFC 7662 introspection. Callers authenticate; a resource server sees only tokens for its
//! own audience, a client its own tokens, an admin any; everything else reads as inactive.

use crate::audit::{EventDetails, EventKind, Outcome};
use crate::domain::tokens::AccessTokenClaims;
use crate::service::Services;
use crate::service::authenticate;
use crate::service::live::live_token;
use crate::service::{Caller, OAuthError};

/// The token's claims when it is live and the caller may see it; `None` reads as inactive.
pub async fn introspect(
    services: &Services,
    caller: Caller<'_>,
    token: Result<&str, OAuthError>,
) -> Result<Option<AccessTokenClaims>, OAuthError> {
    let (request_id, facts) = (caller.request_id, caller.facts);
    let caller = authenticate::caller(services, caller).await?;
    let call = services.call(request_id, facts, &caller);
    let token = call.parsed(EventKind::TokenIntrospected, token).await?;
    // Whatever is wrong with a token, introspection answers only "inactive" (RFC 7662 §2.2).
    let claims = live_token(services, token, time::OffsetDateTime::now_utc())
        .await
        .map_err(|error| {
            tracing::error!(%error, "revocation list or consent store unavailable");
            OAuthError::TemporarilyUnavailable
        })?
        .ok()
        .filter(|claims| {
            let client = &caller.client;
            client.is_admin
                || client.id.as_str() == claims.client_id
                || client
                    .resource_audience
                    .as_ref()
                    .is_some_and(|audience| audience.as_str() == claims.aud)
        });
    let details = EventDetails {
        jti: claims.as_ref().map(|claims| claims.jti.to_string()),
        audience: claims.as_ref().map(|claims| claims.aud.clone()),
        reason: Some(
            if claims.is_some() {
                "active"
            } else {
                "inactive"
            }
            .to_owned(),
        ),
        ..call.details()
    };
    services
        .audit
        .record(EventKind::TokenIntrospected, Outcome::Allow, details)
        .await
        .map_err(|_| OAuthError::TemporarilyUnavailable)?;
    Ok(claims)
}
