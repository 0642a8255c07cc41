//! Feishu's budget month: a calendar month in Asia/Shanghai (UTC+8 all
//! year: China has had no daylight saving time since 1991), so a month
//! starts at 16:00 UTC on the last day of the month before. Computed with
//! plain civil-date arithmetic (Howard Hinnant's `days_from_civil` /
//! `civil_from_days`), no time zone database.

use std::fmt;

/// Asia/Shanghai's offset from UTC, in seconds.
pub const SHANGHAI_OFFSET_SECS: i64 = 8 * 3600;

const DAY: i64 = 86_400;

/// A calendar month in Asia/Shanghai.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    /// 1 to 12.
    month: u8,
}

impl Month {
    /// `year`-`month`, if `month` is 1 to 12.
    pub fn new(year: i32, month: u8) -> Option<Month> {
        (1..=12).contains(&month).then_some(Month { year, month })
    }

    /// The month that contains `unix` (seconds since 1970-01-01T00:00:00Z)
    /// in Asia/Shanghai.
    pub fn containing(unix: i64) -> Month {
        let days = (unix + SHANGHAI_OFFSET_SECS).div_euclid(DAY);
        let (year, month, _) = civil_from_days(days);
        Month { year, month }
    }

    /// The month that contains the system clock's now.
    pub fn now() -> Month {
        Month::containing(unix_now())
    }

    /// Its first second, 00:00:00 on the 1st in Asia/Shanghai, as Unix
    /// seconds.
    pub fn start_unix(self) -> i64 {
        days_from_civil(self.year, self.month, 1) * DAY - SHANGHAI_OFFSET_SECS
    }

    /// The month after it.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// When it ends (the next month's first second), as Unix seconds.
    pub fn end_unix(self) -> i64 {
        self.next().start_unix()
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.year
    }

    /// The month of the year, 1 to 12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// Parses `YYYY-MM`, as [`Display`](fmt::Display) writes it.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        Month::new(y.parse().ok()?, m.parse().ok()?)
    }
}

/// `YYYY-MM`, e.g. `2026-12`: the month's part of the Redis key.
impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The system clock as Unix seconds (0 before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`.
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of `days` since
/// 1970-01-01.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn month(y: i32, m: u8) -> Month {
        Month::new(y, m).expect("a month")
    }

    /// Unix seconds of a UTC date and time (checked against `date -u -d`).
    const NOV_30_2026_1600Z: i64 = 1_796_054_400;
    const DEC_31_2026_1600Z: i64 = 1_798_732_800;
    const FEB_28_2028_1600Z: i64 = 1_835_366_400;
    const FEB_29_2028_1600Z: i64 = 1_835_452_800;

    #[test]
    fn the_month_turns_at_midnight_in_shanghai_not_in_utc() {
        // 2026-11-30T16:00:00Z is 2026-12-01T00:00:00+08:00.
        assert_eq!(Month::containing(NOV_30_2026_1600Z), month(2026, 12));
        assert_eq!(Month::containing(NOV_30_2026_1600Z - 1), month(2026, 11));
        assert_eq!(month(2026, 12).start_unix(), NOV_30_2026_1600Z);
        assert_eq!(month(2026, 11).end_unix(), NOV_30_2026_1600Z);
        // Still November 30th in UTC, already December in Shanghai.
        assert_eq!(
            Month::containing(NOV_30_2026_1600Z + 7 * 3600 + 3599),
            month(2026, 12)
        );
        // The year turns the same way.
        assert_eq!(Month::containing(DEC_31_2026_1600Z), month(2027, 1));
        assert_eq!(Month::containing(DEC_31_2026_1600Z - 1), month(2026, 12));
        assert_eq!(month(2026, 12).next(), month(2027, 1));
    }

    #[test]
    fn leap_years_have_a_29th_of_february() {
        // 2028-02-29T00:00+08:00 is still February; March starts a day later.
        assert_eq!(Month::containing(FEB_28_2028_1600Z), month(2028, 2));
        assert_eq!(month(2028, 3).start_unix(), FEB_29_2028_1600Z);
        assert_eq!(
            month(2028, 3).start_unix() - month(2028, 2).start_unix(),
            29 * DAY
        );
        assert_eq!(
            month(2027, 3).start_unix() - month(2027, 2).start_unix(),
            28 * DAY
        );
        // 2100 is not a leap year, 2000 was.
        assert_eq!(
            month(2100, 3).start_unix() - month(2100, 2).start_unix(),
            28 * DAY
        );
        assert_eq!(
            month(2000, 3).start_unix() - month(2000, 2).start_unix(),
            29 * DAY
        );
    }

    #[test]
    fn every_month_from_1970_to_2200_starts_where_the_one_before_ends() {
        let mut m = month(1970, 1);
        assert_eq!(m.start_unix(), -SHANGHAI_OFFSET_SECS);
        while m < month(2200, 1) {
            let start = m.start_unix();
            assert_eq!(Month::containing(start), m, "{m}");
            assert_eq!(Month::containing(m.end_unix() - 1), m, "{m}");
            let days = (m.end_unix() - start) / DAY;
            assert!((28..=31).contains(&days), "{m}: {days} days");
            assert_eq!((m.end_unix() - start) % DAY, 0);
            m = m.next();
        }
        // Before 1970 too (negative Unix time).
        assert_eq!(
            Month::containing(-SHANGHAI_OFFSET_SECS - 1),
            month(1969, 12)
        );
    }

    #[test]
    fn it_prints_and_parses_as_yyyy_mm() {
        assert_eq!(month(2026, 5).to_string(), "2026-05");
        assert_eq!(Month::parse("2026-05"), Some(month(2026, 5)));
        for bad in [
            "2026-13", "2026-00", "2026-5", "26-05", "2026/05", "", "abcd-ef",
        ] {
            assert_eq!(Month::parse(bad), None, "{bad:?}");
        }
        assert!(Month::new(2026, 0).is_none() && Month::new(2026, 13).is_none());
    }
}
