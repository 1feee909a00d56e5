//! Per-destination retry budget: retries may add at most `budget_ratio` × first tries over the
//! last ~10 s, plus `budget_min_per_second` retries in each second (docs/ARCHITECTURE.md §3
//! `[retry]`).
//!
//! # Why a budget and not only `attempts`
//!
//! `attempts = 3` alone lets a failing upstream receive three times its normal load exactly when
//! it is least able to take it — the retry storm fusebox exists to prevent. A budget ties retries
//! to recent successful-or-not *first* tries: with `budget_ratio = 0.2` an outage costs the
//! upstream at most 20% extra load, while a lone failure on a healthy destination is still
//! retried. `budget_min_per_second` keeps retries possible for destinations with little traffic.
//!
//! # Accounting
//!
//! Time is cut into 1 s buckets; a ring of [`WINDOW_SECS`] buckets holds, per second, the net
//! balance in milli-tokens: `+round(budget_ratio × 1000)` per [`RetryBudget::deposit`] (one per
//! first try) and `-1000` per retry paid from that balance. A bucket counts while it is one of the
//! last [`WINDOW_SECS`] seconds (the current one included), so a deposit or a retry weighs on the
//! budget for 9–10 s, then expires. Separately, each second grants `budget_min_per_second`
//! retries that do not touch the balance and are lost if unused.
//! [`RetryBudget::try_withdraw`] takes from that per-second allowance first, then from the
//! balance; it refuses when both are empty.
//!
//! Every bucket is one `AtomicU64` (`second << 32 | value`), updated by compare-and-swap: no lock,
//! no allocation per call. Reading the balance and charging it are two steps, so retries racing
//! on many threads may overdraw by at most one token each — harmless for a budget.
//!
//! # Why not `tower::retry::budget::TpsBudget`
//!
//! tower's budget is the same finagle design and was the first choice, but
//! - its `min_per_sec` is a fixed reserve of `min_per_sec × ttl` for the whole window, so a
//!   cold destination may spend 10 s worth (100 retries with the defaults) in its first
//!   millisecond — not "this many per second";
//! - it rounds the cost of a retry to `(1 / ratio) as isize` deposits, so `0.3` allows 33% and
//!   `0.15` allows 16.7%;
//! - it takes a `Mutex` on every deposit and withdrawal;
//! - it reads `tokio::time::Instant::now()` itself, so its window can only be tested under
//!   paused tokio time (tokio's `test-util` feature, not enabled in this crate).
//!
//! This budget also reads `tokio::time::Instant` (one clock for all of fusebox), but every
//! operation has an `*_at(now)` form so tests step time by hand.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::policy::Retry;

/// How many 1 s buckets a deposit or a retry counts in.
pub const WINDOW_SECS: usize = 10;

/// One retry, in milli-tokens.
const TOKEN: i32 = 1000;

/// Ratios above this are treated as this (1000 retries per first try is "unlimited").
const MAX_RATIO: f64 = 1000.0;

/// A retry budget for one destination. `Send + Sync`, lock-free.
#[derive(Debug)]
pub struct RetryBudget {
    /// Second 0 of the buckets.
    origin: Instant,
    /// Milli-tokens each first try adds: `round(budget_ratio × 1000)`.
    deposit: i32,
    /// Retries granted in each second, outside the balance.
    min_per_second: u32,
    /// `second << 32 | retries taken from this second's allowance`.
    allowance: AtomicU64,
    /// `second << 32 | net milli-tokens deposited (minus withdrawn) in that second`.
    buckets: [AtomicU64; WINDOW_SECS],
}

impl RetryBudget {
    /// An empty budget for `retry`'s `budget_ratio` and `budget_min_per_second`.
    pub fn new(retry: &Retry) -> Self {
        Self::new_at(retry, Instant::now())
    }

