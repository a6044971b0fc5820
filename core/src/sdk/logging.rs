//! The SDK's log lines, handed to the app's own logger (os_log, Logcat, Python's
//! `logging`) through a foreign trait. The SDK logs with `tracing`; [`set_logger`]
//! installs a small process-wide `tracing` subscriber that forwards the SDK's events at
//! or above a level, formatted as one line each. A Rust app that has its own subscriber
//! keeps it and sees the same events there (`set_logger` then returns a config error).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::sdk::error::{Result, SdkError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn of(level: &Level) -> LogLevel {
        match *level {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warn,
            Level::INFO => LogLevel::Info,
            Level::DEBUG => LogLevel::Debug,
            Level::TRACE => LogLevel::Trace,
        }
    }
}

/// Implemented by the app. Called on whichever SDK thread logged; return quickly.
#[uniffi::export(with_foreign)]
pub trait TidingsLogger: Send + Sync {
    /// `target` is the SDK module (e.g. `tidings_core::sdk::conn`); `message` is the
    /// event's message followed by its fields as `key=value`.
    fn log(&self, level: LogLevel, target: String, message: String);
}

struct Sink {
    logger: Arc<dyn TidingsLogger>,
    max: LogLevel,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Sends the SDK's log lines at `max_level` and above to `logger` (replacing any logger
/// set before). Fails if the process already has another `tracing` subscriber.
#[uniffi::export]
pub fn set_logger(logger: Arc<dyn TidingsLogger>, max_level: LogLevel) -> Result<()> {
    let installed =
        *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Forwarder).is_ok());
    if !installed {
        return Err(SdkError::config(
            "another tracing subscriber is installed in this process; its output has the SDK's events",
        ));
    }
    *SINK.write().unwrap_or_else(|p| p.into_inner()) = Some(Sink {
        logger,
        max: max_level,
    });
    Ok(())
}

/// Stops forwarding log lines.
#[uniffi::export]
pub fn clear_logger() {
    SINK.write().unwrap_or_else(|p| p.into_inner()).take();
}

/// Forwards the SDK's own events to the current [`Sink`]; spans are not tracked.
struct Forwarder;

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("tidings_core")
            && SINK
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|s| LogLevel::of(metadata.level()) <= s.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = Line::default();
        event.record(&mut line);
        let logger = match SINK.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(s) if LogLevel::of(meta.level()) <= s.max => s.logger.clone(),
            _ => return,
        };
        let message = if line.fields.is_empty() {
            line.message
        } else {
            format!("{}{}", line.message, line.fields)
        };
        // A foreign logger that throws must not take an SDK thread down with it.
        let call = std::panic::AssertUnwindSafe(|| {
            logger.log(
                LogLevel::of(meta.level()),
                meta.target().to_owned(),
                message,
            )
        });
        let _ = std::panic::catch_unwind(call);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
