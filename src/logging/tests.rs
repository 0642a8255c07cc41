use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

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

/// What `tracing_subscriber::fmt` writes for the event, and what
/// [`AccessLayer`] writes, in `format`.
fn both(format: LogFormat, request_id: &str) -> (String, String) {
    let reference = Captured::default();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(reference.clone());
    let fmt = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Plain => fmt.boxed(),
    };
    tracing::subscriber::with_default(tracing_subscriber::registry().with(fmt), || {
        emit(request_id)
    });

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
