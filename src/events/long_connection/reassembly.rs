//! Fragments put back together. Feishu splits a large event into frames
//! that share a `message_id`, with `sum` (how many) and `seq` (0..sum-1);
//! the client concatenates the payloads in `seq` order and acks only the
//! frame that completes the set (feishu-platform.md §5.4).
//!
//! The headers come from the network, so everything is bounded: `sum` and
//! `seq` must be numbers with `seq < sum <= max_fragments`; one event's
//! bytes at most `max_event_bytes`; at most `max_partial` incomplete events
//! holding at most `max_total_bytes` together (16 MiB) per connection, each
//! kept `ttl` after its latest fragment (5 s, as the
//! Python and Go SDKs). A fragment that breaks a rule is dropped (and the
//! partial event with it when it contradicts it); Feishu re-pushes what
//! was not acked.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

/// The bounds of one connection's reassembly.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long an incomplete event is kept after its latest fragment.
    pub ttl: Duration,
    /// Largest `sum` accepted.
    pub max_fragments: usize,
    /// Largest event, all fragments together, in bytes.
    pub max_event_bytes: usize,
    /// Incomplete events kept at once.
    pub max_partial: usize,
    /// Bytes of all incomplete events together: what a peer can make one
    /// connection hold (without it, `max_partial` × `max_event_bytes`).
    pub max_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ttl: Duration::from_secs(5),
            max_fragments: 256,
            max_event_bytes: 4 << 20,
            max_partial: 64,
            max_total_bytes: 16 << 20,
        }
    }
}

/// Why a fragment was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// `sum` or `seq` missing or not a number.
    BadHeader,
    /// `sum` is 0 or over `max_fragments`, or `seq >= sum`.
    OutOfRange,
    /// `sum` differs from the one of the fragments before.
    Inconsistent,
    /// The event would exceed `max_event_bytes`.
    TooLarge,
    /// `max_partial` incomplete events are held already, or they hold
    /// `max_total_bytes`.
    TooManyPartial,
    /// The same `seq` again (its first copy is kept).
    Duplicate,
}

impl Rejected {
    /// The label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::BadHeader => "bad_header",
            Rejected::OutOfRange => "out_of_range",
            Rejected::Inconsistent => "inconsistent",
            Rejected::TooLarge => "too_large",
            Rejected::TooManyPartial => "too_many_partial",
            Rejected::Duplicate => "duplicate",
        }
    }
}

struct Partial {
    parts: Vec<Option<Bytes>>,
    have: usize,
    bytes: usize,
    deadline: Instant,
}

/// One connection's incomplete events.
pub struct Reassembly {
    limits: Limits,
    partial: HashMap<String, Partial>,
    /// Bytes held by `partial`.
    total: usize,
}

impl Reassembly {
    pub fn new(limits: Limits) -> Self {
        Reassembly {
            limits,
            partial: HashMap::new(),
            total: 0,
        }
    }

