//! Where log lines go, and the access log's fast path.
//!
//! Every line (tracing's and the access log's) is appended to one
//! [`LogSink`]: a buffer that a background thread writes to stdout in
//! batches, so a request never waits on stdout and a burst of lines becomes
//! one `write`. Lines are never dropped: when the writer falls behind by
//! [`MAX_PENDING`] bytes, appenders wait for it (as the old
//! `tracing-appender` setup did with `lossy(false)`).
//!
//! The access log (target [`ACCESS_TARGET`], one line per request, emitted
//! by the proxy's `logging` phase) is formatted by [`AccessLayer`] straight
//! into a reused per-thread buffer: it writes the same line that
//! `tracing_subscriber::fmt` would (plain or flattened JSON), at a fraction
//! of the cost, which matters on a path taken by every request. Other
//! events go through `tracing_subscriber::fmt` as usual. Filtering is
//! unchanged: `RUST_LOG=info,feishu_gateway::access=off` turns the access
//! log off.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "feishu_gateway::access";

/// Bytes queued for the writer before appenders wait for it.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// How long the writer lets lines gather after a write before it takes the
/// next batch. Bounds writer wake-ups (and `write` calls) to ~500/s under
/// any load; a line is on stdout at most this long after the previous
/// batch.
const GATHER: Duration = Duration::from_millis(2);

// ----- the sink -----------------------------------------------------------

struct State {
    /// Lines waiting for the writer.
    pending: Vec<u8>,
    /// The writer is parked on `wake_writer` (so appenders must notify).
    writer_parked: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake_writer: Condvar,
    space: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where log lines go: cheap to clone, appends whole lines.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

/// Keeps the writer thread; dropping it writes out what is queued and
/// stops the thread. Keep it alive until exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogSink {
    /// A sink whose writer thread writes to `out`.
    pub fn new(out: impl Write + Send + 'static) -> (LogSink, LogGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(64 * 1024),
                writer_parked: false,
                closed: false,
            }),
            wake_writer: Condvar::new(),
            space: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(&writer, out))
            .ok();
        if thread.is_none() {
            // No thread: nothing would ever drain the buffer. Appends are
            // then dropped rather than blocking forever.
            shared.lock().closed = true;
        }
        (
            LogSink {
                shared: Arc::clone(&shared),
            },
            LogGuard { shared, thread },
        )
    }

    /// Queues `bytes` (whole lines) for the writer.
    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING && !state.closed {
            state = self
                .shared
                .space
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return;
        }
        state.pending.extend_from_slice(bytes);
        if state.writer_parked {
            state.writer_parked = false;
            drop(state);
            self.shared.wake_writer.notify_one();
        }
    }
}

