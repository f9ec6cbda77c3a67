//! Clients and audiences through the admin API. A new client, and any change that lets a
//! client or an audience's tokens do more, is a proposal; narrowing changes are immediate.

use sqlx::{Connection, PgConnection};

use crate::audit::{Applied, Change, EventKind};
use crate::domain::admin::{
    AudienceDoc, ClientDoc, ClientUpdate, FieldError, Proposal, ProposalStatus, ProposedChange,
    Role, Versioned, diff,
};
use crate::service::Services;
use crate::storage;

use super::{AdminError, Caller};

/// What a change did: applied at once, or waiting as a proposal.
#[derive(Debug)]
pub enum Outcome<T> {
    Applied(Box<Versioned<T>>),
    Proposed(Box<Proposal>),
}

pub async fn clients(
    services: &Services,
    caller: &Caller,
) -> Result<Vec<Versioned<ClientDoc>>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    Ok(storage::clients::clients(&mut conn).await?)
}

pub async fn client(
    services: &Services,
    caller: &Caller,
    id: &str,
) -> Result<Versioned<ClientDoc>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    storage::clients::client(&mut conn, id, false)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("client `{id}`")))
}

/// The database's word on a client it refused, as the admin API reports it.
fn refused_client(error: sqlx::Error) -> AdminError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => AdminError::Conflict(
            "the client id or its certificate identity is taken (by a client or an admin)".into(),
        ),
        sqlx::Error::Database(database) if database.is_foreign_key_violation() => FieldError::new(
            "audiences",
            "registered",
            "names an unregistered partner or audience",
        )
        .into(),
        sqlx::Error::Database(database) if database.is_check_violation() => FieldError::new(
            "",
            "client_rules",
            format!(
                "breaks a rule of client registrations ({})",
                database.constraint().unwrap_or("check")
            ),
        )
        .into(),
        _ => AdminError::from(error),
    }
}

/// Stores the client in a savepoint and undoes it: whatever the database would refuse is
/// refused now, not when an approver approves.
async fn probe_client(conn: &mut PgConnection, client: &ClientDoc) -> Result<(), AdminError> {
    let mut probe = conn.begin().await?;
    let stored = storage::clients::store_client(&mut probe, client, 1).await;
    probe.rollback().await?;
    stored.map(|_| ()).map_err(refused_client)
}

pub async fn create_client(
    services: &Services,
    caller: &Caller,
    body: &[u8],
) -> Result<Proposal, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let mut client = ClientDoc::from_body(body)?;
    // Stored in one spelling (as the seed does), so that identities compare structurally,
    // with other clients' and with admins'.
    if let Some(dn) = &client.tls_subject_dn {
        let parsed = crate::tls::DistinguishedName::parse(dn).ok_or_else(|| {
            FieldError::new(
                "tls_subject_dn",
                "rfc4514",
                "an RFC 4514 distinguished name",
            )
        })?;
        client.tls_subject_dn = Some(parsed.to_string());
    }
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            ProposeClient {
                caller: caller.clone(),
                client,
            },
        )
        .await?)
}

struct ProposeClient {
    caller: Caller,
    client: ClientDoc,
}

impl Change for ProposeClient {
    type Output = Proposal;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Proposal, AdminError> {
        Box::pin(async move {
            if storage::clients::client(conn, &self.client.id, false)
                .await?
                .is_some()
            {
                return Err(AdminError::Conflict(format!(
                    "client `{}` exists",
                    self.client.id
                )));
            }
            probe_client(conn, &self.client).await?;
            let after = to_json(&self.client)?;
            let proposal = new_proposal(
                &self.caller,
                &self.client.id,
                ProposedChange::CreateClient(self.client.clone()),
                None,
                serde_json::json!({ "before": null, "after": after, "widens": ["new client"] }),
            );
            storage::proposals::insert_proposal(conn, &proposal).await?;
            let mut details = self
                .caller
                .details("proposal_created", Some(&self.client.partner));
            details.client_id = Some(self.client.id.clone());
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id, "kind": proposal.change.kind(),
                "before": null, "after": after,
            }));
            Ok((details, proposal))
        })
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, AdminError> {
    serde_json::to_value(value).map_err(|_| AdminError::Unavailable)
}

fn new_proposal(
    caller: &Caller,
    target: &str,
    change: ProposedChange,
    base_version: Option<i32>,
    diff: serde_json::Value,
) -> Proposal {
    Proposal {
        id: uuid::Uuid::new_v4(),
        target: target.to_owned(),
        change,
        base_version,
        diff,
        author: caller.admin.id.clone(),
        status: ProposalStatus::Pending,
        decided_by: None,
        reason: None,
        version: 1,
    }
}

