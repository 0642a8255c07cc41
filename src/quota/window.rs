//! One rate-limit window, "N requests per W", as written in the catalog and
//! in config: `"50/1s"`, `"1000/60s"`, `"20/10s"`, `"5/500ms"`, `"100/1h"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The shortest window accepted: 1 ms.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// The longest window accepted: 24 h (keeps every planner computation
/// comfortably inside `u64` nanoseconds).
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// "At most `limit` requests within any interval of length `period`."
///
/// Built by parsing `"<requests>/<duration>"` or by [`Window::new`]; both
/// guarantee `limit >= 1` and `MIN_PERIOD <= period <= MAX_PERIOD`, which the
/// planner relies on. Equality ignores how the period was spelled (`60s` and
/// `1m` are the same window); [`Display`](fmt::Display) keeps the spelling.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    limit: u32,
    period: Duration,
    unit: Unit,
}

/// How the period is written back out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Millis,
    Secs,
    Mins,
    Hours,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Millis => "ms",
            Unit::Secs => "s",
            Unit::Mins => "m",
            Unit::Hours => "h",
        }
    }

    fn millis(self) -> u64 {
        match self {
            Unit::Millis => 1,
            Unit::Secs => 1_000,
            Unit::Mins => 60_000,
            Unit::Hours => 3_600_000,
        }
    }
}

/// Why a window could not be built; the message names the offending part and
/// shows the expected form, so a config checker can print it after the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not of the form `<requests>/<duration>`.
    #[error("expected \"<requests>/<duration>\" such as \"50/1s\" or \"1000/60s\", got {0:?}")]
    Syntax(String),
    /// The request count is not a whole number from 1 to 4294967295.
    #[error("request count {0:?} must be a whole number from 1 to 4294967295")]
    Limit(String),
    /// The duration is not a whole number followed by `ms`, `s`, `m` or `h`.
    #[error("duration {0:?} must be a whole number followed by a unit: ms, s, m or h (for example \"500ms\", \"1s\", \"60s\", \"1h\")")]
    Duration(String),
    /// The duration is outside 1ms ..= 24h.
    #[error("duration {0:?} must be between 1ms and 24h")]
    DurationRange(String),
}

impl Window {
    /// A window of `limit` requests per `period`. The period must be a whole
    /// number of milliseconds within [`MIN_PERIOD`]..=[`MAX_PERIOD`]; it is
    /// displayed in seconds when whole, else in milliseconds.
    pub fn new(limit: u32, period: Duration) -> Result<Self, WindowError> {
        let shown = || format!("{}ms", period.as_millis());
        if limit == 0 {
            return Err(WindowError::Limit("0".into()));
        }
        if !period.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(WindowError::Duration(format!("{period:?}")));
        }
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(WindowError::DurationRange(shown()));
        }
        let unit = if period.subsec_millis() == 0 {
            Unit::Secs
        } else {
            Unit::Millis
        };
        Ok(Self {
            limit,
            period,
            unit,
        })
    }

    /// N: the most requests allowed within any interval of [`period`](Self::period).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// W: the length of the sliding interval.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The long-run rate this window allows, in requests per second (N / W).
    pub fn rate_per_sec(&self) -> f64 {
        f64::from(self.limit) / self.period.as_secs_f64()
    }
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.limit == other.limit && self.period == other.period
    }
}

impl Eq for Window {}

impl std::hash::Hash for Window {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.limit.hash(state);
        self.period.hash(state);
    }
}

impl fmt::Display for Window {
    /// `"<requests>/<duration>"` in the unit it was written with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amount = self.period.as_millis() as u64 / self.unit.millis();
        write!(f, "{}/{}{}", self.limit, amount, self.unit.suffix())
    }
}

impl FromStr for Window {
    type Err = WindowError;

