//! Grant requests and decisions: which grant, which audience, which scopes, bound to what, and
//! what the token will say about where its authority came from.

use std::sync::Arc;

use crate::domain::audiences::{Audience, AudienceId};
use crate::domain::ids::{ConsentId, Jti, TxnId};
use crate::domain::scopes::ScopeSet;
use crate::policy::PolicyDecision;

/// The grants Tessera supports, parsed once at the edge (the form's `grant_type`, a client's
/// registration) so that dispatch is a `match`, not string comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 8693.
    TokenExchange,
}

impl GrantType {
    pub const ALL: [Self; 2] = [Self::ClientCredentials, Self::TokenExchange];

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|grant| grant.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

/// RFC 8693 §3 token type identifiers this server accepts and issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    AccessToken,
    Jwt,
}

impl TokenType {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "urn:ietf:params:oauth:token-type:access_token" => Some(Self::AccessToken),
            "urn:ietf:params:oauth:token-type:jwt" => Some(Self::Jwt),
            _ => None,
        }
    }

    pub fn urn(self) -> &'static str {
        match self {
            Self::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
            Self::Jwt => "urn:ietf:params:oauth:token-type:jwt",
        }
    }
}

/// A token request, parsed at the edge: the grant, the target as the caller named it (kept
/// for the audit record even when the rest is refused), and the grant's parameters or why
/// they were refused. The refusal is decided only after the client is known.
#[derive(Debug)]
pub enum TokenRequest<'a> {
    ClientCredentials {
        target: Option<String>,
        parsed: Result<ClientCredentialsRequest, Denial>,
    },
    TokenExchange {
        target: Option<String>,
        parsed: Result<ExchangeRequest<'a>, Denial>,
    },
}

#[derive(Debug, Clone)]
pub struct ClientCredentialsRequest {
    pub target: AudienceId,
    pub scopes: Option<ScopeSet>,
}

#[derive(Clone)]
pub struct ExchangeRequest<'a> {
    /// `access_token`: one of our tokens; `jwt`: a partner's JWT.
    pub subject_token: &'a str,
    pub subject_token_type: TokenType,
    pub actor_token: Option<&'a str>,
    pub target: AudienceId,
    pub requested_scopes: Option<ScopeSet>,
}

impl std::fmt::Debug for ExchangeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("subject_token", &"[redacted]")
            .field("subject_token_type", &self.subject_token_type)
            .field("actor_token", &self.actor_token.map(|_| "[redacted]"))
            .field("target", &self.target)
            .field("requested_scopes", &self.requested_scopes)
            .finish()
    }
}

/// Why a grant was refused, in the vocabulary of the protocol error it becomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    #[error("invalid_target: {0}")]
    InvalidTarget(String),
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
}

/// The scopes to grant: what was asked for if every scope is allowed (never trimmed
/// silently), or everything allowed when nothing was asked for.
pub fn grant_scopes(allowed: &ScopeSet, requested: Option<&ScopeSet>) -> Result<ScopeSet, Denial> {
    let granted = match requested {
        Some(requested) => {
            let excess = requested.difference(allowed);
            if !excess.is_empty() {
                return Err(Denial::InvalidScope(format!(
                    "not allowed for this client at this audience: {excess}"
                )));
            }
            requested.clone()
        }
        None => allowed.clone(),
    };
    if granted.is_empty() {
        return Err(Denial::InvalidScope("no scope can be granted".into()));
    }
    Ok(granted)
}

/// RFC 8705 §3: an audience that accepts only certificate-bound tokens gets none for a client
/// that did not present a certificate, whichever grant it uses.
pub fn require_binding(audience: &Audience, certificate_bound: bool) -> Result<(), Denial> {
    if audience.require_certificate_bound && !certificate_bound {
        return Err(Denial::InvalidRequest(
            "this audience accepts only certificate-bound tokens: authenticate over mutual TLS"
                .into(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub audience: Arc<Audience>,
    pub scopes: ScopeSet,
}

/// The partner whose subject a token is about, and its region.
#[derive(Debug, Clone)]
pub struct Owner {
    pub partner: String,
    pub region: String,
}

/// What a decided grant puts into the token beyond the client, audience and scopes.
#[derive(Debug, Default)]
pub struct Provenance {
    /// `sub`; the client itself unless a subject token names someone else.
    pub subject: Option<String>,
    /// The subject token's expiry: no exchanged token outlives it.
    pub not_after: Option<i64>,
    pub act: Option<serde_json::Value>,
    /// The actor token's `jti`: revoking it revokes this token.
    pub actor_jti: Option<Jti>,
    pub may_act: Option<serde_json::Value>,
    /// The data owner; the client's own partner when no subject token names another.
    pub owner: Option<Owner>,
    pub consent_id: Option<ConsentId>,
    pub txn: Option<TxnId>,
    /// The subject token's `jti`, recorded as the new token's parent.
    pub parent_jti: Option<Jti>,
    pub trust_profile_version: Option<i32>,
    pub policy: Option<PolicyDecision>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: &str) -> ScopeSet {
        ScopeSet::parse(value).unwrap()
    }

    #[test]
    fn scopes_are_never_widened_nor_silently_trimmed() {
        let allowed = set("a b");
        assert_eq!(grant_scopes(&allowed, None).unwrap(), allowed);
        assert_eq!(grant_scopes(&allowed, Some(&set("a"))).unwrap(), set("a"));
        assert!(matches!(
            grant_scopes(&allowed, Some(&set("a c"))),
            Err(Denial::InvalidScope(_))
        ));
        assert!(matches!(
            grant_scopes(&ScopeSet::default(), None),
            Err(Denial::InvalidScope(_))
        ));
    }
}
