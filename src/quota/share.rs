//! [`Share`]: the fraction of an app's quotas one client may use
//! (`[[clients]] quota_share`), and the windows it scales to.
//!
//! A client with a share gets, per quota key of its app it uses, a key of
//! its own whose windows are the app key's scaled by the share: `50/1s`
//! and `1000/60s` at 0.2 are `10/1s` and `200/60s`, planned like any key.
//! The request path acquires the share key first, then the app key (see
//! `src/proxy/keys.rs`); only the app key decides what reaches Feishu.

use std::fmt;
use std::time::Duration;

use super::window::{Window, MAX_PERIOD};

/// Parts per million in a whole share.
const WHOLE: u64 = 1_000_000;

/// A fraction in `(0, 1]`, kept exactly in millionths (a share read from
/// `0.3` is 300000 ppm, and `floor(N × share)` is computed on integers, so
/// `0.29 × 100` is 29, not 28.999…).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Share {
    ppm: u32,
}

impl Share {
    /// The share written `fraction`: more than 0 (at least one millionth)
    /// and at most 1; else what is wrong, in words a config checker prints
    /// after the key.
    pub fn from_fraction(fraction: f64) -> Result<Share, String> {
        let wrong = || {
            format!("must be a fraction greater than 0 and at most 1, like 0.3, found {fraction}")
        };
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(wrong());
        }
        let ppm = (fraction * WHOLE as f64).round();
        if ppm < 1.0 {
            return Err(format!("{fraction} is below the smallest share, 0.000001"));
        }
        Ok(Share { ppm: ppm as u32 })
    }

    /// The share in millionths.
    pub fn ppm(self) -> u32 {
        self.ppm
    }

    /// The share as a fraction.
    pub fn fraction(self) -> f64 {
        f64::from(self.ppm) / WHOLE as f64
    }

    /// True for a share of 1: the whole quota, no key of its own needed.
    pub fn is_whole(self) -> bool {
        u64::from(self.ppm) >= WHOLE
    }

    /// `window` scaled by the share: `floor(N × share)` per `W`; when that
    /// is less than one request, one request per `W / (N × share)` (rounded
    /// up to whole milliseconds, at most [`MAX_PERIOD`], 24 h), the same rate.
    pub fn scale(self, window: Window) -> Window {
        let n = u64::from(window.limit());
        let ppm = u64::from(self.ppm);
        let scaled = n * ppm / WHOLE;
        let w = window.period();
        let built = if scaled >= 1 {
            Window::new(scaled.min(u64::from(u32::MAX)) as u32, w)
        } else {
            // n × ppm < WHOLE: W × WHOLE / (n × ppm), in whole ms, rounded up.
            let ms = (w.as_millis() as u64 * WHOLE).div_ceil(n * ppm);
            let period = Duration::from_millis(ms).min(MAX_PERIOD);
            Window::new(1, period)
        };
        // Both branches build a valid window (limit >= 1, whole ms within
        // 1 ms ..= 24 h): the original is the fallback never taken.
        built.unwrap_or(window)
    }

    /// Every window scaled ([`Share::scale`]).
    pub fn scale_all(self, windows: impl IntoIterator<Item = Window>) -> Vec<Window> {
        windows.into_iter().map(|w| self.scale(w)).collect()
    }
}

impl fmt::Display for Share {
    /// The fraction as written in config, e.g. `0.2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fraction())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn fractions_are_exact_in_millionths() {
        let s = Share::from_fraction(0.3).unwrap();
        assert_eq!((s.ppm(), s.to_string()), (300_000, "0.3".to_string()));
        assert_eq!(
            Share::from_fraction(0.29)
                .unwrap()
                .scale(w("100/1s"))
                .limit(),
            29
        );
        assert!(Share::from_fraction(1.0).unwrap().is_whole());
        assert!(!Share::from_fraction(0.999999).unwrap().is_whole());
        for bad in [0.0, -0.1, 1.0001, f64::NAN, f64::INFINITY, 0.0000001] {
            assert!(Share::from_fraction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_scale_by_count_then_by_period() {
        let s = Share::from_fraction(0.2).unwrap();
        assert_eq!(
            s.scale_all([w("50/1s"), w("1000/60s")]),
            [w("10/1s"), w("200/60s")]
        );
        // 10/60s at 0.05 is half a request a minute: one per two minutes.
        let small = Share::from_fraction(0.05).unwrap();
        assert_eq!(small.scale(w("10/60s")), w("1/120s"));
        // 3/1s at 0.1: one per 3.334 s (rounded up to whole ms).
        let tenth = Share::from_fraction(0.1).unwrap();
        assert_eq!(tenth.scale(w("3/1s")), w("1/3334ms"));
        // Never past 24 h.
        let tiny = Share::from_fraction(0.000001).unwrap();
        assert_eq!(tiny.scale(w("1/1h")), w("1/24h"));
        // A whole share keeps the window.
        let whole = Share::from_fraction(1.0).unwrap();
        assert_eq!(whole.scale(w("50/1s")), w("50/1s"));
    }
}
