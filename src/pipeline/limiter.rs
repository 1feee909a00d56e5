//! Per-destination rate limiter: GCRA on [`governor`], checked lock-free on every attempt.
//!
//! Every attempt — retries included — asks the limiter first (docs/ARCHITECTURE.md §1), so a
//! destination's `rps` is what the upstream sees, not what the app sent. Retries therefore cannot
//! amplify load past the limit.
//!
//! # Quota mapping
//!
//! `[rate_limit] rps = R, burst = B` becomes `Quota::per_second(R).allow_burst(R + B)`:
//!
//! - one token is replenished every `1 s / R` (the GCRA emission interval);
//! - the bucket holds at most `R + B` tokens, so an idle destination accepts `R + B` requests at
//!   once, then one per `1 s / R`.
//!
//! docs/ARCHITECTURE.md §3 defines `burst` as "extra tokens above rps". `Quota::per_second(R)`
//! alone already holds `R` tokens (one second's worth), so `burst` is added on top of that. The
//! alternative — a capacity of `max(1, burst)` — would make the default `burst = 0` space requests
//! strictly `1/R` apart and reject two requests an app sends in the same millisecond even at
//! `rps = 1000`, which surprises more than it protects. `R + B` saturates at `u32::MAX`.
//!
//! # Clock
//!
//! governor's default clock (quanta) does not follow `tokio::time::pause()`. [`TokioClock`]
//! reads [`tokio::time::Instant`] instead, in production as in tests, so every timer in fusebox
//! runs on one (pausable) clock. The limiter is generic over the clock only so that unit tests
//! can step governor's [`FakeRelativeClock`](governor::clock::FakeRelativeClock) by hand; the
//! default type parameter is [`TokioClock`].
//!
//! # Tokens left
//!
//! The live view shows how many tokens are left. governor cannot be asked without taking one,
//! so every check records what its [`StateInformationMiddleware`] snapshot left (two relaxed
//! atomic stores), and [`RateLimiter::tokens_left`] adds what was replenished since.
//!
//! # Shadow mode
//!
//! governor leaves its state untouched when it rejects a cell, so a request let through in shadow
//! mode consumes nothing: shadow reports exactly the decisions enforce would have taken for the
//! same traffic.

use std::ops::Add;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;

use crate::policy::{LimitMode, RateLimit};

/// What the limiter says about one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    /// A token was taken; send the attempt.
    Allowed,
    /// No token: answer `429 rate-limited` locally. `retry_after` is the time until a token is
    /// free (always > 0).
    Rejected { retry_after: Duration },
    /// Shadow mode: enforce would have rejected this attempt; let it through and count it.
    ShadowRejected,
}

/// A rate limiter for one destination. `Send + Sync`; share it behind the destination's `Arc`.
pub struct RateLimiter<C: Clock = TokioClock> {
    inner: governor::RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>,
    mode: LimitMode,
    quota: Quota,
    origin: C::Instant,
    /// Tokens the last check left, and when (nanoseconds after `origin`).
    left: AtomicU32,
    left_at: AtomicU64,
}

impl RateLimiter {
    /// The limiter for `limit`, or `None` when `rps = 0` (no limit: nothing to check).
    pub fn new(limit: &RateLimit) -> Option<Self> {
        Self::with_clock(limit, TokioClock)
    }
}

impl<C: Clock> RateLimiter<C> {
    /// Like [`RateLimiter::new`], on the given clock.
    pub fn with_clock(limit: &RateLimit, clock: C) -> Option<Self> {
        let quota = quota(limit)?;
        let origin = clock.now();
        Some(Self {
            inner: governor::RateLimiter::direct_with_clock(quota, clock)
                .with_middleware::<StateInformationMiddleware>(),
            mode: limit.mode,
            quota,
            origin,
            left: AtomicU32::new(quota.burst_size().get()),
            left_at: AtomicU64::new(0),
        })
    }

    /// Tokens left now: what the last check left plus what was replenished since, at most
    /// the bucket's size.
    pub fn tokens_left(&self) -> f64 {
        let since = self
            .nanos_since_origin()
            .saturating_sub(self.left_at.load(Ordering::Relaxed));
        let interval = self.quota.replenish_interval().as_nanos().max(1);
        #[allow(clippy::cast_precision_loss)]
        let replenished = since as f64 / interval as f64;
        let left = f64::from(self.left.load(Ordering::Relaxed)) + replenished;
        left.min(f64::from(self.quota.burst_size().get()))
    }

    fn note_left(&self, left: u32) {
        self.left.store(left, Ordering::Relaxed);
        self.left_at
            .store(self.nanos_since_origin(), Ordering::Relaxed);
    }

    fn nanos_since_origin(&self) -> u64 {
        self.inner
            .clock()
            .now()
            .duration_since(self.origin)
            .as_u64()
    }

    /// Takes a token for one attempt, if there is one.
    pub fn check(&self) -> LimitDecision {
        match self.inner.check() {
            Ok(snapshot) => {
                self.note_left(snapshot.remaining_burst_capacity());
                LimitDecision::Allowed
            }
            Err(_) if self.mode == LimitMode::Shadow => {
                self.note_left(0);
                LimitDecision::ShadowRejected
            }
            Err(not_until) => {
                self.note_left(0);
                LimitDecision::Rejected {
                    retry_after: not_until.wait_time_from(self.inner.clock().now()),
                }
            }
        }
    }
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The governor quota for `limit` (see the module docs), `None` when `rps = 0`.
pub fn quota(limit: &RateLimit) -> Option<Quota> {
    let rps = std::num::NonZeroU32::new(limit.rps)?;
    let capacity = rps.saturating_add(limit.burst);
    Some(Quota::per_second(rps).allow_burst(capacity))
}

/// A governor [`Clock`] reading [`tokio::time::Instant`], so the limiter follows tokio's
/// (pausable) clock like every other timer in fusebox.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

/// A [`tokio::time::Instant`] that governor can do arithmetic on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(pub tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        Self(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(duration.into())
            .map_or(*self, TokioInstant)
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(rps: u32, burst: u32, mode: LimitMode) -> RateLimit {
        RateLimit {
            rps,
            burst,
            mode,
            ..RateLimit::default()
        }
    }

