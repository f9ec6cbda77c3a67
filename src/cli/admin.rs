//! `tessera admin`: registering the first admins from the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::Settings;
use crate::domain::admin::Role;
use crate::service::admin::bootstrap;
use crate::tls::ClientCertificate;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Register an admin by certificate (database access required; audited). The certificate
    /// must chain to `admin.client_ca` to be accepted by the admin API.
    Bootstrap {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The admin's certificate (PEM); its subject identifies the admin.
        #[arg(long)]
        cert: PathBuf,
        /// Comma-separated: viewer, editor, approver, auditor.
        #[arg(long)]
        roles: String,
        /// The admin's id (default: the certificate's common name).
        #[arg(long)]
        id: Option<String>,
    },
}

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Bootstrap {
            config,
            cert,
            roles,
            id,
        } => {
            let roles =
                Role::parse_list(&roles).map_err(|reason| anyhow::anyhow!("--roles: {reason}"))?;
            let identity = certificate_identity(&cert)?;
            let id = id
                .or_else(|| identity.suggested_id.clone())
                .context("--id is needed: the certificate's common name is not a plain id")?;
            let settings = Settings::load_operator(config.as_deref())?;
            let pool = crate::storage::pool(&settings.database)?;
            let (audit, writer) = crate::cli::operator_audit(&pool, &settings.keys).await?;
            let registered = bootstrap::register(&audit, &id, identity, roles, "operator").await;
            writer.finish().await;
            let admin = registered?;
            let roles: Vec<&str> = admin.roles.iter().map(|role| role.as_str()).collect();
            println!(
                "admin `{}` registered: {} ({})",
                admin.id,
                admin.subject_dn,
                roles.join(", ")
            );
            Ok(())
        }
    }
}

/// The identity in a PEM certificate file: its first certificate.
pub fn certificate_identity(
    path: &std::path::Path,
) -> anyhow::Result<bootstrap::CertificateIdentity> {
    let der = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .next()
        .with_context(|| format!("{}: no certificate", path.display()))?
        .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
    let certificate = ClientCertificate::parse(der, Vec::new())
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok(bootstrap::identity_of(&certificate))
}
