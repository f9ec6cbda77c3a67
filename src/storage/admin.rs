//! Admins, proposals, and the registry tables as the admin API edits them.

use sqlx::PgConnection;

use crate::domain::admin::{
    Admin, NewPartner, Partner, PartnerStatus, Proposal, ProposalStatus, ProposedChange, Role,
};

/// The channel on which every registry change is announced to every node, on commit.
pub const REGISTRY_CHANNEL: &str = "tessera_registry";

/// Bounds every statement of the current transaction: the audit writer runs admin changes in
/// its own transaction, and every other record waits behind it.
pub async fn limit_statement_time(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL statement_timeout = '2s'")
        .execute(conn)
        .await?;
    Ok(())
}

/// Tells every node (on commit) that the registry changed, so that caches are dropped.
pub async fn notify_registry_changed(
    conn: &mut PgConnection,
    what: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(REGISTRY_CHANNEL)
        .bind(what)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct AdminRow {
    id: String,
    subject_dn: String,
    roles: Vec<String>,
    status: String,
    version: i32,
}

impl From<AdminRow> for Admin {
    fn from(row: AdminRow) -> Self {
        Self {
            id: row.id,
            subject_dn: row.subject_dn,
            // The table's check admits known roles only.
            roles: row
                .roles
                .iter()
                .filter_map(|role| Role::parse(role))
                .collect(),
            active: row.status == "active",
            version: row.version,
        }
    }
}

const ADMIN_COLUMNS: &str = "id, subject_dn, roles, status, version";

pub async fn admin_by_id(conn: &mut PgConnection, id: &str) -> Result<Option<Admin>, sqlx::Error> {
    let row: Option<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Admin::from))
}

pub async fn admin_by_subject(
    conn: &mut PgConnection,
    subject_dn: &str,
) -> Result<Option<Admin>, sqlx::Error> {
    let row: Option<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins WHERE subject_dn = $1"
    )))
    .bind(subject_dn)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Admin::from))
}

pub async fn admins(conn: &mut PgConnection) -> Result<Vec<Admin>, sqlx::Error> {
    let rows: Vec<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins ORDER BY id"
    )))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Admin::from).collect())
}

/// Registers an admin; refused (unique violation) when the identity is taken, by an admin or
/// by an OAuth client.
pub async fn insert_admin(
    conn: &mut PgConnection,
    id: &str,
    subject_dn: &str,
    san: &[String],
    roles: &[Role],
    created_by: &str,
) -> Result<Admin, sqlx::Error> {
    let row: AdminRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO admins (id, subject_dn, san, roles, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING {ADMIN_COLUMNS}"
    )))
    .bind(id)
    .bind(subject_dn)
    .bind(san)
    .bind(roles.iter().map(|role| role.as_str()).collect::<Vec<_>>())
    .bind(created_by)
    .fetch_one(conn)
    .await?;
    Ok(row.into())
}

#[derive(sqlx::FromRow)]
struct PartnerRow {
    id: String,
    name: String,
    region: String,
    status: String,
    version: i32,
}

impl From<PartnerRow> for Partner {
    fn from(row: PartnerRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            region: row.region,
            status: if row.status == "active" {
                PartnerStatus::Active
            } else {
                PartnerStatus::Suspended
            },
            version: row.version,
        }
    }
}

pub async fn partners(conn: &mut PgConnection) -> Result<Vec<Partner>, sqlx::Error> {
    let rows: Vec<PartnerRow> =
        sqlx::query_as("SELECT id, name, region, status, version FROM partners ORDER BY id")
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(Partner::from).collect())
}

/// One partner; `for_update` locks its row until the transaction ends.
pub async fn partner(
    conn: &mut PgConnection,
    id: &str,
    for_update: bool,
) -> Result<Option<Partner>, sqlx::Error> {
    let statement = if for_update {
        "SELECT id, name, region, status, version FROM partners WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT id, name, region, status, version FROM partners WHERE id = $1"
    };
    let row: Option<PartnerRow> = sqlx::query_as(statement)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Partner::from))
}

/// Inserts a partner; `None` when the id is taken.
pub async fn insert_partner(
    conn: &mut PgConnection,
    partner: &NewPartner,
) -> Result<Option<Partner>, sqlx::Error> {
    let row: Option<PartnerRow> = sqlx::query_as(
        "INSERT INTO partners (id, name, region) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING
         RETURNING id, name, region, status, version",
    )
    .bind(&partner.id)
    .bind(&partner.name)
    .bind(&partner.region)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Partner::from))
}

/// Stores `partner` over the row at `partner.version - 1`; false when that version is gone.
pub async fn update_partner(
    conn: &mut PgConnection,
    partner: &Partner,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE partners SET name = $2, region = $3, status = $4, version = $5
          WHERE id = $1 AND version = $5 - 1",
    )
    .bind(&partner.id)
    .bind(&partner.name)
    .bind(&partner.region)
    .bind(partner.status.as_str())
    .bind(partner.version)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct ProposalRow {
    id: uuid::Uuid,
    kind: String,
    target: String,
    body: serde_json::Value,
    base_version: Option<i32>,
    diff: serde_json::Value,
    author: String,
    status: String,
    decided_by: Option<String>,
    reason: Option<String>,
    version: i32,
}

impl ProposalRow {
    /// `None` for a row whose change this build cannot read (written by a newer one).
    fn into_proposal(self) -> Option<Proposal> {
        let change: ProposedChange =
            serde_json::from_value(serde_json::json!({ "kind": self.kind, "body": self.body }))
                .ok()?;
        Some(Proposal {
            id: self.id,
            target: self.target,
            change,
            base_version: self.base_version,
            diff: self.diff,
            author: self.author,
            status: ProposalStatus::parse(&self.status)?,
            decided_by: self.decided_by,
            reason: self.reason,
            version: self.version,
        })
    }
}

const PROPOSAL_COLUMNS: &str =
    "id, kind, target, body, base_version, diff, author, status, decided_by, reason, version";

pub async fn insert_proposal(
    conn: &mut PgConnection,
    proposal: &Proposal,
) -> Result<(), sqlx::Error> {
    let body = match &proposal.change {
        ProposedChange::PartnerUpdate(update) => {
            serde_json::to_value(update).map_err(|error| sqlx::Error::Encode(Box::new(error)))?
        }
    };
    sqlx::query(
        "INSERT INTO proposals (id, kind, target, body, base_version, diff, author)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(proposal.id)
    .bind(proposal.change.kind())
    .bind(&proposal.target)
    .bind(body)
    .bind(proposal.base_version)
    .bind(&proposal.diff)
    .bind(&proposal.author)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn proposal(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    for_update: bool,
) -> Result<Option<Proposal>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: Option<ProposalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(ProposalRow::into_proposal))
}

pub async fn proposals(
    conn: &mut PgConnection,
    status: Option<ProposalStatus>,
) -> Result<Vec<Proposal>, sqlx::Error> {
    let rows: Vec<ProposalRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PROPOSAL_COLUMNS} FROM proposals
          WHERE $1::text IS NULL OR status = $1 ORDER BY created_at, id"
    )))
    .bind(status.map(ProposalStatus::as_str))
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(ProposalRow::into_proposal)
        .collect())
}

/// Records the decision on a pending proposal; false when it was no longer pending.
pub async fn decide_proposal(
    conn: &mut PgConnection,
    id: uuid::Uuid,
    status: ProposalStatus,
    decided_by: &str,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE proposals SET status = $2, decided_by = $3, decided_at = now(), reason = $4,
                version = version + 1
          WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(decided_by)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}
