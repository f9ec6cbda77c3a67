//! Admins: certificate identities with roles, never OAuth clients.

use sqlx::PgConnection;

use crate::domain::admin::{Admin, Role};

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

/// One admin, its row locked until the transaction ends.
pub async fn admin_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Admin>, sqlx::Error> {
    let row: Option<AdminRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ADMIN_COLUMNS} FROM admins WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Admin::from))
}

/// Stores roles and status over the row at `admin.version - 1`; false when that is gone.
pub async fn update_admin(conn: &mut PgConnection, admin: &Admin) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE admins SET roles = $2, status = $3, version = $4
          WHERE id = $1 AND version = $4 - 1",
    )
    .bind(&admin.id)
    .bind(
        admin
            .roles
            .iter()
            .map(|role| role.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(if admin.active { "active" } else { "suspended" })
    .bind(admin.version)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}
