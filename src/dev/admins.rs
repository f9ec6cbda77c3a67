//! The dev admins: `admin` (editor, approver, auditor) and `admin-2` (approver), so that
//! four-eyes can be tried locally. Registered through the same path as
//! `tessera admin bootstrap`, once.

use crate::config::Settings;
use crate::dev::pki::DevPki;
use crate::domain::admin::Role;
use crate::service::admin::bootstrap;

pub const DEV_ADMINS: [(&str, &[Role]); 2] = [
    ("admin", &[Role::Editor, Role::Approver, Role::Auditor]),
    ("admin-2", &[Role::Approver]),
];

pub async fn register(
    pool: &sqlx::PgPool,
    settings: &Settings,
    pki: &DevPki,
) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    {
        let mut conn = pool.acquire().await?;
        for (id, roles) in DEV_ADMINS {
            if crate::storage::admins::admin_by_id(&mut conn, id)
                .await?
                .is_none()
            {
                missing.push((id, roles));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let (audit, writer) = crate::cli::operator_audit(pool, &settings.keys).await?;
    let mut registered = Ok(());
    for (id, roles) in missing {
        let identity = crate::cli::admin::certificate_identity(&pki.client_cert(id))?;
        if let Err(error) = bootstrap::register(&audit, id, identity, roles.to_vec(), "dev").await {
            registered = Err(anyhow::anyhow!("registering dev admin `{id}`: {error}"));
            break;
        }
    }
    writer.finish().await;
    registered
}
