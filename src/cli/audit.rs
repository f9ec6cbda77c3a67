//! `tessera audit`: verify, export, verify an export offline, publish the key, prune.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Settings;

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

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
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
