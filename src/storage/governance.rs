//! What operators watch: the registry-derived governance gauges and the readiness round trip.

use sqlx::PgPool;

/// Active clients that have not authenticated within `days`, and active clients whose last
/// presented certificate expires within `days`.
pub async fn client_counts(pool: &PgPool, days: i32) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT
            count(*) FILTER (WHERE last_used_at IS NULL
                                OR last_used_at < now() - make_interval(days => $1)),
            count(*) FILTER (WHERE certificate_not_after < now() + make_interval(days => $1))
           FROM clients WHERE status = 'active'",
    )
    .bind(days)
    .fetch_one(pool)
    .await
}

/// One round trip to the database.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
