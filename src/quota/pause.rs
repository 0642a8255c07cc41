//! Pauses after Feishu's own throttle answers, for what has no quota key of
//! its own (endpoints with `special` or no documented limit), and the
//! doubling backoff used when Feishu's answer says no reset time.
//!
//! Keys with a quota carry their pause themselves ([`super::Key::pause`],
//! shared through Redis with that backend). A [`PauseCell`] is in process:
//! with several replicas, each stops at its own first throttle answer.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The first pause when Feishu gives no `x-ogw-ratelimit-reset`.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest such pause.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// "Paused until", in process.
#[derive(Debug)]
pub struct PauseCell {
    epoch: Instant,
    /// ns since `epoch`; 0 = none.
    until: AtomicU64,
}

impl Default for PauseCell {
    fn default() -> Self {
        PauseCell {
            epoch: Instant::now(),
            until: AtomicU64::new(0),
        }
    }
}

impl PauseCell {
    /// Time left on the pause, if one runs.
    pub fn left(&self) -> Option<Duration> {
        if self.until.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        super::pause_left(&self.until, now)
    }

    /// Pauses for `duration` from now (extends, never shortens).
    pub fn pause(&self, duration: Duration) {
        let until = (self.epoch.elapsed() + duration).as_nanos() as u64;
        self.until.fetch_max(until.max(1), Ordering::AcqRel);
    }
}

/// The doubling backoff of one key: 1 s, 2 s, 4 s … 30 s while Feishu keeps
/// throttling without saying until when; back to 1 s after an answer that
/// is no throttle.
#[derive(Debug, Default)]
pub struct Backoff {
    level: AtomicU32,
}

impl Backoff {
    /// How long to pause now: Feishu's `reset` when it gave one, else the
    /// next step of the backoff.
    pub fn next(&self, reset: Option<Duration>) -> Duration {
        if let Some(r) = reset {
            return r.clamp(Duration::from_millis(100), Duration::from_secs(300));
        }
        let level = self.level.fetch_add(1, Ordering::AcqRel).min(16);
        (BACKOFF_FIRST * 2u32.pow(level)).min(BACKOFF_CAP)
    }

    /// An answer that was no throttle: the next backoff starts at 1 s.
    pub fn calm(&self) {
        if self.level.load(Ordering::Relaxed) != 0 {
            self.level.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_calms() {
        let b = Backoff::default();
        let steps: Vec<u64> = (0..7).map(|_| b.next(None).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 30, 30]);
        b.calm();
        assert_eq!(b.next(None), Duration::from_secs(1));
        assert_eq!(
            b.next(Some(Duration::from_secs(52))),
            Duration::from_secs(52)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_runs_out() {
        let p = PauseCell::default();
        assert_eq!(p.left(), None);
        p.pause(Duration::from_secs(2));
        p.pause(Duration::from_secs(1));
        assert_eq!(p.left(), Some(Duration::from_secs(2)), "never shortened");
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(p.left(), None);
    }
}
