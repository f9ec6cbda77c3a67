//! The bank token client: `client_credentials` at the bank's token endpoint with
//! `tls_client_auth` (RFC 8705 §2), through the `oauth2` crate over the reqwest the server
//! already uses. Responses are bounded in size and time and never trusted to be well formed.

use std::time::Duration;

use oauth2::basic::{BasicClient, BasicTokenType};
use oauth2::{
    AccessToken, AuthType, HttpRequest, HttpResponse, RequestTokenError, RevocationUrl, Scope,
    TokenResponse,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::domain::scopes::ScopeSet;
use crate::domain::upstream::{ResponseProblem, lifetime};

/// The largest bank response read; anything longer is refused unread.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest `Retry-After` honoured; a bank asking for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why no token came back. Texts name the bank's behaviour, never a token or a key.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("connection settings unusable: {0}")]
    Settings(String),
    #[error("bank unreachable: {0}")]
    Unreachable(String),
    #[error("bank answered 429 (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("bank answered HTTP {0}")]
    Status(u16),
    #[error("bank refused the token request: {0}")]
    Refused(String),
    #[error("bank response malformed: {0}")]
    Malformed(String),
    #[error("bank response longer than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("the connection's request budget for this minute is spent")]
    BudgetSpent,
}

/// What the bank issued.
pub struct BankToken {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub lifetime: Duration,
}

/// How to reach one bank as Tessera.
pub struct BankClient {
    http: reqwest::Client,
    token_endpoint: oauth2::TokenUrl,
    client_id: oauth2::ClientId,
}

/// What a connection gives the client: endpoints, identity and limits.
pub struct BankSettings<'a> {
    pub token_endpoint: &'a str,
    pub client_id: &'a str,
    pub client_certificate_pem: &'a str,
    pub client_key_pkcs8: &'a Zeroizing<Vec<u8>>,
    pub server_ca_pem: &'a str,
    pub connect_timeout: Duration,
    /// The whole request, response body included.
    pub timeout: Duration,
}

impl BankClient {
    pub fn new(settings: &BankSettings<'_>) -> Result<Self, BankError> {
        let unusable = |what: &str, error: &dyn std::fmt::Display| {
            BankError::Settings(format!("{what}: {error}"))
        };
        let chain = CertificateDer::pem_slice_iter(settings.client_certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| unusable("client certificate", &error))?;
        let mut roots = rustls::RootCertStore::empty();
        for anchor in CertificateDer::pem_slice_iter(settings.server_ca_pem.as_bytes()) {
            let anchor = anchor.map_err(|error| unusable("bank CA", &error))?;
            roots
                .add(anchor)
                .map_err(|error| unusable("bank CA", &error))?;
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            settings.client_key_pkcs8.as_slice().to_vec(),
        ));
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| unusable("TLS", &error))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|error| unusable("client key", &error))?;
        let http = reqwest::Client::builder()
            .user_agent("tessera")
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|error| unusable("HTTP client", &error))?;
        Ok(Self {
            http,
            token_endpoint: oauth2::TokenUrl::new(settings.token_endpoint.to_owned())
                .map_err(|error| unusable("token endpoint", &error))?,
            client_id: oauth2::ClientId::new(settings.client_id.to_owned()),
        })
    }

    /// `client_credentials` for `scopes`.
    pub async fn fetch_token(&self, scopes: &ScopeSet) -> Result<BankToken, BankError> {
        // tls_client_auth: the client id goes in the body, no secret (RFC 8705 §2).
        let client = BasicClient::new(self.client_id.clone())
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(self.token_endpoint.clone());
        let response = client
            .exchange_client_credentials()
            .add_scopes(scopes.to_vec().into_iter().map(Scope::new))
            .request_async(&Transport(&self.http))
            .await
            .map_err(bank_error)?;
        if *response.token_type() != BasicTokenType::Bearer {
            let kind = response.token_type().as_ref().to_owned();
            return Err(BankError::Malformed(
                ResponseProblem::NotBearer(kind).to_string(),
            ));
        }
        let access_token = response.access_token().secret();
        if access_token.is_empty() {
            return Err(BankError::Malformed(
                ResponseProblem::EmptyToken.to_string(),
            ));
        }
        let lifetime = lifetime(response.expires_in())
            .map_err(|problem| BankError::Malformed(problem.to_string()))?;
        Ok(BankToken {
            access_token: SecretString::from(access_token.clone()),
            refresh_token: response
                .refresh_token()
                .map(|token| SecretString::from(token.secret().clone())),
            lifetime,
        })
    }
}

impl BankClient {
    /// Revokes an access token at the bank (RFC 7009).
    pub async fn revoke(&self, endpoint: &str, token: &SecretString) -> Result<(), BankError> {
        let endpoint = RevocationUrl::new(endpoint.to_owned())
            .map_err(|error| BankError::Settings(format!("revocation endpoint: {error}")))?;
        BasicClient::new(self.client_id.clone())
            .set_auth_type(AuthType::RequestBody)
            .set_revocation_url(endpoint)
            .revoke_token(AccessToken::new(token.expose_secret().to_owned()).into())
            .map_err(|error| BankError::Settings(format!("revocation endpoint: {error}")))?
            .request_async(&Transport(&self.http))
            .await
            .map_err(bank_error)
    }
}

/// What `oauth2` reports, in the bank's terms.
fn bank_error<E: oauth2::ErrorResponse + std::fmt::Display + 'static>(
    error: RequestTokenError<BankError, E>,
) -> BankError {
    match error {
        RequestTokenError::Request(error) => error,
        RequestTokenError::ServerResponse(response) => BankError::Refused(response.to_string()),
        RequestTokenError::Parse(error, _) => BankError::Malformed(error.to_string()),
        RequestTokenError::Other(text) => BankError::Malformed(text),
    }
}

/// The adapter `oauth2` calls. A named type with a boxed `Send` future rather than a closure:
/// a closure's future borrows with a lifetime the compiler cannot prove `Send` for every
/// caller, which the scheduler's tasks need.
struct Transport<'a>(&'a reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for Transport<'_> {
    type Error = BankError;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, BankError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request))
    }
}

/// One request over reqwest, the body read up to the bound.
/// Statuses that carry no OAuth error body are answered here, with what they mean.
async fn send(http: &reqwest::Client, request: HttpRequest) -> Result<HttpResponse, BankError> {
    let mut request = reqwest::Request::try_from(request)
        .map_err(|error| BankError::Settings(format!("request: {error}")))?;
    // The bank sees the caller's trace (W3C `traceparent`), as partners' key-set fetches do.
    request
        .headers_mut()
        .extend(crate::telemetry::outgoing_headers());
    let mut response = http
        .execute(request)
        .await
        .map_err(|error| BankError::Unreachable(error_chain(&error)))?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(BankError::RateLimited {
            retry_after: retry_after(response.headers()),
        });
    }
    if status.is_server_error() {
        return Err(BankError::Status(status.as_u16()));
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(BankError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| BankError::Unreachable(error_chain(&error)))?
    {
        if body.len().saturating_add(chunk.len()) > MAX_RESPONSE_BYTES {
            return Err(BankError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let mut built = oauth2::http::Response::builder().status(status.as_u16());
    if let Some(headers) = built.headers_mut() {
        *headers = response.headers().clone();
    }
    built
        .body(body)
        .map_err(|error| BankError::Malformed(error.to_string()))
}

/// `Retry-After` in seconds (RFC 9110 §10.2.3), capped; a date or garbage counts as absent.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// reqwest's outer error says little ("error sending request"); its causes say why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_and_capped() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(reqwest::header::RETRY_AFTER, "99999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
