//! Keys and policy through the admin API: list and rotate signing keys; read, reload and
//! dry-run the Cedar policy set.

use serde::{Deserialize, Serialize};

use crate::audit::{EventDetails, EventKind, Outcome};
use crate::domain::admin::{FieldError, Role};
use crate::policy::{Action, PolicyContext};
use crate::service::Services;
use crate::storage;
use crate::storage::keys::SigningKeyInfo;

use super::{AdminError, Caller};

pub async fn keys(services: &Services, caller: &Caller) -> Result<Vec<SigningKeyInfo>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    Ok(storage::keys::signing_keys(&mut conn).await?)
}

/// Rotates now, as `tessera keys rotate` does; this node signs with the new key at once,
/// the others within `keys.refresh_interval_ms`. Narrowing (nobody gains anything), so no
/// second admin is needed.
pub async fn rotate(
    services: &Services,
    caller: &Caller,
) -> Result<crate::service::keys::Rotation, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let rotation = crate::service::keys::rotate(
        &services.pool,
        services.keys.settings(),
        services.tokens.max_lifetime,
        false,
    )
    .await
    .map_err(|error| {
        tracing::error!(%error, "key rotation failed");
        AdminError::Unavailable
    })?
    .ok_or_else(|| AdminError::Conflict("no key was rotated".into()))?;
    rotation
        .audit(&services.audit, &format!("admin {}", caller.admin.id))
        .await
        .map_err(|_| AdminError::Unavailable)?;
    if let Err(error) = services.keys.refresh(&services.pool).await {
        tracing::warn!(%error, "rotated keys not loaded yet on this node");
    }
    Ok(rotation)
}

#[derive(Debug, Serialize)]
pub struct PolicyState {
    pub policy_set_hash: String,
}

pub async fn policy(services: &Services, caller: &Caller) -> Result<PolicyState, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    Ok(PolicyState {
        policy_set_hash: services.policy.hash(),
    })
}

/// Reloads this node's policy files (as SIGHUP does); an invalid set is refused and the
/// running one stays. Audited either way.
pub async fn reload(services: &Services, caller: &Caller) -> Result<PolicyState, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let before = services.policy.hash();
    let reloaded = services.policy.reload();
    let (outcome, details) = match &reloaded {
        Ok(hash) => (
            Outcome::Allow,
            EventDetails {
                policy_set_hash: Some(hash.clone()),
                changes: Some(serde_json::json!({ "before": before, "after": hash })),
                ..caller.details("policy_reloaded", None)
            },
        ),
        Err(error) => (
            Outcome::Deny,
            EventDetails {
                policy_set_hash: Some(before.clone()),
                changes: Some(serde_json::json!({ "refused": error.to_string() })),
                ..caller.details("policy_reload_refused", None)
            },
        ),
    };
    services
        .audit
        .record(EventKind::PolicyReloaded, outcome, details)
        .await
        .map_err(|_| AdminError::Unavailable)?;
    match reloaded {
        Ok(policy_set_hash) => Ok(PolicyState { policy_set_hash }),
        Err(error) => Err(AdminError::Conflict(format!(
            "the policy set was refused; the running one stays: {error}"
        ))),
    }
}

/// A hypothetical request for a dry-run decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    pub action: String,
    pub client_id: String,
    pub audience: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub subject_partner: Option<String>,
    pub subject_issuer: Option<String>,
    pub subject_region: Option<String>,
    #[serde(default)]
    pub consent: bool,
    #[serde(default)]
    pub delegation_depth: i64,
}

#[derive(Debug, Serialize)]
pub struct DecideResponse {
    pub decision: &'static str,
    pub determining_policies: Vec<String>,
    pub policy_set_hash: String,
}

/// The decision the running policy set would make, and the policies that determine it;
/// nothing is issued or recorded as a decision.
pub async fn decide(
    services: &Services,
    caller: &Caller,
    body: &[u8],
) -> Result<DecideResponse, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let request: DecideRequest = serde_json::from_slice(body)
        .map_err(|error| FieldError::new("", "decide_request", error.to_string()))?;
    let action = match request.action.as_str() {
        "issue" => Action::Issue,
        "exchange" => Action::Exchange,
        _ => return Err(FieldError::new("action", "enum", "`issue` or `exchange`").into()),
    };
    let unknown = |field: &str| FieldError::new(field, "registered", "not registered");
    let client_id = crate::domain::ids::ClientId::parse(&request.client_id)
        .ok_or_else(|| unknown("client_id"))?;
    let client = services
        .registry
        .client(&client_id)
        .await
        .map_err(|_| AdminError::Unavailable)?
        .ok_or_else(|| unknown("client_id"))?;
    let audience_id = crate::domain::audiences::AudienceId::parse(&request.audience)
        .ok_or_else(|| unknown("audience"))?;
    let audience = services
        .registry
        .audience(&audience_id)
        .await
        .map_err(|_| AdminError::Unavailable)?
        .ok_or_else(|| unknown("audience"))?;
    let scopes = crate::domain::scopes::ScopeSet::from_stored(&request.scopes);
    let subject_partner = request
        .subject_partner
        .unwrap_or_else(|| client.partner.to_string());
    let subject_region = request
        .subject_region
        .unwrap_or_else(|| client.partner_region.clone());
    let decision = services.policy.decide(
        action,
        &client,
        &audience,
        &PolicyContext {
            scopes: &scopes,
            subject_partner: &subject_partner,
            subject_issuer: request.subject_issuer.as_deref().unwrap_or(""),
            subject_region: &subject_region,
            consent: request.consent,
            delegation_depth: request.delegation_depth,
        },
    );
    Ok(DecideResponse {
        decision: if decision.allowed { "allow" } else { "deny" },
        determining_policies: decision.determining,
        policy_set_hash: decision.policy_set_hash,
    })
}
