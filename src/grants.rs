//! Grant decisions and issuance, free of HTTP: which audience, which scopes, how long, bound to
//! what; then minting, and releasing the token only once its audit record is committed.

use std::sync::Arc;

use crate::audiences::{Audience, AudienceId};
use crate::audit::{AuditError, AuditLog, EventDetails, EventKind, Outcome};
use crate::client_auth::AuthenticatedClient;
use crate::clients::Registry;
use crate::config::TokenSettings;
use crate::domain::scope_limits::{self, Limit};
use crate::keys::{KeyError, KeyRing};
use crate::policy::PolicyDecision;
use crate::scopes::ScopeSet;
use crate::tokens::{AccessTokenClaims, Confirmation};

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

/// RFC 8707 / RFC 8693: exactly one target, by `resource` or `audience`.
pub fn single_target(resources: &[String], audiences: &[String]) -> Result<AudienceId, Denial> {
    let targets: Vec<&String> = resources.iter().chain(audiences).collect();
    match targets.as_slice() {
        [] => Err(Denial::InvalidTarget(
            "name exactly one target with `resource` or `audience`".into(),
        )),
        [one] => AudienceId::parse(one).ok_or_else(|| {
            Denial::InvalidTarget("the target must be an absolute URI without a fragment".into())
        }),
        _ => Err(Denial::InvalidTarget(
            "only one target per token: tokens carry exactly one audience".into(),
        )),
    }
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

/// `client_credentials` (RFC 6749 §4.4) decided against the registry: target, scopes and
/// certificate binding.
pub async fn decide_client_credentials(
    registry: &Registry,
    authenticated: &AuthenticatedClient,
    target: &AudienceId,
    requested: Option<&ScopeSet>,
) -> Result<Decision, DecisionError> {
    let client = &authenticated.client;
    if !client.allows_grant(GrantType::ClientCredentials) {
        return Err(Denial::UnauthorizedClient(
            "this client may not use client_credentials".into(),
        )
        .into());
    }
    let allowed = client.audiences.get(target).ok_or_else(|| {
        Denial::InvalidTarget("this audience is not allowed for this client".into())
    })?;
    let audience = registry.audience(target).await?.ok_or_else(|| {
        Denial::InvalidTarget("this audience is not allowed for this client".into())
    })?;
    let scopes =
        grant_scopes(&allowed.intersection(&audience.scopes), requested).map_err(|_| {
            let limits = [
                Limit {
                    holder: "the audience",
                    scopes: &audience.scopes,
                },
                Limit {
                    holder: "the client's registration for this audience",
                    scopes: allowed,
                },
            ];
            Denial::InvalidScope(scope_limits::explain(requested, &limits))
        })?;
    require_binding(&audience, authenticated)?;
    Ok(Decision { audience, scopes })
}

/// RFC 8705 §3: an audience that accepts only certificate-bound tokens gets none for a client
/// that did not present a certificate, whichever grant it uses.
pub fn require_binding(
    audience: &Audience,
    authenticated: &AuthenticatedClient,
) -> Result<(), Denial> {
    if audience.require_certificate_bound && authenticated.certificate.is_none() {
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

#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error(transparent)]
    Registry(#[from] crate::clients::RegistryError),
}

pub struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub scopes: ScopeSet,
    pub claims: AccessTokenClaims,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .field("claims", &self.claims)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("the subject token expires now")]
    SubjectExpired,
}

/// Everything issuance needs from the running server.
pub struct Issuer<'a> {
    pub keys: &'a KeyRing,
    pub audit: &'a AuditLog,
    pub settings: &'a TokenSettings,
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
    pub actor_jti: Option<String>,
    pub may_act: Option<serde_json::Value>,
    /// The data owner; the client's own partner when no subject token names another.
    pub owner: Option<Owner>,
    pub consent_id: Option<String>,
    pub txn: Option<String>,
    /// The subject token's `jti`, recorded as the new token's parent.
    pub parent_jti: Option<String>,
    pub trust_profile_version: Option<i32>,
    pub policy: Option<PolicyDecision>,
}