    /// Parses `"<requests>/<duration>"`: `50/1s`, `1000/60s`, `5/500ms`,
    /// `100/1m`, `5000/1h`. Whitespace around either part is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, duration) = s
            .split_once('/')
            .ok_or_else(|| WindowError::Syntax(s.into()))?;
        let (count, duration) = (count.trim(), duration.trim());
        if count.is_empty() || duration.is_empty() || duration.contains('/') {
            return Err(WindowError::Syntax(s.into()));
        }
        let limit = parse_digits(count)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| WindowError::Limit(count.into()))?;

        let split = duration
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| WindowError::Duration(duration.into()))?;
        let (amount, suffix) = duration.split_at(split);
        let unit = match suffix {
            "ms" => Unit::Millis,
            "s" => Unit::Secs,
            "m" => Unit::Mins,
            "h" => Unit::Hours,
            _ => return Err(WindowError::Duration(duration.into())),
        };
        let amount = parse_digits(amount).ok_or_else(|| WindowError::Duration(duration.into()))?;
        let millis = amount
            .checked_mul(unit.millis())
            .ok_or_else(|| WindowError::DurationRange(duration.into()))?;
        let period = Duration::from_millis(millis);
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(WindowError::DurationRange(duration.into()));
        }
        Ok(Self {
            limit,
            period,
            unit,
        })
    }
}

/// A non-empty run of ASCII digits as `u64` (no sign, no separators).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_unit() {
        assert_eq!(w("50/1s"), Window::new(50, Duration::from_secs(1)).unwrap());
        assert_eq!(w("1000/60s").period(), Duration::from_secs(60));
        assert_eq!(w("5/500ms").period(), Duration::from_millis(500));
        assert_eq!(w("100/1m"), w("100/60s"));
        assert_eq!(w("5000/1h").period(), Duration::from_secs(3600));
        assert_eq!(w(" 20 / 10s ").limit(), 20);
    }

    #[test]
    fn displays_in_the_spelling_it_was_given() {
        for s in [
            "50/1s", "1000/60s", "20/10s", "5/500ms", "100/1m", "5000/1h", "7/24h",
        ] {
            assert_eq!(w(s).to_string(), s);
        }
        let built = Window::new(3, Duration::from_millis(1500)).unwrap();
        assert_eq!(built.to_string(), "3/1500ms");
        assert_eq!(w(&built.to_string()), built);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<Window>().unwrap_err().to_string();
        assert_eq!(
            err("50"),
            r#"expected "<requests>/<duration>" such as "50/1s" or "1000/60s", got "50""#
        );
        assert!(err("1/2/3s").starts_with("expected"));
        assert!(err("/1s").starts_with("expected"));
        assert_eq!(
            err("0/1s"),
            r#"request count "0" must be a whole number from 1 to 4294967295"#
        );
        assert!(err("-5/1s").starts_with(r#"request count "-5""#));
        assert!(err("99999999999/1s").starts_with("request count"));
        assert!(
            err("50/10").starts_with(r#"duration "10" must be a whole number followed by a unit"#)
        );
        assert!(err("50/1.5s").starts_with(r#"duration "1.5s""#));
        assert!(err("50/1sec").starts_with(r#"duration "1sec""#));
        assert!(err("50/s").starts_with(r#"duration "s""#));
        assert_eq!(err("50/0s"), r#"duration "0s" must be between 1ms and 24h"#);
        assert_eq!(
            err("50/25h"),
            r#"duration "25h" must be between 1ms and 24h"#
        );
        assert!(err("50/99999999999999999h").contains("between 1ms and 24h"));
    }

    #[test]
    fn new_validates() {
        assert!(Window::new(0, Duration::from_secs(1)).is_err());
        assert!(Window::new(1, Duration::ZERO).is_err());
        assert!(Window::new(1, Duration::from_micros(1500)).is_err());
        assert!(Window::new(1, Duration::from_secs(86_401)).is_err());
        assert!((w("1000/60s").rate_per_sec() - 16.666).abs() < 0.001);
    }
}
