//! Validating a JWT from a partner's issuer against that partner's active trust profile.

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::crypto::jwks::JwksCache;
use crate::domain::scopes::ScopeSet;
use crate::domain::trust::{KeySource, PartnerSubject, Rejected, Validated};
use crate::storage::trust::{TrustError, profile_for_issuer};

/// Validates a JWT from a partner's issuer against that partner's active trust profile.
pub async fn validate_partner_jwt(
    pool: &PgPool,
    cache: &JwksCache,
    token: &str,
    our_issuer: &str,
    now: i64,
) -> Result<Validated, TrustError> {
    let reject = |reason: &str| Ok(Validated::Rejected(Rejected(reason.to_owned())));
    let peek = match crate::crypto::jwt::peek(token) {
        Ok(peek) => peek,
        Err(reason) => return reject(reason),
    };
    let Some(issuer) = peek.issuer.as_deref() else {
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
    if !profile.algorithms.contains(&peek.algorithm) {
        return reject("algorithm not allowed by the trust profile");
    }
    if peek.names_own_key {
        return reject("the JWT names its own key (jku, x5u or jwk)");
    }
    let keys = match &profile.keys {
        KeySource::Inline(keys) => keys.clone(),
        KeySource::Uri(uri) => cache.keys_for(uri, peek.kid.as_deref()).await?,
    };
    let algorithms = crate::crypto::jwt::algorithms(&profile.algorithms);
    let rules = crate::crypto::jwt::Rules {
        algorithms: &algorithms,
        issuer,
        audience: Some(our_issuer),
        audience_as_string: false,
        typ: profile.required_typ.as_deref().map_or(
            crate::crypto::jwt::Typ::NotAccessToken,
            crate::crypto::jwt::Typ::Required,
        ),
        max_lifetime_s: profile.max_assertion_lifetime,
        require_iat: true,
        require_jti: profile.single_use,
        clock: crate::crypto::jwt::Clock::Foreign,
    };
    let claims = match crate::crypto::jwt::validate(token, &keys, &rules, now) {
        Ok(claims) => claims,
        Err(reason) => return reject(reason),
    };
    for (name, expected) in &profile.required_claims {
        if claims.other.get(name) != Some(expected) {
            return Ok(Validated::Rejected(Rejected(format!(
                "required claim `{name}` missing or different"
            ))));
        }
    }
    if let (true, Some(jti)) = (profile.single_use, claims.jti.as_deref()) {
        let expires_at = claims
            .exp
            .checked_add(crate::crypto::jwt::FOREIGN_CLOCK_LEEWAY_S)
            .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
            .ok_or_else(|| TrustError::Malformed("exp out of range".into()))?;
        let first_use = crate::storage::replay::first_use(
            pool,
            crate::storage::replay::AssertionKind::Partner,
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
