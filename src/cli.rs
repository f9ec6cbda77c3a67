//! Command-line interface: one subcommand per operation.

pub mod admin;

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

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every chain and checkpoint against the audit keys the key-encryption key
    /// authenticates; list every chain by node and name the first problem. Exit 0 only if
    /// intact.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Trust exactly the audit keys in this JWKS instead of those the key-encryption key
        /// authenticates (an auditor's pinned copy); then only the database and audit settings
        /// are needed.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Write records of a time window (RFC 3339, UTC) as JSON lines, with the links and signed
    /// checkpoints needed to verify them offline.
    Export {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: String,
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        consent: Option<String>,
        #[arg(long)]
        txn: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an export with only the published audit key set; needs no database.
    VerifyExport {
        file: PathBuf,
        /// The audit JWKS (`tessera audit jwks`, or GET /audit/jwks.json).
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the audit key set that verifies checkpoints (keys the KEK authenticates).
    Jwks {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove records older than `audit.retention_days` (and the database's own retention),
    /// each chain down to a checkpoint a trusted audit key signed, so what remains still
    /// verifies. Export first.
    Prune {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse the policies and validate them strictly against the schema.
    Check {
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
    },
    /// Run the cases in `<dir>/tests/*.json` (request → expected decision).
    Test {
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
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
        Command::Serve { config, migrate } => serve(config, migrate).await,
        Command::Dev(options) => crate::dev::run(options).await,
        Command::Migrate { config } => {
            let database = Settings::load_database(config.as_deref())?;
            let pool = crate::storage::pool(&database)?;
            crate::storage::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Keys { command } => keys(command).await,
        Command::Audit { command } => audit(command).await,
        Command::Policy { command } => policy(command),
        Command::Admin { command } => admin::run(command).await,
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
    let settings = Settings::load_operator(config.as_deref())?;
    let pool = crate::storage::pool(&settings.database)?;
    match command {
        KeysCommand::Rotate { .. } => {
            crate::keys::ensure_keys(&pool, &settings.keys).await?;
            let rotation =
                crate::keys::rotate(&pool, &settings.keys, settings.max_token_lifetime, false)
                    .await?
                    .context("no key was rotated")?;
            let (audit, writer) = operator_audit(&pool, &settings.keys).await?;
            rotation.audit(&audit, "operator").await?;
            writer.finish().await;
            println!(
                "rotated: {} retired, {} active, {} published as next",
                rotation.retired, rotation.activated, rotation.next
            );
        }
        KeysCommand::Rewrap { .. } => {
            let rewrapped = crate::keys::rewrap(&pool, &settings.keys).await?;
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

/// An audit writer for one command-line operation, checkpointing every record it writes.
pub async fn operator_audit(
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

fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { dir } => {
            let engine = crate::policy::PolicyEngine::load(&dir)?;
            println!("policies valid; policy-set hash {}", engine.hash());
            Ok(())
        }
        PolicyCommand::Test { dir } => {
            let engine = crate::policy::PolicyEngine::load(&dir)?;
            let (total, failed) = engine.run_tests()?;
            for failure in &failed {
                eprintln!("FAILED {failure}");
            }
            println!("{} passed, {} failed", total - failed.len(), failed.len());
            anyhow::ensure!(failed.is_empty(), "{} policy test(s) failed", failed.len());
            Ok(())
        }
    }
}

fn read_jwks(path: &std::path::Path) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a JWK set", path.display()))
}

fn parse_time(name: &str, value: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).with_context(
        || format!("--{name}: expected an RFC 3339 time such as 2026-11-23T00:00:00Z"),
    )
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use crate::audit::{AuditSigner, ExportFilter};
    match command {
        AuditCommand::VerifyExport { file, key } => {
            let keys = read_jwks(&key)?;
            let input = std::io::BufReader::new(
                std::fs::File::open(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
            );
            let summary = crate::audit::verify_export(input, &keys)
                .map_err(|problem| anyhow::anyhow!("export does not verify: {problem}"))?;
            println!(
                "export verifies: {} records, {} links, {} checkpoints",
                summary.records, summary.links, summary.checkpoints
            );
            Ok(())
        }
        AuditCommand::Verify { config, key } => {
            let verdict = match key {
                Some(key) => {
                    let (database, settings) = Settings::load_audit(config.as_deref())?;
                    let pool = crate::storage::pool(&database)?;
                    crate::audit::verify_pinned(&pool, &read_jwks(&key)?, &settings).await?
                }
                None => {
                    let settings = Settings::load_operator(config.as_deref())?;
                    let pool = crate::storage::pool(&settings.database)?;
                    crate::audit::verify_all(&pool, &settings.keys, &settings.audit).await?
                }
            };
            match verdict {
                Ok(summary) => {
                    for chain in &summary.report {
                        println!("{chain}");
                    }
                    println!(
                        "audit trail intact: {} chains, {} records, {} checkpoints; {} records \
                         after the newest checkpoint of their chain, not yet signed",
                        summary.chains, summary.records, summary.checkpoints, summary.unsigned_tail
                    );
                    Ok(())
                }
                Err(broken) => Err(anyhow::anyhow!("audit trail broken: {broken}")),
            }
        }
        AuditCommand::Jwks { config } => {
            let settings = Settings::load_operator(config.as_deref())?;
            let pool = crate::storage::pool(&settings.database)?;
            println!("{}", crate::audit::audit_jwks(&pool, &settings.keys).await?);
            Ok(())
        }
        AuditCommand::Export {
            config,
            since,
            until,
            partner,
            client,
            consent,
            txn,
            out,
        } => {
            let settings = Settings::load_operator(config.as_deref())?;
            let pool = crate::storage::pool(&settings.database)?;
            let signer = AuditSigner::load(&pool, &settings.keys).await?;
            let filter = ExportFilter {
                since: parse_time("since", &since)?,
                until: parse_time("until", &until)?,
                partner,
                client,
                consent,
                txn,
            };
            let summary = match out {
                Some(path) => {
                    // A failed export leaves no file behind: a partial one would not verify
                    // and could be mistaken for a complete one.
                    let partial = path.with_extension("partial");
                    let written = async {
                        let mut file = std::io::BufWriter::new(
                            std::fs::File::create(&partial)
                                .with_context(|| format!("creating {}", partial.display()))?,
                        );
                        let summary =
                            crate::audit::export(&pool, &signer, &filter, &mut file).await?;
                        file.into_inner()
                            .map_err(std::io::IntoInnerError::into_error)
                            .and_then(|file| file.sync_all())
                            .with_context(|| format!("writing {}", partial.display()))?;
                        std::fs::rename(&partial, &path)
                            .with_context(|| format!("renaming to {}", path.display()))?;
                        anyhow::Ok(summary)
                    }
                    .await;
                    if written.is_err() {
                        let _ = std::fs::remove_file(&partial);
                    }
                    written?
                }
                None => {
                    let mut stdout = std::io::stdout().lock();
                    crate::audit::export(&pool, &signer, &filter, &mut stdout).await?
                }
            };
            eprintln!(
                "exported {} records, {} links, {} checkpoints; {} matching records left out \
                 until their node signs a checkpoint over them",
                summary.records, summary.links, summary.checkpoints, summary.unsigned
            );
            Ok(())
        }
        AuditCommand::Prune { config } => {
            let settings = Settings::load_operator(config.as_deref())?;
            let pool = crate::storage::pool(&settings.database)?;
            let removed =
                crate::audit::prune(&pool, settings.audit.retention, &settings.keys).await?;
            println!("pruned {removed} records older than the retention period");
            Ok(())
        }
    }
}

async fn serve(config: Option<PathBuf>, migrate: bool) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    crate::telemetry::init(&settings.log);
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
    application.run().await.context("server failed")
}
