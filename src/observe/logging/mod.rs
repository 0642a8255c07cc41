//! Where log lines go, and the access log's fast path.
//!
//! Every line (tracing's and the access log's) is appended to one
//! [`LogSink`]: a buffer that a background thread writes to stdout in
//! batches, so a request never waits on stdout and a burst of lines becomes
//! one `write`. Lines are never dropped: when the writer falls behind by
//! [`MAX_PENDING`] bytes, appenders wait for it (as the old
//! `tracing-appender` setup did with `lossy(false)`).
//!
//! The access log (target [`ACCESS_TARGET`], one line per request) is
//! written by [`access()`], called by the proxy's `logging` phase with an
//! [`AccessRecord`] of typed values. It writes the same line that
//! `tracing_subscriber::fmt` would for the equivalent tracing event (plain
//! or flattened JSON), at a fraction of the cost, which matters on a path
//! taken by every request. When the subscriber has an [`AccessLayer`] and
//! tracing has cached that access lines are wanted, the record is
//! formatted straight into a reused per-thread buffer and appended to the
//! layer's sink, with no event dispatch at all; otherwise it goes out as
//! that tracing event ([`AccessLayer`] formats it, byte for byte the
//! same). Other events go through `tracing_subscriber::fmt` as usual.
//! Filtering is unchanged: `RUST_LOG=info,feishu_gateway::access=off`, or
//! a level above `info`, turns the access log off.
//!
//! One concern a file:
//!
//! - `mod.rs`: the `[log]` settings ([`Log`]), and the set-up ([`init`],
//!   [`subscriber`]);
//! - `sink.rs`: [`LogSink`], the buffer and its writer thread;
//! - `access.rs`: the access line ([`AccessRecord`], [`AccessLayer`],
//!   [`access()`]);
//! - `format.rs`: a record or an event as one plain or JSON line;
//! - `escape.rs`: string values quoted and escaped, scanned eight bytes at
//!   a time.

use tracing::Subscriber;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::prelude::*;

mod access;
mod escape;
mod format;
mod sink;

pub use access::{access, AccessLayer, AccessRecord, ACCESS_TARGET};
pub use sink::{LogGuard, LogSink, SinkWriter, MAX_PENDING};

/// Log output (`[log]`).
#[derive(Debug, Clone)]
pub struct Log {
    /// `plain` (default) or `json` (`format`).
    pub format: LogFormat,
    /// A tracing filter like `info` or `feishu_gateway=debug` (`level`).
    /// Default `info`; `RUST_LOG` wins when set.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// The level names a `[log] level` directive may end in.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `[log] level` filter: comma-separated directives, each a level
/// (`info`) or `target=level` (`feishu_gateway::access=off`), as tracing's
/// `EnvFilter` reads them. Stricter than `EnvFilter` itself, which takes a
/// bare word such as `infoo` as a TARGET with every level on (so a typo
/// there would silence the whole log): a directive without `=` must be a
/// level name.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let hint = "a level (trace, debug, info, warn, error, off) or a filter like \"info,feishu_gateway::access=off\"";
    if filter.trim().is_empty() {
        return Err(format!("is empty: give {hint}"));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => {
                return Err(format!(
                    "{directive:?} names no target before '=': give {hint}"
                ))
            }
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim())) {
            return Err(format!("{directive:?} in {filter:?} is not {hint}"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?} is not {hint} ({e})"))
}

// ----- set-up -------------------------------------------------------------

/// Installs the global subscriber (see [`subscriber`]): the `level` filter
/// (`RUST_LOG` wins), into one sink on stdout.
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // tungstenite traces the WebSocket handshake's request line, whose
        // URL carries the long connection's ticket: never below info.
        .add_directive("tungstenite=info".parse().expect("a valid directive"))
        .add_directive("tokio_tungstenite=info".parse().expect("a valid directive"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (sink, guard) = LogSink::new(std::io::stdout());
    subscriber(format, filter, ansi, sink).init();
    guard
}

/// The gateway's subscriber: `filter`, then `tracing_subscriber::fmt` for
/// every event but the access log, and [`AccessLayer`] for the access log,
/// both into `sink`.
pub fn subscriber(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    sink: LogSink,
) -> impl Subscriber + Send + Sync + 'static {
    // fmt leaves the access log to AccessLayer. Skipped at the writer, not
    // by a per-layer filter: a per-layer filter that says no to the access
    // target keeps tracing from caching that the access log is wanted (its
    // callsite interest becomes "sometimes"), and [`access()`] then takes the
    // slow way, a tracing event, every time. Access events reach fmt only
    // on that slow way (formatted, then dropped by the writer).
    let not_access = sink.clone().with_filter(|m| m.target() != ACCESS_TARGET);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(not_access);
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Plain => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(AccessLayer::new(format, sink))
}

#[cfg(test)]
mod tests;
