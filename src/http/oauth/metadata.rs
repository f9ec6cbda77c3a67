//! `GET /.well-known/oauth-authorization-server` (RFC 8414).

use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpResponse, get, web};
use serde_json::json;

use crate::domain::grants::GrantType;
use crate::service::Services;

/// RFC 8414 metadata, listing exactly what this server supports.
#[get("/.well-known/oauth-authorization-server")]
pub async fn metadata_endpoint(services: web::Data<Services>) -> HttpResponse {
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
