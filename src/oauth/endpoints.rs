use actix_web::http::header::{self, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, get, post};
use serde_json::{Value, json};

use super::{OAuthError, Params};
use crate::app::Services;
use crate::audit::{EventDetails, EventKind, Outcome};
use crate::client_auth::{self, AuthError, AuthenticatedClient, Credentials};
use crate::exchange::{ExchangeError, ExchangeRequest, Exchanger, Refusal, TokenType};
use crate::grants::{self, Decision, DecisionError, Denial, GrantType, IssueError, Provenance};
use crate::http::{PeerCertificate, RequestId};
use crate::keys::unix_now;
use crate::policy::{Action, PolicyContext};
use crate::scopes::ScopeSet;
use crate::tokens::AccessTokenClaims;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(token_endpoint)
        .service(introspect_endpoint)
        .service(revoke_endpoint)
        .service(metadata_endpoint)
        .service(jwks_endpoint)
        .service(crate::fallback::method_not_allowed(
            &["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"],
            "POST",
        ))
        .service(crate::fallback::method_not_allowed(
            &["/.well-known/oauth-authorization-server", "/jwks.json"],
            "GET",
        ));
}

/// The context every protected OAuth request carries into its decisions and audit records.
struct Call<'a> {
    services: &'a Services,
    /// Where the request's log line finds what its handling decided.
    req: &'a HttpRequest,
    request_id: String,
    client: Option<&'a AuthenticatedClient>,
}

impl Call<'_> {
    fn details(&self) -> EventDetails {
        EventDetails {
            request_id: Some(self.request_id.clone()),
            client_id: self.client.map(|c| c.client.id.to_string()),
            partner: self.client.map(|c| c.client.partner.0.clone()),
            ..EventDetails::default()
        }
    }

    /// A decided grant that could not be issued: refused and audited like any refusal, unless
    /// the audit trail itself failed. Nothing is released either way.
    async fn issue_failed(&self, kind: EventKind, error: IssueError) -> OAuthError {
        tracing::error!(%error, "token not issued");
        let refusal = match error {
            IssueError::SubjectExpired => {
                OAuthError::InvalidRequest("the subject token has expired".into())
            }
            IssueError::Keys(_) => OAuthError::TemporarilyUnavailable,
            // The trail just refused this request's record; a second attempt would only
            // double the caller's wait.
            IssueError::Audit(_) => return OAuthError::TemporarilyUnavailable,
        };
        self.deny(kind, refusal, self.details()).await
    }

    /// A required parameter; its absence is refused, counted and audited like any refusal.
    async fn required<'p>(
        &self,
        params: &'p Params,
        name: &str,
        kind: EventKind,
    ) -> Result<&'p str, OAuthError> {
        match params.require(name) {
            Ok(value) => Ok(value),
            Err(error) => Err(self.deny(kind, error, self.details()).await),
        }
    }

    /// Counts and audits the refusal, then returns the error the caller sees. The audited
    /// reason is the one in `details`, else the error itself. A refusal is returned even when
    /// its record cannot be written: nothing is released by it.
    async fn deny(&self, kind: EventKind, error: OAuthError, details: EventDetails) -> OAuthError {
        self.services
            .metrics
            .tokens_denied
            .with_label_values(&[grant_label(kind), error.code()])
            .inc();
        let details = EventDetails {
            reason: details.reason.or_else(|| Some(error.to_string())),
            ..details
        };
        if let Some(reason) = &details.reason {
            crate::http::facts::note_reason(self.req, reason);
        }
        if let Err(audit_error) = self
            .services
            .audit
            .record(kind, Outcome::Deny, details)
            .await
        {
            tracing::error!(%audit_error, %error, "refusal could not be audited");
        }
        error
    }
}

/// The metrics label of the request a refusal answers.
fn grant_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::TokenIntrospected => "introspection",
        EventKind::TokenRevoked => "revocation",
        EventKind::TokenExchanged => GrantType::TokenExchange.as_str(),
        EventKind::ClientAuthenticationFailed => "client_authentication",
        _ => "token",
    }
}

fn form(req: &HttpRequest, body: &Bytes) -> Result<Params, OAuthError> {
    let form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded".into(),
        ));
    }
    Params::parse(body)
}

