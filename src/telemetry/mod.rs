//! Telemetry: structured logs (human-readable on a terminal, JSON lines when configured),
//! OpenTelemetry traces exported over OTLP when an endpoint is configured, and Prometheus
//! metrics.

pub mod metrics;
mod otlp;
mod propagation;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

pub use otlp::Tracing;
pub use propagation::{outgoing_headers, set_incoming_parent};

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter. Must run inside
/// the Tokio runtime when traces are exported (the exporter sends from it). The returned
/// handle flushes the traces not yet exported when the server stops.
pub fn init(settings: &LogSettings) -> Tracing {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (tracing, tracer) = otlp::start(settings.otlp_endpoint.as_deref());
    let traces = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    // Reporting a failed log write goes through `eprintln!`, which panics when stderr is gone:
    // a closed log pipe would then kill whatever task logs next (the one that stops the server
    // on SIGTERM, say).
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        // Colour codes are noise in a file or a log collector: only a terminal gets them.
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let installed = match settings.format {
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
        LogFormat::Human => registry.with(fmt).try_init(),
    };
    // A subscriber already installed (tests start several servers in one process) is fine.
    let _ = installed;
    tracing
}
