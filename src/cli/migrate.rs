//! `tessera migrate`: apply the database migrations and exit.

use std::path::Path;

use crate::config::Settings;

pub async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let database = Settings::load_database(config)?;
    let pool = crate::storage::pool(&database)?;
    crate::storage::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
