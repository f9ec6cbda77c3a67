//! Structured logs: human-readable on a terminal, JSON lines when configured.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Reporting a failed log write goes through `eprintln!`, which panics when stderr is gone:
    // a closed log pipe would then kill whatever task logs next (the one that stops the server
    // on SIGTERM, say).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let installed = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
    // A subscriber already installed (tests start several servers in one process) is fine.
    let _ = installed;
}
