//! Peak-EWMA latency estimate of one endpoint (as tower's `peak_ewma`, linkerd2-proxy's
//! balancer), with failures counted as a long latency.
//!
//! The estimate jumps to any latency above it (the peak) and otherwise moves towards each new
//! sample by `1 - e^(-elapsed/decay)`: recent samples weigh more the longer the endpoint was
//! quiet. With no samples it decays towards zero, so an endpoint that was avoided is tried
//! again in time. A failed try counts as `failure_penalty` (5 s by default): a fast failure
//! (a `503` in 1 ms, a refused connection) must not look like a fast endpoint (linkerd2#11669).
//!
//! The cost a balancer compares is `estimate × (pending + 1)`. The estimate and the time it
//! was taken are packed in one `u64` (an `f32` of nanoseconds and a 32-bit millisecond clock),
//! so that [`AtomicEstimate`] reads and updates it without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An estimate and when it was last updated, in milliseconds of the owner's clock (wrapping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub nanos: f32,
    pub at_ms: u32,
}

impl Estimate {
    pub fn new(initial: Duration, at_ms: u32) -> Estimate {
        Estimate {
            nanos: initial.as_nanos() as f32,
            at_ms,
        }
    }

    /// The estimate at `now_ms`, decayed towards zero since it was taken.
    pub fn decayed(self, now_ms: u32, decay: Duration) -> f32 {
        self.nanos * decay_factor(elapsed_ms(self.at_ms, now_ms), decay)
    }

    /// The estimate after a sample of `rtt` at `now_ms`: the sample when it is the peak,
    /// otherwise the decayed estimate moved towards it.
    pub fn updated(self, rtt: Duration, now_ms: u32, decay: Duration) -> Estimate {
        let sample = rtt.as_nanos() as f32;
        let nanos = if sample >= self.nanos {
            sample
        } else {
            let kept = decay_factor(elapsed_ms(self.at_ms, now_ms), decay);
            self.nanos * kept + sample * (1.0 - kept)
        };
        Estimate {
            nanos,
            at_ms: now_ms,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.nanos.to_bits()) << 32) | u64::from(self.at_ms)
    }

    fn unpack(bits: u64) -> Estimate {
        Estimate {
            nanos: f32::from_bits((bits >> 32) as u32),
            at_ms: bits as u32,
        }
    }
}

/// The cost a balancer compares: the estimate weighted by the requests already waiting.
pub fn cost(estimate_nanos: f32, pending: u32) -> f32 {
    estimate_nanos * (pending as f32 + 1.0)
}

/// Milliseconds from `then` to `now` on a wrapping 32-bit clock (49 days around).
fn elapsed_ms(then: u32, now: u32) -> u32 {
    now.wrapping_sub(then)
}

/// How much of an estimate is kept after `elapsed_ms`: `e^(-elapsed/decay)`.
fn decay_factor(elapsed_ms: u32, decay: Duration) -> f32 {
    let decay_ms = decay.as_millis().max(1) as f32;
    (-(elapsed_ms as f32) / decay_ms).exp()
}

/// An [`Estimate`] shared by the requests of one endpoint, read and updated without a lock.
#[derive(Debug)]
pub struct AtomicEstimate(AtomicU64);

impl AtomicEstimate {
    pub fn new(estimate: Estimate) -> AtomicEstimate {
        AtomicEstimate(AtomicU64::new(estimate.pack()))
    }

    pub fn load(&self) -> Estimate {
        Estimate::unpack(self.0.load(Ordering::Relaxed))
    }

    /// Starts again from `estimate` (a re-admitted endpoint, from what its probe measured).
    pub fn reset(&self, estimate: Estimate) {
        self.0.store(estimate.pack(), Ordering::Relaxed);
    }

    /// Records a sample; a racing update is retried on the newer value. Answers the new
    /// estimate.
    pub fn sample(&self, rtt: Duration, now_ms: u32, decay: Duration) -> Estimate {
        let mut next = Estimate::new(rtt, now_ms);
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                next = Estimate::unpack(bits).updated(rtt, now_ms, decay);
                Some(next.pack())
            });
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);
    const MS: f32 = 1_000_000.0;

    #[test]
    fn a_slower_sample_is_taken_at_once_a_faster_one_gradually() {
        let e = Estimate::new(Duration::from_millis(30), 0);
        let peak = e.updated(Duration::from_millis(200), 10, DECAY);
        assert_eq!(peak.nanos, 200.0 * MS);
        // 1 s later, a 20 ms sample moves it by 1 - e^(-0.1) ≈ 9.5 %.
        let after = peak.updated(Duration::from_millis(20), 1_010, DECAY);
        let expected = 200.0 * MS * (-0.1f32).exp() + 20.0 * MS * (1.0 - (-0.1f32).exp());
        assert!((after.nanos - expected).abs() < 1_000.0, "{after:?}");
        assert!(after.nanos < peak.nanos && after.nanos > 150.0 * MS);
    }

    #[test]
    fn an_unsampled_estimate_decays_towards_zero() {
        let e = Estimate::new(Duration::from_secs(5), 0);
        assert_eq!(e.decayed(0, DECAY), 5_000.0 * MS);
        let later = e.decayed(10_000, DECAY);
        assert!(
            (later - 5_000.0 * MS * (-1.0f32).exp()).abs() < MS,
            "{later}"
        );
        assert!(e.decayed(100_000, DECAY) < 1.0 * MS);
    }

    #[test]
    fn the_clock_may_wrap() {
        let e = Estimate::new(Duration::from_millis(100), u32::MAX - 499);
        let later = e.decayed(500, DECAY);
        assert!(
            (later - 100.0 * MS * (-0.1f32).exp()).abs() < 1_000.0,
            "{later}"
        );
    }

    #[test]
    fn pending_requests_multiply_the_cost() {
        assert_eq!(cost(10.0, 0), 10.0);
        assert_eq!(cost(10.0, 3), 40.0);
    }

    #[test]
    fn the_atomic_estimate_packs_losslessly() {
        let e = Estimate::new(Duration::from_micros(1234), 77);
        let shared = AtomicEstimate::new(e);
        assert_eq!(shared.load(), e);
        shared.sample(Duration::from_secs(5), 80, DECAY);
        assert_eq!(shared.load().nanos, 5e9);
        assert_eq!(shared.load().at_ms, 80);
    }
}
