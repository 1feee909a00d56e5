//! Client-side throttling (Google SRE book, "Handling Overload"; `[breaker] mode = "throttle"`,
//! docs/ARCHITECTURE.md §18): instead of a breaker's open or closed, each try is refused locally
//! with probability
//!
//! ```text
//!     p = max(0, (requests − K × accepts) / (requests + 1))
//! ```
//!
//! where `requests` counts every try the app asked for over the last `throttle_window` (the
//! refused ones included: that is what lets p rise while the upstream keeps refusing) and
//! `accepts` those the upstream accepted (no failure, no 429). With K = 2 nothing is refused
//! until fewer than half the requests are accepted; the upstream keeps getting about
//! K × accepts tries, enough to notice its recovery, which lowers p smoothly: no open period,
//! no probe.
//!
//! The window is [`BUCKETS`] buckets of `throttle_window / BUCKETS` that rotate with `now`, so
//! a request is forgotten between (1 − 1/BUCKETS) and 1 × the window after it. Pure: every
//! operation takes `now`, and the random draw is the caller's.

use std::time::Duration;

use tokio::time::Instant;

/// Buckets of the window.
pub const BUCKETS: usize = 20;

/// The counts of one bucket, for the bucket index `at`.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    at: u64,
    requests: u32,
    accepts: u32,
}

/// Requests and accepts over the last window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleCounts {
    pub requests: u32,
    pub accepts: u32,
}

/// The throttle of one destination. See the module docs.
#[derive(Debug, Clone)]
pub struct Throttle {
    k: f64,
    origin: Instant,
    bucket: Duration,
    buckets: [Bucket; BUCKETS],
    /// The probability the last request was decided with.
    last: f64,
}

impl Throttle {
    pub fn new(window: Duration, k: f64, now: Instant) -> Self {
        let buckets = u32::try_from(BUCKETS).unwrap_or(u32::MAX);
        Throttle {
            k,
            origin: now,
            bucket: (window / buckets).max(Duration::from_millis(1)),
            buckets: [Bucket::default(); BUCKETS],
            last: 0.0,
        }
    }

    /// The chance that a try asked for now is refused.
    pub fn probability(&self, now: Instant) -> f64 {
        let counts = self.counts(now);
        let requests = f64::from(counts.requests);
        let excess = requests - self.k * f64::from(counts.accepts);
        (excess / (requests + 1.0)).clamp(0.0, 1.0)
    }

    /// Counts one try asked for, and decides it with `draw` (uniform in [0, 1)): `Err(p)` when
    /// it is refused with probability `p`, else `Ok(p)`.
    pub fn request(&mut self, now: Instant, draw: f64) -> Result<f64, f64> {
        let p = self.probability(now);
        self.last = p;
        self.current(now).requests += 1;
        if draw < p {
            Err(p)
        } else {
            Ok(p)
        }
    }

    /// The probability the last request was decided with (0 before any), without counting
    /// the window again.
    pub fn last_probability(&self) -> f64 {
        self.last
    }

    /// The upstream accepted a try.
    pub fn accepted(&mut self, now: Instant) {
        self.current(now).accepts += 1;
    }

    /// Requests and accepts over the window ending now.
    pub fn counts(&self, now: Instant) -> ThrottleCounts {
        let index = self.index(now);
        let oldest = index.saturating_sub(BUCKETS as u64 - 1);
        let mut counts = ThrottleCounts::default();
        for bucket in &self.buckets {
            if (oldest..=index).contains(&bucket.at) {
                counts.requests = counts.requests.saturating_add(bucket.requests);
                counts.accepts = counts.accepts.saturating_add(bucket.accepts);
            }
        }
        counts
    }

    fn index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn current(&mut self, now: Instant) -> &mut Bucket {
        let index = self.index(now);
        let slot = &mut self.buckets[usize::try_from(index % BUCKETS as u64).unwrap_or(0)];
        if slot.at != index {
            *slot = Bucket {
                at: index,
                ..Bucket::default()
            };
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> (Throttle, Instant) {
        let now = Instant::now();
        (Throttle::new(Duration::from_secs(120), 2.0, now), now)
    }

    #[test]
    fn nothing_is_refused_while_half_the_requests_are_accepted() {
        let (mut t, now) = throttle();
        for i in 0..100 {
            assert!(t.request(now, 0.0).is_ok(), "request {i}");
            if i % 2 == 0 {
                t.accepted(now);
            }
        }
        assert_eq!(t.probability(now), 0.0);
    }

    #[test]
    fn the_probability_is_the_sre_formula() {
        let (mut t, now) = throttle();
        for _ in 0..100 {
            let _ = t.request(now, 0.99);
        }
        for _ in 0..10 {
            t.accepted(now);
        }
        // (100 − 2 × 10) / (100 + 1)
        let p = t.probability(now);
        assert!((p - 80.0 / 101.0).abs() < 1e-9, "{p}");
        // A draw below p is refused, one above is let through; both count as requests.
        assert_eq!(t.request(now, 0.5), Err(p));
        let after = t.probability(now);
        assert!(after > p);
        assert_eq!(t.request(now, after + 0.01), Ok(after));
        assert_eq!(t.last_probability(), after);
        assert_eq!(t.counts(now).requests, 102);
    }

    #[test]
    fn an_upstream_that_accepts_nothing_is_refused_more_and_more() {
        let (mut t, now) = throttle();
        let mut refused = 0;
        for i in 0..1000u32 {
            // A fixed sequence of draws spread over [0, 1).
            let draw = f64::from(i * 7919 % 1000) / 1000.0;
            refused += u32::from(t.request(now, draw).is_err());
        }
        assert!(t.probability(now) > 0.99);
        // Nearly all refused: only the first draws against a low p went through.
        assert!(refused > 950, "{refused}");
    }

    #[test]
    fn the_window_forgets() {
        let (mut t, start) = throttle();
        for _ in 0..50 {
            let _ = t.request(start, 0.99);
        }
        assert!(t.probability(start) > 0.9);
        // 6 s buckets: 114 s later the bucket still counts, at 120 s it is gone.
        let later = start + Duration::from_secs(114);
        assert_eq!(t.counts(later).requests, 50);
        let gone = start + Duration::from_secs(120);
        assert_eq!(t.counts(gone), ThrottleCounts::default());
        assert_eq!(t.probability(gone), 0.0);
    }

    #[test]
    fn recovery_lowers_the_probability_smoothly() {
        let (mut t, now) = throttle();
        for _ in 0..100 {
            let _ = t.request(now, 0.99);
        }
        let mut last = t.probability(now);
        // The upstream accepts again: every accept lowers p, until it reaches 0.
        for _ in 0..50 {
            t.accepted(now);
            let p = t.probability(now);
            assert!(p <= last);
            last = p;
        }
        assert_eq!(last, 0.0);
    }
}
