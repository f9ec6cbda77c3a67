//! `tessera keys`: rotate and re-wrap signing keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Promote the published `next` key to `active`, retire the old one and publish a new
    /// `next`; every node switches within `keys.refresh_interval_ms`.
    Rotate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Re-wrap every sealed key, signing and audit keys, under the current `keys.kek` (older
    /// ones must still be listed in `keys.previous_keks`).
    Rewrap {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    let config = match &command {
        KeysCommand::Rotate { config } | KeysCommand::Rewrap { config } => config.clone(),
    };
    let settings = Settings::load_operator(config.as_deref())?;
    let pool = crate::storage::pool(&settings.database)?;
    match command {
        KeysCommand::Rotate { .. } => {
            crate::service::keys::ensure_keys(&pool, &settings.keys).await?;
            let rotation = crate::service::keys::rotate(
                &pool,
                &settings.keys,
                settings.max_token_lifetime,
                false,
            )
            .await?
            .context("no key was rotated")?;
            let (audit, writer) = super::operator_audit(&pool, &settings.keys).await?;
            rotation.audit(&audit, "operator").await?;
            writer.finish().await;
            println!(
                "rotated: {} retired, {} active, {} published as next",
                rotation.retired, rotation.activated, rotation.next
            );
        }
        KeysCommand::Rewrap { .. } => {
            let rewrapped = crate::service::keys::rewrap(&pool, &settings.keys).await?;
            println!(
                "re-wrapped {} signing key(s) and {} audit key(s) under key-encryption key `{}`",
                rewrapped.signing_keys, rewrapped.audit_keys, settings.keys.kek.id
            );
            if rewrapped.refused > 0 {
                eprintln!(
                    "left {} stored key(s) alone: they do not authenticate under the configured \
                     key-encryption keys and are ignored wherever keys are loaded",
                    rewrapped.refused
                );
            }
        }
    }
    Ok(())
}
