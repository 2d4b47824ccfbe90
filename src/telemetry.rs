//! Logging set-up: a `tracing` filter and a text or JSON formatter, to stderr.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Colours in text logs only when they go to a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>): a log file or a pipe gets plain text.
fn colours() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Installs the global subscriber. The filter was checked by `Config::validate`; should it
/// still fail, `info` is used with a warning.
pub fn init(log: &LogConfig) {
    let (filter, bad) = match EnvFilter::try_new(&log.filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours())
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Some(error) = bad {
        tracing::warn!(%error, filter = %log.filter, "log.filter invalid; using `info`");
    }
}
