use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

use super::access::format_record;
use super::access::ACCESS_META;
use super::escape::{push_debug_str, push_json_str};
use super::format::{civil, format_line, push_i64, push_timestamp, push_u64};
use super::*;

/// A writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// An access event shaped like the proxy's, with awkward values.
fn emit(request_id: &str) {
    #[derive(Clone, Copy)]
    struct Code(i64);
    impl fmt::Display for Code {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)
        }
    }
    tracing::info!(
        target: "feishu_gateway::access",
        request_id,
        client = "ops-bot",
        app = "app.1",
        route = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice",
        status = 200u16,
        code = %Code(-232011),
        total_us = 1234u64,
        upstream_us = 0u64,
        negative = -7i64,
        logid = "-",
        "request"
    );
}

/// `tracing_subscriber::fmt` alone (no [`AccessLayer`]), in `format`.
fn fmt_layer(
    format: LogFormat,
    out: Captured,
) -> Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(out);
    match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Plain => fmt.boxed(),
    }
}

/// What `tracing_subscriber::fmt` writes for the event, and what
/// [`AccessLayer`] writes, in `format`.
fn both(format: LogFormat, request_id: &str) -> (String, String) {
    let reference = Captured::default();
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(fmt_layer(format, reference.clone())),
        || emit(request_id),
    );

    let out = Captured::default();
    let (sink, guard) = LogSink::new(out.clone());
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(AccessLayer::new(format, sink)),
        || emit(request_id),
    );
    drop(guard);
    (reference.text(), out.text())
}

/// Drops the leading timestamp of a plain line.
fn without_time(line: &str) -> &str {
    line.split_once(' ').expect("timestamp").1
}

#[test]
fn plain_line_is_what_fmt_writes() {
    for id in ["req-1", "with \"quotes\" and \\ and\ttab", "ünïcode"] {
        let (reference, ours) = both(LogFormat::Plain, id);
        assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
        assert_eq!(without_time(&ours), without_time(&reference), "{id}");
        let ts = ours.split(' ').next().unwrap();
        assert_eq!(ts.len(), "2026-11-24T10:11:12.123456Z".len(), "{ts}");
    }
}

#[test]
fn json_line_is_what_fmt_writes() {
    for id in ["req-1", "with \"quotes\" and \\ and\ttab\u{1}", "ünïcode"] {
        let (reference, ours) = both(LogFormat::Json, id);
        let mut r: serde_json::Value = serde_json::from_str(&reference).unwrap();
        let mut o: serde_json::Value = serde_json::from_str(&ours).expect(&ours);
        let (rt, ot) = (r["timestamp"].take(), o["timestamp"].take());
        assert_eq!(o, r, "{id}");
        assert_eq!(rt.as_str().unwrap().len(), ot.as_str().unwrap().len());
        // Same outline as fmt's: timestamp first, target last.
        assert!(ours.starts_with("{\"timestamp\":\""), "{ours}");
        assert!(ours
            .trim_end()
            .ends_with(",\"target\":\"feishu_gateway::access\"}"));
    }
}

#[test]
fn other_targets_are_not_written() {
    let out = Captured::default();
    let (sink, guard) = LogSink::new(out.clone());
    tracing::subscriber::with_default(
        tracing_subscriber::registry().with(AccessLayer::new(LogFormat::Plain, sink)),
        || tracing::info!(target: "feishu_gateway::proxy", "not an access line"),
    );
    drop(guard);
    assert_eq!(out.text(), "");
}

#[test]
fn civil_dates() {
    for (secs, want) in [
        (0, "1970-01-01T00:00:00"),
        (951_782_400, "2000-02-29T00:00:00"),
        (1_700_000_000, "2023-11-14T22:13:20"),
        (1_795_392_000, "2026-11-23T00:00:00"),
        (4_102_444_799, "2099-12-31T23:59:59"),
    ] {
        assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want);
    }
    let mut line = Vec::new();
    push_timestamp(
        &mut line,
        UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042),
    );
    assert_eq!(line, b"2023-11-14T22:13:20.000042Z");
}

