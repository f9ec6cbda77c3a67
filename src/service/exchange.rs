//! RFC 8693 token exchange of Tessera-issued tokens: a holder narrows a token to one audience,
//! possibly on behalf of another actor, never widening what the subject token, the audience,
//! the client's registration, the consent and policy allow.

use std::sync::Arc;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{EventDetails, EventKind};
use crate::domain::audiences::AudienceId;
use crate::domain::consents;
use crate::domain::grants::{
    Decision, Denial, ExchangeRequest, GrantType, Owner, Provenance, TokenType, grant_scopes,
};
use crate::domain::ids::{ConsentId, Jti, TxnId};
use crate::domain::scope_limits::{self, Limit};
use crate::domain::scopes::ScopeSet;
use crate::policy::{Action, PolicyContext};
use crate::service::Granted;
use crate::service::Services;
use crate::service::authenticate::AuthenticatedClient;
use crate::service::live::live_token;
use crate::service::{Call, OAuthError};

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

impl From<crate::storage::clients::RegistryError> for ExchangeError {
    fn from(error: crate::storage::clients::RegistryError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// What the exchange decides with.
struct Exchanger<'a> {
    services: &'a Services,
    /// The moment of the request, with its sub-second part: consents are compared with it, so
    /// one that took effect a moment ago is in force.
    at: OffsetDateTime,
}

/// Depth of an `act` chain: one per nested actor.
pub(crate) fn depth(act: Option<&Value>) -> u32 {
    let mut depth = 0;
    let mut current = act;
    while let Some(actor) = current {
        depth += 1;
        current = actor.get("act");
    }
    depth
}

impl Exchanger<'_> {
    /// The subject of the exchange, from one of our tokens or from a partner's JWT, as its
    /// declared type says.
    async fn subject(
        &self,
        client: &crate::domain::clients::Client,
        token: &str,
        token_type: TokenType,
        now: i64,
    ) -> Result<Subject, ExchangeError> {
        if token_type == TokenType::Jwt {
            return self.partner_subject(token, now).await;
        }
        let subject = live_token(self.services, token, self.at)
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
        // The data owner travels in the token: whoever holds it now, consent, profile and
        // residency are decided against the partner whose subject it is.
        let (Some(owner), Some(owner_region)) = (subject.owner_partner, subject.owner_region)
        else {
            return Err(bad_subject(
                "subject_token does not name its data owner (issued before owners were carried)",
            ));
        };
        Ok(Subject {
            sub: subject.sub,
            issuer: subject.iss,
            expires_at: subject.exp,
            scopes: ScopeSet::parse(&subject.scope).unwrap_or_default(),
            act: subject.act,
            may_act: subject.may_act,
            owner,
            owner_region,
            txn: subject.txn,
            parent_jti: Some(subject.jti),
            consent_id: subject.consent_id,
            trust_profile_version: subject.trust_profile_version,
        })
    }

    async fn partner_subject(&self, token: &str, now: i64) -> Result<Subject, ExchangeError> {
        let validated = crate::service::partner_jwt::validate_partner_jwt(
            &self.services.pool,
            &self.services.jwks,
            token,
            &self.services.tokens.issuer,
            now,
        )
        .await
        .map_err(|error| ExchangeError::Unavailable(error.to_string()))?;
        let partner = match validated {
            crate::domain::trust::Validated::Accepted(partner) => partner,
            crate::domain::trust::Validated::Rejected(reason) => {
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
            owner: profile.partner.clone(),
            owner_region: profile.region.clone(),
            txn: None,
            parent_jti: None,
            consent_id: None,
            trust_profile_version: Some(profile.version),
        })
    }