/// Longest `client_id` and `client_assertion_type` accepted before authentication; no
/// registered client id or assertion type comes near it.
const CLIENT_ID_MAX_BYTES: usize = 128;
/// Longest `client_assertion`: a signed JWT, with room for an `x5c` chain in its header.
const CLIENT_ASSERTION_MAX_BYTES: usize = 16 * 1024;

/// The credentials as sent, refused as `invalid_request` when unbounded or unprintable.
fn credentials(req: &HttpRequest, params: &Params) -> Result<Credentials, OAuthError> {
    Ok(Credentials {
        client_id: params
            .unauthenticated("client_id", CLIENT_ID_MAX_BYTES)?
            .map(str::to_owned),
        assertion_type: params
            .unauthenticated("client_assertion_type", CLIENT_ID_MAX_BYTES)?
            .map(str::to_owned),
        assertion: params
            .unauthenticated("client_assertion", CLIENT_ASSERTION_MAX_BYTES)?
            .map(str::to_owned),
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().ok().and_then(super::authorization_scheme)),
    })
}

async fn authenticate(
    services: &Services,
    req: &HttpRequest,
    params: &Params,
    peer: PeerCertificate,
    request_id: &str,
) -> Result<AuthenticatedClient, OAuthError> {
    let credentials = match credentials(req, params) {
        Ok(credentials) => credentials,
        Err(error) => {
            let call = Call {
                services,
                req,
                request_id: request_id.to_owned(),
                client: None,
            };
            let details = EventDetails {
                client_id: params.get("client_id").map(crate::audit::bounded_text),
                ..call.details()
            };
            return Err(call
                .deny(EventKind::ClientAuthenticationFailed, error, details)
                .await);
        }
    };
    let result = client_auth::authenticate(
        &credentials,
        peer.0,
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
    crate::http::facts::note(req, |facts| {
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
            let call = Call {
                services,
                req,
                request_id: request_id.to_owned(),
                client: None,
            };
            let details = EventDetails {
                client_id,
                reason: Some(reason.to_owned()),
                ..call.details()
            };
            Err(call
                .deny(
                    EventKind::ClientAuthenticationFailed,
                    OAuthError::InvalidClient {
                        challenge: credentials.authorization.flatten(),
                    },
                    details,
                )
                .await)
        }
        Err(AuthError::Unavailable(error)) => {
            tracing::error!(%error, "client authentication unavailable");
            Err(OAuthError::TemporarilyUnavailable)
        }
    }
}

/// The form of a protected OAuth request and the client that sent it.
async fn authenticated_form(
    services: &Services,
    req: &HttpRequest,
    body: &Bytes,
    peer: PeerCertificate,
    request_id: RequestId,
) -> Result<(Params, AuthenticatedClient, String), OAuthError> {
    let params = form(req, body)?;
    let request_id = request_id.0.to_string();
    let client = authenticate(services, req, &params, peer, &request_id).await?;
    Ok((params, client, request_id))
}

fn no_store(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"));
    response
}

impl From<Denial> for OAuthError {
    fn from(denial: Denial) -> Self {
        match denial {
            Denial::InvalidRequest(text) => Self::InvalidRequest(text),
            Denial::UnauthorizedClient(text) => Self::UnauthorizedClient(text),
            Denial::InvalidTarget(text) => Self::InvalidTarget(text),
            Denial::InvalidScope(text) => Self::InvalidScope(text),
        }
    }
}

#[post("/oauth2/token")]
async fn token_endpoint(
    req: HttpRequest,
    body: Bytes,
    peer: PeerCertificate,
    request_id: RequestId,
    services: web::Data<Services>,
) -> Result<HttpResponse, OAuthError> {
    let (params, authenticated, request_id) =
        authenticated_form(&services, &req, &body, peer, request_id).await?;
    let call = Call {
        services: &services,
        req: &req,
        request_id,
        client: Some(&authenticated),
    };
    let grant_type = call
        .required(&params, "grant_type", EventKind::TokenDenied)
        .await?;
    let grant = GrantType::parse(grant_type);
    crate::http::facts::note(&req, |facts| facts.grant = grant.map(GrantType::as_str));
    match grant {
        Some(GrantType::ClientCredentials) => {
            client_credentials(&call, &authenticated, &params).await
        }
        Some(GrantType::TokenExchange) => token_exchange(&call, &authenticated, &params).await,
        None => Err(call
            .deny(
                EventKind::TokenDenied,
                OAuthError::UnsupportedGrantType,
                call.details(),
            )
            .await),
    }
}

async fn client_credentials(
    call: &Call<'_>,
    authenticated: &AuthenticatedClient,
    params: &Params,
) -> Result<HttpResponse, OAuthError> {
    let details = EventDetails {
        audience: params
            .all("resource")
            .iter()
            .chain(params.all("audience"))
            .next()
            .cloned(),
        ..call.details()
    };
    let decided = async {
        let target = grants::single_target(params.all("resource"), params.all("audience"))?;
        let requested = params
            .get("scope")
            .map(|scope| {
                ScopeSet::parse(scope)
                    .ok_or_else(|| Denial::InvalidScope("malformed scope parameter".into()))
            })
            .transpose()?;
        grants::decide_client_credentials(
            &call.services.registry,
            authenticated,
            &target,
            requested.as_ref(),
        )
        .await
    }
    .await;
    let decision: Decision = match decided {
        Ok(decision) => decision,
        Err(DecisionError::Denied(denial)) => {
            return Err(call
                .deny(EventKind::TokenDenied, denial.into(), details)
                .await);
        }
        Err(DecisionError::Registry(error)) => {
            tracing::error!(%error, "registry unavailable");
            return Err(call
                .deny(
                    EventKind::TokenDenied,
                    OAuthError::TemporarilyUnavailable,
                    details,
                )
                .await);
        }
    };
    let client = &authenticated.client;
    let policy = call.services.policy.decide(
        Action::Issue,
        client,
        &decision.audience,
        &PolicyContext {
            scopes: &decision.scopes,
            subject_partner: &client.partner.0,
            subject_issuer: &call.services.tokens.issuer,
            subject_region: &client.partner_region,
            consent: false,
            delegation_depth: 0,
        },
    );
    if !policy.allowed {
        let details = policy.audited(EventDetails {
            scopes: decision.scopes.to_vec(),
            ..details
        });
        let error = OAuthError::InvalidTarget(
            "policy does not allow this client a token for this audience".into(),
        );
        return Err(call.deny(EventKind::TokenDenied, error, details).await);
    }
    let provenance = Provenance {
        policy: Some(policy),
        ..Provenance::default()
    };
    let issued = call
        .services
        .issuer()
        .issue(
            authenticated,
            &decision,
            provenance,
            EventKind::TokenIssued,
            &call.request_id,
            unix_now(),
        )
        .await;
    let issued = match issued {
        Ok(issued) => issued,
        Err(error) => return Err(call.issue_failed(EventKind::TokenDenied, error).await),
    };
    call.services
        .metrics
        .tokens_issued
        .with_label_values(&[GrantType::ClientCredentials.as_str(), &issued.claims.aud])
        .inc();
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.to_string(),
    })))
}

