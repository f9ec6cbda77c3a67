//! What a request's one log line reports besides what the use case noted: the OAuth error
//! code of its response, and its outcome.

/// The OAuth error code (RFC 6749 §5.2) an error response carries; set on the response by the
/// error type that writes the body.
#[derive(Debug, Clone, Copy)]
pub struct OAuthErrorCode(pub &'static str);

/// `allow` for a success, `deny` for a refusal, `error` when the server could not decide.
pub fn outcome(status: actix_web::http::StatusCode) -> &'static str {
    if status.is_server_error() {
        "error"
    } else if status.is_client_error() {
        "deny"
    } else {
        "allow"
    }
}
