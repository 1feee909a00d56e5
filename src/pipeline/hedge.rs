//! Hedged requests (`[hedge]`, docs/ARCHITECTURE.md §18; *The Tail at Scale*, Dean & Barroso
//! 2013; Finagle's `BackupRequestFilter`): when a try has no response head after `delay`, a
//! copy of the request goes to another endpoint, and the first head wins.
//!
//! This file holds the destination's side, pure but for atomics:
//!
//! - **The delay**: fixed, or a percentile of the destination's recent latency to a response
//!   head. Every answered try is one sample in a log-linear histogram ([`Latencies`]: 8
//!   buckets per power of two, so within 12.5 %); the percentile is taken from it at its
//!   [`MIN_SAMPLES`]th sample, then every [`REFRESH`] (once it holds that many again), and the
//!   histogram starts afresh each time, so the delay follows the last few seconds. Never below
//!   `min_delay`; unknown until the first percentile, when no hedge is sent (a destination's
//!   first 20 answers).
//! - **The budget**: a [`RetryBudget`] with `max_extra_load` as its ratio and no per-second
//!   allowance: every first try deposits `max_extra_load` of a hedge, every hedge withdraws
//!   one, over the budget's 10 s window, so hedges never add more than that fraction of
//!   requests, whatever the latency does.
//!
//! The race itself (copies, cancellation, which answer wins) is the proxy's
//! (`proxy/hedge.rs`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::RetryBudget;
use crate::histogram::{bucket, percentile_of, BUCKETS};
use crate::policy::{Hedge, HedgeDelay, Retry};

/// How often the percentile is taken afresh.
pub const REFRESH: Duration = Duration::from_secs(5);

/// A percentile needs at least this many samples.
pub const MIN_SAMPLES: u32 = 20;

/// A destination's hedging state. See the module docs.
#[derive(Debug)]
pub struct Hedging {
    config: Hedge,
    latencies: Latencies,
    budget: RetryBudget,
}

impl Hedging {
    pub fn new(config: &Hedge, retry: &Retry, now: Instant) -> Self {
        let budget = Retry {
            budget_ratio: config.max_extra_load,
            budget_min_per_second: 0,
            ..retry.clone()
        };
        Hedging {
            config: *config,
            latencies: Latencies::new(now),
            budget: RetryBudget::new_at(&budget, now),
        }
    }

    pub fn config(&self) -> &Hedge {
        &self.config
    }

    /// How long a try may wait for its head before a hedge is due; `None` while a percentile
    /// delay is still unknown.
    pub fn delay(&self) -> Option<Duration> {
        let delay = match self.config.delay {
            HedgeDelay::Fixed(delay) => delay,
            HedgeDelay::Percentile(_) => self.latencies.percentile()?,
        };
        Some(delay.max(self.config.min_delay))
    }

    /// One try's time to its response head.
    pub fn record(&self, now: Instant, latency: Duration) {
        if let HedgeDelay::Percentile(p) = self.config.delay {
            self.latencies.record(now, latency, p);
        }
    }

    /// A first try: it earns `max_extra_load` of a hedge.
    pub fn deposit(&self, now: Instant) {
        self.budget.deposit_at(now);
    }

    /// Pays for one hedge; `false` when the budget is spent.
    pub fn try_pay(&self, now: Instant) -> bool {
        self.budget.try_withdraw_at(now)
    }
}

/// A rolling log-linear histogram of latencies and the percentile last taken from it.
#[derive(Debug)]
struct Latencies {
    origin: Instant,
    counts: Box<[AtomicU32; BUCKETS]>,
    samples: AtomicU32,
    /// Milliseconds after `origin` of the next refresh.
    refresh_at: AtomicU64,
    /// The percentile in microseconds; 0 while unknown.
    percentile_us: AtomicU64,
    /// Taken by the one sample that refreshes (`try_lock`: the others never wait).
    refreshing: Mutex<()>,
}

impl Latencies {
    fn new(now: Instant) -> Self {
        Latencies {
            origin: now,
            counts: Box::new(std::array::from_fn(|_| AtomicU32::new(0))),
            samples: AtomicU32::new(0),
            // The first percentile as soon as there are enough samples.
            refresh_at: AtomicU64::new(0),
            percentile_us: AtomicU64::new(0),
            refreshing: Mutex::new(()),
        }
    }