    /// Like [`RetryBudget::new`], starting at `now`.
    pub fn new_at(retry: &Retry, now: Instant) -> Self {
        let ratio = if retry.budget_ratio.is_nan() {
            0.0
        } else {
            retry.budget_ratio.clamp(0.0, MAX_RATIO)
        };
        Self {
            origin: now,
            // In 0..=1_000_000 after the clamp: the cast cannot truncate.
            deposit: (ratio * f64::from(TOKEN)).round() as i32,
            min_per_second: retry.budget_min_per_second,
            allowance: AtomicU64::new(pack(0, 0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(pack(0, 0))),
        }
    }

    /// Records one first try (an original request, not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Asks for one retry; `false` means the budget is exhausted: do not retry.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// [`RetryBudget::deposit`] at `now`.
    pub fn deposit_at(&self, now: Instant) {
        if self.deposit > 0 {
            self.add(self.second(now), self.deposit);
        }
    }

    /// [`RetryBudget::try_withdraw`] at `now`.
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let second = self.second(now);
        if self.take_allowance(second) {
            return true;
        }
        if self.balance(second) >= i64::from(TOKEN) {
            self.add(second, -TOKEN);
            return true;
        }
        false
    }

    /// Retries it would grant at `now`: the balance in tokens plus what is left of this
    /// second's allowance (for the live view; a retry needs one whole token).
    pub fn available_at(&self, now: Instant) -> f64 {
        let second = self.second(now);
        #[allow(clippy::cast_precision_loss)]
        let balance = self.balance(second).max(0) as f64 / f64::from(TOKEN);
        let (at, used) = unpack(self.allowance.load(Ordering::Acquire));
        let allowance = if at < second {
            self.min_per_second
        } else {
            self.min_per_second.saturating_sub(used)
        };
        balance + f64::from(allowance)
    }

    /// Whole seconds since `origin` (0 before it; saturates after ~136 years).
    fn second(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.origin).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    fn take_allowance(&self, second: u32) -> bool {
        if self.min_per_second == 0 {
            return false;
        }
        self.allowance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (at, used) = unpack(word);
                if at < second {
                    Some(pack(second, 1))
                } else if used < self.min_per_second {
                    Some(pack(at, used + 1))
                } else {
                    None
                }
            })
            .is_ok()
    }

    /// Net milli-tokens in the buckets of the window ending at `second`.
    fn balance(&self, second: u32) -> i64 {
        self.buckets
            .iter()
            .map(|bucket| unpack(bucket.load(Ordering::Acquire)))
            .filter(|&(at, _)| second.saturating_sub(at) < WINDOW_SECS as u32)
            .map(|(_, value)| i64::from(value as i32))
            .sum()
    }

    /// Adds `delta` to `second`'s bucket, recycling the slot if it holds an expired second.
    fn add(&self, second: u32, delta: i32) {
        let bucket = &self.buckets[second as usize % WINDOW_SECS];
        // The closure always returns `Some`: the update cannot fail.
        let _ = bucket.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (at, value) = unpack(word);
            let value = if at < second {
                delta
            } else {
                (value as i32).saturating_add(delta)
            };
            Some(pack(second.max(at), value as u32))
        });
    }
}

