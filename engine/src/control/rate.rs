//! The per-handle rate of control requests: a token bucket per handle, time passed in.
//!
//! Every open handle has a bucket that holds at most [`RateLimit::burst`] requests and refills
//! at [`RateLimit::per_second`]. [`crate::Engine::apply_at`] takes one token for every request
//! it is given — answered or refused, so a caller cannot flood the back end with bad requests
//! either — and refuses the request when the bucket is empty. Time is the back end's monotonic
//! clock in nanoseconds; a clock that goes backwards refills nothing (never more than
//! forwards), and a long pause refills at most a full bucket.
//!
//! ## The answer: 1450 `ERROR_NO_SYSTEM_RESOURCES`
//! A refused request gets [`EngineError::LimitReached`], i.e. 1450. The QOS2 reference lists
//! 1450 for every call a handle can make (`QOSAddSocketToFlow`, `QOSRemoveSocketFromFlow`,
//! `QOSSetFlow`, `QOSQueryFlow`, `QOSNotifyFlow`, `QOSEnumerateFlows`, `QOSCancel`; qos-api.md
//! §5), so every QOS2 application already has a path for it, and it is what Windows itself
//! reports for an exhausted quota. 54 `ERROR_NETWORK_BUSY` is documented for `QOSSetFlow`
//! only, and there it means "not enough bandwidth on the path", which would mislead: an
//! application could conclude the network is congested. The request changes nothing; the
//! caller may retry once tokens have refilled (0.5 ms per token at the default rate).
//!
//! ## Default
//! 4 096 requests at once, 2 000 per second sustained ([`RateLimit::default`]). A QOS2
//! application makes a handful of calls per socket (add, maybe set, remove). The burst is
//! sized for the worst legitimate spike: a media server that restarts with a thousand live
//! calls re-registers them all at once (a thousand sockets, a few calls each), and QOS2
//! applications do not retry a 1450, so a smaller bucket would leave calls unmarked. A busy
//! gateway setting up a few hundred calls per second stays well inside the sustained rate; a
//! runaway loop is held to 2 000 requests per second per handle, and the handle limit
//! (`Limits::max_handles`) bounds the total. [`RateLimit::UNLIMITED`] switches the limit off.
//!
//! Arithmetic is in nano-tokens (a request costs 10^9), in `u64` with saturating operations:
//! a bucket of 4 096 requests is 4.1 × 10^12 nano-tokens, far from overflow; `burst` is capped
//! at [`MAX_BURST`] so it always is.

use crate::EngineError;

/// Largest burst: 2^24 requests (1.7 × 10^16 nano-tokens, below `u64::MAX`).
pub const MAX_BURST: u32 = 1 << 24;

const NANO: u64 = 1_000_000_000;

/// A per-handle request budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests a handle may make at once (the bucket size; capped at [`MAX_BURST`]).
    pub burst: u32,
    /// Requests per second a handle may make in the long run.
    pub per_second: u32,
}

impl RateLimit {
    /// No limit: every request is admitted.
    pub const UNLIMITED: RateLimit = RateLimit {
        burst: u32::MAX,
        per_second: u32::MAX,
    };

    fn unlimited(self) -> bool {
        self == Self::UNLIMITED
    }

    fn capacity(self) -> u64 {
        u64::from(self.burst.min(MAX_BURST)) * NANO
    }
}

impl Default for RateLimit {
    /// 4 096 at once, 2 000 per second (module docs).
    fn default() -> Self {
        RateLimit {
            burst: 4096,
            per_second: 2000,
        }
    }
}

/// One handle's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Nano-tokens left.
    tokens: u64,
    /// Time of the last refill; `None` until the first request (the bucket starts full).
    last_ns: Option<u64>,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full() -> Bucket {
        Bucket {
            tokens: u64::MAX,
            last_ns: None,
        }
    }

    /// Refills for the time since the last request and takes one token.
    ///
    /// # Errors
    /// [`EngineError::LimitReached`] when the bucket holds less than one request; it is then
    /// left refilled but not charged.
    pub(crate) fn take(&mut self, limit: RateLimit, now_ns: u64) -> Result<(), EngineError> {
        if limit.unlimited() {
            return Ok(());
        }
        let capacity = limit.capacity();
        let elapsed = self.last_ns.map_or(0, |last| now_ns.saturating_sub(last));
        self.tokens = self
            .tokens
            .min(capacity)
            .saturating_add(elapsed.saturating_mul(u64::from(limit.per_second)))
            .min(capacity);
        // A clock that goes backwards does not move the reference back (no double refill).
        self.last_ns = Some(self.last_ns.map_or(now_ns, |last| last.max(now_ns)));
        if self.tokens < NANO {
            return Err(EngineError::LimitReached);
        }
        self.tokens -= NANO;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_refill_at_the_rate() {
        let limit = RateLimit {
            burst: 3,
            per_second: 1000,
        };
        let mut b = Bucket::full();
        for _ in 0..3 {
            assert_eq!(b.take(limit, 5 * MS), Ok(()));
        }
        assert_eq!(b.take(limit, 5 * MS), Err(EngineError::LimitReached));
        // Half a token later: still empty; one token later: one request.
        assert_eq!(
            b.take(limit, 5 * MS + MS / 2),
            Err(EngineError::LimitReached)
        );
        assert_eq!(b.take(limit, 6 * MS), Ok(()));
        assert_eq!(b.take(limit, 6 * MS), Err(EngineError::LimitReached));
        // A long pause refills the burst, no more.
        let later = 3_600_000 * MS;
        for _ in 0..3 {
            assert_eq!(b.take(limit, later), Ok(()));
        }
        assert_eq!(b.take(limit, later), Err(EngineError::LimitReached));
    }

    #[test]
    fn clock_going_backwards_refills_nothing() {
        let limit = RateLimit {
            burst: 1,
            per_second: 1000,
        };
        let mut b = Bucket::full();
        assert_eq!(b.take(limit, 100 * MS), Ok(()));
        assert_eq!(b.take(limit, 0), Err(EngineError::LimitReached));
        // Back at the old reference, still nothing; 1 ms after it, one token.
        assert_eq!(b.take(limit, 100 * MS), Err(EngineError::LimitReached));
        assert_eq!(b.take(limit, 101 * MS), Ok(()));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let huge = RateLimit {
            burst: u32::MAX - 1,
            per_second: u32::MAX,
        };
        let mut b = Bucket::full();
        assert_eq!(b.take(huge, 0), Ok(()));
        assert_eq!(b.take(huge, u64::MAX), Ok(()));
        let zero = RateLimit {
            burst: 0,
            per_second: 0,
        };
        assert_eq!(Bucket::full().take(zero, 0), Err(EngineError::LimitReached));
        let mut b = Bucket::full();
        for _ in 0..1000 {
            assert_eq!(b.take(RateLimit::UNLIMITED, 0), Ok(()));
        }
    }
}
