//! Adaptive concurrency limits (`[concurrency] mode = "aimd" | "gradient"`,
//! docs/ARCHITECTURE.md §18): the gate's limit follows what the upstream shows, window by
//! window, instead of a fixed `max_in_flight`.
//!
//! Every try's latency to its response head is a sample, with the requests in flight when it
//! ended and whether it was a *drop* (a timeout, a `429` or a `503`: the upstream said it has
//! too much). Samples are gathered into windows of `window` (and at least [`MIN_SAMPLES`]
//! tries, so that a quiet destination is not judged on one call); each window ends with one
//! update of the limit, bounded by `min_limit` / `max_limit`:
//!
//! - **`aimd`**: a window with a drop, or whose average latency is above `rtt_tolerance` × the
//!   long-run minimum, multiplies the limit by `backoff_ratio`; any other window adds one, if
//!   the app used at least half the limit (an app that sends little proves nothing about a
//!   larger limit). The long-run minimum is the lowest window average of the last
//!   `long_window`, kept in two halves that take turns: it follows an upstream that became
//!   slower for good within `long_window` instead of ratcheting (envoy#11579).
//! - **`gradient`** (Netflix's Gradient2): the long-run latency is an exponential average over
//!   `long_window`; each window the limit moves by `smoothing` towards
//!   `limit × clamp(rtt_tolerance × long ÷ short, 0.5, 1) + queue_allowance`, and the long
//!   average is pulled down (× 0.95) while it is more than twice the window's, so that it
//!   comes back after a long overload. The limit only grows while the app uses half of it.
//!
//! Pure: every operation takes `now`; the gate ([`super::gate`]) owns one behind a lock.

use std::time::Duration;

use tokio::time::Instant;

use crate::policy::{Concurrency, ConcurrencyMode};

/// A window is judged once it has at least this many samples (and lasted `window`).
pub const MIN_SAMPLES: u32 = 10;

/// Windows of the exponential average's warm-up, averaged plainly.
const WARMUP_WINDOWS: u32 = 10;

/// One try, as the limit sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Its time to the response head (or to its failure).
    pub rtt: Duration,
    /// Requests in flight when it ended, itself included.
    pub in_flight: usize,
    /// A timeout, a `429` or a `503`.
    pub dropped: bool,
}

/// The samples of the window being gathered.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    samples: u32,
    rtt_sum: Duration,
    max_in_flight: usize,
    dropped: bool,
}

impl Window {
    fn new(start: Instant) -> Self {
        Window {
            start,
            samples: 0,
            rtt_sum: Duration::ZERO,
            max_in_flight: 0,
            dropped: false,
        }
    }

    fn average(&self) -> f64 {
        self.rtt_sum.as_secs_f64() / f64::from(self.samples.max(1))
    }
}

/// The long-run latency a window is compared with.
#[derive(Debug, Clone, Copy)]
enum LongRun {
    /// `aimd`: the lowest window average of this half and of the previous one.
    Minimum {
        current: f64,
        previous: f64,
        half_start: Instant,
    },
    /// `gradient`: an exponential average, plainly averaged over its first windows.
    Average { value: f64, windows: u32 },
}

/// The adaptive limit of one destination. See the module docs.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    config: Concurrency,
    limit: f64,
    window: Window,
    long: LongRun,
}

impl AdaptiveLimit {
    pub fn new(config: &Concurrency, now: Instant) -> Self {
        let long = match config.mode {
            ConcurrencyMode::Gradient => LongRun::Average {
                value: 0.0,
                windows: 0,
            },
            ConcurrencyMode::Aimd | ConcurrencyMode::Fixed => LongRun::Minimum {
                current: f64::INFINITY,
                previous: f64::INFINITY,
                half_start: now,
            },
        };
        let initial = config
            .initial_limit
            .clamp(config.min_limit, config.max_limit);
        AdaptiveLimit {
            config: *config,
            limit: f64::from(initial),
            window: Window::new(now),
            long,
        }
    }

    /// The limit now: requests in flight allowed at once.
    pub fn limit(&self) -> usize {
        // Bounded by max_limit (at most 1,000,000): no truncation.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let limit = self.limit.round() as usize;
        limit
    }

