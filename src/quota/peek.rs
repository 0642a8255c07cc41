//! A governor state store that can also *peek*: run governor's own GCRA
//! decision without storing its outcome. It lets a snapshot (for headers) and
//! the wait-queue estimate ask "how long until the next slot?" without
//! spending anything, while every real decision is governor's unchanged.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use governor::nanos::Nanos;
use governor::state::StateStore;

/// The "key" a [`PeekableState`] is called with: it selects whether the
/// decision is stored. (governor's keyed API carries it; there is one GCRA.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    /// Store the new theoretical arrival time if the request conforms.
    Commit,
    /// Decide, but leave the state untouched.
    Peek,
}

/// One GCRA cell: the theoretical arrival time in nanoseconds since the
/// limiter was created, 0 meaning "fresh" (as governor's `InMemoryState`).
/// The cell is shared ([`PeekableState::cell`]) so that its owner can give
/// an admission back (`LocalQuota::give_back`) outside governor's API.
#[derive(Debug, Default)]
pub(crate) struct PeekableState(Arc<AtomicU64>);

impl PeekableState {
    /// The cell itself: the theoretical arrival time, as governor stores it.
    pub(crate) fn cell(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.0)
    }
}

impl StateStore for PeekableState {
    type Key = Access;

    fn measure_and_replace<T, F, E>(&self, key: &Access, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let read = |v: u64| NonZeroU64::new(v).map(|n| Nanos::from(n.get()));
        let mut prev = self.0.load(Ordering::Acquire);
        if *key == Access::Peek {
            return f(read(prev)).map(|(result, _)| result);
        }
        loop {
            let (result, next) = f(read(prev))?;
            match self.0.compare_exchange_weak(
                prev,
                next.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use governor::middleware::StateInformationMiddleware;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    use std::time::Duration;

    #[test]
    fn peek_decides_like_commit_but_spends_nothing() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::with_period(Duration::from_millis(10))
            .unwrap()
            .allow_burst(NonZeroU32::new(2).unwrap());
        let lim = RateLimiter::<_, _, _, StateInformationMiddleware>::new(
            quota,
            PeekableState::default(),
            clock.clone(),
        );
        for _ in 0..5 {
            assert_eq!(
                lim.check_key(&Access::Peek)
                    .unwrap()
                    .remaining_burst_capacity(),
                1
            );
        }
        assert_eq!(
            lim.check_key(&Access::Commit)
                .unwrap()
                .remaining_burst_capacity(),
            1
        );
        assert_eq!(
            lim.check_key(&Access::Peek)
                .unwrap()
                .remaining_burst_capacity(),
            0
        );
        assert!(lim.check_key(&Access::Commit).is_ok());
        let peeked = lim.check_key(&Access::Peek).unwrap_err();
        let real = lim.check_key(&Access::Commit).unwrap_err();
        assert_eq!(peeked, real);
        clock.advance(Duration::from_millis(10));
        assert!(lim.check_key(&Access::Peek).is_ok());
        assert!(lim.check_key(&Access::Commit).is_ok());
        assert!(lim.check_key(&Access::Commit).is_err());
    }
}
