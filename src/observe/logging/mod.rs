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
//! written by [`access`], called by the proxy's `logging` phase with an
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

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, FieldSet, Visit};
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::callsite::DefaultCallsite;
use tracing_core::metadata::Kind;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

mod sink;

pub use sink::{LogGuard, LogSink, SinkWriter, MAX_PENDING};

/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "feishu_gateway::access";

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

// ----- set-up -------------------------------------------------------------

/// Installs the global subscriber (see [`subscriber`]): the `level` filter
/// (`RUST_LOG` wins), into one sink on stdout.
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    // callsite interest becomes "sometimes"), and [`access`] then takes the
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

// ----- the access line ----------------------------------------------------

/// A field's name, as a [`Line`] writes it before the value.
#[derive(Clone, Copy)]
enum Name<'n> {
    /// Any name (a tracing event's), escaped as it needs.
    Any(&'n str),
    /// A name known when compiling, written as made then by [`key!`].
    Known {
        /// ` name=`
        plain: &'static str,
        /// `,"name":`
        json: &'static str,
    },
}

/// The [`Name`] of a field of the access line: its lead-ins in both
/// formats made when compiling (the names need no escape).
macro_rules! key {
    ($name:literal) => {
        Name::Known {
            plain: concat!(" ", $name, "="),
            json: concat!(",\"", $name, "\":"),
        }
    };
}

/// Writes access lines as `tracing_subscriber::fmt` would
/// (`<time>  INFO feishu_gateway::access: request a="x" n=1 …`, or one
/// flattened JSON object), without its per-field dynamic formatting: the
/// [`ACCESS_TARGET`] events it is given, and the records [`access`] hands
/// it directly. So a subscriber with an `AccessLayer` has the access log
/// there alone: its other layers do not see the records (in [`init`]'s,
/// fmt leaves the access target to this layer anyway).
#[derive(Debug)]
pub struct AccessLayer {
    format: LogFormat,
    sink: LogSink,
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLayer {
    /// Access lines in `format`, into `sink`.
    pub fn new(format: LogFormat, sink: LogSink) -> Self {
        AccessLayer { format, sink }
    }

    /// Writes `record`'s line: the direct way (see [`access`]).
    fn write(&self, record: &AccessRecord<'_>) {
        self.append_line(|line| format_record(line, self.format, SystemTime::now(), record));
    }

    /// Formats a line with `format` into this thread's buffer, and appends
    /// it to the sink.
    fn append_line(&self, format: impl FnOnce(&mut Vec<u8>)) {
        LINE.with(|line| {
            // Taken: a value's `Debug` logged an access line itself. That
            // inner line is lost rather than mixed into this one.
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            format(&mut line);
            self.sink.append(&line);
        });
    }
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        self.append_line(|line| format_line(line, self.format, SystemTime::now(), event));
    }
}

/// One request's access line, as typed values: what [`access`] writes.
/// A `None` is written as its field's doc says.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// The request id (`-`).
    pub request_id: Option<&'a str>,
    /// The calling client's name, once authenticated (`-`).
    pub client: Option<&'a str>,
    /// The app's name, once authenticated (`-`).
    pub app: Option<&'a str>,
    /// The catalog route's template (`other`: the path matched none).
    pub route: Option<&'a str>,
    /// The status answered.
    pub status: u16,
    /// Feishu's `code` of the answer sent, or the gateway's own (`none`).
    pub code: Option<i64>,
    /// From request to answer, in microseconds.
    pub total_us: u64,
    /// Waiting for Feishu, all attempts together, in microseconds.
    pub upstream_us: u64,
    /// Feishu's `X-Tt-Logid` (`-`).
    pub logid: Option<&'a str>,
    /// `X-Gateway-Error` when the gateway answered itself (`-`).
    pub gateway_error: Option<&'a str>,
    /// The token-invalid code that caused a replay (`-`).
    pub replayed_after: Option<i64>,
}

