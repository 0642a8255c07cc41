//! The access line: one per request, from an [`AccessRecord`] of typed
//! values, written by [`access`] straight into the [`AccessLayer`]'s sink
//! when it can, else as the tracing event it stands for.

use std::cell::RefCell;
use std::fmt;
use std::time::SystemTime;

use tracing::field::FieldSet;
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_core::callsite::DefaultCallsite;
use tracing_core::metadata::Kind;
use tracing_subscriber::layer::{Context, Layer};

use super::format::{format_line, key, Line};
use super::{LogFormat, LogSink};

/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "feishu_gateway::access";

/// Writes access lines as `tracing_subscriber::fmt` would
/// (`<time>  INFO feishu_gateway::access: request a="x" n=1 …`, or one
/// flattened JSON object), without its per-field dynamic formatting: the
/// [`ACCESS_TARGET`] events it is given, and the records [`access`] hands
/// it directly. So a subscriber with an `AccessLayer` has the access log
/// there alone: its other layers do not see the records (in
/// [`init`](super::init)'s, fmt leaves the access target to this layer
/// anyway).
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
    pub(super) fn write(&self, record: &AccessRecord<'_>) {
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
    /// Which of the client's keys it used: the first 8 hex digits of the
    /// key's SHA-256, never the key (`-`).
    pub key: Option<&'a str>,
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
    /// The W3C trace id (32 hex digits) when the request is part of a
    /// trace (`[tracing]`); without one the field is left out, so lines
    /// without tracing are as before.
    pub trace_id: Option<&'a str>,
}

impl AccessRecord<'_> {
    /// Writes the fields, in the order and with the value types of the
    /// event of [`AccessRecord::emit`]: the same line, byte for byte.
    pub(super) fn record(&self, line: &mut Line<'_>) {
        let (mut code, mut replayed_after) = (itoa::Buffer::new(), itoa::Buffer::new());
        line.message("request");
        line.str(key!("request_id"), self.request_id.unwrap_or("-"));
        line.str(key!("client"), self.client.unwrap_or("-"));
        line.str(key!("key"), self.key.unwrap_or("-"));
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
        if let Some(id) = self.trace_id {
            line.str(key!("trace_id"), id);
        }
    }

    /// The record as a tracing event (the slow way; see [`access`]).
    pub(super) fn emit(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.request_id.unwrap_or("-"),
            client = self.client.unwrap_or("-"),
            key = self.key.unwrap_or("-"),
            app = self.app.unwrap_or("-"),
            route = self.route.unwrap_or("other"),
            status = self.status,
            code = %NumberOr(self.code, "none"),
            total_us = self.total_us,
            upstream_us = self.upstream_us,
            logid = self.logid.unwrap_or("-"),
            gateway_error = self.gateway_error.unwrap_or("-"),
            replayed_after = %NumberOr(self.replayed_after, "-"),
            // An absent Option records nothing: the field is left out.
            trace_id = self.trace_id,
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

pub(super) static ACCESS_META: Metadata<'static> = Metadata::new(
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
            "key",
            "app",
            "route",
            "status",
            "code",
            "total_us",
            "upstream_us",
            "logid",
            "gateway_error",
            "replayed_after",
            "trace_id",
        ],
        tracing_core::identify_callsite!(&ACCESS_CALLSITE),
    ),
    Kind::EVENT,
);

/// Writes `record`'s line (the access line's fields, as typed values).
pub(super) fn format_record(
    buf: &mut Vec<u8>,
    format: LogFormat,
    now: SystemTime,
    record: &AccessRecord<'_>,
) {
    let mut line = Line::start(buf, format, now, &Level::INFO, ACCESS_TARGET);
    record.record(&mut line);
    line.finish(ACCESS_TARGET);
}

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
