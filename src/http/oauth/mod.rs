//! The OAuth protocol surface: token, introspection, revocation, metadata and JWKS endpoints.
//! Handlers parse, call one use case, and map the result; errors map once, in `error`.

mod error;
mod introspect;
mod jwks;
mod metadata;
mod params;
mod request;
mod revoke;
mod token;

use actix_web::web;

pub use crate::service::OAuthError;
pub use error::authorization_scheme;
pub use params::Params;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(token::token_endpoint)
        .service(introspect::introspect_endpoint)
        .service(revoke::revoke_endpoint)
        .service(metadata::metadata_endpoint)
        .service(jwks::jwks_endpoint)
        .service(crate::http::fallback::method_not_allowed(
            &["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"],
            "POST",
        ))
        .service(crate::http::fallback::method_not_allowed(
            &["/.well-known/oauth-authorization-server", "/jwks.json"],
            "GET",
        ));
}
