//! The token endpoint's use case: authenticate the caller, then the grant it asked for.

use crate::audit::EventKind;
use crate::domain::grants::TokenRequest;
use crate::service::authenticate::{self, Presented};
use crate::service::issue::Issued;
use crate::service::{Call, OAuthError, exchange, issue};
use crate::startup::Services;
use crate::tls::ClientCertificate;

pub async fn token(
    services: &Services,
    request_id: &str,
    certificate: Option<ClientCertificate>,
    presented: Presented,
    request: Result<TokenRequest<'_>, OAuthError>,
) -> Result<Issued, OAuthError> {
    let client = authenticate::caller(services, request_id, certificate, presented).await?;
    let call = Call {
        services,
        request_id,
        client: Some(&client),
    };
    match call.parsed(EventKind::TokenDenied, request).await? {
        TokenRequest::ClientCredentials { target, parsed } => {
            issue::client_credentials(&call, &client, target, parsed).await
        }
        TokenRequest::TokenExchange { target, parsed } => {
            exchange::exchange(&call, &client, target, parsed).await
        }
    }
}
