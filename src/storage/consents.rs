//! Consent rows: every change is a new version; the highest version is the record's state.

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use crate::audit::{AuditError, AuditLog, EventDetails, EventKind, Outcome};
use crate::domain::admin::{ConsentFilter, ConsentGrant, ConsentRecord};
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

#[derive(sqlx::FromRow)]
struct ConsentVersionRow {
    id: uuid::Uuid,
    version: i32,
    grantor: String,
    grantee_partner: String,
    grantee_client: Option<String>,
    scopes: Vec<String>,
    audiences: Vec<String>,
    effective_from: time::OffsetDateTime,
    effective_until: time::OffsetDateTime,
    legal_basis: String,
    constraints: serde_json::Value,
    status: String,
    changed_by: String,
    revocation_reason: Option<String>,
}

impl From<ConsentVersionRow> for ConsentRecord {
    fn from(row: ConsentVersionRow) -> Self {
        Self {
            id: row.id,
            version: row.version,
            grant: ConsentGrant {
                grantor: row.grantor,
                grantee_partner: row.grantee_partner,
                grantee_client: row.grantee_client,
                scopes: row.scopes,
                audiences: row.audiences,
                effective_from: row.effective_from,
                effective_until: row.effective_until,
                legal_basis: row.legal_basis,
                constraints: row.constraints.as_object().cloned().unwrap_or_default(),
            },
            status: row.status,
            changed_by: row.changed_by,
            revocation_reason: row.revocation_reason,
        }
    }
}

const CONSENT_CURRENT: &str = "SELECT DISTINCT ON (id) id, version, grantor, grantee_partner,
        grantee_client, scopes, audiences, effective_from, effective_until, legal_basis,
        constraints, status, changed_by, revocation_reason
   FROM consents";

/// The current version of every consent matching the filter.
pub async fn consents(
    conn: &mut PgConnection,
    filter: &ConsentFilter,
) -> Result<Vec<ConsentRecord>, sqlx::Error> {
    let rows: Vec<ConsentVersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM ({CONSENT_CURRENT} ORDER BY id, version DESC) current
          WHERE ($1::text IS NULL OR grantor = $1)
            AND ($2::text IS NULL OR grantee_partner = $2)
            AND ($3::text IS NULL OR $3 = ANY (audiences))
            AND ($4::text IS NULL OR status = $4)
          ORDER BY effective_from, id"
    )))
    .bind(&filter.grantor)
    .bind(&filter.grantee)
    .bind(&filter.audience)
    .bind(&filter.status)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(ConsentRecord::from).collect())
}

/// A consent's current version; `for_update` serialises changes of it (on its first row,
/// which every version shares the id of).
pub async fn consent(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    for_update: bool,
) -> Result<Option<ConsentRecord>, sqlx::Error> {
    if for_update {
        sqlx::query("SELECT 1 FROM consents WHERE id = $1 AND version = 1 FOR UPDATE")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    let row: Option<ConsentVersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{CONSENT_CURRENT} WHERE id = $1 ORDER BY id, version DESC"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(ConsentRecord::from))
}

pub async fn insert_consent(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    grant: &ConsentGrant,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consents (id, version, grantor, grantee_partner, grantee_client, scopes,
                               audiences, effective_from, effective_until, legal_basis,
                               constraints, status, changed_by)
         VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11)",
    )
    .bind(id)
    .bind(&grant.grantor)
    .bind(&grant.grantee_partner)
    .bind(&grant.grantee_client)
    .bind(&grant.scopes)
    .bind(&grant.audiences)
    .bind(grant.effective_from)
    .bind(grant.effective_until)
    .bind(&grant.legal_basis)
    .bind(serde_json::Value::Object(grant.constraints.clone()))
    .bind(by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the revoked next version of the consent.
pub async fn revoke_consent(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    by: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
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
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the partner exists and, when given, the client is one of its clients.
pub async fn partner_and_client_exist(
    conn: &mut PgConnection,
    partner: &str,
    client: Option<&str>,
) -> Result<(bool, bool), sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1),
                $2::text IS NULL
                OR EXISTS (SELECT 1 FROM clients WHERE id = $2 AND partner_id = $1)",
    )
    .bind(partner)
    .bind(client)
    .fetch_one(conn)
    .await
}
