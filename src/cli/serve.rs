//! `tessera serve`: production style, everything from settings, nothing provisioned.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::Settings;

use crate::startup::Application;

pub async fn run(config: Option<PathBuf>, migrate: bool) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    let tracing = crate::telemetry::init(&settings.log);
    let pool = crate::storage::pool(&settings.database)?;
    if migrate {
        crate::storage::migrate(&pool).await?;
    }
    let built = Application::build(&settings, pool.clone()).await;
    // Asked after building, so that problems with the settings and TLS files come first; a
    // database without the schema makes building fail on some table, which would not say why.
    if let Ok(pending @ 1..) = crate::storage::pending_migrations(&pool).await {
        anyhow::bail!(
            "the database lacks {pending} of Tessera's {} migrations: run `tessera migrate` \
             first (or `tessera serve --migrate`)",
            crate::storage::MIGRATOR.iter().count()
        );
    }
    let application = built?;
    if crate::storage::is_superuser(&pool).await? {
        tracing::warn!(
            "connected to PostgreSQL as a superuser, which no trigger or grant restrains (the \
             audit trail's append-only rules included); serve as the `tessera_app` role"
        );
    }
    tracing::info!(addr = %application.local_addr(), "serving HTTPS");
    let served = application.run().await;
    tracing.shutdown().await;
    served.context("server failed")
}
