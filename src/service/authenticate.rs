//! Client authentication at the token, introspection and revocation endpoints: mutual TLS
//! (RFC 8705) and `private_key_jwt` (RFC 7523 under FAPI 2.0 rules). No shared secrets.
//!
//! Every failure is one `invalid_client` to the caller; the precise reason goes to the audit
//! record only, so probing learns nothing about which clients exist or why one failed.

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::audit::{EventDetails, EventKind};
use crate::crypto::jwt;
use crate::crypto::keys::unix_now;
use crate::domain::clients::{Authentication, Client, Status};
use crate::domain::ids::ClientId;
use crate::service::Services;
use crate::service::{Call, Caller, OAuthError};
use crate::storage::clients::RegistryError;
use crate::storage::registry::Registry;
use crate::tls::ClientCertificate;

pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An assertion may not claim to be valid longer than this (it bounds the replay store too).
const MAX_ASSERTION_LIFETIME_S: i64 = 300;
const ASSERTION_ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256];

/// The credentials a request carried.
#[derive(Default)]
pub struct Credentials {
    pub client_id: Option<String>,
    pub assertion_type: Option<String>,
    pub assertion: Option<String>,
    /// An `Authorization` header was sent (with this scheme, if a registered one); Tessera has
    /// no shared secrets to check it against.
    pub authorization: Option<Option<&'static str>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("assertion_type", &self.assertion_type)
            .field("assertion", &self.assertion.as_ref().map(|_| "[redacted]"))
            .field("authorization", &self.authorization)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AuthenticatedClient {
    pub client: Arc<Client>,
    /// The client certificate of the connection, if any: tokens are bound to it (RFC 8705).
    pub certificate: Option<ClientCertificate>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Authentication failed; `reason` is for the audit trail, never for the response.
    #[error("client authentication failed: {reason}")]
    Failed {
        client_id: Option<String>,
        reason: &'static str,
    },
    #[error("client authentication unavailable: {0}")]
    Unavailable(String),
}

fn failed(client_id: Option<&str>, reason: &'static str) -> AuthError {
    AuthError::Failed {
        client_id: client_id.map(str::to_owned),
        reason,
    }
}

impl From<RegistryError> for AuthError {
    fn from(error: RegistryError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

pub async fn authenticate(
    credentials: &Credentials,
    certificate: Option<ClientCertificate>,
    registry: &Registry,
    pool: &PgPool,
    issuer: &str,
    now: i64,
) -> Result<AuthenticatedClient, AuthError> {
    if credentials.authorization.is_some() {
        return Err(failed(
            credentials.client_id.as_deref(),
            "authorization header (shared secrets are not supported)",
        ));
    }
    match (&credentials.assertion_type, &credentials.assertion) {
        (None, None) => authenticate_mtls(credentials, certificate, registry).await,
        (Some(kind), Some(assertion)) if kind == JWT_BEARER_ASSERTION => {
            authenticate_assertion(
                credentials,
                assertion,
                certificate,
                registry,
                pool,
                issuer,
                now,
            )
            .await
        }
        (Some(_), Some(_)) => Err(failed(
            credentials.client_id.as_deref(),
            "unsupported client_assertion_type",
        )),
        _ => Err(failed(
            credentials.client_id.as_deref(),
            "client_assertion and client_assertion_type must come together",
        )),
    }
}

async fn active_client(registry: &Registry, client_id: &str) -> Result<Arc<Client>, AuthError> {
    let id =
        ClientId::parse(client_id).ok_or_else(|| failed(Some(client_id), "malformed client_id"))?;
    let client = registry
        .client(&id)
        .await?
        .ok_or_else(|| failed(Some(client_id), "unknown client"))?;
    if client.status != Status::Active {
        return Err(failed(Some(client_id), "client or partner suspended"));
    }
    Ok(client)
}

async fn authenticate_mtls(
    credentials: &Credentials,
    certificate: Option<ClientCertificate>,
    registry: &Registry,
) -> Result<AuthenticatedClient, AuthError> {
    let client_id = credentials
        .client_id
        .as_deref()
        .ok_or_else(|| failed(None, "no client credentials"))?;
    let certificate =
        certificate.ok_or_else(|| failed(Some(client_id), "no client certificate"))?;
    let client = active_client(registry, client_id).await?;
    client
        .owns_certificate(&certificate)
        .map_err(|reason| failed(Some(client_id), reason))?;
    Ok(AuthenticatedClient {
        client,
        certificate: Some(certificate),
    })
}

async fn authenticate_assertion(
    credentials: &Credentials,
    assertion: &str,
    certificate: Option<ClientCertificate>,
    registry: &Registry,
    pool: &PgPool,
    issuer: &str,
    now: i64,
) -> Result<AuthenticatedClient, AuthError> {
    let named = credentials.client_id.as_deref();
    jwt::header(assertion).map_err(|_| failed(named, "client assertion is not a JWT"))?;
    // The client is found by the unverified `sub`; nothing else is trusted before the
    // signature is checked with that client's registered keys.
    let unverified: serde_json::Value = jsonwebtoken::dangerous::insecure_decode(assertion)
        .map_err(|_| failed(named, "client assertion payload unreadable"))?
        .claims;
    let client_id = unverified
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| failed(named, "client assertion without sub"))?
        .to_owned();
    if named.is_some_and(|named| named != client_id) {
        return Err(failed(named, "client_id differs from the assertion's sub"));
    }
    let client = active_client(registry, &client_id).await?;
    let Authentication::PrivateKeyJwt(jwks) = &client.authentication else {
        return Err(failed(
            Some(&client_id),
            "client is not registered for private_key_jwt",
        ));
    };
    let rules = jwt::Rules {
        algorithms: &ASSERTION_ALGORITHMS,
        issuer: &client_id,
        audience: Some(issuer),
        audience_as_string: true,
        typ: jwt::Typ::AbsentOr("JWT"),
        max_lifetime_s: MAX_ASSERTION_LIFETIME_S,
        require_iat: false,
        require_jti: true,
        clock: jwt::Clock::Foreign,
    };
    let claims = jwt::validate(assertion, jwks, &rules, now)
        .map_err(|reason| failed(Some(&client_id), reason))?;
    if claims.sub != client_id {
        return Err(failed(
            Some(&client_id),
            "client assertion iss and sub must both be the client id",
        ));
    }
    let jti = claims.jti.as_deref().unwrap_or_default();
    let expires_at = claims
        .exp
        .checked_add(jwt::FOREIGN_CLOCK_LEEWAY_S)
        .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
        .ok_or_else(|| failed(Some(&client_id), "client assertion exp out of range"))?;
    let first_use = crate::storage::replay::first_use(
        pool,
        crate::storage::replay::AssertionKind::Client,
        &client_id,
        jti,
        expires_at,
    )
    .await
    .map_err(|error| AuthError::Unavailable(error.to_string()))?;
    if !first_use {
        return Err(failed(Some(&client_id), "client assertion jti replayed"));
    }
    Ok(AuthenticatedClient {
        client,
        certificate,
    })
}

/// What the edge read of the caller's credentials, or why it refused them, with the client id
/// the caller claimed (bounded) for the audit record.
pub type Presented = Result<Credentials, (OAuthError, Option<String>)>;

/// Authenticates the caller of a protected endpoint. Every failure is counted and audited and
/// reaches the caller as one `invalid_client`.
pub async fn caller(
    services: &Services,
    caller: Caller<'_>,
) -> Result<AuthenticatedClient, OAuthError> {
    let call = Call {
        services,
        request_id: caller.request_id,
        facts: caller.facts,
        client: None,
    };
    let credentials = match caller.credentials {
        Ok(credentials) => credentials,
        Err((error, client_id)) => {
            let claimed = client_id.clone();
            call.facts.note(|facts| facts.client_id = claimed);
            let details = EventDetails {
                client_id,
                ..call.details()
            };
            return Err(call
                .deny(EventKind::ClientAuthenticationFailed, error, details)
                .await);
        }
    };
    let result = authenticate(
        &credentials,
        caller.certificate,
        &services.registry,
        &services.pool,
        &services.tokens.issuer,
        unix_now(),
    )
    .await;
    let claimed = match &result {
        Ok(authenticated) => Some(authenticated.client.id.to_string()),
        Err(AuthError::Failed { client_id, .. }) => client_id.clone(),
        Err(AuthError::Unavailable(_)) => credentials.client_id.clone(),
    };
    call.facts.note(|facts| {
        facts.client_id = claimed.as_deref().map(crate::audit::bounded_text);
    });
    match result {
        Ok(authenticated) => {
            services.usage.record(
                &authenticated.client.id,
                authenticated
                    .certificate
                    .as_ref()
                    .map(|certificate| certificate.not_after),
            );
            Ok(authenticated)
        }
        Err(AuthError::Failed { client_id, reason }) => {
            let details = EventDetails {
                client_id,
                reason: Some(reason.to_owned()),
                ..call.details()
            };
            let error = OAuthError::InvalidClient {
                challenge: credentials.authorization.flatten(),
            };
            Err(call
                .deny(EventKind::ClientAuthenticationFailed, error, details)
                .await)
        }
        Err(AuthError::Unavailable(error)) => {
            tracing::error!(%error, "client authentication unavailable");
            Err(OAuthError::TemporarilyUnavailable)
        }
    }
}