    /// The new token's actor chain, after checking the actor against the subject's
    /// `may_act`: when the subject names who may act for it, some actor (a new one, or the one
    /// already acting) must be that one.
    ///
    /// An actor token is the exchanging client's own token about itself: its `sub` is then a
    /// client id that Tessera authenticated, never a name a partner's identity provider chose
    /// (which could otherwise impersonate whoever `may_act` names), and it carries no other
    /// partner's subject into the chain.
    async fn actor(
        &self,
        client: &crate::domain::clients::Client,
        subject: &Subject,
        actor_token: Option<&str>,
    ) -> Result<Actor, ExchangeError> {
        let actor = match actor_token {
            None => Actor {
                act: subject.act.clone(),
                jti: None,
                expires_at: None,
            },
            Some(token) => {
                let actor = live_token(self.services, token, self.at)
                    .await?
                    .map_err(|reason| bad_actor(format!("actor_token {reason}")))?;
                if actor.client_id != client.id.as_str() {
                    return Err(bad_actor("the actor_token was not issued to this client"));
                }
                if actor.sub != actor.client_id
                    || actor.owner_partner.as_deref() != Some(client.partner.as_str())
                {
                    return Err(bad_actor(
                        "the actor_token must be the client's own token about itself",
                    ));
                }
                let mut act = serde_json::Map::new();
                act.insert("sub".into(), json!(actor.sub));
                act.insert("client_id".into(), json!(actor.client_id));
                if let Some(prior) = &subject.act {
                    act.insert("act".into(), prior.clone());
                }
                let act = Value::Object(act);
                Actor {
                    act: Some(act),
                    jti: Some(actor.jti),
                    expires_at: Some(actor.exp),
                }
            }
        };
        if let Some(may_act) = &subject.may_act {
            let acting = actor
                .act
                .as_ref()
                .and_then(|act| act.get("sub"))
                .and_then(Value::as_str);
            match acting {
                None => {
                    return Err(bad_actor(
                        "the subject's may_act requires an actor_token naming that actor",
                    ));
                }
                Some(acting) if !may_act_names(may_act, acting, &self.services.tokens.issuer) => {
                    return Err(bad_actor("the subject's may_act does not name this actor"));
                }
                Some(_) => {}
            }
        }
        let delegation_depth = depth(actor.act.as_ref());
        if delegation_depth > self.services.max_delegation_depth {
            return Err(bad_actor(format!(
                "delegation chain of {delegation_depth} exceeds the cap of {}",
                self.services.max_delegation_depth
            )));
        }
        Ok(actor)
    }

    /// What the data owner's trust profile still allows: the audience must be in both the
    /// version the subject was accepted under and the partner's active version, which must be
    /// active; scopes are limited by both.
    async fn profile_reach(
        &self,
        subject: &Subject,
        target: &AudienceId,
        allowed: ScopeSet,
    ) -> Result<ScopeSet, ExchangeError> {
        let Some(version) = subject.trust_profile_version else {
            return Ok(allowed);
        };
        let reach = crate::storage::trust::reach(&self.services.pool, &subject.owner, version)
            .await
            .map_err(|error| ExchangeError::Unavailable(error.to_string()))?;
        let not_allowed = |reason: &str| {
            refuse(
                Denial::InvalidTarget(
                    "the data owner's trust profile does not allow this audience".into(),
                ),
                reason.to_owned(),
            )
        };
        let Some(reach) = reach else {
            return Err(not_allowed(
                "the data owner's trust profile is gone or not active",
            ));
        };
        if !reach.audiences.iter().any(|a| a == target.as_str()) {
            return Err(not_allowed(
                "audience not in the data owner's trust profile (issued-under or active version)",
            ));
        }
        Ok(allowed.intersection(&reach.scopes))
    }

    /// The consent that authorises this hop, if the data owner is another partner: the one the
    /// subject token was issued under (never replaced along a chain), or else one the owner
    /// gave the client's partner. Returns the consent id and the scopes left.
    async fn consent(
        &self,
        client: &crate::domain::clients::Client,
        subject: &Subject,
        target: &AudienceId,
        allowed: ScopeSet,
    ) -> Result<(Option<ConsentId>, ScopeSet), ExchangeError> {
        let refused = |reason: &str| {
            refuse(
                Denial::InvalidRequest(
                    "no active consent of the data owner covers this exchange".into(),
                ),
                reason.to_owned(),
            )
        };
        if let Some(id) = &subject.consent_id {
            let consent = crate::storage::consents::current(&self.services.pool, id.as_uuid())
                .await?
                .ok_or_else(|| refused("the subject token's consent does not exist"))?;
            consent
                .covers(target, self.at)
                .map_err(|why| refused(why.reason()))?;
            if consent.grantor != subject.owner {
                return Err(refused(
                    "the subject token's consent was not given by its data owner",
                ));
            }
            let is_owner = client.partner.as_str() == subject.owner;
            let is_grantee = client.partner.as_str() == consent.grantee_partner
                && consent
                    .grantee_client
                    .as_deref()
                    .is_none_or(|grantee| grantee == client.id.as_str());
            if !is_owner && !is_grantee {
                return Err(refused(
                    "the subject token's consent was not given to this client",
                ));
            }
            return Ok((Some(*id), allowed.intersection(&consent.scopes)));
        }
        if subject.owner == client.partner.as_str() {
            return Ok((None, allowed));
        }
        let candidates = crate::storage::consents::between(
            &self.services.pool,
            &subject.owner,
            client.partner.as_str(),
            client.id.as_str(),
        )
        .await?;
        let mut uncovered = consents::Uncovered::Absent;
        for consent in candidates {
            match consent.covers(target, self.at) {
                Ok(()) => {
                    let scopes = allowed.intersection(&consent.scopes);
                    return Ok((Some(ConsentId::from_uuid(consent.id)), scopes));
                }
                Err(why) => uncovered = uncovered.max(why),
            }
        }
        Err(refused(uncovered.reason()))
    }