pub async fn update_client(
    services: &Services,
    caller: &Caller,
    id: &str,
    if_match: Option<i32>,
    body: &[u8],
) -> Result<Outcome<ClientDoc>, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let update = ClientUpdate::from_body(body)?;
    let expected = if_match.ok_or(AdminError::PreconditionRequired)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            UpdateClient {
                caller: caller.clone(),
                id: id.to_owned(),
                expected,
                update,
            },
        )
        .await?)
}

struct UpdateClient {
    caller: Caller,
    id: String,
    expected: i32,
    update: ClientUpdate,
}

impl Change for UpdateClient {
    type Output = Outcome<ClientDoc>;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Self::Output, AdminError> {
        Box::pin(async move {
            let current = storage::clients::client(conn, &self.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("client `{}`", self.id)))?;
            if current.version != self.expected {
                return Err(AdminError::PreconditionFailed {
                    current: current.version,
                });
            }
            let after = self.update.applied_to(&current.doc)?;
            let (before_json, after_json) = (to_json(&current.doc)?, to_json(&after)?);
            let changes = diff(&before_json, &after_json);
            let widens = after.widens(&current.doc);
            let mut details = self.caller.details("client_updated", Some(&after.partner));
            details.client_id = Some(self.id.clone());
            if widens.is_empty() {
                let version = current.version.saturating_add(1);
                if !storage::clients::store_client(conn, &after, version)
                    .await
                    .map_err(refused_client)?
                {
                    return Err(AdminError::PreconditionFailed {
                        current: current.version,
                    });
                }
                storage::registry::notify_registry_changed(conn, "clients").await?;
                details.changes = Some(serde_json::json!({
                    "before": before_json, "after": after_json, "diff": changes,
                }));
                let stored = Versioned {
                    doc: after,
                    version,
                };
                return Ok((details, Outcome::Applied(Box::new(stored))));
            }
            let proposal = new_proposal(
                &self.caller,
                &self.id,
                ProposedChange::UpdateClient(after),
                Some(current.version),
                serde_json::json!({ "changes": changes, "widens": widens }),
            );
            storage::proposals::insert_proposal(conn, &proposal).await?;
            details.reason = Some("proposal_created".to_owned());
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id, "kind": proposal.change.kind(),
                "before": before_json, "after": after_json, "diff": changes, "widens": widens,
            }));
            Ok((details, Outcome::Proposed(Box::new(proposal))))
        })
    }
}

pub async fn audiences(
    services: &Services,
    caller: &Caller,
) -> Result<Vec<Versioned<AudienceDoc>>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    Ok(storage::audiences::audience_docs(&mut conn).await?)
}

pub async fn audience(
    services: &Services,
    caller: &Caller,
    id: &str,
) -> Result<Versioned<AudienceDoc>, AdminError> {
    caller.require(&services.audit, Role::Viewer).await?;
    let mut conn = services.pool.acquire().await?;
    storage::audiences::audience_doc(&mut conn, id, false)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("audience `{id}`")))
}

/// A new audience takes effect at once: no client or profile reaches it until one of them
/// is changed to (which is reviewed).
pub async fn create_audience(
    services: &Services,
    caller: &Caller,
    body: &[u8],
) -> Result<Versioned<AudienceDoc>, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    let audience = AudienceDoc::from_body(body)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            CreateAudience {
                caller: caller.clone(),
                audience,
            },
        )
        .await?)
}

struct CreateAudience {
    caller: Caller,
    audience: AudienceDoc,
}

impl Change for CreateAudience {
    type Output = Versioned<AudienceDoc>;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Self::Output, AdminError> {
        Box::pin(async move {
            if !storage::audiences::store_audience(conn, &self.audience, 1).await? {
                return Err(AdminError::Conflict(format!(
                    "audience `{}` exists",
                    self.audience.id
                )));
            }
            storage::registry::notify_registry_changed(conn, "audiences").await?;
            let mut details = self.caller.details("audience_created", None);
            details.audience = Some(self.audience.id.clone());
            details.changes = Some(serde_json::json!({
                "before": null, "after": to_json(&self.audience)?,
            }));
            let created = Versioned {
                doc: self.audience.clone(),
                version: 1,
            };
            Ok((details, created))
        })
    }
}

pub async fn update_audience(
    services: &Services,
    caller: &Caller,
    id: &str,
    if_match: Option<i32>,
    body: &[u8],
) -> Result<Outcome<AudienceDoc>, AdminError> {
    caller.require(&services.audit, Role::Editor).await?;
    // Checked against the current audience inside the change; the field names are checked
    // here so that a malformed body is refused before anything is read.
    crate::domain::admin::Body::parse(body, &AudienceDoc::UPDATABLE)?;
    let expected = if_match.ok_or(AdminError::PreconditionRequired)?;
    Ok(services
        .audit
        .commit_change(
            EventKind::AdminChange,
            UpdateAudience {
                caller: caller.clone(),
                id: id.to_owned(),
                expected,
                body: body.to_vec(),
            },
        )
        .await?)
}

