//! One use case per file: authenticate the caller, decide (policy included), store, and audit
//! every outcome. A use case returns what the caller gets or an [`OAuthError`], which the HTTP
//! layer maps to a response in one place.

pub mod admin;
pub mod authenticate;
pub mod exchange;
pub mod handout;
pub mod introspect;
pub mod issue;
pub mod keys;
pub mod live;
pub mod partner_jwt;
pub mod revoke;
pub mod token;
pub mod upstream;

use crate::audit::{EventDetails, EventKind, Outcome};
use crate::domain::grants::{Denial, GrantType};
use crate::service::authenticate::{AuthenticatedClient, Presented};
use crate::service::issue::IssueError;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::audit::AuditLog;
use crate::config::TokenSettings;
use crate::crypto::jwks::JwksCache;
use crate::crypto::keys::KeyRing;
use crate::policy::PolicyEngine;
use crate::service::issue::Issuer;
use crate::storage::clients::UsageTracker;
use crate::storage::registry::Registry;
use crate::storage::revocations::RevocationCache;
use crate::telemetry::metrics::Metrics;
use crate::tls::ClientCertificate;

/// The running server's shared parts, handed to every handler.
pub struct Services {
    pub pool: PgPool,
    pub registry: Registry,
    pub keys: Arc<KeyRing>,
    pub audit: AuditLog,
    pub tokens: TokenSettings,
    pub rotation_interval: Duration,
    pub metrics: Metrics,
    pub usage: Arc<UsageTracker>,
    pub policy: Arc<PolicyEngine>,
    pub max_delegation_depth: u32,
    pub jwks: JwksCache,
    pub revocations: RevocationCache,
    pub upstream: crate::service::upstream::Broker,
}

impl Services {
    /// The context of a request whose caller authenticated as `client`.
    pub fn call<'a>(
        &'a self,
        request_id: &'a str,
        facts: &'a RequestFacts,
        client: &'a AuthenticatedClient,
    ) -> Call<'a> {
        Call {
            services: self,
            request_id,
            facts,
            client: Some(client),
        }
    }

    pub fn issuer(&self) -> Issuer<'_> {
        Issuer {
            keys: &self.keys,
            audit: &self.audit,
            settings: &self.tokens,
        }
    }
}

/// What the token endpoint hands out: a token this server signed, or an audience's bank token.
#[derive(Debug)]
pub enum Granted {
    Issued(Box<crate::service::issue::Issued>),
    Upstream(crate::service::upstream::Served),
}

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
    /// `temporarily_unavailable` because a bank token cannot be had now; `retry_after` says
    /// in how many seconds it may be.
    #[error("temporarily_unavailable (upstream token, retry after {retry_after} s)")]
    UpstreamUnavailable { retry_after: u64 },
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
            Self::TemporarilyUnavailable | Self::UpstreamUnavailable { .. } => {
                "temporarily_unavailable"
            }
        }
    }

    pub fn description(&self) -> &str {
        match self {
            Self::InvalidRequest(text)
            | Self::InvalidGrant(text)
            | Self::UnauthorizedClient(text)
            | Self::InvalidScope(text)
            | Self::InvalidTarget(text) => text,
            Self::InvalidClient { .. } => "client authentication failed",
            Self::UnsupportedGrantType => "the grant type is not supported",
            Self::TemporarilyUnavailable => "the service is temporarily unavailable; retry later",
            Self::UpstreamUnavailable { .. } => {
                "the bank token for this audience is not available now; retry later"
            }
        }
    }
}

impl From<Denial> for OAuthError {
    fn from(denial: Denial) -> Self {
        match denial {
            Denial::InvalidRequest(text) => Self::InvalidRequest(text),
            Denial::UnauthorizedClient(text) => Self::UnauthorizedClient(text),
            Denial::InvalidTarget(text) => Self::InvalidTarget(text),
            Denial::InvalidScope(text) => Self::InvalidScope(text),
        }
    }
}

