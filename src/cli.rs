//! Command-line interface: one subcommand per operation.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::Settings;
use crate::dev::DevOptions;
use crate::pki::DevPki;

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
    /// Certificate utilities.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Promote the published `next` key to `active`, retire the old one and publish a new
    /// `next`; every node switches within `keys.refresh_interval_ms`.
    Rotate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Re-wrap every stored key under the current `keys.kek` (older ones must still be listed
    /// in `keys.previous_keks`).
    Rewrap {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate a fresh development PKI (replacing any in the directory).
    Dev {
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Dev(options) => crate::dev::run(options).await,
        Command::Migrate { config } => {
            let database = Settings::load_database(config.as_deref())?;
            let pool = crate::storage::pool(&database)?;
            crate::storage::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys { command } => keys(command).await,
        Command::Certs {
            command: CertsCommand::Dev { out },
        } => {
            DevPki { dir: out.clone() }.generate()?;
            println!("dev PKI written to {}", out.display());
            Ok(())
        }
    }
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let config = match &command {
        KeysCommand::Rotate { config } | KeysCommand::Rewrap { config } => config.clone(),
    };
    let settings = Settings::load(config.as_deref())?;
    let pool = crate::storage::pool(&settings.database)?;
    match command {
        KeysCommand::Rotate { .. } => {
            crate::keys::ensure_keys(&pool, &settings.keys).await?;
            let rotation = crate::keys::rotate(
                &pool,
                &settings.keys,
                settings.tokens.max_lifetime,
                false,
            )
            .await?
            .context("no key was rotated")?;
            println!(
                "rotated: {} retired, {} active, {} published as next",
                rotation.retired, rotation.activated, rotation.next
            );
        }
        KeysCommand::Rewrap { .. } => {
            let count = crate::keys::rewrap(&pool, &settings.keys).await?;
            println!("re-wrapped {count} key(s) under key-encryption key `{}`", settings.keys.kek.id);
        }
    }
    Ok(())
}

async fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    crate::telemetry::init(&settings.log);
    let pool = crate::storage::pool(&settings.database)?;
    let application = Application::build(&settings, pool).await?;
    tracing::info!(addr = %application.local_addr(), "serving HTTPS");
    application.run().await.context("server failed")
}
