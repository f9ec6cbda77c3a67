//! RFC 6749 §5.2 error responses: the one mapping from a use case's refusal to HTTP.

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, PRAGMA, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::service::OAuthError;

/// The registered HTTP authentication scheme (RFC 7235 §5.1) the `Authorization` header used,
/// in its canonical spelling; unknown schemes are not echoed back.
pub fn authorization_scheme(header: &str) -> Option<&'static str> {
    let used = header.split_ascii_whitespace().next()?;
    ["Basic", "Bearer", "DPoP", "Digest", "Negotiate"]
        .into_iter()
        .find(|scheme| scheme.eq_ignore_ascii_case(used))
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidClient { .. } => StatusCode::UNAUTHORIZED,
            Self::TemporarilyUnavailable | Self::UpstreamUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response
            .insert_header((CACHE_CONTROL, "no-store"))
            .insert_header((PRAGMA, "no-cache"));
        if let Self::InvalidClient {
            challenge: Some(scheme),
        } = self
        {
            response.insert_header((WWW_AUTHENTICATE, format!(r#"{scheme} realm="tessera""#)));
        }
        match self {
            Self::TemporarilyUnavailable => {
                response.insert_header(("Retry-After", "1"));
            }
            Self::UpstreamUnavailable { retry_after } => {
                response.insert_header(("Retry-After", retry_after.max(&1).to_string()));
            }
            _ => {}
        }
        let mut response =
            response.json(json!({ "error": self.code(), "error_description": self.description() }));
        response
            .extensions_mut()
            .insert(crate::http::facts::OAuthErrorCode(self.code()));
        response
    }
}