/// The parts of an RFC 8693 request, parsed; anything malformed is `invalid_request` (or
/// `invalid_target` / `invalid_scope` for those parameters). Tessera issues access tokens
/// only, and an actor token is always one of ours.
fn exchange_request(params: &Params) -> Result<ExchangeRequest<'_>, Denial> {
    let token_type = |name: &str| -> Result<Option<TokenType>, Denial> {
        params
            .get(name)
            .map(|value| {
                TokenType::parse(value)
                    .ok_or_else(|| Denial::InvalidRequest(format!("unsupported `{name}`")))
            })
            .transpose()
    };
    let subject_token = params
        .get("subject_token")
        .ok_or_else(|| Denial::InvalidRequest("parameter `subject_token` is required".into()))?;
    let subject_token_type = token_type("subject_token_type")?.ok_or_else(|| {
        Denial::InvalidRequest("parameter `subject_token_type` is required".into())
    })?;
    let actor_token = match (params.get("actor_token"), token_type("actor_token_type")?) {
        (Some(token), Some(TokenType::AccessToken)) => Some(token),
        (Some(_), Some(_)) => {
            return Err(Denial::InvalidRequest(
                "`actor_token_type` must be an access token issued by this server".into(),
            ));
        }
        (None, None) => None,
        _ => {
            return Err(Denial::InvalidRequest(
                "`actor_token` and `actor_token_type` must come together".into(),
            ));
        }
    };
    if token_type("requested_token_type")?
        .is_some_and(|requested| requested != TokenType::AccessToken)
    {
        return Err(Denial::InvalidRequest(
            "only access tokens are issued: `requested_token_type` must be access_token".into(),
        ));
    }
    let target = grants::single_target(params.all("resource"), params.all("audience"))?;
    let requested_scopes = params
        .get("scope")
        .map(|scope| {
            ScopeSet::parse(scope)
                .ok_or_else(|| Denial::InvalidScope("malformed scope parameter".into()))
        })
        .transpose()?;
    Ok(ExchangeRequest {
        subject_token,
        subject_token_type,
        actor_token,
        target,
        requested_scopes,
    })
}

