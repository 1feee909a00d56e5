//! The keys of the tail and overload mechanisms (docs/ARCHITECTURE.md §18): `[concurrency]`'s
//! adaptive modes, `[hedge]`, and `[breaker]`'s throttle keys, validated like every other key.

use super::{int, positive, Cx, RawPolicy, U32_MAX};
use crate::policy::{Breaker, Concurrency, ConcurrencyMode, Hedge, HedgeDelay};

impl Cx<'_> {
    pub(super) fn concurrency(&mut self, t: &mut Concurrency, raw: &RawPolicy) {
        let r = &raw.concurrency;
        self.value(
            &mut t.max_in_flight,
            "concurrency.max_in_flight",
            &r.max_in_flight,
            |&v| int(v, 0, U32_MAX),
        );
        self.value(&mut t.mode, "concurrency.mode", &r.mode, |s| {
            concurrency_mode(s)
        });
        let limit = |&v: &i64| int(v, 1, 1_000_000);
        self.value(
            &mut t.min_limit,
            "concurrency.min_limit",
            &r.min_limit,
            limit,
        );
        self.value(
            &mut t.max_limit,
            "concurrency.max_limit",
            &r.max_limit,
            limit,
        );
        self.value(
            &mut t.initial_limit,
            "concurrency.initial_limit",
            &r.initial_limit,
            limit,
        );
        self.limit_bounds(t, raw);
        self.adaptive(t, raw);
    }

    /// `min_limit` ≤ `max_limit`, reported at whichever of the three limits the file sets.
    fn limit_bounds(&mut self, t: &Concurrency, raw: &RawPolicy) {
        let r = &raw.concurrency;
        let set = [&r.min_limit, &r.max_limit, &r.initial_limit];
        let at = set.into_iter().flatten().next().map(toml::Spanned::span);
        if let Some(at) = at {
            if t.min_limit > t.max_limit {
                let why = format!(
                    "`concurrency.min_limit` ({}) is above `concurrency.max_limit` ({})",
                    t.min_limit, t.max_limit
                );
                self.error(at, why);
            }
        }
    }

    /// How an adaptive limit moves: its window and its ratios.
    fn adaptive(&mut self, t: &mut Concurrency, raw: &RawPolicy) {
        let r = &raw.concurrency;
        self.value(&mut t.window, "concurrency.window", &r.window, |s| {
            positive(s)
        });
        self.value(
            &mut t.backoff_ratio,
            "concurrency.backoff_ratio",
            &r.backoff_ratio,
            |&v| fraction_below_one(v),
        );
        self.value(
            &mut t.rtt_tolerance,
            "concurrency.rtt_tolerance",
            &r.rtt_tolerance,
            |&v| at_least_one(v),
        );
        self.value(
            &mut t.smoothing,
            "concurrency.smoothing",
            &r.smoothing,
            |&v| fraction_up_to_one(v),
        );
        self.value(
            &mut t.queue_allowance,
            "concurrency.queue_allowance",
            &r.queue_allowance,
            |&v| int(v, 0, 10_000),
        );
        self.value(
            &mut t.long_window,
            "concurrency.long_window",
            &r.long_window,
            |s| positive(s),
        );
    }

    pub(super) fn hedge(&mut self, t: &mut Hedge, raw: &RawPolicy) {
        let r = &raw.hedge;
        self.value(&mut t.enabled, "hedge.enabled", &r.enabled, |&b| Ok(b));
        self.value(&mut t.delay, "hedge.delay", &r.delay, |s| hedge_delay(s));
        self.value(&mut t.min_delay, "hedge.min_delay", &r.min_delay, |s| {
            super::duration(s)
        });
        self.value(
            &mut t.max_extra_load,
            "hedge.max_extra_load",
            &r.max_extra_load,
            |&v| fraction_up_to_one(v),
        );
        // One copy is no hedge; more than 10 is a storm, whatever the budget says.
        self.value(
            &mut t.max_attempts,
            "hedge.max_attempts",
            &r.max_attempts,
            |&v| int(v, 2, 10),
        );
    }

    pub(super) fn throttle(&mut self, t: &mut Breaker, raw: &RawPolicy) {
        let r = &raw.breaker;
        self.value(
            &mut t.throttle_window,
            "breaker.throttle_window",
            &r.throttle_window,
            |s| positive(s),
        );
        self.value(
            &mut t.throttle_k,
            "breaker.throttle_k",
            &r.throttle_k,
            |&v| at_least_one(v),
        );
    }
}

fn concurrency_mode(s: &str) -> Result<ConcurrencyMode, String> {
    match s {
        "fixed" => Ok(ConcurrencyMode::Fixed),
        "aimd" => Ok(ConcurrencyMode::Aimd),
        "gradient" => Ok(ConcurrencyMode::Gradient),
        _ => Err(format!(
            "unknown mode \"{s}\"; valid: \"fixed\", \"aimd\", \"gradient\""
        )),
    }
}

/// `"p95"`, `"p99.9"` (a percentile of recent latency) or a duration such as `"20ms"`.
fn hedge_delay(s: &str) -> Result<HedgeDelay, String> {
    if let Some(number) = s.strip_prefix('p') {
        return match number.parse::<f64>() {
            Ok(p) if p > 0.0 && p < 100.0 => Ok(HedgeDelay::Percentile(p)),
            _ => Err(format!(
                "\"{s}\" is not a percentile; write e.g. \"p95\" or \"p99.9\" (above 0, below 100)"
            )),
        };
    }
    super::duration(s)
        .map(HedgeDelay::Fixed)
        .map_err(|why| format!("{why}, or a percentile such as \"p95\""))
}

fn fraction_below_one(v: f64) -> Result<f64, String> {
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!("must be greater than 0 and less than 1, got {v}"))
    }
}

fn fraction_up_to_one(v: f64) -> Result<f64, String> {
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("must be greater than 0 and at most 1, got {v}"))
    }
}

fn at_least_one(v: f64) -> Result<f64, String> {
    if (1.0..=1000.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be at least 1 and at most 1000, got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hedge_delays_are_percentiles_or_durations() {
        assert_eq!(hedge_delay("p95"), Ok(HedgeDelay::Percentile(95.0)));
        assert_eq!(hedge_delay("p99.9"), Ok(HedgeDelay::Percentile(99.9)));
        assert_eq!(
            hedge_delay("20ms"),
            Ok(HedgeDelay::Fixed(Duration::from_millis(20)))
        );
        for bad in ["p0", "p100", "px", "fast"] {
            assert!(hedge_delay(bad).is_err(), "{bad}");
        }
        assert_eq!(HedgeDelay::Percentile(99.9).to_string(), "p99.9");
    }
}