#[test]
fn every_line_arrives_whole_from_many_threads() {
    let out = Captured::default();
    let (sink, guard) = LogSink::new(out.clone());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    sink.append(format!("thread {t} line {i:05}\n").as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(guard); // flushes what is queued
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8000);
    for t in 0..4 {
        let mine: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(&format!("thread {t} ")))
            .collect();
        assert_eq!(mine.len(), 2000);
        // In order per thread, none torn.
        for (i, l) in mine.iter().enumerate() {
            assert_eq!(*l, format!("thread {t} line {i:05}"));
        }
    }
}

/// A writer that takes its time.
struct Slow(Captured);

impl Write for Slow {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_slow_writer_holds_appenders_back_and_loses_nothing() {
    let out = Captured::default();
    let (sink, guard) = LogSink::new(Slow(out.clone()));
    let line = vec![b'x'; 64 * 1024 - 1];
    let mut line = line;
    line.push(b'\n');
    // Far more than MAX_PENDING: appenders must wait for the writer.
    let n = 3 * MAX_PENDING / line.len();
    for _ in 0..n {
        sink.append(&line);
        let pending = sink.shared.lock().pending.len();
        assert!(pending <= MAX_PENDING + line.len(), "{pending}");
    }
    drop(guard);
    assert_eq!(out.0.lock().unwrap().len(), n * line.len());
}

#[test]
fn a_failing_writer_does_not_block_appenders() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (sink, guard) = LogSink::new(Broken);
    let line = vec![b'y'; 1024 * 1024];
    for _ in 0..(4 * MAX_PENDING / line.len()) {
        sink.append(&line);
    }
    drop(guard);
}

// ----- the direct way -------------------------------------------------------

const FORMATS: [LogFormat; 2] = [LogFormat::Plain, LogFormat::Json];

/// Text that `Debug` and JSON both escape, or that looks like syntax.
const ODD: &[&str] = &[
    "",
    "-",
    "none",
    "with \"quotes\" and \\ and\ttab",
    "ctl \u{1}\u{8}\u{c}\r\n\u{1b}[31m red\u{7f}",
    "ünïcode e\u{301} \u{200b}\u{feff} 😀 中文",
    "a=b c=\"d\" {\"json\":[1]}",
];

/// Access records with every kind of value: the usual ones, the absent
/// ones, extreme numbers, and each odd text in each text field.
fn records() -> Vec<AccessRecord<'static>> {
    let usual = AccessRecord {
        request_id: Some("0b5a0c1e-6f3c-4c1b-9f55-7d1f7ef0e1a2"),
        client: Some("billing"),
        key: Some("3f2a9c1d"),
        app: Some("ops-bot"),
        route: Some("/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice"),
        status: 200,
        code: Some(0),
        total_us: 1234,
        upstream_us: 1000,
        logid: Some("2026112410111200000000000000000000"),
        gateway_error: None,
        replayed_after: None,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
    };
    let absent = AccessRecord {
        request_id: None,
        client: None,
        key: None,
        app: None,
        route: None,
        status: 401,
        code: None,
        total_us: 0,
        upstream_us: 0,
        logid: None,
        gateway_error: Some("unauthorized"),
        replayed_after: None,
        trace_id: None,
    };
    let mut all = vec![
        usual,
        absent,
        AccessRecord {
            status: u16::MAX,
            code: Some(i64::MIN),
            total_us: u64::MAX,
            upstream_us: u64::MAX,
            replayed_after: Some(99991663),
            ..usual
        },
        AccessRecord {
            status: 0,
            code: Some(-1),
            replayed_after: Some(i64::MAX),
            ..usual
        },
    ];
    for &odd in ODD {
        all.push(AccessRecord {
            request_id: Some(odd),
            client: Some(odd),
            key: Some(odd),
            trace_id: Some(odd),
            ..usual
        });
        all.push(AccessRecord {
            app: Some(odd),
            route: Some(odd),
            logid: Some(odd),
            gateway_error: Some(odd),
            ..absent
        });
    }
    all
}

fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042)
}

