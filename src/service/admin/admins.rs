//! Admins through the admin API: more roles or a reactivation wait for a second admin;
//! removing roles and suspending take effect at once.

use sqlx::PgConnection;

use crate::audit::{Applied, Change, EventKind};
use crate::domain::admin::{
    Admin, AdminUpdate, Proposal, ProposalStatus, ProposedChange, Role, diff,
};
use crate::service::Services;
use crate::storage;

use super::{AdminError, Caller};

#[derive(Debug)]
pub enum Updated {
    Applied(Admin),
    Proposed(Box<Proposal>),
}

pub async fn update(
    services: &Services,
    caller: &Caller,
    id: &str,
    if_match: Option<i32>,
    body: &[u8],
) -> Result<Updated, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let update = AdminUpdate::from_body(body)?;
    let expected = if_match.ok_or(AdminError::PreconditionRequired)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Update {
                caller: caller.clone(),
                id: id.to_owned(),
                expected,
                update,
            },
        )
        .await?)
}

struct Update {
    caller: Caller,
    id: String,
    expected: i32,
    update: AdminUpdate,
}

fn json(admin: &Admin) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(admin).map_err(|_| AdminError::Unavailable)
}

impl Change for Update {
    type Output = Updated;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Updated, AdminError> {
        Box::pin(async move {
            let current = storage::admins::admin_for_update(conn, &self.id)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("admin `{}`", self.id)))?;
            if current.version != self.expected {
                return Err(AdminError::PreconditionFailed {
                    current: current.version,
                });
            }
            let after = self.update.applied_to(&current);
            let (before_json, after_json) = (json(&current)?, json(&after)?);
            let changes = diff(&before_json, &after_json);
            let widens = self.update.widens(&current);
            if widens.is_empty() {
                if !storage::admins::update_admin(conn, &after).await? {
                    return Err(AdminError::PreconditionFailed {
                        current: current.version,
                    });
                }
                let mut details = self.caller.details("admin_updated", None);
                details.changes = Some(serde_json::json!({
                    "admin": self.id, "before": before_json, "after": after_json,
                    "diff": changes,
                }));
                return Ok((details, Updated::Applied(after)));
            }
            let proposal = Proposal {
                id: uuid::Uuid::new_v4(),
                target: self.id.clone(),
                change: ProposedChange::UpdateAdmin(self.update.clone()),
                base_version: Some(current.version),
                diff: serde_json::json!({ "changes": changes, "widens": widens }),
                author: self.caller.admin.id.clone(),
                status: ProposalStatus::Pending,
                decided_by: None,
                reason: None,
                version: 1,
            };
            storage::proposals::insert_proposal(conn, &proposal).await?;
            let mut details = self.caller.details("proposal_created", None);
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id, "kind": proposal.change.kind(), "admin": self.id,
                "before": before_json, "after": after_json, "diff": changes, "widens": widens,
            }));
            Ok((details, Updated::Proposed(Box::new(proposal))))
        })
    }
}

/// Applies an approved change of an admin to the version it was proposed against.
pub(super) async fn apply_approved(
    conn: &mut PgConnection,
    proposal: &Proposal,
    update: &AdminUpdate,
) -> Result<serde_json::Value, AdminError> {
    let current = storage::admins::admin_for_update(conn, &proposal.target)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("admin `{}`", proposal.target)))?;
    if Some(current.version) != proposal.base_version {
        return Err(AdminError::Conflict(format!(
            "admin `{}` changed since the proposal (now version {}); propose again",
            proposal.target, current.version
        )));
    }
    let after = update.applied_to(&current);
    if !storage::admins::update_admin(conn, &after).await? {
        return Err(AdminError::Conflict(format!(
            "admin `{}` changed meanwhile",
            proposal.target
        )));
    }
    let (before, after) = (json(&current)?, json(&after)?);
    Ok(serde_json::json!({ "diff": diff(&before, &after), "before": before, "after": after }))
}
