//! Per-destination concurrency gate: at most `max_in_flight` requests in progress, the rest
//! refused at once with a local `503 overflow` (docs/ARCHITECTURE.md §5).
//!
//! The gate never queues. A queue in front of a slow upstream is exactly the thread and memory
//! pile-up fusebox exists to prevent: the caller's own timeout is the right place to wait, and a
//! fast refusal lets it fail over or shed load. So [`Gate::try_enter`] either admits now or says
//! no.
//!
//! The count is one `AtomicUsize` shared (through an `Arc`, allocated once per destination) by
//! the gate and its permits: entering is a compare-and-swap loop, leaving is one `fetch_sub` in
//! [`GatePermit`]'s `Drop`. A permit owns its `Arc`, so it can travel with a response body
//! into the connection's task and is released however the request ends — completion, error, or
//! the future being dropped. (A CONNECT tunnel holds its permit only while it connects.)
//! With `max_in_flight = 0` the gate still counts (the in-flight gauge and the admin API want
//! the number) but never refuses; that costs one `fetch_add`.
//!
//! An adaptive gate (`mode = "aimd" | "gradient"`, §18) keeps its limit in an atomic that its
//! [`AdaptiveLimit`] moves: every try's latency is a [`Gate::sample`], and each closed window
//! may store a new limit. A lowered limit refuses new requests until enough in flight finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::adaptive::{AdaptiveLimit, Sample, Signal};
use crate::policy::Concurrency;

/// The concurrency gate of one destination.
#[derive(Debug, Clone)]
pub struct Gate {
    in_flight: Arc<AtomicUsize>,
    /// `usize::MAX` when unlimited; moved by `adaptive` when there is one.
    max: Arc<AtomicUsize>,
    /// Locked for a few instructions per try, never across an await.
    adaptive: Option<Arc<Mutex<AdaptiveLimit>>>,
}

/// One admitted request; dropping it frees the slot.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct GatePermit {
    in_flight: Arc<AtomicUsize>,
}

impl Gate {
    /// A gate admitting `max_in_flight` requests at once (0 = no limit), or, in an adaptive
    /// mode, `initial_limit` to begin with.
    pub fn new(concurrency: &Concurrency) -> Self {
        let adaptive = concurrency
            .is_adaptive()
            .then(|| AdaptiveLimit::new(concurrency, Instant::now()));
        let max = match (&adaptive, concurrency.max_in_flight) {
            (Some(adaptive), _) => adaptive.limit(),
            (None, 0) => usize::MAX,
            (None, n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Self {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max: Arc::new(AtomicUsize::new(max)),
            adaptive: adaptive.map(|a| Arc::new(Mutex::new(a))),
        }
    }

    /// A gate with `concurrency`'s limit that counts together with `previous` (a reload
    /// changed the policy): the requests `previous` admitted are still in flight and hold
    /// their slots in the new gate too. An adaptive limit is kept when `concurrency` is
    /// `previous`'s (`same`): what it learned still holds.
    pub fn carried(concurrency: &Concurrency, previous: &Gate, same: bool) -> Self {
        if same {
            return previous.clone();
        }
        Self {
            in_flight: Arc::clone(&previous.in_flight),
            ..Self::new(concurrency)
        }
    }

    /// Admits one request, or `None` when the gate is full (answer `503 overflow`).
    pub fn try_enter(&self) -> Option<GatePermit> {
        let max = self.max.load(Ordering::Relaxed);
        if max == usize::MAX {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        } else {
            self.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
        }
        Some(GatePermit {
            in_flight: Arc::clone(&self.in_flight),
        })
    }

    /// Requests admitted and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The limit, `None` when unlimited.
    pub fn max_in_flight(&self) -> Option<usize> {
        let max = self.max.load(Ordering::Relaxed);
        (max != usize::MAX).then_some(max)
    }

    /// Whether the limit adapts to the upstream.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// One try's latency to its head and what it says of the upstream's load, for an adaptive
    /// limit; returns the new limit when the sample closed a window.
    pub fn sample(&self, rtt: Duration, signal: Signal) -> Option<usize> {
        let adaptive = self.adaptive.as_ref()?;
        let sample = Sample {
            rtt,
            in_flight: self.in_flight(),
            signal,
        };
        let limit = adaptive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(Instant::now(), sample)?;
        self.max.store(limit, Ordering::Relaxed);
        Some(limit)
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_in_flight: u32) -> Gate {
        Gate::new(&Concurrency {
            max_in_flight,
            ..Concurrency::default()
        })
    }

    #[test]
    fn refuses_beyond_the_limit() {
        let gate = gate(2);
        let a = gate.try_enter().expect("first");
        let b = gate.try_enter().expect("second");
        assert!(gate.try_enter().is_none());
        assert_eq!(gate.in_flight(), 2);
        assert_eq!(gate.max_in_flight(), Some(2));
        drop((a, b));
    }

    #[test]
    fn dropping_a_permit_frees_its_slot() {
        let gate = gate(1);
        let permit = gate.try_enter().expect("first");
        assert!(gate.try_enter().is_none());
        drop(permit);
        assert_eq!(gate.in_flight(), 0);
        let again = gate.try_enter().expect("slot freed");
        assert_eq!(gate.in_flight(), 1);
        drop(again);
    }

    #[test]
    fn a_refusal_takes_no_slot() {
        let gate = gate(1);
        let permit = gate.try_enter().expect("first");
        for _ in 0..10 {
            assert!(gate.try_enter().is_none());
        }
        assert_eq!(gate.in_flight(), 1);
        drop(permit);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn unlimited_never_refuses_and_still_counts() {
        let gate = gate(0);
        assert_eq!(gate.max_in_flight(), None);
        let permits: Vec<_> = (0..10_000)
            .map(|_| gate.try_enter().expect("unlimited"))
            .collect();
        assert_eq!(gate.in_flight(), 10_000);
        drop(permits);
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn clones_share_one_count() {
        let gate = gate(1);
        let clone = gate.clone();
        let permit = clone.try_enter().expect("first");
        assert!(gate.try_enter().is_none());
        drop(permit);
        assert!(gate.try_enter().is_some());
    }

    #[test]
    fn permits_outlive_the_gate_and_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Gate>();
        assert_send_sync::<GatePermit>();

        let gate = gate(8);
        let watcher = gate.clone();
        let admitted = std::thread::scope(|s| {
            let workers: Vec<_> = (0..16).map(|_| s.spawn(|| gate.try_enter())).collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("thread"))
                .collect::<Vec<_>>()
        });
        assert_eq!(admitted.iter().flatten().count(), 8);
        drop(gate);
        assert_eq!(watcher.in_flight(), 8);
        drop(admitted);
        assert_eq!(watcher.in_flight(), 0);
    }
}
