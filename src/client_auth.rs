//! Client authentication at the token, introspection and revocation endpoints: mutual TLS
//! (RFC 8705) and `private_key_jwt` (RFC 7523 under FAPI 2.0 rules). No shared secrets.
//!
//! Every failure is one `invalid_client` to the caller; the precise reason goes to the audit
//! record only, so probing learns nothing about which clients exist or why one failed.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::clients::{Authentication, Client, ClientId, Registry, RegistryError, Status};
use crate::tls::ClientCertificate;
use crate::tokens::FOREIGN_CLOCK_LEEWAY;

pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// FAPI 2.0: `iat`/`nbf` may be at most this far ahead of our clock.
const MAX_FUTURE_SKEW_S: i64 = 10;
/// An assertion may not claim to be valid longer than this (it bounds the replay store too).
const MAX_ASSERTION_LIFETIME_S: i64 = 300;
const ASSERTION_ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256];

/// The credentials a request carried.
#[derive(Debug, Default)]
pub struct Credentials {
    pub client_id: Option<String>,
    pub assertion_type: Option<String>,
    pub assertion: Option<String>,
    /// An `Authorization` header was sent; Tessera has no shared secrets to check it against.
    pub authorization_header: bool,
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
    if credentials.authorization_header {
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
    let matches = match &client.authentication {
        Authentication::TlsClientAuth(identity) => identity.matches(&certificate),
        Authentication::SelfSignedTlsClientAuth(jwks) => registered_certificate(jwks, &certificate),
        Authentication::PrivateKeyJwt(_) => {
            return Err(failed(
                Some(client_id),
                "client is registered for private_key_jwt",
            ));
        }
    };
    if !matches {
        return Err(failed(
            Some(client_id),
            "certificate does not match the registered identity",
        ));
    }
    Ok(AuthenticatedClient {
        client,
        certificate: Some(certificate),
    })
}

/// RFC 8705 §2.2: the presented certificate is one of the client's registered `x5c` leaves.
fn registered_certificate(jwks: &JwkSet, certificate: &ClientCertificate) -> bool {
    use base64::Engine;
    jwks.keys.iter().any(|jwk| {
        jwk.common
            .x509_chain
            .as_ref()
            .and_then(|chain| chain.first())
            .and_then(|leaf| base64::engine::general_purpose::STANDARD.decode(leaf).ok())
            .is_some_and(|der| der == certificate.der.as_ref())
    })
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    aud: serde_json::Value,
    exp: i64,
    iat: Option<i64>,
    nbf: Option<i64>,
    jti: String,
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
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| failed(named, "client assertion is not a JWT"))?;
    if !ASSERTION_ALGORITHMS.contains(&header.alg) {
        return Err(failed(named, "client assertion algorithm not allowed"));
    }
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
        return Err(failed(
            named,
            "client assertion names its own key (jku, x5u or jwk)",
        ));
    }
    if header
        .typ
        .as_deref()
        .is_some_and(|typ| !typ.eq_ignore_ascii_case("JWT"))
    {
        return Err(failed(named, "client assertion typ is not JWT"));
    }
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
    let claims = verify_assertion(assertion, &header, jwks, &client_id, issuer, now)
        .map_err(|reason| failed(Some(&client_id), reason))?;

    let expires_at =
        OffsetDateTime::from_unix_timestamp(claims.exp + FOREIGN_CLOCK_LEEWAY.as_secs() as i64)
            .map_err(|_| failed(Some(&client_id), "client assertion exp out of range"))?;
    let inserted = sqlx::query(
        "INSERT INTO client_assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(&client_id)
    .bind(&claims.jti)
    .bind(expires_at)
    .execute(pool)
    .await
    .map_err(|error| AuthError::Unavailable(error.to_string()))?
    .rows_affected();
    if inserted == 0 {
        return Err(failed(Some(&client_id), "client assertion jti replayed"));
    }
    Ok(AuthenticatedClient {
        client,
        certificate,
    })
}

fn verify_assertion(
    assertion: &str,
    header: &jsonwebtoken::Header,
    jwks: &JwkSet,
    client_id: &str,
    issuer: &str,
    now: i64,
) -> Result<AssertionClaims, &'static str> {
    let candidates: Vec<_> = jwks
        .keys
        .iter()
        .filter(|jwk| match (&header.kid, &jwk.common.key_id) {
            (Some(wanted), Some(kid)) => wanted == kid,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter(|jwk| {
            jwk.common
                .key_algorithm
                .is_none_or(|alg| alg == jsonwebtoken::jwk::KeyAlgorithm::from(header.alg))
        })
        .collect();
    if candidates.is_empty() {
        return Err("no registered key for the assertion's kid and alg");
    }
    let mut validation = Validation::new(header.alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    validation.set_audience(&[issuer]);
    validation.leeway = FOREIGN_CLOCK_LEEWAY.as_secs();
    validation.validate_nbf = true;
    let claims = candidates
        .iter()
        .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
        .find_map(|key| jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation).ok())
        .ok_or("client assertion signature or claims invalid")?
        .claims;
    // FAPI 2.0: the audience is the issuer identifier as a single string, nothing else.
    if claims.aud.as_str() != Some(issuer) {
        return Err("client assertion aud is not the issuer as a single string");
    }
    if claims.iss != client_id || claims.sub != client_id {
        return Err("client assertion iss and sub must both be the client id");
    }
    if claims.exp <= now - FOREIGN_CLOCK_LEEWAY.as_secs() as i64 {
        return Err("client assertion expired");
    }
    if claims.exp > now + MAX_ASSERTION_LIFETIME_S + MAX_FUTURE_SKEW_S {
        return Err("client assertion lives too long");
    }
    for date in [claims.iat, claims.nbf].into_iter().flatten() {
        if date > now + MAX_FUTURE_SKEW_S {
            return Err("client assertion iat or nbf too far in the future");
        }
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err("client assertion jti missing or too long");
    }
    Ok(claims)
}