impl Issuer<'_> {
    /// Mints the token and returns it only after its audit record (with the lineage of an
    /// exchanged token) has committed.
    pub async fn issue(
        &self,
        authenticated: &AuthenticatedClient,
        decision: &Decision,
        provenance: Provenance,
        kind: EventKind,
        request_id: &str,
        now: i64,
    ) -> Result<Issued, IssueError> {
        let client = &authenticated.client;
        let mut expires_in = crate::tokens::lifetime(&[
            self.settings.default_lifetime,
            self.settings.max_lifetime,
            client.max_lifetime,
            decision.audience.max_lifetime,
        ])
        .as_secs();
        if let Some(not_after) = provenance.not_after {
            let remaining = not_after
                .checked_sub(now)
                .and_then(|left| u64::try_from(left).ok())
                .unwrap_or(0);
            expires_in = expires_in.min(remaining);
        }
        if expires_in == 0 {
            return Err(IssueError::SubjectExpired);
        }
        let owner = provenance.owner.unwrap_or_else(|| Owner {
            partner: client.partner.0.clone(),
            region: client.partner_region.clone(),
        });
        let claims = AccessTokenClaims {
            iss: self.settings.issuer.clone(),
            sub: provenance.subject.unwrap_or_else(|| client.id.to_string()),
            aud: decision.audience.id.to_string(),
            exp: i64::try_from(expires_in)
                .ok()
                .and_then(|lifetime| now.checked_add(lifetime))
                .ok_or(IssueError::SubjectExpired)?,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: client.id.to_string(),
            scope: decision.scopes.to_string(),
            cnf: authenticated
                .certificate
                .as_ref()
                .map(|certificate| Confirmation {
                    x5t_s256: certificate.thumbprint.to_base64url(),
                }),
            act: provenance.act,
            consent_id: provenance.consent_id,
            txn: provenance.txn,
            trust_profile_version: provenance.trust_profile_version,
            owner_partner: Some(owner.partner),
            owner_region: Some(owner.region),
            may_act: provenance.may_act,
        };
        let access_token = crate::tokens::mint(&self.keys.current(), &claims)?;
        let details = EventDetails {
            request_id: Some(request_id.to_owned()),
            client_id: Some(client.id.to_string()),
            partner: Some(client.partner.0.clone()),
            subject: Some(claims.sub.clone()),
            audience: Some(claims.aud.clone()),
            scopes: decision.scopes.to_vec(),
            jti: Some(claims.jti.clone()),
            consent_id: claims.consent_id.clone(),
            txn: claims.txn.clone(),
            actor_chain: claims.act.clone(),
            parent_jti: provenance.parent_jti,
            actor_jti: provenance.actor_jti,
            expires_at: Some(claims.exp),
            trust_profile_version: claims.trust_profile_version.map(i64::from),
            ..EventDetails::default()
        };
        let details = match provenance.policy {
            Some(policy) => policy.audited(details),
            None => details,
        };
        self.audit.record(kind, Outcome::Allow, details).await?;
        Ok(Issued {
            access_token,
            expires_in,
            scopes: decision.scopes.clone(),
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: &str) -> ScopeSet {
        ScopeSet::parse(value).unwrap()
    }

    #[test]
    fn debug_output_never_shows_tokens_or_assertions() {
        let credentials = crate::client_auth::Credentials {
            assertion: Some("eyJ.assertion.secret".into()),
            ..Default::default()
        };
        let params = crate::oauth::Params::parse(b"subject_token=eyJ.subject.secret").unwrap();
        let request = crate::exchange::ExchangeRequest {
            subject_token: "eyJ.subject.secret",
            subject_token_type: crate::exchange::TokenType::AccessToken,
            actor_token: Some("eyJ.actor.secret"),
            target: crate::audiences::AudienceId::parse("https://ledger.example").unwrap(),
            requested_scopes: None,
        };
        for printed in [
            format!("{credentials:?}"),
            format!("{params:?}"),
            format!("{request:?}"),
        ] {
            assert!(!printed.contains("secret"), "{printed}");
        }
    }

    #[test]
    fn exactly_one_target() {
        let one = vec!["https://ledger.example".to_owned()];
        assert!(single_target(&one, &[]).is_ok());
        assert!(single_target(&[], &one).is_ok());
        assert!(matches!(
            single_target(&[], &[]),
            Err(Denial::InvalidTarget(_))
        ));
        assert!(matches!(
            single_target(&one, &one),
            Err(Denial::InvalidTarget(_))
        ));
        assert!(matches!(
            single_target(&["ledger".to_owned()], &[]),
            Err(Denial::InvalidTarget(_))
        ));
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