    async fn decide(
        &self,
        authenticated: &AuthenticatedClient,
        request: &ExchangeRequest<'_>,
        now: i64,
    ) -> Result<(Decision, Provenance), ExchangeError> {
        let client = &authenticated.client;
        let subject = self
            .subject(
                client,
                request.subject_token,
                request.subject_token_type,
                now,
            )
            .await?;
        let actor = self.actor(client, &subject, request.actor_token).await?;
        let delegation_depth = depth(actor.act.as_ref());

        let not_allowed = || {
            refuse(
                Denial::InvalidTarget("this audience is not allowed for this client".into()),
                "audience not registered for the client",
            )
        };
        let registered = client
            .audiences
            .get(&request.target)
            .ok_or_else(not_allowed)?;
        let audience = self
            .services
            .registry
            .audience(&request.target)
            .await?
            .ok_or_else(not_allowed)?;
        crate::domain::grants::require_binding(&audience, authenticated.certificate.is_some())
            .map_err(|denial| refuse(denial, "audience requires certificate-bound tokens"))?;

        let limits = ScopeLimits {
            subject: subject.scopes.clone(),
            audience: audience.scopes.clone(),
            registration: registered.clone(),
        };
        let allowed = limits.allowed();
        let within_profile = self
            .profile_reach(&subject, &request.target, allowed)
            .await?;
        let (consent_id, allowed) = self
            .consent(client, &subject, &request.target, within_profile.clone())
            .await?;
        let scopes = grant_scopes(&allowed, request.requested_scopes.as_ref()).map_err(|_| {
            let why = limits.explain(request.requested_scopes.as_ref(), &within_profile, &allowed);
            refuse(Denial::InvalidScope(why.clone()), why)
        })?;

        let decision = self.services.policy.decide(
            Action::Exchange,
            client,
            &audience,
            &PolicyContext {
                scopes: &scopes,
                subject_partner: &subject.owner,
                subject_issuer: &subject.issuer,
                subject_region: &subject.owner_region,
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
                // A delegated token outlives neither its subject nor its actor.
                not_after: Some(
                    actor
                        .expires_at
                        .map_or(subject.expires_at, |actor| actor.min(subject.expires_at)),
                ),
                act: actor.act,
                actor_jti: actor.jti,
                may_act: subject.may_act,
                owner: Some(Owner {
                    partner: subject.owner,
                    region: subject.owner_region,
                }),
                consent_id,
                txn: Some(subject.txn.unwrap_or_else(TxnId::random)),
                parent_jti: subject.parent_jti,
                trust_profile_version: subject.trust_profile_version,
                policy: Some(decision),
            },
        ))
    }
}

/// Who acts in the new token: the chain, and the new actor token's `jti` and expiry.
struct Actor {
    act: Option<Value>,
    jti: Option<Jti>,
    expires_at: Option<i64>,
}

/// RFC 8693 §4.4: `may_act` names the actor by `sub` (here a client id Tessera authenticated)
/// and, if it says so, by issuer, which for an actor token is always this server.
fn may_act_names(may_act: &Value, actor: &str, our_issuer: &str) -> bool {
    may_act.get("sub").and_then(Value::as_str) == Some(actor)
        && may_act
            .get("iss")
            .is_none_or(|iss| iss.as_str() == Some(our_issuer))
}

/// The limits on an exchanged token's scopes that do not need storage, kept apart so that a
/// refusal can name which of them lacks a requested scope.
struct ScopeLimits {
    subject: ScopeSet,
    audience: ScopeSet,
    registration: ScopeSet,
}

impl ScopeLimits {
    fn allowed(&self) -> ScopeSet {
        self.subject
            .intersection(&self.audience)
            .intersection(&self.registration)
    }

