//! A governor [`Clock`] that reads [`tokio::time::Instant`].
//!
//! Outside tests this is `std::time::Instant`, the std monotonic clock (the
//! quanta clock can go backwards). Under `tokio::time::pause()` it reads
//! tokio's paused clock, so the limiter and the sleeps of wait mode move
//! together and a test of minutes of traffic runs in milliseconds.

use std::ops::Add;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;

/// The quota engine's default clock: [`tokio::time::Instant::now`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

/// A point in time on [`TokioClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(pub tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        Self(self.0 + std::time::Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_paused_time() {
        let a = TokioClock.now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let b = TokioClock.now();
        assert_eq!(b.duration_since(a), Nanos::from(Duration::from_secs(3600)));
        assert_eq!(a.duration_since(b), Nanos::from(0));
        assert_eq!(a + Nanos::from(Duration::from_secs(3600)), b);
        assert_eq!(b.saturating_sub(Duration::from_secs(3600).into()), a);
    }
}
