//! What the handlers learn about a request that its one log line should carry (the client, the
//! grant, the audited reason of a refusal), left in the request's extensions for the request
//! context middleware to read once the response is ready. Only identifiers and reasons go here:
//! never a token, an assertion or a key.

use actix_web::{HttpMessage, HttpRequest};

#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// The authenticated client, or the client id a failed authentication claimed.
    pub client_id: Option<String>,
    /// The `grant_type` of a token request, once parsed.
    pub grant: Option<&'static str>,
    /// The reason a refusal was audited with.
    pub reason: Option<String>,
}

/// The OAuth error code (RFC 6749 §5.2) an error response carries; set on the response by the
/// error type that writes the body.
#[derive(Debug, Clone, Copy)]
pub struct OAuthErrorCode(pub &'static str);

/// Updates the facts of `req`.
pub fn note(req: &HttpRequest, update: impl FnOnce(&mut RequestFacts)) {
    let mut extensions = req.extensions_mut();
    if let Some(facts) = extensions.get_mut::<RequestFacts>() {
        update(facts);
        return;
    }
    let mut facts = RequestFacts::default();
    update(&mut facts);
    extensions.insert(facts);
}

/// Records the reason a refusal was audited with, bounded as the audit trail bounds it (it
/// may quote unauthenticated input).
pub fn note_reason(req: &HttpRequest, reason: &str) {
    let bounded = crate::audit::bounded_text(reason);
    note(req, |facts| facts.reason = Some(bounded));
}

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
