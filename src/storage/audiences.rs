//! Audience rows.

use std::time::Duration;

use sqlx::PgConnection;

use crate::domain::admin::{AudienceDoc, Versioned};
use crate::domain::audiences::{Audience, AudienceId};
use crate::domain::scopes::ScopeSet;

#[derive(sqlx::FromRow)]
struct AudienceRow {
    id: String,
    name: String,
    scopes: Vec<String>,
    max_lifetime_s: i32,
    require_certificate_bound: bool,
    region: String,
    kind: String,
    cross_region_allowed: bool,
    bank_backed: bool,
}

fn audience(row: AudienceRow) -> Option<Audience> {
    {
        Some(Audience {
            id: AudienceId::parse(&row.id)?,
            name: row.name,
            scopes: ScopeSet::from_stored(&row.scopes),
            max_lifetime: Duration::from_secs(u64::try_from(row.max_lifetime_s).ok()?),
            require_certificate_bound: row.require_certificate_bound,
            region: row.region,
            kind: row.kind,
            cross_region_allowed: row.cross_region_allowed,
            bank_backed: row.bank_backed,
        })
    }
}

pub async fn find(
    conn: &mut PgConnection,
    id: &AudienceId,
) -> Result<Option<Audience>, sqlx::Error> {
    let row: Option<AudienceRow> = sqlx::query_as(
        "SELECT a.id, a.name, a.scopes, a.max_lifetime_s, a.require_certificate_bound, a.region,
                a.kind, a.cross_region_allowed,
                EXISTS (SELECT 1 FROM upstream_audiences u WHERE u.audience_id = a.id)
                  AS bank_backed
           FROM audiences a WHERE a.id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(audience))
}

#[derive(sqlx::FromRow)]
struct AudienceDocRow {
    id: String,
    name: String,
    scopes: Vec<String>,
    max_lifetime_s: i32,
    require_certificate_bound: bool,
    region: String,
    kind: String,
    cross_region_allowed: bool,
    version: i32,
}

impl From<AudienceDocRow> for Versioned<AudienceDoc> {
    fn from(row: AudienceDocRow) -> Self {
        Self {
            doc: AudienceDoc {
                id: row.id,
                name: row.name,
                scopes: row.scopes,
                max_lifetime_s: row.max_lifetime_s,
                require_certificate_bound: row.require_certificate_bound,
                region: row.region,
                kind: row.kind,
                cross_region_allowed: row.cross_region_allowed,
            },
            version: row.version,
        }
    }
}

const AUDIENCE_SELECT: &str = "SELECT id, name, scopes, max_lifetime_s,
        require_certificate_bound, region, kind, cross_region_allowed, version FROM audiences";

pub async fn audience_docs(
    conn: &mut PgConnection,
) -> Result<Vec<Versioned<AudienceDoc>>, sqlx::Error> {
    let rows: Vec<AudienceDocRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AUDIENCE_SELECT} ORDER BY id"
    )))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Versioned::from).collect())
}

pub async fn audience_doc(
    conn: &mut PgConnection,
    id: &str,
    for_update: bool,
) -> Result<Option<Versioned<AudienceDoc>>, sqlx::Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row: Option<AudienceDocRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AUDIENCE_SELECT} WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Versioned::from))
}

/// Inserts the audience (version 1; false when the id is taken) or replaces the one at
/// `version - 1` (false when that version is gone).
pub async fn store_audience(
    conn: &mut PgConnection,
    audience_doc: &AudienceDoc,
    version: i32,
) -> Result<bool, sqlx::Error> {
    let statement = if version == 1 {
        "INSERT INTO audiences (id, name, scopes, max_lifetime_s, require_certificate_bound,
                                region, kind, cross_region_allowed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
    } else {
        "UPDATE audiences SET name = $2, scopes = $3, max_lifetime_s = $4,
                require_certificate_bound = $5, cross_region_allowed = $8, version = $9
          WHERE id = $1 AND version = $9 - 1 AND region = $6 AND kind = $7"
    };
    let written = sqlx::query(statement)
        .bind(&audience_doc.id)
        .bind(&audience_doc.name)
        .bind(&audience_doc.scopes)
        .bind(audience_doc.max_lifetime_s)
        .bind(audience_doc.require_certificate_bound)
        .bind(&audience_doc.region)
        .bind(&audience_doc.kind)
        .bind(audience_doc.cross_region_allowed)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(written.rows_affected() == 1)
}
