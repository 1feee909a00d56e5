//! Delays between attempts: capped exponential backoff with full jitter, and `Retry-After`.
//!
//! The delay before retry `n` (`n = 0` for the first retry) is drawn uniformly from
//! `[0, min(backoff_max, backoff_base × 2^n)]` — "full jitter" (AWS Architecture Blog,
//! "Exponential Backoff and Jitter"). Spreading retries over the whole interval, not only its top
//! half, is what breaks up the synchronized waves of callers that all failed at the same moment.
//! `jitter = false` yields the upper bound itself, for tests and for reasoning about the worst
//! case against `timeouts.total`.
//!
//! # Why not `backon`
//!
//! `backon::ExponentialBuilder` was the first choice, but it differs from the contract on three
//! points (checked against backon 1.6): its jitter adds `[0, d)` *on top of* `d` (so delays lie
//! in `[d, 2d)` and may exceed `backoff_max`), its first delay is `min_delay` even when
//! `max_delay` is smaller, and it multiplies in `f32` (25 ms × 2 gives 50.000001 ms). The capped
//! exponential is one line of integer arithmetic, so this module computes it exactly and draws
//! the jitter with `fastrand`; there is nothing left for backon to do.
//!
//! A [`Backoff`] lives for one app request. Creating one seeds a small PRNG from fastrand's
//! thread-local generator: no allocation, no lock, no system call.

use std::time::{Duration, SystemTime};

use crate::policy::Retry;

/// The delays before successive retries of one request.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    /// Retries whose delay was already handed out.
    retries: u32,
    jitter: bool,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Backoff for `retry`'s `backoff_base` and `backoff_max`; `jitter = false` always yields the
    /// upper bound.
    pub fn new(retry: &Retry, jitter: bool) -> Self {
        Self::with_rng(retry, jitter, fastrand::Rng::new())
    }

    /// Like [`Backoff::new`] with a seeded random generator (reproducible jitter).
    pub fn with_seed(retry: &Retry, seed: u64) -> Self {
        Self::with_rng(retry, true, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(retry: &Retry, jitter: bool, rng: fastrand::Rng) -> Self {
        Self {
            base: retry.backoff_base,
            max: retry.backoff_max,
            retries: 0,
            jitter,
            rng,
        }
    }

    /// The delay before the next retry; each call moves on to the following retry.
    pub fn delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.retries);
        self.retries = self.retries.saturating_add(1);
        if !self.jitter {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// The upper bound of the delay before retry `n` (0-based): `min(max, base × 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let nanos = self.base.as_nanos().saturating_mul(1 << n.min(64));
        u64::try_from(nanos)
            .map_or(Duration::MAX, Duration::from_nanos)
            .min(self.max)
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Never `None`: how many retries happen is the retry loop's decision (`attempts`, budget,
    /// deadline), not the backoff's.
    fn next(&mut self) -> Option<Duration> {
        Some(self.delay())
    }
}

/// The delay a `Retry-After` header asks for: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, also the obsolete RFC 850 and asctime forms). A date in
/// the past gives zero; anything else unparseable gives `None`. The caller caps the result by the
/// request's remaining deadline.
pub fn retry_after_delay(header: &http::HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = header.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only an overflow can fail, and it means "very long".
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn retry(base_ms: u64, max_ms: u64) -> Retry {
        Retry {
            attempts: 3,
            on: Vec::new(),
            statuses: Vec::new(),
            methods: Vec::new(),
            backoff_base: Duration::from_millis(base_ms),
            backoff_max: Duration::from_millis(max_ms),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            honor_retry_after: true,
            max_replay_bytes: 65536,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn without_jitter_doubles_then_caps() {
        let delays: Vec<_> = Backoff::new(&retry(25, 250), false).take(7).collect();
        assert_eq!(
            delays,
            [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250), ms(250)]
        );
    }

    #[test]
    fn max_below_base_caps_the_first_delay_too() {
        let mut backoff = Backoff::new(&retry(25, 10), false);
        assert_eq!(backoff.delay(), ms(10));
        let mut backoff = Backoff::new(&retry(25, 0), false);
        assert_eq!(backoff.delay(), Duration::ZERO);
    }

    #[test]
    fn ceiling_never_overflows() {
        let backoff = Backoff::new(&retry(25, 250), false);
        assert_eq!(backoff.ceiling(40), ms(250));
        assert_eq!(backoff.ceiling(u32::MAX), ms(250));
        let mut unbounded = retry(1000, 0);
        unbounded.backoff_max = Duration::MAX;
        let backoff = Backoff::new(&unbounded, false);
        assert_eq!(backoff.ceiling(10), Duration::from_secs(1024));
        assert_eq!(backoff.ceiling(200), Duration::MAX);
    }

    #[test]
    fn with_jitter_every_delay_is_within_its_bound() {
        for seed in 0..50 {
            let mut backoff = Backoff::with_seed(&retry(25, 250), seed);
            for n in 0..8 {
                let bound = backoff.ceiling(n);
                let delay = backoff.delay();
                assert!(
                    delay <= bound,
                    "seed {seed}, retry {n}: {delay:?} > {bound:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_interval() {
        let mut low = false;
        let mut high = false;
        for seed in 0..200 {
            let delay = Backoff::with_seed(&retry(100, 100), seed).delay();
            low |= delay < ms(25);
            high |= delay > ms(75);
        }
        assert!(low && high, "full jitter reaches both ends of [0, 100ms]");
    }

    #[test]
    fn seeded_jitter_is_reproducible() {
        let a: Vec<_> = Backoff::with_seed(&retry(25, 250), 7).take(5).collect();
        let b: Vec<_> = Backoff::with_seed(&retry(25, 250), 7).take(5).collect();
        assert_eq!(a, b);
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn after(value: &str) -> Option<Duration> {
        retry_after_delay(&HeaderValue::from_str(value).expect("header value"), now())
    }

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(after("3"), Some(Duration::from_secs(3)));
        assert_eq!(after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            after("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let future = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        assert_eq!(after(&future), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(30));
        assert_eq!(after(&past), Some(Duration::ZERO));
        // 2023-11-14T22:13:20Z is `now()`; the RFC 850 form parses too.
        assert_eq!(
            after("Tuesday, 14-Nov-23 22:13:25 GMT"),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_garbage_is_none() {
        for value in [
            "",
            "soon",
            "-1",
            "1.5",
            "3s",
            "Wed, 99 Foo 2015 07:28:00 GMT",
        ] {
            assert_eq!(after(value), None, "{value:?}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff3").expect("header value");
        assert_eq!(retry_after_delay(&opaque, now()), None);
    }
}
