//! RFC 8693 token exchange of Tessera-issued tokens: a holder narrows a token to one audience,
//! possibly on behalf of another actor, never widening what the subject token, the audience,
//! the client's registration, the consent and policy allow.

use std::sync::Arc;

use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::audiences::AudienceId;
use crate::client_auth::AuthenticatedClient;
use crate::clients::Registry;
use crate::consents;
use crate::grants::{Decision, Denial, Provenance, grant_scopes};
use crate::keys::KeySet;
use crate::policy::{Action, PolicyContext, PolicyEngine};
use crate::scopes::ScopeSet;
use crate::tokens::{AccessTokenClaims, validate_own};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

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

#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    /// Either accepted type names one of our JWT access tokens.
    pub subject_token: &'a str,
    pub actor_token: Option<&'a str>,
    pub target: AudienceId,
    pub requested_scopes: Option<ScopeSet>,
}

/// A refusal: what the caller is told, and the precise reason the audit trail keeps.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub denial: Denial,
    pub reason: String,
    pub policy: Option<crate::policy::PolicyDecision>,
}

fn refuse(denial: Denial, reason: impl Into<String>) -> ExchangeError {
    ExchangeError::Refused(Box::new(Refusal {
        denial,
        reason: reason.into(),
        policy: None,
    }))
}

fn bad_subject(reason: impl Into<String>) -> ExchangeError {
    refuse(
        Denial::InvalidRequest("the subject_token is not acceptable".into()),
        reason,
    )
}

fn bad_actor(reason: impl Into<String>) -> ExchangeError {
    refuse(
        Denial::InvalidRequest("the actor_token is not acceptable".into()),
        reason,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("exchange refused: {}", .0.reason)]
    Refused(Box<Refusal>),
    #[error("exchange unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for ExchangeError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(error.to_string())
    }
}