impl AccessRecord<'_> {
    /// Writes the fields, in the order and with the value types of the
    /// event of [`AccessRecord::emit`]: the same line, byte for byte.
    fn record(&self, line: &mut Line<'_>) {
        let (mut code, mut replayed_after) = (itoa::Buffer::new(), itoa::Buffer::new());
        line.message("request");
        line.str(key!("request_id"), self.request_id.unwrap_or("-"));
        line.str(key!("client"), self.client.unwrap_or("-"));
        line.str(key!("app"), self.app.unwrap_or("-"));
        line.str(key!("route"), self.route.unwrap_or("other"));
        line.u64(key!("status"), u64::from(self.status));
        line.shown(key!("code"), self.code.map_or("none", |c| code.format(c)));
        line.u64(key!("total_us"), self.total_us);
        line.u64(key!("upstream_us"), self.upstream_us);
        line.str(key!("logid"), self.logid.unwrap_or("-"));
        line.str(key!("gateway_error"), self.gateway_error.unwrap_or("-"));
        line.shown(
            key!("replayed_after"),
            self.replayed_after
                .map_or("-", |c| replayed_after.format(c)),
        );
    }

    /// The record as a tracing event (the slow way; see [`access`]).
    fn emit(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.request_id.unwrap_or("-"),
            client = self.client.unwrap_or("-"),
            app = self.app.unwrap_or("-"),
            route = self.route.unwrap_or("other"),
            status = self.status,
            code = %NumberOr(self.code, "none"),
            total_us = self.total_us,
            upstream_us = self.upstream_us,
            logid = self.logid.unwrap_or("-"),
            gateway_error = self.gateway_error.unwrap_or("-"),
            replayed_after = %NumberOr(self.replayed_after, "-"),
            "request"
        );
    }
}

/// A number, or `text` for `None`, displayed without allocating.
struct NumberOr(Option<i64>, &'static str);

impl fmt::Display for NumberOr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str(self.1),
        }
    }
}

/// A callsite with the metadata of the event of [`AccessRecord::emit`]
/// (target, level, field names), never emitted itself: subscribers
/// register it like any callsite, and its cached interest tells [`access`]
/// what they would say of that event, without asking them per request.
static ACCESS_CALLSITE: DefaultCallsite = DefaultCallsite::new(&ACCESS_META);

static ACCESS_META: Metadata<'static> = Metadata::new(
    "access line",
    ACCESS_TARGET,
    Level::INFO,
    Some(file!()),
    Some(line!()),
    Some(module_path!()),
    FieldSet::new(
        &[
            "message",
            "request_id",
            "client",
            "app",
            "route",
            "status",
            "code",
            "total_us",
            "upstream_us",
            "logid",
            "gateway_error",
            "replayed_after",
        ],
        tracing_core::identify_callsite!(&ACCESS_CALLSITE),
    ),
    Kind::EVENT,
);

/// Writes one access line, for the record `make` builds, if the
/// subscriber wants access lines. When tracing already knows that it does
/// not (`feishu_gateway::access=off`, a level above `info`: the callsite
/// interest is "never"), nothing is done and `make` is not called.
///
/// Two ways, one line. When tracing has cached that the access event is
/// always wanted (interest "always": the usual case, e.g. `info`) and the
/// current subscriber has an [`AccessLayer`], the record is formatted
/// straight into that layer's sink: with that interest tracing would hand
/// the event to the layer without asking any filter, so skipping the
/// dispatch changes nothing but the cost. Else (no `AccessLayer`, e.g. a
/// test's or a library user's own subscriber; or a filter that must look
/// at each event, such as a span-scoped `RUST_LOG` directive) the record
/// goes out as a tracing event, filtered and formatted as usual.
#[inline]
pub fn access<'a>(make: impl FnOnce() -> AccessRecord<'a>) {
    // The same checks, in the same order, as tracing's own `info!`.
    if Level::INFO > STATIC_MAX_LEVEL || Level::INFO > LevelFilter::current() {
        return;
    }
    let interest = ACCESS_CALLSITE.interest();
    if interest.is_never() {
        return;
    }
    write_access(&make(), interest.is_always());
}

