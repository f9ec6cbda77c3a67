//! `client_credentials` (RFC 6749 §4.4), and minting: the one place a token is signed, and
//! released only once its audit record has committed.

use crate::audit::{AuditError, AuditLog, EventDetails, EventKind, Outcome};
use crate::config::TokenSettings;
use crate::crypto::keys::{KeyError, KeyRing, unix_now};
use crate::domain::audiences::AudienceId;
use crate::domain::grants::{
    ClientCredentialsRequest, Decision, Denial, GrantType, Owner, Provenance, TokenType,
    grant_scopes, require_binding,
};
use crate::domain::ids::Jti;
use crate::domain::scope_limits::{self, Limit};
use crate::domain::scopes::ScopeSet;
use crate::domain::tokens::{AccessTokenClaims, Confirmation};
use crate::policy::{Action, PolicyContext};
use crate::service::authenticate::AuthenticatedClient;
use crate::service::{Call, OAuthError};
use crate::storage::clients::RegistryError;
use crate::storage::registry::Registry;

/// `client_credentials`: the client's own token for one audience, within its registration,
/// the audience's scopes and policy.
pub async fn client_credentials(
    call: &Call<'_>,
    authenticated: &AuthenticatedClient,
    target: Option<String>,
    parsed: Result<ClientCredentialsRequest, Denial>,
) -> Result<Issued, OAuthError> {
    let details = EventDetails {
        audience: target,
        ..call.details()
    };
    let decided = match parsed {
        Ok(request) => {
            decide(
                &call.services.registry,
                authenticated,
                &request.target,
                request.scopes.as_ref(),
            )
            .await
        }
        Err(denial) => Err(denial.into()),
    };
    let decision = match decided {
        Ok(decision) => decision,
        Err(DecisionError::Denied(denial)) => {
            return Err(call
                .deny(EventKind::TokenDenied, denial.into(), details)
                .await);
        }
        Err(DecisionError::Registry(error)) => {
            tracing::error!(%error, "registry unavailable");
            return Err(call
                .deny(
                    EventKind::TokenDenied,
                    OAuthError::TemporarilyUnavailable,
                    details,
                )
                .await);
        }
    };
    let client = &authenticated.client;
    let policy = call.services.policy.decide(
        Action::Issue,
        client,
        &decision.audience,
        &PolicyContext {
            scopes: &decision.scopes,
            subject_partner: client.partner.as_str(),
            subject_issuer: &call.services.tokens.issuer,
            subject_region: &client.partner_region,
            consent: false,
            delegation_depth: 0,
        },
    );
    if !policy.allowed {
        let details = policy.audited(EventDetails {
            scopes: decision.scopes.to_vec(),
            ..details
        });
        let error = OAuthError::InvalidTarget(
            "policy does not allow this client a token for this audience".into(),
        );
        return Err(call.deny(EventKind::TokenDenied, error, details).await);
    }
    let provenance = Provenance {
        policy: Some(policy),
        ..Provenance::default()
    };
    let issued = call
        .services
        .issuer()
        .issue(
            authenticated,
            &decision,
            provenance,
            EventKind::TokenIssued,
            call.request_id,
            unix_now(),
        )
        .await;
    let issued = match issued {
        Ok(issued) => issued,
        Err(error) => return Err(call.issue_failed(EventKind::TokenDenied, error).await),
    };
    call.services
        .metrics
        .tokens_issued
        .with_label_values(&[GrantType::ClientCredentials.as_str(), &issued.claims.aud])
        .inc();
    Ok(issued)
}

/// `client_credentials` decided against the registry: target, scopes and certificate binding.
async fn decide(
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
    require_binding(&audience, authenticated.certificate.is_some())?;
    Ok(Decision { audience, scopes })
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

pub struct Issued {
    pub access_token: String,
    /// RFC 8693 §2.2.1, for exchanged tokens.
    pub issued_token_type: Option<TokenType>,
    pub expires_in: u64,
    pub scopes: ScopeSet,
    pub claims: AccessTokenClaims,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"[redacted]")
            .field("issued_token_type", &self.issued_token_type)
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
        let mut expires_in = crate::domain::tokens::lifetime(&[
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
            partner: client.partner.to_string(),
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
            jti: Jti::random(),
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
        let access_token = crate::crypto::jwt::mint(&self.keys.current(), &claims)?;
        let details = EventDetails {
            request_id: Some(request_id.to_owned()),
            client_id: Some(client.id.to_string()),
            partner: Some(client.partner.to_string()),
            subject: Some(claims.sub.clone()),
            audience: Some(claims.aud.clone()),
            scopes: decision.scopes.to_vec(),
            jti: Some(claims.jti.to_string()),
            consent_id: claims.consent_id.map(|id| id.to_string()),
            txn: claims.txn.as_ref().map(ToString::to_string),
            actor_chain: claims.act.clone(),
            parent_jti: provenance.parent_jti.map(String::from),
            actor_jti: provenance.actor_jti.map(String::from),
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
            issued_token_type: None,
            expires_in,
            scopes: decision.scopes.clone(),
            claims,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_tokens() {
        let issued = Issued {
            access_token: "eyJ.issued.secret".into(),
            issued_token_type: None,
            expires_in: 60,
            scopes: ScopeSet::default(),
            claims: serde_json::from_value(serde_json::json!({
                "iss": "https://tessera.test", "sub": "s", "aud": "https://a.test",
                "exp": 2, "iat": 1, "nbf": 1, "jti": "j", "client_id": "c", "scope": "s"
            }))
            .unwrap(),
        };
        assert!(!format!("{issued:?}").contains("secret"));
    }
}
