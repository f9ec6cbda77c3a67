//! The token endpoint's use case: authenticate the caller, then the grant it asked for.

use crate::audit::EventKind;
use crate::domain::grants::{GrantType, TokenRequest};
use crate::service::Services;
use crate::service::authenticate;
use crate::service::{Caller, Granted, OAuthError, exchange, issue};

pub async fn token(
    services: &Services,
    caller: Caller<'_>,
    request: Result<TokenRequest<'_>, OAuthError>,
) -> Result<Granted, OAuthError> {
    let (request_id, facts) = (caller.request_id, caller.facts);
    let client = authenticate::caller(services, caller).await?;
    let call = services.call(request_id, facts, &client);
    let request = call.parsed(EventKind::TokenDenied, request).await?;
    let grant = match &request {
        TokenRequest::ClientCredentials { .. } => GrantType::ClientCredentials,
        TokenRequest::TokenExchange { .. } => GrantType::TokenExchange,
    };
    facts.note(|facts| facts.grant = Some(grant.as_str()));
    match request {
        TokenRequest::ClientCredentials { target, parsed } => {
            issue::client_credentials(&call, &client, target, parsed)
                .await
                .map(|issued| Granted::Issued(Box::new(issued)))
        }
        TokenRequest::TokenExchange { target, parsed } => {
            exchange::exchange(&call, &client, target, parsed).await
        }
    }
}