/// The part of [`access`] that runs when the access log is on (not
/// inlined: one symbol for profiles to find).
#[inline(never)]
fn write_access(record: &AccessRecord<'_>, always: bool) {
    let written = always
        && tracing::dispatcher::get_default(|d| match d.downcast_ref::<AccessLayer>() {
            Some(layer) => {
                layer.write(record);
                true
            }
            None => false,
        });
    if !written {
        record.emit();
    }
}

fn format_record(buf: &mut Vec<u8>, format: LogFormat, now: SystemTime, record: &AccessRecord<'_>) {
    let mut line = Line::start(buf, format, now, &Level::INFO, ACCESS_TARGET);
    record.record(&mut line);
    line.finish(ACCESS_TARGET);
}

fn format_line(buf: &mut Vec<u8>, format: LogFormat, now: SystemTime, event: &Event<'_>) {
    let meta = event.metadata();
    let mut line = Line::start(buf, format, now, meta.level(), meta.target());
    event.record(&mut line);
    line.finish(meta.target());
}

/// One line being written, in either format. Every value is written
/// through it, whether it comes from a tracing event (as a [`Visit`]or)
/// or from a typed record, so the same values give the same bytes.
struct Line<'a> {
    buf: &'a mut Vec<u8>,
    format: LogFormat,
    /// Plain: nothing written after the target yet (no separating space).
    first: bool,
}