/// What handling decided about a request that its one log line carries: identifiers and
/// reasons only, never a token, an assertion or a key.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The authenticated client, or the client id a failed authentication claimed.
    pub client_id: Option<String>,
    /// The `grant_type` of a token request, once parsed.
    pub grant: Option<&'static str>,
    /// The reason a refusal was audited with.
    pub reason: Option<String>,
}

/// A request's [`Facts`], noted by the use case while the HTTP layer waits to log them.
#[derive(Debug, Default)]
pub struct RequestFacts(std::sync::Mutex<Facts>);

impl RequestFacts {
    pub fn note(&self, update: impl FnOnce(&mut Facts)) {
        update(
            &mut self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    pub fn snapshot(&self) -> Facts {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Who is calling a protected endpoint, as the edge read it.
pub struct Caller<'a> {
    pub request_id: &'a str,
    pub facts: &'a RequestFacts,
    /// The connection's client certificate, as verified by current trust.
    pub certificate: Option<ClientCertificate>,
    pub credentials: Presented,
}

/// The context every protected OAuth request carries into its decisions and audit records.
pub struct Call<'a> {
    pub services: &'a Services,
    pub request_id: &'a str,
    pub facts: &'a RequestFacts,
    pub client: Option<&'a AuthenticatedClient>,
}

impl Call<'_> {
    pub fn details(&self) -> EventDetails {
        EventDetails {
            request_id: Some(self.request_id.to_owned()),
            client_id: self.client.map(|c| c.client.id.to_string()),
            partner: self.client.map(|c| c.client.partner.to_string()),
            ..EventDetails::default()
        }
    }

    /// A decided grant that could not be issued: refused and audited like any refusal, unless
    /// the audit trail itself failed. Nothing is released either way.
    pub async fn issue_failed(&self, kind: EventKind, error: IssueError) -> OAuthError {
        tracing::error!(%error, "token not issued");
        let refusal = match error {
            IssueError::SubjectExpired => {
                OAuthError::InvalidRequest("the subject token has expired".into())
            }
            IssueError::Keys(_) => OAuthError::TemporarilyUnavailable,
            // The trail just refused this request's record; a second attempt would only
            // double the caller's wait.
            IssueError::Audit(_) => return OAuthError::TemporarilyUnavailable,
        };
        self.deny(kind, refusal, self.details()).await
    }

    /// Counts and audits the refusal, then returns the error the caller sees. The audited
    /// reason is the one in `details`, else the error itself. A refusal is returned even when
    /// its record cannot be written: nothing is released by it.
    pub async fn deny(
        &self,
        kind: EventKind,
        error: OAuthError,
        details: EventDetails,
    ) -> OAuthError {
        self.services
            .metrics
            .tokens_denied
            .with_label_values(&[grant_label(kind), error.code()])
            .inc();
        let details = EventDetails {
            reason: details.reason.or_else(|| Some(error.to_string())),
            ..details
        };
        if let Some(reason) = &details.reason {
            // Bounded as the audit trail bounds it: it may quote unauthenticated input.
            let reason = crate::audit::bounded_text(reason);
            self.facts.note(|facts| facts.reason = Some(reason));
        }
        if let Err(audit_error) = self
            .services
            .audit
            .record(kind, Outcome::Deny, details)
            .await
        {
            tracing::error!(%audit_error, %error, "refusal could not be audited");
        }
        error
    }

    /// The parsed request, or its refusal counted and audited.
    pub async fn parsed<T>(
        &self,
        kind: EventKind,
        parsed: Result<T, OAuthError>,
    ) -> Result<T, OAuthError> {
        match parsed {
            Ok(value) => Ok(value),
            Err(error) => Err(self.deny(kind, error, self.details()).await),
        }
    }
}

/// The metrics label of the request a refusal answers.
fn grant_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::TokenIntrospected => "introspection",
        EventKind::TokenRevoked => "revocation",
        EventKind::TokenExchanged => GrantType::TokenExchange.as_str(),
        EventKind::ClientAuthenticationFailed => "client_authentication",
        EventKind::UpstreamTokenUsed => "upstream_token",
        _ => "token",
    }
}
