//! Turning an access record or a tracing event into one line of plain or
//! JSON bytes, as `tracing_subscriber::fmt` writes it.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level};

use super::escape::{push_debug_str, push_json_str};
use super::LogFormat;

/// A field's name, as a [`Line`] writes it before the value.
#[derive(Clone, Copy)]
pub(super) enum Name<'n> {
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
        $crate::observe::logging::format::Name::Known {
            plain: concat!(" ", $name, "="),
            json: concat!(",\"", $name, "\":"),
        }
    };
}
pub(super) use key;

/// Writes `event`'s line (its fields, as tracing hands them over).
pub(super) fn format_line(
    buf: &mut Vec<u8>,
    format: LogFormat,
    now: SystemTime,
    event: &Event<'_>,
) {
    let meta = event.metadata();
    let mut line = Line::start(buf, format, now, meta.level(), meta.target());
    event.record(&mut line);
    line.finish(meta.target());
}

/// One line being written, in either format. Every value is written
/// through it, whether it comes from a tracing event (as a [`Visit`]or)
/// or from a typed record, so the same values give the same bytes.
pub(super) struct Line<'a> {
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
    pub(super) fn start(
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
    pub(super) fn finish(self, target: &str) {
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
    pub(super) fn message(&mut self, text: &str) {
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
    pub(super) fn str(&mut self, name: Name<'_>, value: &str) {
        self.name(name);
        match self.format {
            LogFormat::Plain => push_debug_str(self.buf, value),
            LogFormat::Json => push_json_str(self.buf, value),
        }
    }

    /// A number field: digits in both formats.
    #[inline(always)]
    pub(super) fn u64(&mut self, name: Name<'_>, value: u64) {
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
    pub(super) fn shown(&mut self, name: Name<'_>, text: &str) {
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

/// A number's digits (as `Display` writes them, in both formats).
pub(super) fn push_u64(line: &mut Vec<u8>, v: u64) {
    line.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub(super) fn push_i64(line: &mut Vec<u8>, v: i64) {
    line.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// `2026-11-24T10:11:12.123456Z` (UTC, microseconds): tracing fmt's format.
pub(super) fn push_timestamp(line: &mut Vec<u8>, now: SystemTime) {
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
pub(super) fn civil(secs: u64) -> [u8; 19] {
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
mod tests {
    use super::civil;

    fn civil_str(secs: u64) -> String {
        String::from_utf8(civil(secs).to_vec()).unwrap()
    }

    #[test]
    fn civil_known_dates() {
        for (secs, want) in [
            (68_169_599, "1972-02-28T23:59:59"),
            (68_169_600, "1972-02-29T00:00:00"),
            (68_256_000, "1972-03-01T00:00:00"),
            (946_684_799, "1999-12-31T23:59:59"),
            (946_684_800, "2000-01-01T00:00:00"),
            (951_868_800, "2000-03-01T00:00:00"),
            (1_709_210_096, "2024-02-29T12:34:56"),
            // 2100 is not a leap year: February has 28 days.
            (4_107_542_399, "2100-02-28T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
            (13_574_563_200, "2400-02-29T00:00:00"),
            (253_402_300_799, "9999-12-31T23:59:59"),
        ] {
            assert_eq!(civil_str(secs), want, "{secs}");
        }
    }

    #[test]
    fn civil_counts_every_day_as_a_calendar_does() {
        // Day by day from 1970 into 2400 (past the leap days that 2100
        // lacks and 2400 has), against the Gregorian rules
        // written out plainly, at the day's first and last second.
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let (mut year, mut month, mut day) = (1970, 1, 1);
        for days in 0..157_200u64 {
            let date = format!("{year:04}-{month:02}-{day:02}");
            assert_eq!(civil_str(days * 86_400), format!("{date}T00:00:00"));
            assert_eq!(
                civil_str(days * 86_400 + 86_399),
                format!("{date}T23:59:59")
            );
            let length = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > length {
                (month, day) = (month + 1, 1);
            }
            if month > 12 {
                (year, month) = (year + 1, 1);
            }
        }
        assert_eq!((year, month), (2400, 5));
    }
}
