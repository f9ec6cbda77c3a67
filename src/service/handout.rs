//! Delivery `handout`: a token exchange whose target is a bank-backed audience returns that
//! audience's current bank token (plain bearer tokens only), to a caller that holds a live
//! Tessera token, is registered for the audience, and whom policy allows `obtain_upstream`.
//! Every use and refusal is audited with the token's generation, never the token.

use crate::audit::{EventDetails, EventKind, Outcome};
use crate::domain::grants::{Denial, ExchangeRequest, TokenType};
use crate::domain::upstream::Delivery;
use crate::policy::{Action, PolicyContext};
use crate::service::authenticate::AuthenticatedClient;
use crate::service::live::live_token;
use crate::service::upstream::{BrokerError, Served};
use crate::service::{Call, OAuthError};
use crate::storage::upstream::Credential;

/// A refusal: what the caller is told, the audited reason, and the policy decision if one
/// was made.
struct Refusal {
    error: OAuthError,
    reason: String,
    policy: Option<crate::policy::PolicyDecision>,
}

fn refused(denial: Denial, reason: &str) -> Refusal {
    Refusal {
        error: denial.into(),
        reason: reason.to_owned(),
        policy: None,
    }
}

fn unavailable(error: impl std::fmt::Display) -> Refusal {
    Refusal {
        error: OAuthError::TemporarilyUnavailable,
        reason: error.to_string(),
        policy: None,
    }
}

/// Hands out the current bank token of `credential`'s audience, or the audited refusal.
pub async fn handout(
    call: &Call<'_>,
    authenticated: &AuthenticatedClient,
    request: &ExchangeRequest<'_>,
    credential: Credential,
) -> Result<Served, OAuthError> {
    let audience = credential.audience.clone();
    let details = EventDetails {
        audience: Some(credential.audience.to_string()),
        scopes: credential.bank_scopes.to_vec(),
        ..call.details()
    };
    let policy = match decide(call, authenticated, request, &credential).await {
        Ok(policy) => policy,
        Err(refusal) => {
            let details = EventDetails {
                reason: Some(refusal.reason),
                ..details
            };
            let details = match refusal.policy {
                Some(policy) => policy.audited(details),
                None => details,
            };
            return Err(call
                .deny(EventKind::UpstreamTokenUsed, refusal.error, details)
                .await);
        }
    };
    let details = policy.audited(details);
    let served = match call.services.upstream.current(credential).await {
        Ok(served) => served,
        Err(error) => {
            let refusal = match &error {
                BrokerError::NoToken { retry_after, .. } => OAuthError::UpstreamUnavailable {
                    retry_after: *retry_after,
                },
                BrokerError::Storage(_) | BrokerError::Unseal(_) => {
                    tracing::error!(%error, "upstream token unavailable");
                    OAuthError::TemporarilyUnavailable
                }
            };
            let details = EventDetails {
                reason: Some(error.to_string()),
                ..details
            };
            return Err(call
                .deny(EventKind::UpstreamTokenUsed, refusal, details)
                .await);
        }
    };
    let details = EventDetails {
        upstream_generation: Some(served.generation),
        ..details
    };
    // No token leaves before its use is on the audit trail.
    if let Err(error) = call
        .services
        .audit
        .record(EventKind::UpstreamTokenUsed, Outcome::Allow, details)
        .await
    {
        tracing::error!(%error, "upstream token use not audited; withheld");
        return Err(OAuthError::TemporarilyUnavailable);
    }
    call.services
        .metrics
        .upstream_uses
        .with_label_values(&[audience.as_str()])
        .inc();
    Ok(served)
}

/// Everything but the bank: the delivery mode, the caller's own live token, its registration
/// for the audience, and policy. Nothing here calls the bank.
async fn decide(
    call: &Call<'_>,
    authenticated: &AuthenticatedClient,
    request: &ExchangeRequest<'_>,
    credential: &Credential,
) -> Result<crate::policy::PolicyDecision, Refusal> {
    let services = call.services;
    let client = &authenticated.client;
    let connection = &credential.connection;
    if connection.delivery != Delivery::Handout {
        return Err(refused(
            Denial::InvalidTarget("this audience's bank token is not handed out".into()),
            "the connection delivers by injection only",
        ));
    }
    if !connection.active {
        return Err(refused(
            Denial::InvalidTarget("this audience's bank connection is suspended".into()),
            "the upstream connection is suspended",
        ));
    }
    if request.subject_token_type != TokenType::AccessToken {
        return Err(refused(
            Denial::InvalidRequest(
                "the subject_token must be an access token of this server".into(),
            ),
            "bank tokens are handed out for this server's access tokens only",
        ));
    }
    let bad_subject = |reason: String| {
        refused(
            Denial::InvalidRequest("the subject_token is not acceptable".into()),
            &reason,
        )
    };
    let subject = live_token(
        services,
        request.subject_token,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .map_err(unavailable)?
    .map_err(|reason| bad_subject(format!("subject_token {reason}")))?;
    if subject.client_id != client.id.as_str() {
        return Err(bad_subject(
            "a bank token is handed out only for the client's own token".into(),
        ));
    }
    let not_registered = || {
        refused(
            Denial::InvalidTarget("this audience is not allowed for this client".into()),
            "audience not registered for the client",
        )
    };
    client
        .audiences
        .get(&credential.audience)
        .ok_or_else(not_registered)?;
    let audience = services
        .registry
        .audience(&credential.audience)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_registered)?;
    let (Some(owner), Some(owner_region)) = (&subject.owner_partner, &subject.owner_region) else {
        return Err(bad_subject(
            "subject_token does not name its data owner".into(),
        ));
    };
    let delegation_depth = i64::from(crate::service::exchange::depth(subject.act.as_ref()));
    let decision = services.policy.decide(
        Action::ObtainUpstream,
        client,
        &audience,
        &PolicyContext {
            scopes: &credential.bank_scopes,
            subject_partner: owner,
            subject_issuer: &subject.iss,
            subject_region: owner_region,
            consent: false,
            delegation_depth,
        },
    );
    if !decision.allowed {
        return Err(Refusal {
            error: OAuthError::InvalidTarget(
                "policy does not allow this client the bank token of this audience".into(),
            ),
            reason: format!("policy denied (determined by {:?})", decision.determining),
            policy: Some(decision),
        });
    }
    Ok(decision)
}
