//! What every protected OAuth request carries: a strict form body and the client's
//! credentials, bounded before anything reaches the registry or the audit trail.

use actix_web::HttpRequest;
use actix_web::http::header::{self, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use actix_web::web::Bytes;

use super::{OAuthError, Params};
use crate::http::{Facts, PeerCertificate};
use crate::service::Caller;
use crate::service::authenticate::{Credentials, Presented};

/// Longest `client_id` and `client_assertion_type` accepted before authentication; no
/// registered client id or assertion type comes near it.
const CLIENT_ID_MAX_BYTES: usize = 128;
/// Longest `client_assertion`: a signed JWT, with room for an `x5c` chain in its header.
const CLIENT_ASSERTION_MAX_BYTES: usize = 16 * 1024;

pub fn form(req: &HttpRequest, body: &Bytes) -> Result<Params, OAuthError> {
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

/// Who calls: the request's id and facts, the connection's certificate and the credentials
/// the form carries.
pub fn caller<'a>(
    req: &HttpRequest,
    params: &Params,
    request_id: &'a str,
    facts: &'a Facts,
    peer: PeerCertificate,
) -> Caller<'a> {
    Caller {
        request_id,
        facts: &facts.0,
        certificate: peer.0,
        credentials: credentials(req, params),
    }
}

/// The credentials as sent, refused as `invalid_request` when unbounded or unprintable (with
/// the claimed client id, bounded, for the audit record).
fn credentials(req: &HttpRequest, params: &Params) -> Presented {
    let bounded = || -> Result<Credentials, OAuthError> {
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
    };
    bounded().map_err(|error| {
        let client_id = params.get("client_id").map(crate::audit::bounded_text);
        (error, client_id)
    })
}

pub fn no_store(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((CACHE_CONTROL, "no-store"))
        .insert_header((PRAGMA, "no-cache"));
    response
}