    /// Why scopes were refused, for the caller and the audit trail alike: the first limit
    /// that lacks a requested scope (subject, audience, registration, the data owner's trust
    /// profile, the consent). `within_profile` and `allowed` are what is left after the trust
    /// profile and after the consent.
    fn explain(
        &self,
        requested: Option<&ScopeSet>,
        within_profile: &ScopeSet,
        allowed: &ScopeSet,
    ) -> String {
        let limits = [
            Limit {
                holder: "the subject token",
                scopes: &self.subject,
            },
            Limit {
                holder: "the audience",
                scopes: &self.audience,
            },
            Limit {
                holder: "the client's registration for this audience",
                scopes: &self.registration,
            },
            Limit {
                holder: "the data owner's trust profile",
                scopes: within_profile,
            },
            Limit {
                holder: "the consent",
                scopes: allowed,
            },
        ];
        scope_limits::explain(requested, &limits)
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
    /// The data owner: the partner whose subject this is, and its region.
    owner: String,
    owner_region: String,
    txn: Option<TxnId>,
    /// Our token's `jti`, recorded as the parent in the lineage.
    parent_jti: Option<Jti>,
    consent_id: Option<ConsentId>,
    trust_profile_version: Option<i32>,
}

/// RFC 8693 token exchange: the use case behind the token endpoint's exchange grant. A
/// bank-backed target is answered with its bank token instead (delivery `handout`).
pub async fn exchange(
    call: &Call<'_>,
    authenticated: &AuthenticatedClient,
    target: Option<String>,
    parsed: Result<ExchangeRequest<'_>, Denial>,
) -> Result<Granted, OAuthError> {
    let services = call.services;
    let details = EventDetails {
        audience: target,
        ..call.details()
    };
    if !authenticated.client.allows_grant(GrantType::TokenExchange) {
        let error = OAuthError::UnauthorizedClient("this client may not exchange tokens".into());
        return Err(call.deny(EventKind::TokenExchanged, error, details).await);
    }
    let request = match parsed {
        Ok(request) => request,
        Err(denial) => {
            return Err(call
                .deny(EventKind::TokenExchanged, denial.into(), details)
                .await);
        }
    };
    // Whether the target is bank-backed comes with the (cached) audience; only those cost a
    // read of their credential.
    let credential = match services.registry.audience(&request.target).await {
        Ok(Some(audience)) if audience.bank_backed => services
            .upstream
            .credential(&request.target)
            .await
            .map_err(|error| error.to_string()),
        Ok(_) => Ok(None),
        Err(error) => Err(error.to_string()),
    };
    match credential {
        Ok(Some(credential)) => {
            return crate::service::handout::handout(call, authenticated, &request, credential)
                .await
                .map(Granted::Upstream);
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "registry or upstream credentials unavailable");
            return Err(call
                .deny(
                    EventKind::TokenExchanged,
                    OAuthError::TemporarilyUnavailable,
                    details,
                )
                .await);
        }
    }
    let at = OffsetDateTime::now_utc();
    let exchanger = Exchanger { services, at };
    let now = at.unix_timestamp();
    let (decision, provenance) = match exchanger.decide(authenticated, &request, now).await {
        Ok(decided) => decided,
        Err(ExchangeError::Refused(refusal)) => {
            let Refusal {
                denial,
                reason,
                policy,
            } = *refusal;
            let details = EventDetails {
                reason: Some(reason),
                ..details
            };
            let details = match policy {
                Some(policy) => policy.audited(details),
                None => details,
            };
            return Err(call
                .deny(EventKind::TokenExchanged, denial.into(), details)
                .await);
        }
        Err(ExchangeError::Unavailable(error)) => {
            tracing::error!(%error, "token exchange unavailable");
            return Err(call
                .deny(
                    EventKind::TokenExchanged,
                    OAuthError::TemporarilyUnavailable,
                    details,
                )
                .await);
        }
    };
    let issued = services
        .issuer()
        .issue(
            authenticated,
            &decision,
            provenance,
            EventKind::TokenExchanged,
            call.request_id,
            now,
        )
        .await;
    let mut issued = match issued {
        Ok(issued) => issued,
        Err(error) => return Err(call.issue_failed(EventKind::TokenExchanged, error).await),
    };
    services
        .metrics
        .tokens_issued
        .with_label_values(&[GrantType::TokenExchange.as_str(), &issued.claims.aud])
        .inc();
    issued.issued_token_type = Some(TokenType::AccessToken);
    Ok(Granted::Issued(Box::new(issued)))
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
