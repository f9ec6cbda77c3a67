//! Four-eyes: a widening change waits as a proposal until an approver other than its author
//! approves it (or anyone with the role but the author rejects it).

use sqlx::PgConnection;

use crate::audit::{Applied, Change, EventKind};
use crate::domain::admin::{Proposal, ProposalStatus, ProposedChange, Role, diff};
use crate::service::Services;
use crate::storage;

use super::partners::json;
use super::{AdminError, Caller, denied};

pub async fn list(
    services: &Services,
    caller: &Caller,
    status: Option<&str>,
) -> Result<Vec<Proposal>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let status = status
        .map(|status| {
            ProposalStatus::parse(status).ok_or_else(|| {
                AdminError::Invalid(crate::domain::admin::FieldError::new(
                    "status",
                    "enum",
                    "must be `pending`, `approved` or `rejected`",
                ))
            })
        })
        .transpose()?;
    let mut conn = services.pool.acquire().await?;
    Ok(storage::proposals::proposals(&mut conn, status).await?)
}

pub async fn get(
    services: &Services,
    caller: &Caller,
    id: uuid::Uuid,
) -> Result<Proposal, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    storage::proposals::proposal(&mut conn, id, false)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("proposal `{id}`")))
}

/// Approves and applies, or rejects, a pending proposal.
pub async fn decide(
    services: &Services,
    caller: &Caller,
    id: uuid::Uuid,
    approve: bool,
    reason: Option<String>,
) -> Result<Proposal, AdminError> {
    caller.require(&services.audit, Role::Approver).await?;
    let proposal = get(services, caller, id).await?;
    // Nobody decides on their own change, nor on a change of their own powers.
    let refusal = if proposal.author == caller.admin.id {
        Some("the author of a proposal cannot decide it")
    } else if matches!(proposal.change, ProposedChange::UpdateAdmin(_))
        && proposal.target == caller.admin.id
    {
        Some("an admin cannot decide a change of their own roles or status")
    } else {
        None
    };
    if let Some(refusal) = refusal {
        denied(
            &services.audit,
            &caller.request_id,
            Some(&caller.admin.id),
            refusal,
        )
        .await?;
        return Err(AdminError::Forbidden(refusal.to_owned()));
    }
    if !approve && reason.as_deref().is_none_or(str::is_empty) {
        return Err(AdminError::Invalid(crate::domain::admin::FieldError::new(
            "reason",
            "required",
            "a rejection needs a reason",
        )));
    }
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Decide {
                caller: caller.clone(),
                id,
                approve,
                reason,
            },
        )
        .await?)
}

struct Decide {
    caller: Caller,
    id: uuid::Uuid,
    approve: bool,
    reason: Option<String>,
}

impl Change for Decide {
    type Output = Proposal;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Proposal, AdminError> {
        Box::pin(async move {
            let proposal = storage::proposals::proposal(conn, self.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("proposal `{}`", self.id)))?;
            if proposal.status != ProposalStatus::Pending {
                return Err(AdminError::Conflict(format!(
                    "proposal `{}` is already {}",
                    self.id,
                    proposal.status.as_str()
                )));
            }
            if proposal.author == self.caller.admin.id {
                return Err(AdminError::Forbidden(
                    "the author of a proposal cannot decide it".to_owned(),
                ));
            }
            let (status, action) = if self.approve {
                (ProposalStatus::Approved, "proposal_approved")
            } else {
                (ProposalStatus::Rejected, "proposal_rejected")
            };
            let applied = if self.approve {
                Some(apply(conn, &proposal, &self.caller.admin.id).await?)
            } else {
                None
            };
            if !storage::proposals::decide_proposal(
                conn,
                self.id,
                status,
                &self.caller.admin.id,
                self.reason.as_deref(),
            )
            .await?
            {
                return Err(AdminError::Conflict(format!(
                    "proposal `{}` was decided meanwhile",
                    self.id
                )));
            }
            let mut details = self.caller.details(action, Some(&proposal.target));
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id,
                "kind": proposal.change.kind(),
                "author": proposal.author,
                "reason": self.reason,
                "diff": proposal.diff,
                "applied": applied,
            }));
            let decided = Proposal {
                status,
                decided_by: Some(self.caller.admin.id.clone()),
                reason: self.reason.clone(),
                version: proposal.version.saturating_add(1),
                ..proposal
            };
            Ok((details, decided))
        })
    }
}

/// Applies an approved change to the state it was proposed against; if the target changed
/// since, the approval would apply something nobody reviewed, so it is refused.
async fn apply(
    conn: &mut PgConnection,
    proposal: &Proposal,
    approver: &str,
) -> Result<serde_json::Value, AdminError> {
    match &proposal.change {
        ProposedChange::PartnerUpdate(update) => {
            let current = storage::partners::partner(conn, &proposal.target, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("partner `{}`", proposal.target)))?;
            if Some(current.version) != proposal.base_version {
                return Err(AdminError::Conflict(format!(
                    "partner `{}` changed since the proposal (now version {}); propose again",
                    proposal.target, current.version
                )));
            }
            let after = update.applied_to(&current);
            if !storage::partners::update_partner(conn, &after).await? {
                return Err(AdminError::Conflict(format!(
                    "partner `{}` changed meanwhile",
                    proposal.target
                )));
            }
            storage::registry::notify_registry_changed(conn, "partners").await?;
            let (before, after) = (json(&current)?, json(&after)?);
            Ok(serde_json::json!({
                "before": before,
                "after": after,
                "diff": diff(&before, &after),
            }))
        }
        ProposedChange::CreateClient(_)
        | ProposedChange::UpdateClient(_)
        | ProposedChange::UpdateAudience(_) => {
            super::registry::apply_approved(conn, proposal).await
        }
        ProposedChange::UpdateAdmin(update) => {
            super::admins::apply_approved(conn, proposal, update).await
        }
        ProposedChange::GrantConsent(grant) => {
            super::consents::apply_approved(conn, grant, approver).await
        }
        ProposedChange::ActivateTrustProfile { version } => {
            super::trust_profiles::apply_approved(
                conn,
                &proposal.target,
                *version,
                proposal.base_version,
            )
            .await
        }
    }
}
