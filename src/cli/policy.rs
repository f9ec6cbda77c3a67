//! `tessera policy`: validate the Cedar policies, run their tests.

use std::path::PathBuf;

use clap::Subcommand;

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

pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
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
