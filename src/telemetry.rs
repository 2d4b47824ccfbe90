//! Logging set-up: a `tracing` filter and a text or JSON formatter, to stderr.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. The filter was checked by `Config::validate`; should it
/// still fail, `info` is used with a warning.
pub fn init(log: &LogConfig) {
    let (filter, bad) = match EnvFilter::try_new(&log.filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Some(error) = bad {
        tracing::warn!(%error, filter = %log.filter, "log.filter invalid; using `info`");
    }
}
