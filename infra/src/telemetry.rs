//! Logging set-up shared by the binaries.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global tracing subscriber. The filter comes from `RUST_LOG`
/// (default `info`, with librdkafka's chatter reduced to warnings).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Logs a service's configuration at debug level as it starts. Every secret in it must show
/// redacted in `Debug` (tests/e2e/auth.rs reads every log line for them).
pub fn log_configuration(config: &impl std::fmt::Debug) {
    tracing::debug!(?config, "starting with this configuration");
}
