//! Consents through the admin API: granting widens reach, so a grant is a proposal until a
//! second admin approves it; revoking narrows and takes effect at once (tokens issued under
//! the consent stop being active).

use sqlx::PgConnection;

use crate::audit::{Applied, Change, EventDetails, EventKind};
use crate::domain::admin::{
    ConsentFilter, ConsentGrant, ConsentRecord, FieldError, Proposal, ProposalStatus,
    ProposedChange, Role,
};
use crate::service::Services;
use crate::storage;

use super::{AdminError, Caller};

pub async fn list(
    services: &Services,
    caller: &Caller,
    filter: &ConsentFilter,
) -> Result<Vec<ConsentRecord>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    if let Some(status) = &filter.status
        && !matches!(status.as_str(), "active" | "revoked")
    {
        return Err(FieldError::new("status", "enum", "must be `active` or `revoked`").into());
    }
    let mut conn = services.pool.acquire().await?;
    Ok(storage::consents::consents(&mut conn, filter).await?)
}

pub async fn get(
    services: &Services,
    caller: &Caller,
    id: uuid::Uuid,
) -> Result<ConsentRecord, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    storage::consents::consent(&mut conn, id, false)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("consent `{id}`")))
}

/// Proposes the grant; it takes effect when another admin approves it.
pub async fn grant(
    services: &Services,
    caller: &Caller,
    body: &[u8],
) -> Result<Proposal, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let grant = ConsentGrant::from_body(body)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Propose {
                caller: caller.clone(),
                grant,
            },
        )
        .await?)
}

/// Refuses a grant naming parties or audiences that do not exist.
async fn check_references(conn: &mut PgConnection, grant: &ConsentGrant) -> Result<(), AdminError> {
    let (grantor, _) =
        storage::consents::partner_and_client_exist(conn, &grant.grantor, None).await?;
    if !grantor {
        return Err(FieldError::new("grantor", "registered_partner", "no such partner").into());
    }
    let (grantee, client) = storage::consents::partner_and_client_exist(
        conn,
        &grant.grantee_partner,
        grant.grantee_client.as_deref(),
    )
    .await?;
    if !grantee {
        return Err(
            FieldError::new("grantee_partner", "registered_partner", "no such partner").into(),
        );
    }
    if !client {
        return Err(FieldError::new(
            "grantee_client",
            "client_of_grantee",
            "not a client of the grantee partner",
        )
        .into());
    }
    let unknown = storage::trust::unknown_audiences(conn, &grant.audiences).await?;
    if !unknown.is_empty() {
        return Err(FieldError::new(
            "audiences",
            "registered_audience",
            format!("not registered: {}", unknown.join(", ")),
        )
        .into());
    }
    Ok(())
}

struct Propose {
    caller: Caller,
    grant: ConsentGrant,
}

impl Change for Propose {
    type Output = Proposal;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Proposal, AdminError> {
        Box::pin(async move {
            check_references(conn, &self.grant).await?;
            let after = serde_json::to_value(&self.grant).map_err(|_| AdminError::Unavailable)?;
            let proposal = Proposal {
                id: uuid::Uuid::new_v4(),
                target: self.grant.grantor.clone(),
                change: ProposedChange::GrantConsent(self.grant.clone()),
                base_version: None,
                diff: serde_json::json!({ "before": null, "after": after }),
                author: self.caller.admin.id.clone(),
                status: ProposalStatus::Pending,
                decided_by: None,
                reason: None,
                version: 1,
            };
            storage::proposals::insert_proposal(conn, &proposal).await?;
            let mut details = self
                .caller
                .details("proposal_created", Some(&self.grant.grantor));
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id, "kind": proposal.change.kind(),
                "before": null, "after": after,
            }));
            Ok((details, proposal))
        })
    }
}

/// Applies an approved grant: the consent's first version.
pub(super) async fn apply_approved(
    conn: &mut PgConnection,
    grant: &ConsentGrant,
    approver: &str,
) -> Result<serde_json::Value, AdminError> {
    check_references(conn, grant).await?;
    let id = uuid::Uuid::new_v4();
    storage::consents::insert_consent(conn, id, grant, approver).await?;
    storage::registry::notify_registry_changed(conn, "consents").await?;
    Ok(serde_json::json!({ "consent_id": id, "before": null, "after": grant }))
}

/// Revokes the consent at once, as its next version.
pub async fn revoke(
    services: &Services,
    caller: &Caller,
    id: uuid::Uuid,
    if_match: Option<i32>,
    body: &[u8],
) -> Result<ConsentRecord, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let body = crate::domain::admin::Body::parse(body, &["reason"])?;
    let reason = body.required_text("reason")?;
    crate::domain::admin::validate_name("reason", &reason)?;
    let expected = if_match.ok_or(AdminError::PreconditionRequired)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            Revoke {
                caller: caller.clone(),
                id,
                expected,
                reason,
            },
        )
        .await?)
}

struct Revoke {
    caller: Caller,
    id: uuid::Uuid,
    expected: i32,
    reason: String,
}

impl Change for Revoke {
    type Output = ConsentRecord;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, ConsentRecord, AdminError> {
        Box::pin(async move {
            let current = storage::consents::consent(conn, self.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("consent `{}`", self.id)))?;
            if current.version != self.expected {
                return Err(AdminError::PreconditionFailed {
                    current: current.version,
                });
            }
            if current.status == "revoked" {
                return Err(AdminError::Conflict(
                    "the consent is already revoked".into(),
                ));
            }
            storage::consents::revoke_consent(conn, self.id, &self.caller.admin.id, &self.reason)
                .await?;
            storage::registry::notify_registry_changed(conn, "consents").await?;
            let revoked = storage::consents::consent(conn, self.id, false)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("consent `{}`", self.id)))?;
            let details = EventDetails {
                consent_id: Some(self.id.to_string()),
                client_id: revoked.grant.grantee_client.clone(),
                changes: Some(serde_json::json!({
                    "before": current, "after": revoked, "reason": self.reason,
                })),
                ..self
                    .caller
                    .details("consent_revoked", Some(&current.grant.grantor))
            };
            Ok((details, revoked))
        })
    }
}
