//! Four-eyes proposals and their decisions.

use sqlx::PgConnection;

use crate::domain::admin::{Proposal, ProposalStatus, ProposedChange};

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
    // Stored as the tagged enum's content, next to its kind.
    let body = serde_json::to_value(&proposal.change)
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?
        .get("body")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
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