impl From<crate::clients::RegistryError> for ExchangeError {
    fn from(error: crate::clients::RegistryError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// What the exchange decides with.
pub struct Exchanger<'a> {
    pub keys: &'a KeySet,
    pub revocations: &'a crate::tokens::RevocationCache,
    pub jwks: &'a crate::trust::JwksCache,
    pub issuer: &'a str,
    pub pool: &'a PgPool,
    pub registry: &'a Registry,
    pub policy: &'a PolicyEngine,
    pub max_delegation_depth: u32,
}

/// Depth of an `act` chain: one per nested actor.
fn depth(act: Option<&Value>) -> u32 {
    let mut depth = 0;
    let mut current = act;
    while let Some(actor) = current {
        depth += 1;
        current = actor.get("act");
    }
    depth
}

impl Exchanger<'_> {
    /// One of our tokens, valid now, not revoked (nor any ancestor), its consent still active.
    async fn live_token(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Result<AccessTokenClaims, String>, ExchangeError> {
        let claims = match validate_own(self.keys, self.issuer, token, now) {
            Ok(claims) => claims,
            Err(rejection) => return Ok(Err(rejection.to_string())),
        };
        if self.revocations.is_revoked(self.pool, &claims.jti).await? {
            return Ok(Err("revoked, or exchanged from a revoked token".into()));
        }
        if let Some(consent) = &claims.consent_id {
            let now =
                OffsetDateTime::from_unix_timestamp(now).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            if !consents::still_active(self.pool, consent, now).await? {
                return Ok(Err("issued under a consent that is no longer active".into()));
            }
        }
        Ok(Ok(claims))
    }

    /// The subject of the exchange, from one of our tokens or from a partner's JWT.
    async fn subject(
        &self,
        client: &crate::clients::Client,
        token: &str,
        now: i64,
    ) -> Result<Subject, ExchangeError> {
        let issuer = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .ok()
            .and_then(|data| {
                data.claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        if issuer.as_deref() != Some(self.issuer) && issuer.is_some() {
            return self.partner_subject(token, now).await;
        }
        let subject = self
            .live_token(token, now)
            .await?
            .map_err(|reason| bad_subject(format!("subject_token {reason}")))?;
        let holds = subject.client_id == client.id.as_str()
            || client
                .resource_audience
                .as_ref()
                .is_some_and(|audience| audience.as_str() == subject.aud);
        if !holds {
            return Err(bad_subject(
                "the client is neither the subject token's client nor its audience",
            ));
        }
        let owner_id = crate::clients::ClientId::parse(&subject.client_id)
            .ok_or_else(|| bad_subject("subject token names a malformed client"))?;
        let owner = self
            .registry
            .client(&owner_id)
            .await?
            .ok_or_else(|| bad_subject("the subject token's client is no longer registered"))?;
        Ok(Subject {
            sub: subject.sub,
            issuer: subject.iss,
            expires_at: subject.exp,
            scopes: ScopeSet::parse(&subject.scope).unwrap_or_default(),
            act: subject.act,
            may_act: None,
            partner: owner.partner.0.clone(),
            region: owner.partner_region.clone(),
            txn: subject.txn,
            parent_jti: Some(subject.jti),
            consent_id: subject.consent_id,
            trust_profile_version: subject.trust_profile_version,
            audiences: None,
        })
    }

    async fn partner_subject(&self, token: &str, now: i64) -> Result<Subject, ExchangeError> {
        let validated =
            crate::trust::validate_partner_jwt(self.pool, self.jwks, token, self.issuer, now)
                .await
                .map_err(|error| ExchangeError::Unavailable(error.to_string()))?;
        let partner = match validated {
            crate::trust::Validated::Accepted(partner) => partner,
            crate::trust::Validated::Rejected(reason) => {
                return Err(bad_subject(format!("partner subject_token: {reason}")));
            }
        };
        let profile = &partner.profile;
        let scopes = match &partner.scopes {
            Some(claimed) => claimed.intersection(&profile.scopes),
            None => profile.scopes.clone(),
        };
        Ok(Subject {
            sub: partner.subject.clone(),
            issuer: partner.issuer.clone(),
            expires_at: partner.expires_at,
            scopes,
            act: None,
            may_act: partner.may_act.clone(),
            partner: profile.partner.clone(),
            region: profile.region.clone(),
            txn: None,
            parent_jti: None,
            consent_id: None,
            trust_profile_version: Some(profile.version),
            audiences: Some(profile.audiences.clone()),
        })
    }

    pub async fn decide(
        &self,
        authenticated: &AuthenticatedClient,
        request: &ExchangeRequest<'_>,
        now: i64,
    ) -> Result<(Decision, Provenance), ExchangeError> {
        let client = &authenticated.client;
        let subject = self.subject(client, request.subject_token, now).await?;

        let act = match request.actor_token {
            None => subject.act.clone(),
            Some(token) => {
                let actor = self
                    .live_token(token, now)
                    .await?
                    .map_err(|reason| bad_actor(format!("actor_token {reason}")))?;
                if actor.client_id != client.id.as_str() {
                    return Err(bad_actor("the actor_token was not issued to this client"));
                }
                let named = |may_act: &Value| {
                    may_act.get("sub").and_then(Value::as_str) == Some(actor.sub.as_str())
                };
                if subject
                    .may_act
                    .as_ref()
                    .is_some_and(|may_act| !named(may_act))
                {
                    return Err(bad_actor("the subject's may_act does not name this actor"));
                }
                let mut act = json!({ "sub": actor.sub, "client_id": actor.client_id });
                if let Some(prior) = &subject.act {
                    act["act"] = prior.clone();
                }
                Some(act)
            }
        };
        let delegation_depth = depth(act.as_ref());
        if delegation_depth > self.max_delegation_depth {
            return Err(bad_actor(format!(
                "delegation chain of {delegation_depth} exceeds the cap of {}",
                self.max_delegation_depth
            )));
        }

        let not_allowed = || {
            refuse(
                Denial::InvalidTarget("this audience is not allowed for this client".into()),
                "audience not registered for the client or the partner's trust profile",
            )
        };
        let allowed_here = client
            .audiences
            .get(&request.target)
            .ok_or_else(not_allowed)?;
        if subject
            .audiences
            .as_ref()
            .is_some_and(|audiences| !audiences.iter().any(|a| a == request.target.as_str()))
        {
            return Err(not_allowed());
        }
        let audience = self
            .registry
            .audience(&request.target)
            .await?
            .ok_or_else(not_allowed)?;
        let mut allowed = subject
            .scopes
            .intersection(&audience.scopes)
            .intersection(allowed_here);

        let mut consent_id = subject.consent_id.clone();
        if subject.partner != client.partner.0 {
            let at = OffsetDateTime::from_unix_timestamp(now).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let candidates = consents::between(
                self.pool,
                &subject.partner,
                &client.partner.0,
                client.id.as_str(),
            )
            .await?;
            let mut uncovered = consents::Uncovered::Absent;
            let mut covering = None;
            for consent in candidates {
                match consent.covers(&request.target, at) {
                    Ok(()) => {
                        covering = Some(consent);
                        break;
                    }
                    Err(why) => uncovered = why,
                }
            }
            let consent = covering.ok_or_else(|| {
                refuse(
                    Denial::InvalidRequest(
                        "no active consent covers this exchange of another partner's subject"
                            .into(),
                    ),
                    uncovered.reason(),
                )
            })?;
            allowed = allowed.intersection(&consent.scopes);
            consent_id = Some(consent.id.to_string());
        }
        let scopes =
            grant_scopes(&allowed, request.requested_scopes.as_ref()).map_err(|denial| {
                let reason = denial.to_string();
                refuse(denial, reason)
            })?;

        let decision = self.policy.decide(
            Action::Exchange,
            client,
            &audience,
            &PolicyContext {
                scopes: &scopes,
                subject_partner: &subject.partner,
                subject_issuer: &subject.issuer,
                subject_region: &subject.region,
                consent: consent_id.is_some(),
                delegation_depth: i64::from(delegation_depth),
            },
        );
        if !decision.allowed {
            return Err(ExchangeError::Refused(Box::new(Refusal {
                denial: Denial::InvalidTarget(
                    "policy does not allow this exchange for this audience".into(),
                ),
                reason: format!("policy denied (determined by {:?})", decision.determining),
                policy: Some(decision),
            })));
        }
        Ok((
            Decision {
                audience: Arc::clone(&audience),
                scopes,
            },
            Provenance {
                subject: Some(subject.sub),
                not_after: Some(subject.expires_at),
                act,
                consent_id,
                txn: Some(
                    subject
                        .txn
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                ),
                parent_jti: subject.parent_jti,
                trust_profile_version: subject.trust_profile_version,
                policy: Some(decision),
            },
        ))
    }
}

/// Whom an exchange is about, whichever kind of token named them.
struct Subject {
    sub: String,
    issuer: String,
    expires_at: i64,
    scopes: ScopeSet,
    act: Option<Value>,
    may_act: Option<Value>,
    partner: String,
    region: String,
    txn: Option<String>,
    /// Our token's `jti`, recorded as the parent in the lineage.
    parent_jti: Option<String>,
    consent_id: Option<String>,
    trust_profile_version: Option<i32>,
    /// A partner's trust profile limits the audiences its subjects reach.
    audiences: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_depth_counts_nested_actors() {
        assert_eq!(depth(None), 0);
        assert_eq!(depth(Some(&json!({ "sub": "a" }))), 1);
        assert_eq!(
            depth(Some(&json!({ "sub": "b", "act": { "sub": "a" } }))),
            2
        );
    }

    #[test]
    fn only_access_token_and_jwt_types() {
        assert_eq!(
            TokenType::parse("urn:ietf:params:oauth:token-type:jwt"),
            Some(TokenType::Jwt)
        );
        assert_eq!(
            TokenType::parse("urn:ietf:params:oauth:token-type:saml2"),
            None
        );
        assert_eq!(
            TokenType::AccessToken.urn(),
            "urn:ietf:params:oauth:token-type:access_token"
        );
    }
}