    fn limiter(
        rps: u32,
        burst: u32,
        mode: LimitMode,
    ) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(&limit(rps, burst, mode), clock.clone())
            .expect("rps > 0 gives a limiter");
        (limiter, clock)
    }

    fn allowed(limiter: &RateLimiter<FakeRelativeClock>, n: u32) -> u32 {
        (0..n)
            .filter(|_| limiter.check() == LimitDecision::Allowed)
            .count() as u32
    }

    #[test]
    fn zero_rps_means_no_limiter() {
        assert!(RateLimiter::new(&limit(0, 10, LimitMode::Enforce)).is_none());
        assert!(quota(&limit(0, 0, LimitMode::Shadow)).is_none());
    }

    #[test]
    fn quota_is_rps_per_second_with_burst_on_top() {
        let q = quota(&limit(10, 5, LimitMode::Enforce)).expect("quota");
        assert_eq!(q.replenish_interval(), Duration::from_millis(100));
        assert_eq!(q.burst_size().get(), 15);
        let q = quota(&limit(u32::MAX, u32::MAX, LimitMode::Enforce)).expect("quota");
        assert_eq!(q.burst_size().get(), u32::MAX);
    }

    #[test]
    fn tokens_left_follow_the_checks_and_the_refill() {
        let (limiter, clock) = limiter(10, 5, LimitMode::Enforce);
        assert_eq!(limiter.tokens_left(), 15.0, "a fresh bucket is full");
        assert_eq!(allowed(&limiter, 12), 12);
        assert!((limiter.tokens_left() - 3.0).abs() < 1e-9);
        clock.advance(Duration::from_millis(250));
        assert!((limiter.tokens_left() - 5.5).abs() < 1e-9);
        clock.advance(Duration::from_secs(10));
        assert_eq!(limiter.tokens_left(), 15.0, "never above the bucket's size");
    }

    #[test]
    fn burst_then_rejected_with_retry_after_of_one_interval() {
        let (limiter, _clock) = limiter(10, 5, LimitMode::Enforce);
        assert_eq!(allowed(&limiter, 15), 15);
        assert_eq!(
            limiter.check(),
            LimitDecision::Rejected {
                retry_after: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn zero_burst_still_admits_one_second_at_once() {
        let (limiter, _clock) = limiter(4, 0, LimitMode::Enforce);
        assert_eq!(allowed(&limiter, 4), 4);
        assert!(matches!(limiter.check(), LimitDecision::Rejected { .. }));
    }

    #[test]
    fn retry_after_shrinks_as_time_passes() {
        let (limiter, clock) = limiter(2, 0, LimitMode::Enforce);
        assert_eq!(allowed(&limiter, 2), 2);
        clock.advance(Duration::from_millis(200));
        assert_eq!(
            limiter.check(),
            LimitDecision::Rejected {
                retry_after: Duration::from_millis(300)
            }
        );
    }

    #[test]
    fn refills_at_rps_after_time_passes() {
        let (limiter, clock) = limiter(10, 5, LimitMode::Enforce);
        assert_eq!(allowed(&limiter, 15), 15);

        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.check(), LimitDecision::Allowed);
        assert!(matches!(limiter.check(), LimitDecision::Rejected { .. }));

        clock.advance(Duration::from_millis(300));
        assert_eq!(allowed(&limiter, 10), 3);

        // A long idle period refills to the burst capacity, not beyond.
        clock.advance(Duration::from_secs(60));
        assert_eq!(allowed(&limiter, 100), 15);
    }

    #[test]
    fn shadow_never_rejects_and_reports_what_enforce_would() {
        let (shadow, clock) = limiter(10, 0, LimitMode::Shadow);
        let (enforce, enforce_clock) = limiter(10, 0, LimitMode::Enforce);
        for step in 0..50 {
            let s = shadow.check();
            let e = enforce.check();
            assert!(!matches!(s, LimitDecision::Rejected { .. }));
            assert_eq!(
                s == LimitDecision::ShadowRejected,
                matches!(e, LimitDecision::Rejected { .. }),
                "step {step}"
            );
            if step % 3 == 0 {
                clock.advance(Duration::from_millis(70));
                enforce_clock.advance(Duration::from_millis(70));
            }
        }
        // Shadow rejections took no tokens: after one interval exactly one is free again.
        clock.advance(Duration::from_millis(100));
        assert_eq!(shadow.check(), LimitDecision::Allowed);
        assert_eq!(shadow.check(), LimitDecision::ShadowRejected);
    }

    #[test]
    fn tokio_instant_arithmetic_saturates() {
        let now = TokioClock.now();
        let later = now + Nanos::from(Duration::from_millis(5));
        assert_eq!(
            later.duration_since(now),
            Nanos::from(Duration::from_millis(5))
        );
        assert_eq!(now.duration_since(later), Nanos::from(Duration::ZERO));
        assert_eq!(later.saturating_sub(Duration::from_millis(5).into()), now);
    }

    #[test]
    fn production_limiter_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RateLimiter>();
        let limiter = RateLimiter::new(&limit(1, 0, LimitMode::Enforce)).expect("limiter");
        assert_eq!(limiter.check(), LimitDecision::Allowed);
    }
}
