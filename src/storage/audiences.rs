//! Audience rows.

use std::time::Duration;

use sqlx::PgConnection;

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
        })
    }
}

pub async fn find(
    conn: &mut PgConnection,
    id: &AudienceId,
) -> Result<Option<Audience>, sqlx::Error> {
    let row: Option<AudienceRow> = sqlx::query_as(
        "SELECT id, name, scopes, max_lifetime_s, require_certificate_bound, region, kind,
                cross_region_allowed
           FROM audiences WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(audience))
}