// The methods are inlined: on the direct way the names, the level and the
// target are constants, and copies of constants cost next to nothing.
impl<'a> Line<'a> {
    /// Writes what comes before the fields: the time, the level and (plain)
    /// the target.
    #[inline(always)]
    fn start(
        buf: &'a mut Vec<u8>,
        format: LogFormat,
        now: SystemTime,
        level: &Level,
        target: &str,
    ) -> Line<'a> {
        let level = level.as_str();
        match format {
            LogFormat::Plain => {
                push_timestamp(buf, now);
                buf.push(b' ');
                // fmt pads the level to 5 characters, right-aligned.
                buf.extend(std::iter::repeat_n(
                    b' ',
                    5usize.saturating_sub(level.len()),
                ));
                buf.extend_from_slice(level.as_bytes());
                buf.push(b' ');
                buf.extend_from_slice(target.as_bytes());
                buf.extend_from_slice(b": ");
            }
            LogFormat::Json => {
                buf.extend_from_slice(b"{\"timestamp\":\"");
                push_timestamp(buf, now);
                buf.extend_from_slice(b"\",\"level\":\"");
                buf.extend_from_slice(level.as_bytes());
                buf.push(b'"');
            }
        }
        Line {
            buf,
            format,
            first: true,
        }
    }

    /// Writes what comes after the fields (JSON: the target) and the newline.
    #[inline(always)]
    fn finish(self, target: &str) {
        if self.format == LogFormat::Json {
            self.buf.extend_from_slice(b",\"target\":");
            push_json_str(self.buf, target);
            self.buf.push(b'}');
        }
        self.buf.push(b'\n');
    }

    /// Plain: the space before every field but the first.
    #[inline(always)]
    fn space(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.buf.push(b' ');
        }
    }

    /// Starts a field. Plain: ` name=`; JSON: `,"name":`.
    #[inline(always)]
    fn name(&mut self, name: Name<'_>) {
        match (self.format, name) {
            (LogFormat::Plain, Name::Any(name)) => {
                self.space();
                self.buf.extend_from_slice(name.as_bytes());
                self.buf.push(b'=');
            }
            (LogFormat::Plain, Name::Known { plain, .. }) => {
                let plain = if std::mem::take(&mut self.first) {
                    &plain[1..] // no space
                } else {
                    plain
                };
                self.buf.extend_from_slice(plain.as_bytes());
            }
            (LogFormat::Json, Name::Any(name)) => {
                self.buf.push(b',');
                push_json_str(self.buf, name);
                self.buf.push(b':');
            }
            (LogFormat::Json, Name::Known { json, .. }) => {
                self.buf.extend_from_slice(json.as_bytes());
            }
        }
    }

    /// The message. Plain: as is, without a name; JSON: a string.
    #[inline(always)]
    fn message(&mut self, text: &str) {
        match self.format {
            LogFormat::Plain => {
                self.space();
                self.buf.extend_from_slice(text.as_bytes());
            }
            LogFormat::Json => self.str(key!("message"), text),
        }
    }

    /// A string field. Plain: quoted and escaped as `{:?}` does; JSON: a
    /// string.
    #[inline(always)]
    fn str(&mut self, name: Name<'_>, value: &str) {
        self.name(name);
        match self.format {
            LogFormat::Plain => push_debug_str(self.buf, value),
            LogFormat::Json => push_json_str(self.buf, value),
        }
    }

    /// A number field: digits in both formats.
    #[inline(always)]
    fn u64(&mut self, name: Name<'_>, value: u64) {
        self.name(name);
        push_u64(self.buf, value);
    }

    #[inline(always)]
    fn i64(&mut self, name: Name<'_>, value: i64) {
        self.name(name);
        push_i64(self.buf, value);
    }

    /// A field whose `Debug` output is `text` (as for `%display` fields):
    /// as is in plain, a string in JSON.
    #[inline(always)]
    fn shown(&mut self, name: Name<'_>, text: &str) {
        self.name(name);
        match self.format {
            LogFormat::Plain => self.buf.extend_from_slice(text.as_bytes()),
            LogFormat::Json => push_json_str(self.buf, text),
        }
    }

    /// A field written with its `Debug`, as [`Line::shown`] (or
    /// [`Line::message`]) writes its text.
    fn debug(&mut self, name: &str, value: &dyn fmt::Debug) {
        match self.format {
            LogFormat::Plain => {
                if name == "message" {
                    self.space();
                } else {
                    self.name(Name::Any(name));
                }
                let _ = write!(self.buf, "{value:?}");
            }
            LogFormat::Json => {
                let mut s = StackStr::default();
                match fmt::Write::write_fmt(&mut s, format_args!("{value:?}")) {
                    Ok(()) => self.shown(Name::Any(name), s.as_str()),
                    // Longer than the stack buffer.
                    Err(_) => self.shown(Name::Any(name), &format!("{value:?}")),
                }
            }
        }
    }
}

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message(value);
        } else {
            self.str(Name::Any(field.name()), value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.u64(Name::Any(field.name()), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.i64(Name::Any(field.name()), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        // `true` / `false` in both formats (plain: its `Debug`; JSON: a
        // boolean).
        self.name(Name::Any(field.name()));
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.debug(field.name(), value);
    }
}

/// A small stack buffer for short Debug values (codes, dashes).
#[derive(Default)]
struct StackStr {
    buf: [u8; 32],
    len: usize,
}

impl StackStr {
    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

// ----- writing values -------------------------------------------------------

fn push_u64(line: &mut Vec<u8>, v: u64) {
    line.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_i64(line: &mut Vec<u8>, v: i64) {
    line.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A string as Rust's `{:?}` writes it (what fmt's plain format does for
/// string fields): quoted, with `"` `\` and control characters escaped.
// The rare escaping is out of line: setting up for it would cost every
// value.
fn push_debug_str(line: &mut Vec<u8>, s: &str) {
    // Printable ASCII but `"` and `\` is written as it is.
    let special = |b: u8| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\';
    if find(s.as_bytes(), 0, debug_special, special).is_none() {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        push_debug_str_escaped(line, s);
    }
}

#[cold]
#[inline(never)]
fn push_debug_str_escaped(line: &mut Vec<u8>, s: &str) {
    let _ = write!(line, "{s:?}");
}

/// A JSON string literal.
fn push_json_str(line: &mut Vec<u8>, s: &str) {
    if find(s.as_bytes(), 0, json_special, json_special_byte).is_none() {
        line.push(b'"');
        line.extend_from_slice(s.as_bytes());
        line.push(b'"');
    } else {
        push_json_str_escaped(line, s);
    }
}

fn json_special_byte(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cold]
#[inline(never)]
fn push_json_str_escaped(line: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    line.push(b'"');
    let mut start = 0;
    while let Some(i) = find(bytes, start, json_special, json_special_byte) {
        line.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => {
                let _ = write!(line, "\\u{b:04x}");
                b""
            }
        };
        line.extend_from_slice(escaped);
        start = i + 1;
    }
    line.extend_from_slice(&bytes[start..]);
    line.push(b'"');
}

/// Where the first byte at or after `from` that `special` flags is.
/// Eight bytes at a time first (most values need no escape at all):
/// `word_special` may flag a word with no such byte, never misses one.
#[inline(always)]
fn find(
    bytes: &[u8],
    from: usize,
    word_special: impl Fn(u64) -> bool,
    special: impl Fn(u8) -> bool,
) -> Option<usize> {
    let tail = &bytes[from..];
    let mut clean = 0;
    for word in tail.chunks_exact(8) {
        if word_special(word_at(word)) {
            break;
        }
        clean += 8;
    }
    let rest = &tail[clean..];
    // Fewer than eight left: their last eight (read again in part) in one.
    if rest.len() < 8 && bytes.len() >= 8 && !word_special(word_at(&bytes[bytes.len() - 8..])) {
        return None;
    }
    rest.iter()
        .position(|&b| special(b))
        .map(|p| from + clean + p)
}

// Byte tests on eight bytes at once (one `u64`, a byte per lane). Each
// test flags the lowest lane that holds such a byte, and may flag lanes
// above it (a borrow or carry crosses into the next lane), never a word
// with no such byte.

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

fn word_at(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_ne_bytes(word)
}

/// The lanes of `x` that are zero: their high bit is set.
fn zero_lanes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x
}

/// A lane is below 0x20, 0x7f or above, `"` or `\`: what `{:?}` escapes.
fn debug_special(x: u64) -> bool {
    // Below 0x20: subtracting 0x20 sets the high bit; 0x7f: adding 1
    // does; above: it is set.
    let outside = x.wrapping_sub(ONES * 0x20) | x.wrapping_add(ONES) | x;
    let quote = zero_lanes(x ^ (ONES * u64::from(b'"')));
    let backslash = zero_lanes(x ^ (ONES * u64::from(b'\\')));
    (outside | quote | backslash) & HIGHS != 0
}

/// A lane is a control character, `"` or `\`: what JSON escapes.
fn json_special(x: u64) -> bool {
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    let quote = zero_lanes(x ^ (ONES * u64::from(b'"')));
    let backslash = zero_lanes(x ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) & HIGHS != 0
}

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `2026-11-24T10:11:12.123456Z` (UTC, microseconds): tracing fmt's format.
fn push_timestamp(line: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            *cell = (secs, civil(secs));
        }
        line.extend_from_slice(&cell.1);
    });
    // Six digits with leading zeros: the last six of 1xxxxxx.
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(1_000_000 + since.subsec_micros()).as_bytes();
    line.push(b'.');
    line.extend_from_slice(&micros[1..]);
    line.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` for unix seconds (years 1970–9999), by Howard
/// Hinnant's days-to-civil algorithm.
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let put = |out: &mut [u8; 19], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, 4, year.clamp(0, 9999) as u64);
    put(&mut out, 5, 2, month as u64);
    put(&mut out, 8, 2, day as u64);
    put(&mut out, 11, 2, rem / 3600);
    put(&mut out, 14, 2, rem / 60 % 60);
    put(&mut out, 17, 2, rem % 60);
    out
}

#[cfg(test)]
mod tests;
