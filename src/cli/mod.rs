//! Command-line interface: one subcommand per operation.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::dev::DevOptions;

pub mod admin;
mod audit;
mod certs;
mod keys;
mod migrate;
mod policy;
pub mod report;
mod serve;

pub use audit::AuditCommand;
pub use certs::CertsCommand;
pub use keys::KeysCommand;
pub use policy::PolicyCommand;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "OAuth 2.0 token-exchange authorization server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve in production style: everything comes from settings; nothing is provisioned.
    Serve {
        /// TOML settings file; `TESSERA_*` variables and `DATABASE_URL` override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Apply pending database migrations before serving (as `tessera migrate` does).
        #[arg(long)]
        migrate: bool,
    },
    /// Serve locally with a found or started PostgreSQL and a generated dev PKI.
    Dev(DevOptions),
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Signing-key operations.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Audit trail: verify, export, verify an export offline, publish the key, prune.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Cedar policies: validate against the schema, run the policy tests.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Admins: register the first ones (`bootstrap`).
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Certificate utilities.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, migrate } => serve::run(config, migrate).await,
        Command::Dev(options) => crate::dev::run(options).await,
        Command::Migrate { config } => migrate::run(config.as_deref()).await,
        Command::Keys { command } => keys::run(command).await,
        Command::Audit { command } => audit::run(command).await,
        Command::Policy { command } => policy::run(command),
        Command::Admin { command } => admin::run(command).await,
        Command::Certs { command } => certs::run(command),
    }
}

/// An audit writer for one command-line operation, checkpointing every record it writes.
pub(crate) async fn operator_audit(
    pool: &sqlx::PgPool,
    keys: &crate::config::KeySettings,
) -> anyhow::Result<(crate::audit::AuditLog, crate::audit::WriterHandle)> {
    let signer = crate::audit::AuditSigner::load(pool, keys).await?;
    Ok(crate::audit::AuditLog::start(
        pool.clone(),
        format!("cli/{}", std::process::id()),
        1,
        signer,
        crate::audit::CheckpointPolicy {
            every_records: 1,
            every: std::time::Duration::from_secs(60),
        },
        None,
    ))
}