async fn token_exchange(
    call: &Call<'_>,
    authenticated: &AuthenticatedClient,
    params: &Params,
) -> Result<HttpResponse, OAuthError> {
    let services = call.services;
    let details = EventDetails {
        audience: params
            .all("resource")
            .iter()
            .chain(params.all("audience"))
            .next()
            .cloned(),
        ..call.details()
    };
    if !authenticated.client.allows_grant(GrantType::TokenExchange) {
        let error = OAuthError::UnauthorizedClient("this client may not exchange tokens".into());
        return Err(call.deny(EventKind::TokenExchanged, error, details).await);
    }
    let request = match exchange_request(params) {
        Ok(parsed) => parsed,
        Err(denial) => {
            return Err(call
                .deny(EventKind::TokenExchanged, denial.into(), details)
                .await);
        }
    };
    let keys = services.keys.current();
    let exchanger = Exchanger {
        keys: &keys,
        revocations: &services.revocations,
        jwks: &services.jwks,
        issuer: &services.tokens.issuer,
        pool: &services.pool,
        registry: &services.registry,
        policy: &services.policy,
        max_delegation_depth: services.max_delegation_depth,
    };
    let now = unix_now();
    let (decision, provenance) = match exchanger.decide(authenticated, &request, now).await {
        Ok(decided) => decided,
        Err(ExchangeError::Refused(refusal)) => {
            let Refusal {
                denial,
                reason,
                policy,
            } = *refusal;
            let details = EventDetails {
                reason: Some(reason),
                ..details
            };
            let details = match policy {
                Some(policy) => policy.audited(details),
                None => details,
            };
            return Err(call
                .deny(EventKind::TokenExchanged, denial.into(), details)
                .await);
        }
        Err(ExchangeError::Unavailable(error)) => {
            tracing::error!(%error, "token exchange unavailable");
            return Err(call
                .deny(
                    EventKind::TokenExchanged,
                    OAuthError::TemporarilyUnavailable,
                    details,
                )
                .await);
        }
    };
    let issued = services
        .issuer()
        .issue(
            authenticated,
            &decision,
            provenance,
            EventKind::TokenExchanged,
            &call.request_id,
            now,
        )
        .await;
    let issued = match issued {
        Ok(issued) => issued,
        Err(error) => return Err(call.issue_failed(EventKind::TokenExchanged, error).await),
    };
    services
        .metrics
        .tokens_issued
        .with_label_values(&[GrantType::TokenExchange.as_str(), &issued.claims.aud])
        .inc();
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "access_token": issued.access_token,
        "issued_token_type": TokenType::AccessToken.urn(),
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.to_string(),
    })))
}

/// Our own token, if it is one, still valid and not revoked.
async fn active_token(
    services: &Services,
    token: &str,
) -> Result<Option<AccessTokenClaims>, OAuthError> {
    // Whatever is wrong with a token, introspection answers only "inactive" (RFC 7662 §2.2).
    let Ok(claims) = crate::tokens::validate_own(
        &services.keys.current(),
        &services.tokens.issuer,
        token,
        unix_now(),
    ) else {
        return Ok(None);
    };
    let revoked = services
        .revocations
        .is_revoked(&services.pool, &claims.jti)
        .await
        .map_err(|error| {
            tracing::error!(%error, "revocation list unavailable");
            OAuthError::TemporarilyUnavailable
        })?;
    if revoked {
        services.metrics.revoked_presentations.inc();
        return Ok(None);
    }
    if let Some(consent) = &claims.consent_id {
        let active =
            crate::consents::still_active(&services.pool, consent, time::OffsetDateTime::now_utc())
                .await
                .map_err(|error| {
                    tracing::error!(%error, "consent store unavailable");
                    OAuthError::TemporarilyUnavailable
                })?;
        if !active {
            return Ok(None);
        }
    }
    Ok(Some(claims))
}

