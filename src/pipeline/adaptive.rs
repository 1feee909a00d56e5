//! Adaptive concurrency limits (`[concurrency] mode = "aimd" | "gradient"`,
//! docs/ARCHITECTURE.md §18): the gate's limit follows what the upstream shows, window by
//! window, instead of a fixed `max_in_flight`.
//!
//! Every try's latency to its response head is a sample, with the requests in flight when it
//! ended and whether it was a *drop* (a timeout, a `429` or a `503`: the upstream said it has
//! too much; a drop's latency is not averaged). Samples are gathered into windows of `window` (and at least [`MIN_SAMPLES`]
//! tries, so that a quiet destination is not judged on one call); each window ends with one
//! update of the limit, bounded by `min_limit` / `max_limit`:
//!
//! - **`aimd`**: a window with a timeout, or whose average latency is above `rtt_tolerance` ×
//!   the long-run minimum, multiplies the limit by `backoff_ratio`; one with refusals (429,
//!   503) by 1 − their share of its slot time (a proportional cut, as DCTCP's: a limit one
//!   above what the upstream takes steps back a little, not a tenth), never below
//!   `backoff_ratio`; any other
//!   window adds one, if the app used at least half the limit (an app that sends little proves
//!   nothing about a larger limit). A try that started before the limit last moved is not
//!   judged again (TCP cuts once per round trip, not once per loss). The long-run minimum is the lowest window average of the last
//!   `long_window`, kept in two halves that take turns: it follows an upstream that became
//!   slower for good within `long_window` instead of ratcheting (envoy#11579).
//! - **`gradient`** (Netflix's Gradient2, and a window with a drop backs off as in `aimd`:
//!   Gradient2 reads latency only, and an upstream that refuses at once looks fast): the
//!   long-run latency is an exponential average over
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
    pub signal: Signal,
}

/// What a try says of the upstream's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It was served: its latency counts.
    Served,
    /// A `429` or a `503` (gRPC `resource-exhausted`, `unavailable`): too much, said at once.
    Refused,
    /// No head in time: too much, found out the expensive way.
    TimedOut,
}

impl Signal {
    /// `Refused` when `refused`, else `Served`.
    pub fn refused_if(refused: bool) -> Signal {
        if refused {
            Signal::Refused
        } else {
            Signal::Served
        }
    }
}

/// The samples of the window being gathered.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    samples: u32,
    /// The latencies of the samples that were not drops: a `429` answered at once says
    /// nothing of how long the upstream takes to serve.
    timed: u32,
    rtt_sum: Duration,
    max_in_flight: usize,
    /// The time the samples judged (those not stale) held their slots, and the part of it
    /// refusals held.
    judged_time: Duration,
    refused_time: Duration,
    refused: bool,
    timed_out: bool,
}

impl Window {
    fn new(start: Instant) -> Self {
        Window {
            start,
            samples: 0,
            timed: 0,
            rtt_sum: Duration::ZERO,
            max_in_flight: 0,
            judged_time: Duration::ZERO,
            refused_time: Duration::ZERO,
            refused: false,
            timed_out: false,
        }
    }

    /// The factor a window with a drop multiplies the limit by: `backoff_ratio` after a
    /// timeout; after refusals alone, 1 − their share of the window's slot time, never below
    /// `backoff_ratio`. `None`: no drop.
    ///
    /// The share is of time, not of tries: a refusal comes back at once and its slot is taken
    /// again at once, so a limit one above what the upstream takes turns into a stream of fast
    /// refusals (half the tries may be refused) that hold about one slot's worth of the time.
    /// Cutting by that share (as DCTCP cuts in proportion to the packets marked) steps back
    /// by about the excess, instead of a tenth every time the limit probes one too high.
    fn backoff(&self, backoff_ratio: f64) -> Option<f64> {
        if self.timed_out {
            return Some(backoff_ratio);
        }
        self.refused.then(|| {
            let held = self.judged_time.as_secs_f64();
            let share = if held > 0.0 {
                self.refused_time.as_secs_f64() / held
            } else {
                1.0
            };
            (1.0 - share).max(backoff_ratio)
        })
    }

