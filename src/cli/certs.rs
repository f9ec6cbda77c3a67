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
}

pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Dev { out } => {
            DevPki { dir: out.clone() }.generate()?;
            println!("dev PKI written to {}", out.display());
            Ok(())
        }
    }
}
