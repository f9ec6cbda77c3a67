//! `POST /oauth2/token`: `client_credentials` (RFC 6749 §4.4) and token exchange (RFC 8693).

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, post};
use serde_json::json;

use super::request::{caller, form, no_store};
use super::{OAuthError, Params};
use crate::domain::audiences::AudienceId;
use crate::domain::grants::{
    ClientCredentialsRequest, Denial, ExchangeRequest, GrantType, TokenRequest, TokenType,
};
use crate::domain::scopes::ScopeSet;
use crate::http::{Facts, PeerCertificate, RequestId};
use crate::service::{Granted, Services};
use secrecy::ExposeSecret;

#[post("/oauth2/token")]
pub async fn token_endpoint(
    req: HttpRequest,
    body: Bytes,
    peer: PeerCertificate,
    request_id: RequestId,
    facts: Facts,
    services: web::Data<Services>,
) -> Result<HttpResponse, OAuthError> {
    let params = form(&req, &body)?;
    let request_id = request_id.0.to_string();
    let caller = caller(&req, &params, &request_id, &facts, peer);
    let request = token_request(&params);
    let granted = crate::service::token::token(&services, caller, request).await?;
    Ok(no_store(HttpResponse::Ok()).json(token_response(granted)))
}

/// RFC 6749 §5.1 / RFC 8693 §2.2.1 body.
fn token_response(granted: Granted) -> serde_json::Value {
    match granted {
        Granted::Issued(issued) => {
            let mut body = json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "scope": issued.scopes.to_string(),
            });
            if let (Some(kind), Some(body)) = (issued.issued_token_type, body.as_object_mut()) {
                body.insert("issued_token_type".into(), json!(kind.urn()));
            }
            body
        }
        Granted::Upstream(served) => json!({
            "access_token": served.token.expose_secret(),
            "issued_token_type": TokenType::AccessToken.urn(),
            "token_type": "Bearer",
            "expires_in": served.expires_in,
            "scope": served.bank_scopes.to_string(),
        }),
    }
}

/// The grant and its parameters. A grant's malformed parameters are carried as its refusal,
/// decided after the client is known (and whether it may use the grant at all).
fn token_request(params: &Params) -> Result<TokenRequest<'_>, OAuthError> {
    let grant_type = params.require("grant_type")?;
    let target = params
        .all("resource")
        .iter()
        .chain(params.all("audience"))
        .next()
        .cloned();
    match GrantType::parse(grant_type) {
        Some(GrantType::ClientCredentials) => Ok(TokenRequest::ClientCredentials {
            target,
            parsed: client_credentials_request(params),
        }),
        Some(GrantType::TokenExchange) => Ok(TokenRequest::TokenExchange {
            target,
            parsed: exchange_request(params),
        }),
        None => Err(OAuthError::UnsupportedGrantType),
    }
}

/// RFC 8707 / RFC 8693: exactly one target, by `resource` or `audience`.
fn single_target(params: &Params) -> Result<AudienceId, Denial> {
    let targets: Vec<&String> = params
        .all("resource")
        .iter()
        .chain(params.all("audience"))
        .collect();
    match targets.as_slice() {
        [] => Err(Denial::InvalidTarget(
            "name exactly one target with `resource` or `audience`".into(),
        )),
        [one] => AudienceId::parse(one).ok_or_else(|| {
            Denial::InvalidTarget("the target must be an absolute URI without a fragment".into())
        }),
        _ => Err(Denial::InvalidTarget(
            "only one target per token: tokens carry exactly one audience".into(),
        )),
    }
}

fn scopes(params: &Params) -> Result<Option<ScopeSet>, Denial> {
    params
        .get("scope")
        .map(|scope| {
            ScopeSet::parse(scope)
                .ok_or_else(|| Denial::InvalidScope("malformed scope parameter".into()))
        })
        .transpose()
}

fn client_credentials_request(params: &Params) -> Result<ClientCredentialsRequest, Denial> {
    Ok(ClientCredentialsRequest {
        target: single_target(params)?,
        scopes: scopes(params)?,
    })
}

/// The parts of an RFC 8693 request; anything malformed is `invalid_request` (or
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
    Ok(ExchangeRequest {
        subject_token,
        subject_token_type,
        actor_token,
        target: single_target(params)?,
        requested_scopes: scopes(params)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(body: &str) -> Params {
        Params::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn debug_output_never_shows_tokens_or_assertions() {
        let credentials = crate::service::authenticate::Credentials {
            assertion: Some("eyJ.assertion.secret".into()),
            ..Default::default()
        };
        let params = Params::parse(b"subject_token=eyJ.subject.secret").unwrap();
        let request = ExchangeRequest {
            subject_token: "eyJ.subject.secret",
            subject_token_type: TokenType::AccessToken,
            actor_token: Some("eyJ.actor.secret"),
            target: AudienceId::parse("https://ledger.example").unwrap(),
            requested_scopes: None,
        };
        for printed in [
            format!("{credentials:?}"),
            format!("{params:?}"),
            format!("{request:?}"),
        ] {
            assert!(!printed.contains("secret"), "{printed}");
        }
    }

    #[test]
    fn exactly_one_target() {
        assert!(single_target(&params("resource=https://ledger.example")).is_ok());
        assert!(single_target(&params("audience=https://ledger.example")).is_ok());
        assert!(matches!(
            single_target(&params("")),
            Err(Denial::InvalidTarget(_))
        ));
        assert!(matches!(
            single_target(&params(
                "resource=https://ledger.example&audience=https://ledger.example"
            )),
            Err(Denial::InvalidTarget(_))
        ));
        assert!(matches!(
            single_target(&params("resource=ledger")),
            Err(Denial::InvalidTarget(_))
        ));
    }

    #[test]
    fn grant_types_are_parsed_at_the_edge() {
        assert!(matches!(
            token_request(&params("grant_type=password")),
            Err(OAuthError::UnsupportedGrantType)
        ));
        assert!(matches!(
            token_request(&params("")),
            Err(OAuthError::InvalidRequest(_))
        ));
        assert!(matches!(
            token_request(&params("grant_type=client_credentials&resource=x")),
            Ok(TokenRequest::ClientCredentials { parsed: Err(_), .. })
        ));
    }
}