    /// The average latency of the samples that were not drops; `None` when all were.
    fn average(&self) -> Option<f64> {
        (self.timed > 0).then(|| self.rtt_sum.as_secs_f64() / f64::from(self.timed))
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
    /// When the limit last moved: a try that started before it tells of the old limit.
    changed_at: Instant,
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
            changed_at: now,
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
    ///
    /// A try that started before the limit last moved counts towards closing the window, but
    /// its drop and its latency are not judged again: they tell of the old limit, which was
    /// already answered (as TCP halves its window once per round trip, not once per loss).
    pub fn record(&mut self, now: Instant, sample: Sample) -> Option<usize> {
        let stale = now
            .checked_sub(sample.rtt)
            .is_none_or(|start| start < self.changed_at);
        let w = &mut self.window;
        w.samples += 1;
        if !stale {
            w.judged_time += sample.rtt;
            match sample.signal {
                Signal::Served => {
                    w.timed += 1;
                    w.rtt_sum += sample.rtt;
                }
                Signal::Refused => {
                    w.refused = true;
                    w.refused_time += sample.rtt;
                }
                Signal::TimedOut => w.timed_out = true,
            }
        }
        w.max_in_flight = w.max_in_flight.max(sample.in_flight);
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
        let next = next.clamp(min, max);
        if next.round() != self.limit.round() {
            self.changed_at = now;
        }
        self.limit = next;
        Some(self.limit())
    }

    fn aimd(&mut self, now: Instant, window: &Window) -> f64 {
        let queueing = window.average().is_some_and(|short| {
            let minimum = self.long_minimum(now, short);
            short > self.config.rtt_tolerance * minimum
        });
        let ratio = self.config.backoff_ratio;
        if queueing {
            self.limit * ratio
        } else if let Some(factor) = window.backoff(ratio) {
            self.limit * factor
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
        let c = &self.config;
        // Gradient2 reads latency only; an upstream that refuses at once (429, 503) would look
        // fast and the limit grow into its refusals: a drop backs off as in `aimd`.
        if let Some(factor) = window.backoff(c.backoff_ratio) {
            return self.limit * factor;
        }
        let Some(short) = window.average() else {
            return self.limit;
        };
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

    /// Feeds one full window (10 samples over 100 ms) of `rtt` with `in_flight`, the first
    /// of them a timeout when `dropped` (a cut of `backoff_ratio`, 0.9); returns the limit
    /// after it and the window's end.
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
            let signal = if dropped && i == 0 {
                Signal::TimedOut
            } else {
                Signal::Served
            };
            let sample = Sample {
                rtt,
                in_flight,
                signal,
            };
            result = result.or(limit.record(at, sample));
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
            signal: Signal::Served,
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
    fn refusals_answered_at_once_do_not_lower_the_latency_a_window_is_judged_by() {
        for mode in [ConcurrencyMode::Aimd, ConcurrencyMode::Gradient] {
            let mut now = Instant::now();
            let mut limit = AdaptiveLimit::new(&config(mode), now);
            for _ in 0..3 {
                (_, now) = window(&mut limit, now, 10 * MS, 1000, false);
            }
            // A window of 429s answered in 0.1 ms: a drop, so the limit backs off...
            let before = limit.limit();
            let mut closed = None;
            for i in 0..MIN_SAMPLES {
                let sample = Sample {
                    rtt: MS / 10,
                    in_flight: 1000,
                    signal: Signal::Refused,
                };
                closed = closed.or(limit.record(now + (i + 1) * 10 * MS, sample));
            }
            now += 100 * MS;
            assert!(closed.expect("closed") < before, "{mode:?}");
            // ...but 10 ms answers after it are not queueing against a 0.1 ms "minimum".
            let after = limit.limit();
            let (l, _) = window(&mut limit, now, 10 * MS, 1000, false);
            assert!(l >= after, "{mode:?}: {l} < {after}");
        }
    }

    #[test]
    fn a_drop_of_a_try_sent_under_the_old_limit_is_not_answered_twice() {
        let mut now = Instant::now() + Duration::from_secs(1);
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), now);
        (_, now) = window(&mut limit, now, 10 * MS, 30, false);
        let (cut, end) = window(&mut limit, now, 10 * MS, 30, true);
        assert_eq!(cut, 19); // 21 × 0.9
        now = end;
        // The next window's first try started 50 ms ago, before the cut, and was refused:
        // already answered. The others are good: the limit grows again.
        let stale = Sample {
            rtt: 50 * MS,
            in_flight: 30,
            signal: Signal::Refused,
        };
        assert_eq!(limit.record(now + MS, stale), None);
        let (l, _) = window(&mut limit, now + MS, 10 * MS, 30, false);
        assert_eq!(l, 20);
        // A drop of a try that started after the cut is a new signal.
        let (l, _) = window(&mut limit, now + 200 * MS, 10 * MS, 30, true);
        assert_eq!(l, 18);
    }

    #[test]
    fn refusals_cut_in_proportion_and_a_timeout_by_backoff_ratio() {
        let mut now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), now);
        let feed = |limit: &mut AdaptiveLimit, now: Instant, bad: u32, signal: Signal| {
            let mut closed = None;
            for i in 0..100u32 {
                let sample = Sample {
                    rtt: MS,
                    in_flight: 20,
                    signal: if i < bad { signal } else { Signal::Served },
                };
                closed = closed.or(limit.record(now + (i + 1) * MS, sample));
            }
            closed.expect("a window closed")
        };
        // 100 tries of 1 ms with 5 refused: 5 % of the slot time, × 0.95, 20 → 19; with 50
        // refused: at most × 0.9.
        assert_eq!(feed(&mut limit, now, 5, Signal::Refused), 19);
        now += Duration::from_secs(1);
        assert_eq!(feed(&mut limit, now, 50, Signal::Refused), 17);
        now += Duration::from_secs(1);
        // One timeout among 100: the whole backoff_ratio.
        assert_eq!(feed(&mut limit, now, 1, Signal::TimedOut), 15);
    }

    #[test]
    fn fast_refusals_weigh_by_the_time_they_hold_not_by_their_number() {
        let now = Instant::now();
        let mut limit = AdaptiveLimit::new(&config(ConcurrencyMode::Aimd), now);
        // 50 served in 10 ms and 50 refused in 0.1 ms: half the tries, 1 % of the time.
        let mut closed = None;
        for i in 0..100u32 {
            let (rtt, signal) = if i % 2 == 0 {
                (10 * MS, Signal::Served)
            } else {
                (MS / 10, Signal::Refused)
            };
            let sample = Sample {
                rtt,
                in_flight: 20,
                signal,
            };
            closed = closed.or(limit.record(now + 20 * MS + i * MS, sample));
        }
        // 20 × 0.99 = 19.8: a small step back, not 20 × 0.9 = 18.
        assert_eq!(closed, Some(20));
        assert!(limit.limit < 20.0);
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
