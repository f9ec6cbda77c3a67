//! The OAuth protocol surface: token, introspection, revocation, metadata and JWKS endpoints.
//! Handlers parse, call the domain, and map the result; errors map once, here.

mod endpoints;
mod params;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, PRAGMA, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

pub use endpoints::routes;
pub use params::Params;

/// Error responses of RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2 and RFC 7009 §2.2.1.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// RFC 6749 §5.2: missing, repeated or malformed parameter; also RFC 8693 §2.2.2 for an
    /// unacceptable `subject_token` or `actor_token`.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// RFC 6749 §5.2: client authentication failed. The reason is audited, not returned. A
    /// client that tried an `Authorization` scheme is answered with a challenge in that
    /// scheme; any other gets none, since RFC 6749 §5.2 asks for one only then.
    #[error("invalid_client")]
    InvalidClient { challenge: Option<&'static str> },
    /// RFC 6749 §5.2: the grant itself is invalid, expired or revoked.
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    /// RFC 6749 §5.2: this client may not use this grant type (also RFC 7009 §2.1: revoking a
    /// token issued to another client).
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    /// RFC 6749 §5.2.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// RFC 6749 §5.2: the requested scope exceeds what may be granted.
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// RFC 8707 §2 / RFC 8693 §2.2.2: no, several, or an unacceptable target.
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    /// RFC 6749 §5.2 (via RFC 6749 §4.1.2.1's registry): a dependency is down; retry later.
    #[error("temporarily_unavailable")]
    TemporarilyUnavailable,
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient { .. } => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidTarget(_) => "invalid_target",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(text)
            | Self::InvalidGrant(text)
            | Self::UnauthorizedClient(text)
            | Self::InvalidScope(text)
            | Self::InvalidTarget(text) => text,
            Self::InvalidClient { .. } => "client authentication failed",
            Self::UnsupportedGrantType => "the grant type is not supported",
            Self::TemporarilyUnavailable => "the service is temporarily unavailable; retry later",
        }
    }
}

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
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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
        if matches!(self, Self::TemporarilyUnavailable) {
            response.insert_header(("Retry-After", "1"));
        }
        let mut response =
            response.json(json!({ "error": self.code(), "error_description": self.description() }));
        response
            .extensions_mut()
            .insert(crate::http::facts::OAuthErrorCode(self.code()));
        response
    }
}