fn write_loop(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.closed {
                state.writer_parked = true;
                state = shared
                    .wake_writer
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.pending.is_empty() {
                return; // closed and drained
            }
            std::mem::swap(&mut state.pending, &mut batch);
            shared.space.notify_all();
        }
        // A failed write (stdout closed) loses these lines but must not
        // stop the draining, or appenders would block forever.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 2 * MAX_PENDING {
            batch.shrink_to(64 * 1024);
        }
        std::thread::sleep(GATHER);
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_one();
        self.shared.space.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tracing_subscriber::fmt` writes each formatted event with one
/// `write_all`: one line, appended whole.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self)
    }
}

/// The writer [`LogSink`] hands to `tracing_subscriber::fmt`.
pub struct SinkWriter<'a>(&'a LogSink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ----- set-up -------------------------------------------------------------

/// Installs the global subscriber: the `level` filter (`RUST_LOG` wins),
/// `tracing_subscriber::fmt` for every event but the access log, and
/// [`AccessLayer`] for the access log, both into one sink on stdout.
pub fn init(format: LogFormat, level: &str) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (sink, guard) = LogSink::new(std::io::stdout());
    let not_access = tracing_subscriber::filter::filter_fn(|m| m.target() != ACCESS_TARGET);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(sink.clone());
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_filter(not_access)
            .boxed(),
        LogFormat::Plain => fmt.with_filter(not_access).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(AccessLayer::new(format, sink))
        .init();
    guard
}

// ----- the access line ----------------------------------------------------

/// Formats [`ACCESS_TARGET`] events as `tracing_subscriber::fmt` would
/// (`<time>  INFO feishu_gateway::access: request a="x" n=1 …`, or one
/// flattened JSON object), without its per-field dynamic formatting.
#[derive(Debug)]
pub struct AccessLayer {
    format: LogFormat,
    sink: LogSink,
}

impl AccessLayer {
    /// Access lines in `format`, into `sink`.
    pub fn new(format: LogFormat, sink: LogSink) -> Self {
        AccessLayer { format, sink }
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET {
            return;
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            format_line(&mut line, self.format, SystemTime::now(), event);
            self.sink.append(&line);
        });
    }
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

impl<'a> Line<'a> {
    /// Writes what comes before the fields: the time, the level and (plain)
    /// the target.
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
    fn finish(self, target: &str) {
        if self.format == LogFormat::Json {
            self.buf.extend_from_slice(b",\"target\":");
            push_json_str(self.buf, target);
            self.buf.push(b'}');
        }
        self.buf.push(b'\n');
    }

    /// Starts a field. Plain: `name=` (the message has no name),
    /// space-separated; JSON: `,"name":`.
    fn name(&mut self, name: &str) {
        match self.format {
            LogFormat::Plain => {
                if !std::mem::take(&mut self.first) {
                    self.buf.push(b' ');
                }
                if name != "message" {
                    self.buf.extend_from_slice(name.as_bytes());
                    self.buf.push(b'=');
                }
            }
            LogFormat::Json => {
                self.buf.push(b',');
                push_json_str(self.buf, name);
                self.buf.push(b':');
            }
        }
    }

    /// A string field. Plain: quoted and escaped as `{:?}` does (but the
    /// message, as is); JSON: a string.
    fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        match self.format {
            LogFormat::Plain if name == "message" => self.buf.extend_from_slice(value.as_bytes()),
            LogFormat::Plain => push_debug_str(self.buf, value),
            LogFormat::Json => push_json_str(self.buf, value),
        }
    }

    /// A number field: digits in both formats.
    fn u64(&mut self, name: &str, value: u64) {
        self.name(name);
        push_u64(self.buf, value);
    }

    fn i64(&mut self, name: &str, value: i64) {
        self.name(name);
        push_i64(self.buf, value);
    }

    /// A field whose `Debug` output is `text` (as for `%display` fields and
    /// the message): as is in plain, a string in JSON.
    fn shown(&mut self, name: &str, text: &str) {
        self.name(name);
        match self.format {
            LogFormat::Plain => self.buf.extend_from_slice(text.as_bytes()),
            LogFormat::Json => push_json_str(self.buf, text),
        }
    }

    /// A field written with its `Debug` (`%display` fields and the message
    /// come this way from tracing): as [`Line::shown`].
    fn debug(&mut self, name: &str, value: &dyn fmt::Debug) {
        match self.format {
            LogFormat::Plain => {
                self.name(name);
                let _ = write!(self.buf, "{value:?}");
            }
            LogFormat::Json => {
                let mut s = StackStr::default();
                match fmt::Write::write_fmt(&mut s, format_args!("{value:?}")) {
                    Ok(()) => self.shown(name, s.as_str()),
                    // Longer than the stack buffer.
                    Err(_) => self.shown(name, &format!("{value:?}")),
                }
            }
        }
    }
}

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.str(field.name(), value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.u64(field.name(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.i64(field.name(), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        // `true` / `false` in both formats (plain: its `Debug`; JSON: a
        // boolean).
        self.name(field.name());
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