/// One atomic word: the second it belongs to, and a 32-bit value (bucket values are `i32`
/// stored as their two's-complement bits).
fn pack(second: u32, value: u32) -> u64 {
    (u64::from(second) << 32) | u64::from(value)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::Retry;

    fn retry(budget_ratio: f64, budget_min_per_second: u32) -> Retry {
        Retry {
            attempts: 3,
            on: Vec::new(),
            statuses: Vec::new(),
            grpc_codes: Vec::new(),
            methods: Vec::new(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio,
            budget_min_per_second,
            honor_retry_after: true,
            max_replay_bytes: 65536,
        }
    }

    fn withdrawals(budget: &RetryBudget, now: Instant, max: usize) -> usize {
        (0..max).filter(|_| budget.try_withdraw_at(now)).count()
    }

    #[test]
    fn ratio_allows_that_share_of_first_tries() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.2, 0), t0);
        assert!(!budget.try_withdraw_at(t0), "no first tries, no retries");
        for _ in 0..100 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 1000), 20);
        assert!(!budget.try_withdraw_at(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn available_is_the_balance_plus_the_allowance_left() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.2, 3), t0);
        assert_eq!(budget.available_at(t0), 3.0);
        for _ in 0..10 {
            budget.deposit_at(t0);
        }
        assert!((budget.available_at(t0) - 5.0).abs() < 1e-9);
        assert_eq!(withdrawals(&budget, t0, 4), 4);
        assert!(
            (budget.available_at(t0) - 1.0).abs() < 1e-9,
            "3 allowance, 1 token"
        );
        // The next second's allowance is whole again.
        let t1 = t0 + Duration::from_secs(1);
        assert!((budget.available_at(t1) - 4.0).abs() < 1e-9);
    }

    #[test]
    fn fractional_ratios_are_not_rounded_to_whole_deposits() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.3, 0), t0);
        for _ in 0..100 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 1000), 30);
    }

    #[test]
    fn ratio_above_one_allows_several_retries_per_first_try() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(2.5, 0), t0);
        for _ in 0..4 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 1000), 10);
    }

    #[test]
    fn min_per_second_without_deposits() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.2, 5), t0);
        assert_eq!(withdrawals(&budget, t0, 100), 5);
        assert_eq!(
            withdrawals(&budget, t0 + Duration::from_millis(999), 100),
            0,
            "same second"
        );
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(1), 100), 5);
        // An unused allowance is not saved up.
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(30), 100), 5);
    }

    #[test]
    fn min_per_second_adds_to_the_ratio() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.1, 3), t0);
        for _ in 0..50 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 100), 3 + 5);
    }

    #[test]
    fn zero_ratio_and_zero_minimum_never_retry() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.0, 0), t0);
        for _ in 0..1000 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 10), 0);
    }

    #[test]
    fn deposits_expire_after_the_window() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.5, 0), t0);
        for _ in 0..10 {
            budget.deposit_at(t0);
        }
        // Still in the window in its last second ...
        assert!(budget.try_withdraw_at(t0 + Duration::from_millis(9_900)));
        // ... and gone once the window has slid past it.
        assert!(!budget.try_withdraw_at(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn budget_recovers_as_time_passes() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.2, 0), t0);
        for _ in 0..50 {
            budget.deposit_at(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 100), 10);

        // The spent retries expire with the window; fresh first tries refill it.
        let later = t0 + Duration::from_secs(12);
        assert!(!budget.try_withdraw_at(later));
        for _ in 0..50 {
            budget.deposit_at(later);
        }
        assert_eq!(withdrawals(&budget, later, 100), 10);
    }

    #[test]
    fn steady_traffic_sustains_the_ratio() {
        // 10 first tries per second with 20% budget: 2 retries per second, every second, for a
        // minute, with each second asking for 5.
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.2, 0), t0);
        let mut granted = 0;
        for second in 0..60 {
            let now = t0 + Duration::from_secs(second);
            for _ in 0..10 {
                budget.deposit_at(now);
            }
            granted += withdrawals(&budget, now, 5);
        }
        assert_eq!(granted, 120);
    }

    #[test]
    fn huge_and_nan_ratios_are_clamped() {
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(f64::MAX, 0), t0);
        budget.deposit_at(t0);
        assert_eq!(withdrawals(&budget, t0, 2000), 1000);
        let budget = RetryBudget::new_at(&retry(f64::NAN, 0), t0);
        budget.deposit_at(t0);
        assert!(!budget.try_withdraw_at(t0));
    }

    #[test]
    fn shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RetryBudget>();
        let t0 = Instant::now();
        let budget = RetryBudget::new_at(&retry(0.2, 0), t0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..250).for_each(|_| budget.deposit_at(t0)));
            }
        });
        assert_eq!(withdrawals(&budget, t0, 1000), 200);
    }
}