struct UpdateAudience {
    caller: Caller,
    id: String,
    expected: i32,
    body: Vec<u8>,
}

impl Change for UpdateAudience {
    type Output = Outcome<AudienceDoc>;
    type Error = AdminError;

    fn apply<'c>(&'c self, conn: &'c mut PgConnection) -> Applied<'c, Self::Output, AdminError> {
        Box::pin(async move {
            let current = storage::audiences::audience_doc(conn, &self.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("audience `{}`", self.id)))?;
            if current.version != self.expected {
                return Err(AdminError::PreconditionFailed {
                    current: current.version,
                });
            }
            let after = current.doc.updated(&self.body)?;
            let (before_json, after_json) = (to_json(&current.doc)?, to_json(&after)?);
            let changes = diff(&before_json, &after_json);
            let widens = after.widens(&current.doc);
            let mut details = self.caller.details("audience_updated", None);
            details.audience = Some(self.id.clone());
            if widens.is_empty() {
                let version = current.version.saturating_add(1);
                if !storage::audiences::store_audience(conn, &after, version).await? {
                    return Err(AdminError::PreconditionFailed {
                        current: current.version,
                    });
                }
                storage::registry::notify_registry_changed(conn, "audiences").await?;
                details.changes = Some(serde_json::json!({
                    "before": before_json, "after": after_json, "diff": changes,
                }));
                let stored = Versioned {
                    doc: after,
                    version,
                };
                return Ok((details, Outcome::Applied(Box::new(stored))));
            }
            let proposal = new_proposal(
                &self.caller,
                &self.id,
                ProposedChange::UpdateAudience(after),
                Some(current.version),
                serde_json::json!({ "changes": changes, "widens": widens }),
            );
            storage::proposals::insert_proposal(conn, &proposal).await?;
            details.reason = Some("proposal_created".to_owned());
            details.changes = Some(serde_json::json!({
                "proposal": proposal.id, "kind": proposal.change.kind(),
                "before": before_json, "after": after_json, "diff": changes, "widens": widens,
            }));
            Ok((details, Outcome::Proposed(Box::new(proposal))))
        })
    }
}

/// Applies an approved client or audience change to the version it was proposed against.
pub(super) async fn apply_approved(
    conn: &mut PgConnection,
    proposal: &Proposal,
) -> Result<serde_json::Value, AdminError> {
    let stale = |now: i32| {
        AdminError::Conflict(format!(
            "`{}` changed since the proposal (now version {now}); propose again",
            proposal.target
        ))
    };
    match &proposal.change {
        ProposedChange::CreateClient(client) => {
            if !storage::clients::store_client(conn, client, 1)
                .await
                .map_err(refused_client)?
            {
                return Err(AdminError::Conflict(format!(
                    "client `{}` exists",
                    client.id
                )));
            }
            storage::registry::notify_registry_changed(conn, "clients").await?;
            Ok(serde_json::json!({ "before": null, "after": to_json(client)? }))
        }
        ProposedChange::UpdateClient(client) => {
            let current = storage::clients::client(conn, &client.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("client `{}`", client.id)))?;
            if Some(current.version) != proposal.base_version {
                return Err(stale(current.version));
            }
            let version = current.version.saturating_add(1);
            if !storage::clients::store_client(conn, client, version)
                .await
                .map_err(refused_client)?
            {
                return Err(stale(current.version));
            }
            storage::registry::notify_registry_changed(conn, "clients").await?;
            let (before, after) = (to_json(&current.doc)?, to_json(client)?);
            Ok(
                serde_json::json!({ "diff": diff(&before, &after), "before": before, "after": after }),
            )
        }
        ProposedChange::UpdateAudience(audience) => {
            let current = storage::audiences::audience_doc(conn, &audience.id, true)
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("audience `{}`", audience.id)))?;
            if Some(current.version) != proposal.base_version {
                return Err(stale(current.version));
            }
            if !storage::audiences::store_audience(
                conn,
                audience,
                current.version.saturating_add(1),
            )
            .await?
            {
                return Err(stale(current.version));
            }
            storage::registry::notify_registry_changed(conn, "audiences").await?;
            let (before, after) = (to_json(&current.doc)?, to_json(audience)?);
            Ok(
                serde_json::json!({ "diff": diff(&before, &after), "before": before, "after": after }),
            )
        }
        _ => Err(AdminError::Conflict(
            "not a client or audience change".into(),
        )),
    }
}
