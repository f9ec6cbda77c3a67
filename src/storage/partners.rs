//! Partner rows.

use sqlx::PgConnection;

use crate::domain::admin::{NewPartner, Partner, PartnerStatus};

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
