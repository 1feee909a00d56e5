//! Delays between attempts: capped exponential backoff with full jitter, and `Retry-After`.
//!
//! The delay before retry `n` (`n = 0` for the first retry) is drawn uniformly from
//! `[0, min(backoff_max, backoff_base × 2^n)]` — "full jitter" (AWS Architecture Blog,
//! "Exponential Backoff and Jitter"). Spreading retries over the whole interval, not only its top
//! half, is what breaks up the synchronized waves of callers that all failed at the same moment.
//! `jitter = false` yields the upper bound itself, for tests and for reasoning about the worst
//! case against `timeouts.total`.
//!
//! The exponential schedule comes from `backon` (the maintained successor of `backoff`):
//! `ExponentialBuilder` with factor 2, `backoff_base` as the first delay and `backoff_max` as
//! the cap. backon's own jitter adds `[0, d)` on top of `d` (delays in `[d, 2d)`, possibly above
//! the cap), which is not the full jitter that docs/ARCHITECTURE.md §3 specifies, so the schedule
//! is used without it and the draw in `[0, ceiling]` is made here with `fastrand`. The ceiling is
//! also capped here once more, since backon starts at `min_delay` even when `max_delay` is smaller.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::policy::Retry;

/// The delays before successive retries of one request.
#[derive(Debug)]
pub struct Backoff {
    schedule: ExponentialBackoff,
    max: Duration,
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
        let schedule = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(retry.backoff_base)
            .with_max_delay(retry.backoff_max)
            .without_max_times()
            .build();
        Self {
            schedule,
            max: retry.backoff_max,
            jitter,
            rng,
        }
    }

    /// The delay before the next retry; each call moves on to the following retry.
    pub fn delay(&mut self) -> Duration {
        let ceiling = self.schedule.next().unwrap_or(self.max).min(self.max);
        if !self.jitter {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }
}

impl Iterator for Backoff {
    type Item = Duration;

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
            grpc_codes: Vec::new(),
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

    /// backon computes in `f32`: compare to the microsecond.
    fn micros(delays: impl IntoIterator<Item = Duration>) -> Vec<u128> {
        delays.into_iter().map(|d| d.as_micros()).collect()
    }

    #[test]
    fn without_jitter_doubles_then_caps() {
        let delays: Vec<_> = Backoff::new(&retry(25, 250), false).take(7).collect();
        let expected = [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250), ms(250)];
        assert_eq!(micros(delays), micros(expected));
    }

    #[test]
    fn max_below_base_caps_the_first_delay_too() {
        let mut backoff = Backoff::new(&retry(25, 10), false);
        assert_eq!(backoff.delay(), ms(10));
        let mut backoff = Backoff::new(&retry(25, 0), false);
        assert_eq!(backoff.delay(), Duration::ZERO);
    }

    #[test]
    fn long_schedules_stay_at_the_cap() {
        let delays: Vec<_> = Backoff::new(&retry(25, 250), false).take(200).collect();
        assert!(delays[10..].iter().all(|d| *d == ms(250)));
    }

    #[test]
    fn with_jitter_every_delay_is_within_its_bound() {
        for seed in 0..50 {
            let mut backoff = Backoff::with_seed(&retry(25, 250), seed);
            let bounds = Backoff::new(&retry(25, 250), false);
            for (n, bound) in bounds.take(8).enumerate() {
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