    fn percentile(&self) -> Option<Duration> {
        match self.percentile_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn record(&self, now: Instant, latency: Duration, p: f64) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        let samples = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        let at = millis(now.saturating_duration_since(self.origin));
        if samples < MIN_SAMPLES || at < self.refresh_at.load(Ordering::Relaxed) {
            return;
        }
        let Ok(_refreshing) = self.refreshing.try_lock() else {
            return;
        };
        self.refresh_at
            .store(at + millis(REFRESH), Ordering::Relaxed);
        // Take the counts and start afresh: a sample added meanwhile lands in either window.
        let counts: Vec<(usize, u64)> = self
            .counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .enumerate()
            .filter(|&(_, c)| c > 0)
            .map(|(index, c)| (index, u64::from(c)))
            .collect();
        self.samples.store(0, Ordering::Relaxed);
        if let Some(us) = percentile_of(&counts, p) {
            self.percentile_us.store(us.max(1), Ordering::Relaxed);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn hedging(delay: HedgeDelay) -> (Hedging, Instant) {
        let now = Instant::now();
        let config = Hedge {
            enabled: true,
            delay,
            ..Hedge::default()
        };
        (Hedging::new(&config, &Retry::default(), now), now)
    }

    #[test]
    fn the_percentile_delay_is_known_after_a_refresh_and_follows_the_latency() {
        let (h, start) = hedging(HedgeDelay::Percentile(95.0));
        // Nothing is known before the 20th sample; its percentile is the first one.
        for i in 0..(MIN_SAMPLES - 1) {
            h.record(start + i * MS, 10 * MS);
        }
        assert_eq!(h.delay(), None);
        let first = start + 19 * MS;
        h.record(first, 10 * MS);
        assert!(h.delay().is_some());
        // Then 95 samples at 10 ms and 5 at 1 s: the refresh REFRESH later takes p95 from
        // them, in the 10 ms bucket.
        for i in 0..100 {
            let latency = if i % 20 == 0 { 1000 * MS } else { 10 * MS };
            h.record(first + (i + 1) * MS, latency);
        }
        h.record(first + REFRESH, 10 * MS);
        let delay = h.delay().expect("known");
        assert!(delay >= 10 * MS && delay <= 11 * MS + MS / 4, "{delay:?}");
        // The upstream turns slow: the next refresh follows it, not before.
        for i in 0..50 {
            h.record(first + REFRESH + (i + 1) * MS, 100 * MS);
        }
        assert_eq!(h.delay(), Some(delay), "not before the next refresh");
        h.record(first + 2 * REFRESH, 100 * MS);
        let slow = h.delay().expect("known");
        assert!(slow >= 100 * MS && slow <= 113 * MS, "{slow:?}");
    }

    #[test]
    fn too_few_samples_keep_accumulating() {
        let (h, start) = hedging(HedgeDelay::Percentile(50.0));
        let within =
            |d: Option<Duration>, low: Duration| d.is_some_and(|d| d >= low && d <= low + low / 8);
        for i in 0..MIN_SAMPLES {
            h.record(start + i * MS, 10 * MS);
        }
        assert!(within(h.delay(), 10 * MS), "{:?}", h.delay());
        let first = start + 19 * MS;
        // After REFRESH, too few samples keep the last percentile and keep counting.
        for i in 0..(MIN_SAMPLES - 1) {
            h.record(first + REFRESH + i * MS, 30 * MS);
        }
        assert!(within(h.delay(), 10 * MS), "{:?}", h.delay());
        h.record(first + 2 * REFRESH, 30 * MS);
        assert!(within(h.delay(), 30 * MS), "{:?}", h.delay());
    }

    #[test]
    fn min_delay_is_a_floor_and_a_fixed_delay_needs_no_samples() {
        let (h, _) = hedging(HedgeDelay::Fixed(MS));
        assert_eq!(h.delay(), Some(5 * MS));
        let (h, _) = hedging(HedgeDelay::Fixed(30 * MS));
        assert_eq!(h.delay(), Some(30 * MS));
    }

    #[test]
    fn hedges_never_exceed_max_extra_load() {
        let (h, start) = hedging(HedgeDelay::Fixed(10 * MS));
        // 10,000 requests over 20 s, every one wanting a hedge.
        let mut paid = 0;
        for i in 0..10_000u32 {
            let now = start + i * 2 * MS;
            h.deposit(now);
            paid += u32::from(h.try_pay(now));
        }
        // 5 % of 10,000 is 500.
        assert!((480..=500).contains(&paid), "{paid}");
        // No allowance of its own: a destination with no first try has no hedge.
        let (idle, start) = hedging(HedgeDelay::Fixed(10 * MS));
        assert!(!idle.try_pay(start));
    }
}
