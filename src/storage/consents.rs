//! Consent rows: every change is a new version; the highest version is the record's state.

use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::audit::{AuditError, AuditLog, EventDetails, EventKind, Outcome};
use crate::domain::consents::{Consent, ConsentStatus, NewConsent};
use crate::domain::ids::ConsentId;
use crate::domain::scopes::ScopeSet;

#[derive(sqlx::FromRow)]
struct ConsentRow {
    id: uuid::Uuid,
    version: i32,
    grantor: String,
    grantee_partner: String,
    grantee_client: Option<String>,
    scopes: Vec<String>,
    audiences: Vec<String>,
    effective_from: OffsetDateTime,
    effective_until: OffsetDateTime,
    legal_basis: String,
    status: String,
}

impl From<ConsentRow> for Consent {
    fn from(row: ConsentRow) -> Self {
        Consent {
            id: row.id,
            version: row.version,
            grantor: row.grantor,
            grantee_partner: row.grantee_partner,
            grantee_client: row.grantee_client,
            scopes: ScopeSet::from_stored(&row.scopes),
            audiences: row.audiences,
            effective_from: row.effective_from,
            effective_until: row.effective_until,
            legal_basis: row.legal_basis,
            // Anything but an explicit "active" fails closed.
            status: if row.status == "active" {
                ConsentStatus::Active
            } else {
                ConsentStatus::Revoked
            },
        }
    }
}

/// The current version of each consent. A consent of a suspended grantor reads as revoked: a
/// data owner's suspension stops every chain that carries its subjects, at every hop.
const CURRENT: &str =
    "SELECT DISTINCT ON (c.id) c.id, c.version, c.grantor, c.grantee_partner, c.grantee_client,
        c.scopes, c.audiences, c.effective_from, c.effective_until, c.legal_basis,
        CASE WHEN p.status = 'active' THEN c.status ELSE 'revoked' END AS status
   FROM consents c JOIN partners p ON p.id = c.grantor";

/// The current state of every consent the grantor gave the grantee (or one of its clients).
pub async fn between(
    pool: &PgPool,
    grantor: &str,
    grantee_partner: &str,
    grantee_client: &str,
) -> Result<Vec<Consent>, sqlx::Error> {
    let rows: Vec<ConsentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM ({CURRENT} WHERE c.grantor = $1 AND c.grantee_partner = $2
                ORDER BY c.id, c.version DESC) current
          WHERE grantee_client IS NULL OR grantee_client = $3"
    )))
    .bind(grantor)
    .bind(grantee_partner)
    .bind(grantee_client)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Consent::from).collect())
}

pub async fn current(pool: &PgPool, id: uuid::Uuid) -> Result<Option<Consent>, sqlx::Error> {
    let row: Option<ConsentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CURRENT} WHERE c.id = $1 ORDER BY c.id, c.version DESC"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Consent::from))
}

/// Whether tokens issued under the consent may still be used: its current version is active
/// and in its window.
pub async fn still_active(
    pool: &PgPool,
    id: &ConsentId,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    Ok(current(pool, id.as_uuid()).await?.is_some_and(|consent| {
        consent.status == ConsentStatus::Active
            && consent.effective_from <= now
            && now < consent.effective_until
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("consent storage: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("no consent {0}")]
    NotFound(uuid::Uuid),
}

fn audited(consent: &Consent, by: &str, change: &str) -> EventDetails {
    EventDetails {
        consent_id: Some(consent.id.to_string()),
        partner: Some(consent.grantor.clone()),
        client_id: consent.grantee_client.clone(),
        scopes: consent.scopes.to_vec(),
        reason: Some(format!("{change} by {by}")),
        changes: Some(json!({
            "version": consent.version,
            "grantee_partner": consent.grantee_partner,
            "audiences": consent.audiences,
            "effective_from": consent.effective_from.unix_timestamp(),
            "effective_until": consent.effective_until.unix_timestamp(),
            "legal_basis": consent.legal_basis,
            "status": if consent.status == ConsentStatus::Active { "active" } else { "revoked" },
        })),
        ..EventDetails::default()
    }
}

/// Records a new consent (version 1) and audits it.
pub async fn create(
    pool: &PgPool,
    audit: &AuditLog,
    consent: &NewConsent,
    by: &str,
) -> Result<Consent, ConsentError> {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO consents (id, version, grantor, grantee_partner, grantee_client, scopes,
                               audiences, effective_from, effective_until, legal_basis,
                               constraints, status, changed_by)
         VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11)",
    )
    .bind(id)
    .bind(&consent.grantor)
    .bind(&consent.grantee_partner)
    .bind(&consent.grantee_client)
    .bind(&consent.scopes)
    .bind(&consent.audiences)
    .bind(consent.effective_from)
    .bind(consent.effective_until)
    .bind(&consent.legal_basis)
    .bind(&consent.constraints)
    .bind(by)
    .execute(pool)
    .await?;
    let created = current(pool, id).await?.ok_or(ConsentError::NotFound(id))?;
    audit
        .record(
            EventKind::ConsentChanged,
            Outcome::Allow,
            audited(&created, by, "created"),
        )
        .await?;
    Ok(created)
}

/// Revokes the consent as a new version; tokens issued under it stop working at once.
pub async fn revoke(
    pool: &PgPool,
    audit: &AuditLog,
    id: uuid::Uuid,
    by: &str,
    reason: &str,
) -> Result<Consent, ConsentError> {
    let inserted = sqlx::query(
        "INSERT INTO consents (id, version, grantor, grantee_partner, grantee_client, scopes,
                               audiences, effective_from, effective_until, legal_basis,
                               constraints, status, changed_by, revocation_reason)
         SELECT id, version + 1, grantor, grantee_partner, grantee_client, scopes, audiences,
                effective_from, effective_until, legal_basis, constraints, 'revoked', $2, $3
           FROM consents WHERE id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(id)
    .bind(by)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ConsentError::NotFound(id));
    }
    let revoked = current(pool, id).await?.ok_or(ConsentError::NotFound(id))?;
    audit
        .record(
            EventKind::ConsentChanged,
            Outcome::Allow,
            audited(&revoked, by, &format!("revoked ({reason})")),
        )
        .await?;
    Ok(revoked)
}