/// Formats access events as [`AccessLayer`] does, but at [`fixed_now`].
struct AtFixedTime(LogFormat, Captured);

impl<S: Subscriber> Layer<S> for AtFixedTime {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Vec::new();
        format_line(&mut line, self.0, fixed_now(), event);
        self.1 .0.lock().unwrap().extend_from_slice(&line);
    }
}

#[test]
fn the_direct_line_is_the_event_line_byte_for_byte() {
    for format in FORMATS {
        for record in records() {
            let event_line = Captured::default();
            tracing::subscriber::with_default(
                tracing_subscriber::registry().with(AtFixedTime(format, event_line.clone())),
                || record.emit(),
            );
            let mut direct = Vec::new();
            format_record(&mut direct, format, fixed_now(), &record);
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                event_line.text(),
                "{format:?} {record:?}"
            );
        }
    }
}

/// A JSON line without its timestamp (which comes first, 27 characters).
fn without_json_time(line: &str) -> &str {
    let head = "{\"timestamp\":\"";
    assert!(line.starts_with(head), "{line}");
    &line[head.len() + "2026-11-24T10:11:12.123456Z".len()..]
}

#[test]
fn the_direct_line_is_what_fmt_writes() {
    for format in FORMATS {
        for record in records() {
            let reference = Captured::default();
            tracing::subscriber::with_default(
                tracing_subscriber::registry().with(fmt_layer(format, reference.clone())),
                || record.emit(),
            );
            let out = Captured::default();
            let (sink, guard) = LogSink::new(out.clone());
            AccessLayer::new(format, sink).write(&record);
            drop(guard);
            let (reference, ours) = (reference.text(), out.text());
            assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
            match format {
                LogFormat::Plain => assert_eq!(without_time(&ours), without_time(&reference)),
                LogFormat::Json => {
                    let parse = |l: &str| -> serde_json::Value { serde_json::from_str(l).unwrap() };
                    let (mut r, mut o) = (parse(&reference), parse(&ours));
                    r["timestamp"].take();
                    o["timestamp"].take();
                    assert_eq!(o, r, "{record:?}");
                    // Byte for byte too, but where serde_json writes the
                    // shorter `\b` and `\f` for our `\u0008` and `\u000c`
                    // (the same JSON string).
                    if !ours.contains("\\u0008") && !ours.contains("\\u000c") {
                        assert_eq!(without_json_time(&ours), without_json_time(&reference));
                    }
                }
            }
        }
    }
}

#[test]
fn the_access_callsite_has_the_events_metadata() {
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Option<&'static Metadata<'static>>>>);
    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            *self.0.lock().unwrap() = Some(event.metadata());
        }
    }
    let seen = Seen::default();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(seen.clone()), || {
        records()[0].emit()
    });
    let event = seen.0.lock().unwrap().expect("the event");
    let names = |m: &Metadata<'_>| m.fields().iter().map(|f| f.name()).collect::<Vec<_>>();
    // What filters decide on: a filter cannot tell the two apart.
    assert_eq!(names(&ACCESS_META), names(event));
    assert_eq!(ACCESS_META.target(), event.target());
    assert_eq!(ACCESS_META.level(), event.level());
    assert!(ACCESS_META.is_event() && event.is_event());
}

/// What the gateway's subscriber, with `filter`, writes while `f` runs.
fn under_subscriber(format: LogFormat, filter: &str, f: impl FnOnce()) -> String {
    let out = Captured::default();
    let (sink, guard) = LogSink::new(out.clone());
    let filter = tracing_subscriber::EnvFilter::new(filter);
    tracing::subscriber::with_default(subscriber(format, filter, false, sink), f);
    drop(guard);
    out.text()
}

/// The record's line as the direct way writes it now.
fn direct_line(format: LogFormat, record: &AccessRecord<'_>) -> String {
    let mut line = Vec::new();
    format_record(&mut line, format, SystemTime::now(), record);
    String::from_utf8(line).unwrap()
}

/// Drops the timestamp of a line in `format`.
fn untimed(format: LogFormat, line: &str) -> &str {
    match format {
        LogFormat::Plain => without_time(line),
        LogFormat::Json => without_json_time(line),
    }
}

