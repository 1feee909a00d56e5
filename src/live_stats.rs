//! A destination's running totals for the admin's live view (`GET /events`,
//! docs/ARCHITECTURE.md §6): requests, upstream failures and local refusals since the
//! destination was created, and a log-linear histogram of latency. Recording is a few relaxed
//! atomic additions per request; rates and percentiles over a recent window are the reader's
//! job, as the difference of two [`Sample`]s, so nothing is computed while no one watches.
//!
//! The histogram (2.4 KiB) is allocated only once the live view reads the destination
//! ([`LiveStats::sample`]): a destination no one watched costs its three counters alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::histogram::{self, BUCKETS};
use crate::outcome::Outcome;

/// Counts since the destination was created (`/upstreams`' `totals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Finished app requests, whatever their outcome.
    pub requests: u64,
    /// Of them, failed upstream: a 5xx or failing gRPC status, timeout, reset, connect
    /// failure, bad response, certificate failure, no endpoint left, or fusebox's own failure.
    pub errors: u64,
    /// Of them, refused locally before any try: breaker open, rate limited, overflow.
    pub rejected: u64,
}

/// What an outcome counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Served,
    Failed,
    Rejected,
    /// The app's own mistake (bad request, denied, loop): a request, neither of the others.
    App,
}

fn kind(outcome: Outcome) -> Kind {
    match outcome {
        Outcome::Ok => Kind::Served,
        Outcome::BreakerOpen | Outcome::RateLimited | Outcome::Overflow => Kind::Rejected,
        Outcome::Denied | Outcome::Loop | Outcome::BadRequest => Kind::App,
        Outcome::UpstreamError
        | Outcome::Timeout
        | Outcome::ConnectFailed
        | Outcome::Reset
        | Outcome::BadResponse
        | Outcome::Internal
        | Outcome::TlsVerifyFailed
        | Outcome::NoEndpoint => Kind::Failed,
    }
}

/// The live counters of one destination.
#[derive(Debug)]
pub struct LiveStats {
    requests: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
    /// Latency of served and failed requests (refusals and the app's mistakes are answered
    /// at once and would only pull the percentiles down), from the first [`LiveStats::sample`]
    /// on.
    latency: OnceLock<Box<[AtomicU64; BUCKETS]>>,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            latency: OnceLock::new(),
        }
    }
}

impl LiveStats {
    /// Counts one finished request.
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match kind(outcome) {
            Kind::Served => self.record_latency(elapsed),
            Kind::Failed => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.record_latency(elapsed);
            }
            Kind::Rejected => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Kind::App => {}
        }
    }

    fn record_latency(&self, elapsed: Duration) {
        if let Some(latency) = self.latency.get() {
            let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            latency[histogram::bucket(us)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// Everything now, the histogram as its non-empty buckets; the first sample allocates
    /// the histogram, which counts from then on.
    pub fn sample(&self) -> Sample {
        let latency = self
            .latency
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        Sample {
            totals: self.totals(),
            latency: latency
                .iter()
                .enumerate()
                .filter_map(|(index, count)| match count.load(Ordering::Relaxed) {
                    0 => None,
                    count => Some((index, count)),
                })
                .collect(),
        }
    }
}

/// One reading of a destination's [`LiveStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub totals: Totals,
    /// `(bucket, count)`, in bucket order, counts above zero only.
    pub latency: Vec<(usize, u64)>,
}

/// What happened between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub totals: Totals,
    /// Percentiles of the window's latency, in microseconds; `None` without a sample.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

impl Sample {
    /// The window from `older` (a sample of the same destination, or none: since it was
    /// created) to `self`. A counter that went backwards (a destination made anew) counts
    /// from zero.
    pub fn since(&self, older: Option<&Sample>) -> Window {
        let empty = Sample::default();
        let older = older.unwrap_or(&empty);
        let minus = |new: u64, old: u64| if new >= old { new - old } else { new };
        let totals = Totals {
            requests: minus(self.totals.requests, older.totals.requests),
            errors: minus(self.totals.errors, older.totals.errors),
            rejected: minus(self.totals.rejected, older.totals.rejected),
        };
        let mut old = older.latency.iter().peekable();
        let latency: Vec<(usize, u64)> = self
            .latency
            .iter()
            .map(|&(index, count)| {
                while old.next_if(|&&(i, _)| i < index).is_some() {}
                let before = old.next_if(|&&(i, _)| i == index).map_or(0, |&(_, c)| c);
                (index, minus(count, before))
            })
            .collect();
        Window {
            totals,
            p50_us: histogram::percentile_of(&latency, 50.0),
            p99_us: histogram::percentile_of(&latency, 99.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn outcomes_are_counted_by_whose_they_are() {
        let stats = LiveStats::default();
        stats.record(Outcome::Ok, 10 * MS);
        assert!(
            stats.sample().latency.is_empty(),
            "no histogram before the first sample"
        );
        stats.record(Outcome::Ok, 10 * MS);
        stats.record(Outcome::UpstreamError, 20 * MS);
        stats.record(Outcome::Timeout, 1000 * MS);
        stats.record(Outcome::BreakerOpen, Duration::ZERO);
        stats.record(Outcome::RateLimited, Duration::ZERO);
        stats.record(Outcome::BadRequest, Duration::ZERO);
        assert_eq!(
            stats.totals(),
            Totals {
                requests: 7,
                errors: 2,
                rejected: 2
            }
        );
        // Only the served and failed requests have a latency.
        let counted: u64 = stats.sample().latency.iter().map(|&(_, c)| c).sum();
        assert_eq!(counted, 3);
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples() {
        let stats = LiveStats::default();
        stats.sample();
        for _ in 0..100 {
            stats.record(Outcome::Ok, 1000 * MS);
        }
        let before = stats.sample();
        for _ in 0..98 {
            stats.record(Outcome::Ok, 10 * MS);
        }
        stats.record(Outcome::Reset, 200 * MS);
        stats.record(Outcome::Overflow, Duration::ZERO);
        let window = stats.sample().since(Some(&before));
        assert_eq!(
            window.totals,
            Totals {
                requests: 100,
                errors: 1,
                rejected: 1
            }
        );
        // The slow requests before the window are not in its percentiles.
        let p50 = window.p50_us.unwrap();
        assert!((10_000..=11_250).contains(&p50), "{p50}");
        let p99 = window.p99_us.unwrap();
        assert!((200_000..=225_000).contains(&p99), "{p99}");
        // From creation, everything counts; an empty window has no percentiles.
        assert_eq!(stats.sample().since(None).totals.requests, 200);
        let now = stats.sample();
        assert_eq!(now.since(Some(&now)).p50_us, None);
    }

    #[test]
    fn a_counter_that_went_backwards_counts_from_zero() {
        let old = LiveStats::default();
        old.sample();
        for _ in 0..10 {
            old.record(Outcome::Ok, MS);
        }
        let fresh = LiveStats::default();
        fresh.sample();
        fresh.record(Outcome::Ok, MS);
        let window = fresh.sample().since(Some(&old.sample()));
        assert_eq!(window.totals.requests, 1);
        assert!(window.p50_us.is_some());
    }
}