    /// Adds one sample; returns the new limit when it closed a window.
    pub fn record(&mut self, now: Instant, sample: Sample) -> Option<usize> {
        let w = &mut self.window;
        w.samples += 1;
        w.rtt_sum += sample.rtt;
        w.max_in_flight = w.max_in_flight.max(sample.in_flight);
        w.dropped |= sample.dropped;
        let lasted = now.saturating_duration_since(w.start) >= self.config.window;
        if !lasted || w.samples < MIN_SAMPLES {
            return None;
        }
        let window = std::mem::replace(&mut self.window, Window::new(now));
        let next = match self.config.mode {
            ConcurrencyMode::Gradient => self.gradient(&window),
            ConcurrencyMode::Aimd | ConcurrencyMode::Fixed => self.aimd(now, &window),
        };
        let (min, max) = (
            f64::from(self.config.min_limit),
            f64::from(self.config.max_limit),
        );
        self.limit = next.clamp(min, max);
        Some(self.limit())
    }

    fn aimd(&mut self, now: Instant, window: &Window) -> f64 {
        let short = window.average();
        let minimum = self.long_minimum(now, short);
        let queueing = short > self.config.rtt_tolerance * minimum;
        if window.dropped || queueing {
            self.limit * self.config.backoff_ratio
        } else if app_uses_half(window, self.limit) {
            self.limit + 1.0
        } else {
            self.limit
        }
    }

    /// Folds `short` into the long-run minimum and returns it.
    fn long_minimum(&mut self, now: Instant, short: f64) -> f64 {
        let half = self.config.long_window / 2;
        let LongRun::Minimum {
            current,
            previous,
            half_start,
        } = &mut self.long
        else {
            return short;
        };
        if now.saturating_duration_since(*half_start) >= half {
            *previous = *current;
            *current = f64::INFINITY;
            *half_start = now;
        }
        *current = current.min(short);
        current.min(*previous)
    }

    fn gradient(&mut self, window: &Window) -> f64 {
        let short = window.average();
        let long = self.long_average(short);
        if !app_uses_half(window, self.limit) {
            return self.limit;
        }
        let c = &self.config;
        let gradient = if short > 0.0 {
            (c.rtt_tolerance * long / short).clamp(0.5, 1.0)
        } else {
            1.0
        };
        let target = self.limit * gradient + f64::from(c.queue_allowance);
        self.limit * (1.0 - c.smoothing) + target * c.smoothing
    }

    /// Folds `short` into the long-run average and returns it.
    fn long_average(&mut self, short: f64) -> f64 {
        let span = self.config.long_window.as_secs_f64() / self.config.window.as_secs_f64();
        let LongRun::Average { value, windows } = &mut self.long else {
            return short;
        };
        *windows = windows.saturating_add(1);
        if *windows <= WARMUP_WINDOWS {
            *value += (short - *value) / f64::from(*windows);
        } else {
            let alpha = 2.0 / (span.max(1.0) + 1.0);
            *value += (short - *value) * alpha;
        }
        // Back from a long overload without waiting for the average to forget it.
        if *value > 2.0 * short {
            *value *= 0.95;
        }
        *value
    }
}

