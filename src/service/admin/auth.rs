//! Who is calling the admin API: an admin's certificate under the admin trust anchor, or an
//! admin-audience access token bound (`cnf.x5t#S256`) to the certificate presenting it.

use crate::audit::{EventDetails, EventKind, Outcome};
use crate::domain::admin::Role;
use crate::domain::tokens::{AccessTokenClaims, Confirmation};
use crate::service::Services;
use crate::tls::{ClientCertificate, TrustAnchor};

use super::{AdminError, Caller, denied};

/// Admin tokens are short: roles are read afresh on every request anyway.
const TOKEN_LIFETIME_S: i64 = 300;

/// The audience of admin access tokens: the admin API under this issuer.
pub fn audience(issuer: &str) -> String {
    format!("{}/admin/v1", issuer.trim_end_matches('/'))
}

/// What the request presented.
pub struct Presented<'a> {
    pub certificate: Option<&'a ClientCertificate>,
    /// The `Authorization: Bearer` token, if any.
    pub bearer: Option<&'a str>,
    pub request_id: String,
}

pub async fn authenticate(
    services: &Services,
    presented: Presented<'_>,
) -> Result<Caller, AdminError> {
    match identify(services, &presented).await {
        Ok(caller) => Ok(caller),
        Err(AdminError::Unauthenticated(reason)) => {
            denied(&services.audit, &presented.request_id, None, reason).await?;
            Err(AdminError::Unauthenticated(reason))
        }
        Err(AdminError::Forbidden(reason)) => {
            denied(&services.audit, &presented.request_id, None, &reason).await?;
            Err(AdminError::Forbidden(reason))
        }
        Err(other) => Err(other),
    }
}

async fn identify(services: &Services, presented: &Presented<'_>) -> Result<Caller, AdminError> {
    let certificate = presented.certificate.ok_or(AdminError::Unauthenticated(
        "a client certificate is required",
    ))?;
    // A partner's CA or a pinned certificate never identifies an admin, whatever its name.
    if !certificate.anchored_by(&TrustAnchor::Admin) {
        return Err(AdminError::Unauthenticated(
            "the certificate does not chain to the admin trust anchor",
        ));
    }
    let mut conn = services.pool.acquire().await?;
    let admin =
        crate::storage::admins::admin_by_subject(&mut conn, &certificate.subject.to_string())
            .await?
            .ok_or(AdminError::Unauthenticated(
                "no admin is registered with this certificate identity",
            ))?;
    if !admin.active {
        return Err(AdminError::Forbidden(format!(
            "admin `{}` is suspended",
            admin.id
        )));
    }
    if let Some(token) = presented.bearer {
        let claims = crate::crypto::jwt::validate_own(
            &services.keys.current(),
            &services.tokens.issuer,
            token,
            crate::crypto::keys::unix_now(),
        )
        .map_err(|_| AdminError::Unauthenticated("the access token is not valid"))?;
        if claims.aud != audience(&services.tokens.issuer) {
            return Err(AdminError::Unauthenticated(
                "the access token is not for the admin audience",
            ));
        }
        let bound = claims
            .cnf
            .as_ref()
            .is_some_and(|cnf| cnf.x5t_s256 == certificate.thumbprint.to_base64url());
        if !bound {
            return Err(AdminError::Unauthenticated(
                "the access token is bound to another certificate",
            ));
        }
        if claims.sub != admin.id {
            return Err(AdminError::Unauthenticated(
                "the access token was issued to another admin",
            ));
        }
        if services
            .revocations
            .is_revoked(&services.pool, &claims.jti)
            .await?
        {
            return Err(AdminError::Unauthenticated("the access token is revoked"));
        }
    }
    Ok(Caller {
        admin,
        request_id: presented.request_id.clone(),
    })
}

/// An access token for the admin API, bound to the caller's certificate (RFC 8705), for
/// tools that pass a token along; it carries no roles: they are read on every request.
#[derive(Debug, serde::Serialize)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

pub async fn issue_token(
    services: &Services,
    caller: &Caller,
    certificate: &ClientCertificate,
) -> Result<IssuedToken, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let now = crate::crypto::keys::unix_now();
    let expires_at = now.saturating_add(TOKEN_LIFETIME_S);
    let audience = audience(&services.tokens.issuer);
    let jti = crate::domain::ids::Jti::random();
    let claims = AccessTokenClaims {
        iss: services.tokens.issuer.clone(),
        sub: caller.admin.id.clone(),
        aud: audience.clone(),
        exp: expires_at,
        iat: now,
        nbf: now,
        jti: jti.clone(),
        client_id: format!("admin:{}", caller.admin.id),
        scope: String::new(),
        cnf: Some(Confirmation {
            x5t_s256: certificate.thumbprint.to_base64url(),
        }),
        act: None,
        consent_id: None,
        txn: None,
        trust_profile_version: None,
        owner_partner: None,
        owner_region: None,
        may_act: None,
    };
    let token = crate::crypto::jwt::mint(&services.keys.current(), &claims).map_err(|error| {
        tracing::error!(%error, "admin token not signed");
        AdminError::Unavailable
    })?;
    // No token leaves before its record is committed.
    services
        .audit
        .record(
            EventKind::TokenIssued,
            Outcome::Allow,
            EventDetails {
                request_id: Some(caller.request_id.clone()),
                subject: Some(caller.admin.id.clone()),
                client_id: Some(claims.client_id.clone()),
                audience: Some(audience),
                jti: Some(jti.to_string()),
                expires_at: Some(expires_at),
                ..EventDetails::default()
            },
        )
        .await
        .map_err(|_| AdminError::Unavailable)?;
    Ok(IssuedToken {
        access_token: token,
        token_type: "Bearer",
        expires_in: TOKEN_LIFETIME_S,
    })
}

/// Every registered admin with roles and status.
pub async fn admins(
    services: &Services,
    caller: &Caller,
) -> Result<Vec<crate::domain::admin::Admin>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    Ok(crate::storage::admins::admins(&mut conn).await?)
}
