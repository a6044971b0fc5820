//! Logging: `tracing` with an env filter (RUST_LOG, else `log.filter`), as text or JSON,
//! on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr so that commands' own output (e.g. `user create` printing the
    // new id) stays clean on stdout.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written is dropped. Reporting it, as the default
        // does, means `eprintln!` to the same broken stderr, which panics in whatever
        // task logged: once a log pipe closed, the signal task's panic left the server
        // deaf to SIGTERM (tests/http_edge.rs).
        .log_internal_errors(false);
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