/// Whether the app kept at least half the limit busy in `window`.
fn app_uses_half(window: &Window, limit: f64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let busiest = window.max_in_flight as f64;
    busiest * 2.0 >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(mode: ConcurrencyMode) -> Concurrency {
        Concurrency {
            mode,
            ..Concurrency::default()
        }
    }

    /// Feeds one full window (10 samples over 100 ms) of `rtt` with `in_flight`; returns the
    /// limit after it and the window's end.
    fn window(
        limit: &mut AdaptiveLimit,
        start: Instant,
        rtt: Duration,
        in_flight: usize,
        dropped: bool,
    ) -> (usize, Instant) {
        let mut result = None;
        for i in 0..MIN_SAMPLES {
            let at = start + (i + 1) * 10 * MS;
            let dropped = dropped && i == 0;
            result = result.or(limit.record(
                at,
                Sample {
                    rtt,
                    in_flight,
                    dropped,
                },
            ));
        }
        (result.expect("a window closed"), start + 100 * MS)
    }

    #[test]
    fn a_window_needs_its_time_and_ten_samples() {
        let start = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), start);
        let sample = Sample {
            rtt: 10 * MS,
            in_flight: 20,
            dropped: false,
        };
        // Ten samples within 50 ms: no window yet.
        for i in 0..10 {
            assert_eq!(limit.record(start + i * 5 * MS, sample), None);
        }
        // The window has lasted: the next sample closes it.
        assert_eq!(limit.record(start + 100 * MS, sample), Some(21));
        // A quiet destination: 9 samples over a second close nothing.
        for i in 1..10 {
            assert_eq!(limit.record(start + i * 100 * MS + 100 * MS, sample), None);
        }
    }

    #[test]
    fn aimd_adds_one_per_good_window_and_backs_off_on_a_drop() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), now);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let (l, end) = window(&mut limit, now, 10 * MS, 30, false);
            seen.push(l);
            now = end;
        }
        assert_eq!(seen, [21, 22, 23, 24, 25]);
        // A drop (a timeout, a 429 or a 503): × 0.9.
        let (l, end) = window(&mut limit, now, 10 * MS, 30, true);
        assert_eq!(l, 23); // 25 × 0.9 = 22.5
                           // An app that uses less than half the limit proves nothing: no growth.
        let (l, _) = window(&mut limit, end, 10 * MS, 5, false);
        assert_eq!(l, 23);
    }

    #[test]
    fn aimd_backs_off_when_latency_exceeds_the_tolerance_over_the_minimum() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), now);
        let (l, end) = window(&mut limit, now, 10 * MS, 30, false);
        assert_eq!(l, 21);
        now = end;
        // 14 ms is within 1.5 × 10 ms: still grows.
        let (l, end) = window(&mut limit, now, 14 * MS, 30, false);
        assert_eq!(l, 22);
        now = end;
        // 16 ms is queueing: backs off, window after window, down to min_limit.
        let mut last = l;
        for _ in 0..40 {
            let (l, end) = window(&mut limit, now, 16 * MS, 30, false);
            assert!(l <= last);
            last = l;
            now = end;
        }
        assert_eq!(last, 5);
    }

    #[test]
    fn aimd_minimum_follows_an_upstream_that_became_slower_for_good() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), now);
        (_, now) = window(&mut limit, now, 10 * MS, 30, false);
        // The upstream now takes 40 ms for good: the limit backs off...
        let (l, end) = window(&mut limit, now, 40 * MS, 30, false);
        assert!(l < 21);
        now = end;
        // ...but within long_window (60 s) the old minimum is forgotten and it grows again.
        let mut grew = false;
        for _ in 0..700 {
            let before = limit.limit();
            let (l, end) = window(&mut limit, now, 40 * MS, 1000, false);
            grew |= l > before;
            now = end;
        }
        // 70 s of windows: growth resumed once the 10 ms minimum was at most 60 s old.
        assert!(grew);
        assert!(limit.limit() > 60, "{}", limit.limit());
    }

    #[test]
    fn gradient_grows_by_the_queue_allowance_and_shrinks_under_queueing() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Gradient), now);
        // Steady latency: gradient 1, each window adds smoothing × queue_allowance = 0.8.
        let mut l = 0;
        for _ in 0..10 {
            (l, now) = window(&mut limit, now, 10 * MS, 1000, false);
        }
        assert_eq!(l, 28); // 20 + 10 × 0.8
                           // Latency triples: gradient clamps at 0.5; limit × (0.8 + 0.1) + 0.8 per window.
        let before = limit.limit;
        (l, now) = window(&mut limit, now, 30 * MS, 1000, false);
        let expected = before * 0.8 + (before * 0.5 + 4.0) * 0.2;
        assert_eq!(l, expected.round() as usize);
        // Sustained, it falls until the queue allowance balances the gradient (the long
        // average creeps towards 30 ms meanwhile, as Gradient2's does).
        for _ in 0..100 {
            (l, now) = window(&mut limit, now, 30 * MS, 1000, false);
        }
        assert!((10..=20).contains(&l), "{l}");
    }

    #[test]
    fn gradient_long_average_comes_back_after_a_long_overload() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Gradient), now);
        // A long overload teaches the average 100 ms.
        for _ in 0..600 {
            (_, now) = window(&mut limit, now, 100 * MS, 1000, false);
        }
        // Latency returns to 10 ms: the average is pulled down by 5 % per window until it is
        // within twice the window's, and the limit grows again.
        let low = limit.limit();
        for _ in 0..60 {
            (_, now) = window(&mut limit, now, 10 * MS, 1000, false);
        }
        let LongRun::Average { value, .. } = limit.long else {
            panic!("gradient keeps an average");
        };
        assert!(value <= 0.021, "{value}");
        assert!(limit.limit() > low + 40);
    }

    #[test]
    fn the_limit_stays_within_its_bounds() {
        let mut config = config(ConcurrencyMode::Aimd);
        config.min_limit = 3;
        config.max_limit = 6;
        config.initial_limit = 50;
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config, now);
        assert_eq!(limit.limit(), 6);
        for _ in 0..20 {
            (_, now) = window(&mut limit, now, 10 * MS, 6, true);
        }
        assert_eq!(limit.limit(), 3);
    }
}
