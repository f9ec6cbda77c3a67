//! `tessera certs`: certificate utilities.

use std::path::PathBuf;

use clap::Subcommand;

use crate::dev::pki::DevPki;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Generate a fresh development PKI (replacing any in the directory).
    Dev {
        #[arg(long, default_value = "certs/dev")]
        out: PathBuf,
    },
    /// Print a JWT that partner B's dev identity provider signs for one of its subjects (with
    /// the key in the dev PKI), to exchange as a `jwt` subject token; valid for two minutes,
    /// usable once.
    PartnerJwt {
        /// The dev PKI holding the identity provider's key.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        /// Whom the identity provider vouches for (`sub`).
        #[arg(long)]
        subject: String,
        /// The Tessera issuer the assertion is for (`aud`).
        #[arg(long)]
        audience: String,
        /// Scopes the identity provider asserts (`scope`); default: none claimed.
        #[arg(long)]
        scope: Option<String>,
    },
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Dev { out } => {
            DevPki { dir: out.clone() }.generate()?;
            println!("dev PKI written to {}", out.display());
            Ok(())
        }
        CertsCommand::PartnerJwt {
            dir,
            subject,
            audience,
            scope,
        } => {
            let jwt = crate::dev::partner_idp::mint(&dir, &subject, &audience, scope.as_deref())?;
            println!("{jwt}");
            Ok(())
        }
    }
}
