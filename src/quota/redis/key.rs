//! One quota key as Redis holds it: its two Redis keys (the GCRA state and
//! the upstream pause), its plan in whole microseconds, and the waiters of
//! this replica.

use super::*;

/// One (app, route) key as stored in Redis.
pub(super) struct SharedKey {
    pub(super) name: String,
    pub(super) tat: String,
    pub(super) pause: String,
    /// Period in µs (rounded up, plus 1 µs; see the module docs).
    pub(super) t_us: u64,
    /// `(b - 1) * t_us`.
    pub(super) tau_us: u64,
    /// `max(b, replicas * b')`: how many periods the return to Redis drains.
    pub(super) drain_slots: u64,
    pub(super) policy: Arc<Policy>,
    pub(super) max_waiters: u32,
    /// This replica's requests sleeping on a reserved slot or a pause.
    pub(super) waiters: AtomicU32,
    /// End of an upstream pause this replica knows of, in ns since the
    /// engine's epoch; 0 = none.
    pub(super) paused_until: AtomicU64,
}

impl SharedKey {
    pub(super) fn named(
        name: &str,
        prefix: &str,
        t_us: u64,
        tau_us: u64,
        drain_slots: u64,
        policy: Arc<Policy>,
        max_waiters: u32,
    ) -> SharedKey {
        // The whole name is the hash tag: both keys in one slot.
        let tag = name.replace(['{', '}'], "_");
        SharedKey {
            name: name.to_string(),
            tat: format!("{prefix}quota:{{{tag}}}:tat"),
            pause: format!("{prefix}quota:{{{tag}}}:pause"),
            t_us,
            tau_us,
            drain_slots,
            policy,
            max_waiters,
            waiters: AtomicU32::new(0),
            paused_until: AtomicU64::new(0),
        }
    }

    /// The same limits under another name, with state of its own.
    pub(super) fn derive(&self, name: &str, prefix: &str) -> SharedKey {
        SharedKey::named(
            name,
            prefix,
            self.t_us,
            self.tau_us,
            self.drain_slots,
            Arc::clone(&self.policy),
            self.max_waiters,
        )
    }

    pub(super) fn reject(&self, cause: Cause, limit: Limit, retry_after: Duration) -> Rejection {
        Rejection::new(cause, limit, retry_after, Arc::clone(&self.policy))
    }

    pub(super) fn unavailable(&self) -> Rejection {
        self.reject(
            Cause::BackendUnavailable,
            Limit::Window(self.policy.reported_window()),
            Duration::from_secs(1),
        )
    }
}

/// The script's answer to `take`.
pub(super) enum Reply {
    /// Admitted; go after `wait` (a reserved slot when not zero).
    Go { wait: Duration, remaining: u32 },
    /// Over the limit; the next slot is `wait` away.
    Limited { wait: Duration },
    /// Paused for `left` more.
    Paused { left: Duration },
}

/// A place among a key's sleepers on this replica, given back on drop.
pub(super) struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    pub(super) fn join(k: &'a SharedKey) -> Option<Waiting<'a>> {
        let max = k.max_waiters;
        k.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max).then_some(w + 1)
            })
            .ok()
            .map(|_| Waiting(&k.waiters))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