/// RFC 7662. Callers authenticate; a resource server sees only tokens for its own audience,
/// a client its own tokens, an admin any; everything else reads as inactive.
#[post("/oauth2/introspect")]
async fn introspect_endpoint(
    req: HttpRequest,
    body: Bytes,
    peer: PeerCertificate,
    request_id: RequestId,
    services: web::Data<Services>,
) -> Result<HttpResponse, OAuthError> {
    let (params, caller, request_id) =
        authenticated_form(&services, &req, &body, peer, request_id).await?;
    let call = Call {
        services: &services,
        req: &req,
        request_id,
        client: Some(&caller),
    };
    let token = call
        .required(&params, "token", EventKind::TokenIntrospected)
        .await?;
    let claims = active_token(&services, token).await?.filter(|claims| {
        let client = &caller.client;
        client.is_admin
            || client.id.as_str() == claims.client_id
            || client
                .resource_audience
                .as_ref()
                .is_some_and(|audience| audience.as_str() == claims.aud)
    });
    let details = EventDetails {
        jti: claims.as_ref().map(|claims| claims.jti.clone()),
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
    let body = match claims {
        None => json!({ "active": false }),
        Some(claims) => {
            let mut body = match serde_json::to_value(&claims) {
                Ok(Value::Object(claims)) => claims,
                _ => serde_json::Map::new(),
            };
            body.insert("active".into(), json!(true));
            body.insert("token_type".into(), json!("Bearer"));
            Value::Object(body)
        }
    };
    Ok(no_store(HttpResponse::Ok()).json(body))
}

/// RFC 7009. Only the client the token was issued to, or an admin, may revoke it; an unknown
/// or invalid token is answered 200; a store that cannot record the revocation is a 503.
#[post("/oauth2/revoke")]
async fn revoke_endpoint(
    req: HttpRequest,
    body: Bytes,
    peer: PeerCertificate,
    request_id: RequestId,
    services: web::Data<Services>,
) -> Result<HttpResponse, OAuthError> {
    let (params, caller, request_id) =
        authenticated_form(&services, &req, &body, peer, request_id).await?;
    let call = Call {
        services: &services,
        req: &req,
        request_id,
        client: Some(&caller),
    };
    let token = call
        .required(&params, "token", EventKind::TokenRevoked)
        .await?;
    let claims = crate::tokens::validate_own(
        &services.keys.current(),
        &services.tokens.issuer,
        token,
        unix_now(),
    )
    .ok();
    let Some(claims) = claims else {
        return Ok(no_store(HttpResponse::Ok()).finish());
    };
    let details = EventDetails {
        jti: Some(claims.jti.clone()),
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
    Ok(no_store(HttpResponse::Ok()).finish())
}

/// RFC 8414 metadata, listing exactly what this server supports.
#[get("/.well-known/oauth-authorization-server")]
async fn metadata_endpoint(services: web::Data<Services>) -> HttpResponse {
    let issuer = &services.tokens.issuer;
    let endpoints = json!({
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
    });
    let auth_methods = json!([
        "tls_client_auth",
        "self_signed_tls_client_auth",
        "private_key_jwt"
    ]);
    let algorithms = json!(["ES256", "EdDSA", "PS256"]);
    let mut body = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "grant_types_supported": GrantType::ALL.map(GrantType::as_str),
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": algorithms,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": algorithms,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": algorithms,
        "tls_client_certificate_bound_access_tokens": true,
        // Every endpoint is served over mutual TLS already, so the aliases are the endpoints.
        "mtls_endpoint_aliases": endpoints,
    });
    if let (Some(body), Some(endpoints)) = (body.as_object_mut(), endpoints.as_object()) {
        body.extend(endpoints.clone());
    }
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "public, max-age=3600"))
        .json(body)
}

/// RFC 7517 key set. Caches may keep it for at most a quarter of the rotation interval, so a
/// `next` key is in every cache well before it starts signing.
#[get("/jwks.json")]
async fn jwks_endpoint(services: web::Data<Services>) -> HttpResponse {
    let rotation = services.rotation_interval.as_secs();
    let max_age = if rotation == 0 {
        300
    } else {
        (rotation / 4).clamp(1, 300)
    };
    HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, format!("public, max-age={max_age}")))
        .insert_header((CONTENT_TYPE, "application/jwk-set+json"))
        .body(services.keys.current().jwks.to_string())
}