    /// Incomplete events held now.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Forgets the incomplete events whose time is up; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.partial.len();
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = p.deadline > now;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        self.total -= freed;
        before - self.partial.len()
    }

    /// One fragment (`sum`, `seq` as the headers give them). `Ok(Some)`:
    /// the complete payload (for `sum` 1, the fragment itself); `Ok(None)`:
    /// kept, more to come.
    pub fn add(
        &mut self,
        message_id: &str,
        sum: Option<&str>,
        seq: Option<&str>,
        payload: Bytes,
        now: Instant,
    ) -> Result<Option<Bytes>, Rejected> {
        // SDKs treat a missing sum/seq as one whole frame; so do we.
        let sum = match sum {
            None => 1,
            Some(s) => s.trim().parse::<usize>().map_err(|_| Rejected::BadHeader)?,
        };
        let seq = match seq {
            None => 0,
            Some(s) => s.trim().parse::<usize>().map_err(|_| Rejected::BadHeader)?,
        };
        if sum == 0 || sum > self.limits.max_fragments || seq >= sum {
            return Err(Rejected::OutOfRange);
        }
        if payload.len() > self.limits.max_event_bytes {
            return Err(Rejected::TooLarge);
        }
        if sum == 1 {
            return Ok(Some(payload));
        }
        self.sweep(now);
        let limits = self.limits;
        if !self.partial.contains_key(message_id) {
            if self.partial.len() >= limits.max_partial {
                return Err(Rejected::TooManyPartial);
            }
            let partial = Partial {
                parts: vec![None; sum],
                have: 0,
                bytes: 0,
                deadline: now + limits.ttl,
            };
            self.partial.insert(message_id.to_owned(), partial);
        }
        let p = self
            .partial
            .get_mut(message_id)
            .expect("inserted just above");
        if p.parts.len() != sum {
            let gone = p.bytes;
            self.partial.remove(message_id);
            self.total -= gone;
            return Err(Rejected::Inconsistent);
        }
        if p.parts[seq].is_some() {
            return Err(Rejected::Duplicate);
        }
        if p.bytes + payload.len() > limits.max_event_bytes {
            let gone = p.bytes;
            self.partial.remove(message_id);
            self.total -= gone;
            return Err(Rejected::TooLarge);
        }
        if self.total + payload.len() > limits.max_total_bytes {
            if p.have == 0 {
                self.partial.remove(message_id);
            }
            return Err(Rejected::TooManyPartial);
        }
        self.total += payload.len();
        p.bytes += payload.len();
        p.have += 1;
        p.parts[seq] = Some(payload);
        p.deadline = now + limits.ttl;
        if p.have < sum {
            return Ok(None);
        }
        let p = self.partial.remove(message_id).expect("present");
        self.total -= p.bytes;
        let mut whole = BytesMut::with_capacity(p.bytes);
        for part in p.parts.into_iter().flatten() {
            whole.extend_from_slice(&part);
        }
        Ok(Some(whole.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Reassembly {
        Reassembly::new(Limits {
            ttl: Duration::from_secs(5),
            max_fragments: 8,
            max_event_bytes: 100,
            max_partial: 2,
            max_total_bytes: 150,
        })
    }

    #[test]
    fn incomplete_events_together_hold_at_most_the_byte_budget() {
        let mut r = r();
        let now = Instant::now();
        let ninety = "x".repeat(90);
        assert_eq!(r.add("a", Some("2"), Some("0"), b(&ninety), now), Ok(None));
        // A second incomplete event may not take the total past 150 bytes.
        assert_eq!(
            r.add("b", Some("2"), Some("0"), b(&"y".repeat(70)), now),
            Err(Rejected::TooManyPartial)
        );
        assert_eq!(r.pending(), 1, "the refused event is not kept");
        assert_eq!(r.add("b", Some("2"), Some("0"), b("yy"), now), Ok(None));
        // Completing the first frees its bytes.
        assert_eq!(
            r.add("a", Some("2"), Some("1"), b("z"), now),
            Ok(Some(b(&format!("{ninety}z"))))
        );
        assert_eq!(
            r.add("c", Some("2"), Some("0"), b(&"c".repeat(90)), now),
            Ok(None)
        );
        // Expired ones free theirs too.
        r.sweep(now + Duration::from_secs(6));
        assert_eq!(r.pending(), 0);
        assert_eq!(
            r.add("d", Some("2"), Some("0"), b(&"d".repeat(95)), now),
            Ok(None)
        );
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn fragments_in_any_order_make_the_event() {
        let mut r = r();
        let now = Instant::now();
        assert_eq!(r.add("m", Some("3"), Some("2"), b("c"), now), Ok(None));
        assert_eq!(r.add("m", Some("3"), Some("0"), b("a"), now), Ok(None));
        assert_eq!(
            r.add("m", Some("3"), Some("1"), b("b"), now),
            Ok(Some(b("abc")))
        );
        assert_eq!(r.pending(), 0);
        // Whole frames pass through; missing headers mean one whole frame.
        assert_eq!(
            r.add("x", Some("1"), Some("0"), b("w"), now),
            Ok(Some(b("w")))
        );
        assert_eq!(r.add("y", None, None, b("v"), now), Ok(Some(b("v"))));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut r = r();
        let now = Instant::now();
        for (sum, seq, why) in [
            (Some("two"), Some("0"), Rejected::BadHeader),
            (Some("2"), Some("-1"), Rejected::BadHeader),
            (
                Some("99999999999999999999999"),
                Some("0"),
                Rejected::BadHeader,
            ),
            (Some("0"), Some("0"), Rejected::OutOfRange),
            (Some("4294967295"), Some("0"), Rejected::OutOfRange),
            (Some("9"), Some("0"), Rejected::OutOfRange),
            (Some("2"), Some("2"), Rejected::OutOfRange),
            (Some("2"), Some("7"), Rejected::OutOfRange),
        ] {
            assert_eq!(
                r.add("m", sum, seq, b("x"), now),
                Err(why),
                "{sum:?} {seq:?}"
            );
        }
        assert_eq!(r.pending(), 0, "nothing held for refused fragments");
    }

    #[test]
    fn sizes_and_counts_are_bounded() {
        let mut r = r();
        let now = Instant::now();
        let big = Bytes::from(vec![b'x'; 101]);
        assert_eq!(
            r.add("m", Some("1"), Some("0"), big, now),
            Err(Rejected::TooLarge)
        );
        let sixty = Bytes::from(vec![b'x'; 60]);
        assert_eq!(
            r.add("m", Some("2"), Some("0"), sixty.clone(), now),
            Ok(None)
        );
        assert_eq!(
            r.add("m", Some("2"), Some("1"), sixty, now),
            Err(Rejected::TooLarge)
        );
        assert_eq!(r.pending(), 0, "the oversized event is dropped whole");
        // Two partial events at most.
        assert_eq!(r.add("a", Some("2"), Some("0"), b("a"), now), Ok(None));
        assert_eq!(r.add("b", Some("2"), Some("0"), b("b"), now), Ok(None));
        assert_eq!(
            r.add("c", Some("2"), Some("0"), b("c"), now),
            Err(Rejected::TooManyPartial)
        );
        // A different sum for the same message drops it; a repeated seq is
        // refused and the first copy kept.
        assert_eq!(
            r.add("a", Some("3"), Some("1"), b("z"), now),
            Err(Rejected::Inconsistent)
        );
        assert_eq!(
            r.add("b", Some("2"), Some("0"), b("B"), now),
            Err(Rejected::Duplicate)
        );
        assert_eq!(
            r.add("b", Some("2"), Some("1"), b("2"), now),
            Ok(Some(b("b2")))
        );
    }

    #[test]
    fn incomplete_events_expire_after_their_last_fragment() {
        let mut r = r();
        let t0 = Instant::now();
        assert_eq!(r.add("m", Some("3"), Some("0"), b("a"), t0), Ok(None));
        // Refreshed by each fragment.
        let t4 = t0 + Duration::from_secs(4);
        assert_eq!(r.add("m", Some("3"), Some("1"), b("b"), t4), Ok(None));
        assert_eq!(r.sweep(t0 + Duration::from_secs(8)), 0);
        assert_eq!(r.sweep(t4 + Duration::from_secs(5)), 1);
        // The last fragment alone is not an event.
        let t10 = t4 + Duration::from_secs(6);
        assert_eq!(r.add("m", Some("3"), Some("2"), b("c"), t10), Ok(None));
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn random_headers_never_panic_and_stay_bounded() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let mut r = r();
        let now = Instant::now();
        for _ in 0..20_000 {
            let id = format!("m{}", rng.gen_range(0..5));
            let sum = rng.gen_range(0..12).to_string();
            let seq = rng.gen_range(0..12).to_string();
            let len = rng.gen_range(0..80);
            let _ = r.add(
                &id,
                Some(&sum),
                Some(&seq),
                Bytes::from(vec![0u8; len]),
                now,
            );
            assert!(r.pending() <= 2);
            assert!(r.partial.values().all(|p| p.bytes <= 100));
        }
    }
}
