//! Partners: list, read, create (at once: a partner alone reaches nothing), update (narrowing
//! at once, widening as a proposal).

use sqlx::PgConnection;

use crate::audit::{Applied, Change, EventKind};
use crate::domain::admin::{
    Body, NewPartner, Partner, PartnerUpdate, Proposal, ProposalStatus, ProposedChange, Reach,
    Role, diff,
};
use crate::service::Services;
use crate::storage;

use super::{AdminError, Caller};

pub async fn list(services: &Services, caller: &Caller) -> Result<Vec<Partner>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    Ok(storage::partners::partners(&mut conn).await?)
}

pub async fn get(services: &Services, caller: &Caller, id: &str) -> Result<Partner, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    storage::partners::partner(&mut conn, id, false)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("partner `{id}`")))
}

pub async fn create(
    services: &Services,
    caller: &Caller,
    body: &[u8],
) -> Result<Partner, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let partner = NewPartner::from_body(&Body::parse(body, &NewPartner::FIELDS)?)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Create {
                caller: caller.clone(),
                partner,
            },
        )
        .await?)
}

struct Create {
    caller: Caller,
    partner: NewPartner,
}

impl Change for Create {
    type Output = Partner;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Partner, AdminError> {
        Box::pin(async move {
            let created = storage::partners::insert_partner(conn, &self.partner)
                .await?
                .ok_or_else(|| {
                    AdminError::Conflict(format!("partner `{}` exists", self.partner.id))
                })?;
            storage::registry::notify_registry_changed(conn, "partners").await?;
            let mut details = self.caller.details("partner_created", Some(&created.id));
            details.changes = Some(serde_json::json!({
                "before": null,
                "after": created,
            }));
            Ok((details, created))
        })
    }
}

/// What an update did: applied at once, or waiting as a proposal.
#[derive(Debug)]
pub enum Updated {
    Applied(Partner),
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
    let update = PartnerUpdate::from_body(&Body::parse(body, &PartnerUpdate::FIELDS)?)?;
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
    update: PartnerUpdate,
}

impl Change for Update {
    type Output = Updated;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Updated, AdminError> {
        Box::pin(async move {
            let current = storage::partners::partner(conn, &self.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("partner `{}`", self.id)))?;
            if current.version != self.expected {
                return Err(AdminError::PreconditionFailed {
                    current: current.version,
                });
            }
            let after = self.update.applied_to(&current);
            let changes = diff(&json(&current)?, &json(&after)?);
            match self.update.reach(&current) {
                Reach::Narrows => {
                    if !storage::partners::update_partner(conn, &after).await? {
                        return Err(AdminError::PreconditionFailed {
                            current: current.version,
                        });
                    }
                    storage::registry::notify_registry_changed(conn, "partners").await?;
                    let mut details = self.caller.details("partner_updated", Some(&self.id));
                    details.changes = Some(serde_json::json!({
                        "before": current,
                        "after": after,
                        "diff": changes,
                    }));
                    Ok((details, Updated::Applied(after)))
                }
                Reach::Widens => {
                    let proposal = Proposal {
                        id: uuid::Uuid::new_v4(),
                        target: self.id.clone(),
                        change: ProposedChange::PartnerUpdate(self.update.clone()),
                        base_version: Some(current.version),
                        diff: changes.clone(),
                        author: self.caller.admin.id.clone(),
                        status: ProposalStatus::Pending,
                        decided_by: None,
                        reason: None,
                        version: 1,
                    };
                    storage::proposals::insert_proposal(conn, &proposal).await?;
                    let mut details = self.caller.details("proposal_created", Some(&self.id));
                    details.changes = Some(serde_json::json!({
                        "proposal": proposal.id,
                        "kind": proposal.change.kind(),
                        "before": current,
                        "after": after,
                        "diff": changes,
                    }));
                    Ok((details, Updated::Proposed(Box::new(proposal))))
                }
            }
        })
    }
}

pub(super) fn json(partner: &Partner) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(partner).map_err(|_| AdminError::Unavailable)
}