#[test]
fn access_follows_the_filter() {
    let record = records()[0];
    for format in FORMATS {
        let want = direct_line(format, &record);
        for (filter, on) in [
            ("info", true),
            ("debug", true),
            ("warn,feishu_gateway::access=info", true),
            ("warn", false),
            ("off", false),
            ("info,feishu_gateway::access=off", false),
            ("info,feishu_gateway::access=warn", false),
            ("info,feishu_gateway=warn", false),
        ] {
            let text = under_subscriber(format, filter, || access(|| record));
            if on {
                assert_eq!(text.lines().count(), 1, "{filter}: {text}");
                assert_eq!(untimed(format, &text), untimed(format, &want), "{filter}");
            } else {
                assert_eq!(text, "", "{filter}");
            }
        }
    }
}

#[test]
fn the_gateways_subscriber_writes_other_events_with_fmt_and_access_events_once() {
    for format in FORMATS {
        let other =
            || tracing::warn!(target: "feishu_gateway::proxy", answer = 42, "not an access line");
        let reference = Captured::default();
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(fmt_layer(format, reference.clone())),
            other,
        );
        let text = under_subscriber(format, "info", other);
        assert_eq!(untimed(format, &text), untimed(format, &reference.text()));

        // An access event from elsewhere: AccessLayer writes it, fmt not.
        let text = under_subscriber(format, "info", || emit("req-1"));
        assert_eq!(text.lines().count(), 1, "{text}");
        let (_, ours) = both(format, "req-1");
        assert_eq!(untimed(format, &text), untimed(format, &ours));
    }
}

#[test]
fn without_an_access_layer_the_line_goes_out_as_an_event() {
    // Library use without `init`: a subscriber of one's own still gets
    // the line, written by fmt as it writes any event.
    let record = records()[0];
    for format in FORMATS {
        let out = Captured::default();
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(fmt_layer(format, out.clone())),
            || access(|| record),
        );
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        let want = direct_line(format, &record);
        match format {
            LogFormat::Plain => assert_eq!(without_time(&text), without_time(&want)),
            LogFormat::Json => assert_eq!(without_json_time(&text), without_json_time(&want)),
        }
    }
}

#[test]
fn values_are_escaped_as_debug_and_serde_json_do() {
    // Every ASCII character and a few others, at every offset of a 24-byte
    // string, so each lands in every lane of the 8-byte scans and in the
    // tail after them.
    let specials = (0u8..0x80)
        .map(char::from)
        .chain(['\u{80}', 'é', '\u{301}', '\u{200b}', '\u{feff}', '😀', '中']);
    for c in specials {
        for at in 0..24 {
            let mut s: String = "abcdefghijklmnopqrstuvwx".chars().take(at).collect();
            s.push(c);
            s.extend("ABCDEFGHIJKLMNOPQRSTUVWX".chars().take(23 - at));
            let mut line = Vec::new();
            push_debug_str(&mut line, &s);
            assert_eq!(
                String::from_utf8(line).unwrap(),
                format!("{s:?}"),
                "{c:?} at {at}"
            );
            let mut line = Vec::new();
            push_json_str(&mut line, &s);
            let ours = String::from_utf8(line).unwrap();
            assert_eq!(serde_json::from_str::<String>(&ours).unwrap(), s, "{ours}");
            // serde_json writes `\b` and `\f` for what we write `\u0008`
            // and `\u000c` (no backslash in `s` is followed by b or f).
            let theirs = serde_json::to_string(&s).unwrap();
            let theirs = theirs.replace("\\b", "\\u0008").replace("\\f", "\\u000c");
            assert_eq!(ours, theirs, "{c:?} at {at}");
        }
    }
    for n in [0, 1, -1, i64::MAX, i64::MIN] {
        let mut line = Vec::new();
        push_i64(&mut line, n);
        assert_eq!(line, n.to_string().as_bytes());
    }
    let mut line = Vec::new();
    push_u64(&mut line, u64::MAX);
    assert_eq!(line, u64::MAX.to_string().as_bytes());
}
