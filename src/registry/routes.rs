//! A destination's state per `[[route]]` of its policy (docs/ARCHITECTURE.md §3): the route's
//! metric handles (`route` label), its own breaker when it asks for one (`breaker = "own"`),
//! and its hedge state when it hedges. Requests no route takes use the destination's own.

use std::sync::{Arc, Mutex, OnceLock};

use metrics::Gauge;
use tokio::time::Instant;

use crate::pipeline::breaker::{CircuitBreaker, Jitter};
use crate::pipeline::hedge::Hedging;
use crate::policy::{Policy, Route};
use crate::telemetry::{CallMetrics, DestinationMetrics};

/// One route at one destination.
#[derive(Debug)]
pub struct RouteState {
    /// The route's name, as in its `route` label.
    pub name: Box<str>,
    /// Its metric handles, registered at its first request here: most destinations of a
    /// policy with routes see only some of them, and the handles are the bulk of its state.
    calls: OnceLock<Box<CallMetrics>>,
    /// `breaker = "own"`: the breaker its tries answer to, and its state gauge.
    pub(super) breaker: Option<OwnBreaker>,
    /// The route's own hedge state (latencies, budget) when its hedge or retry settings differ
    /// from the policy's and it hedges; `None` with `shares_hedging`: the destination's.
    pub hedging: Option<Arc<Hedging>>,
    /// The route hedges exactly as the policy does: its requests use the destination's state.
    pub shares_hedging: bool,
}

/// A route's own breaker.
#[derive(Debug)]
pub(super) struct OwnBreaker {
    pub(super) breaker: Arc<Mutex<CircuitBreaker>>,
    pub(super) state: Gauge,
}

impl RouteState {
    /// The state of every route of `policy` at a destination whose metrics are `metrics`.
    pub(super) fn all(
        policy: &Policy,
        metrics: &DestinationMetrics,
        jitter: Jitter,
        now: Instant,
    ) -> Box<[RouteState]> {
        let one = |route: &Route| {
            let breaker = route.own_breaker.then(|| {
                let state = metrics.route_breaker_state(&route.name);
                let breaker = CircuitBreaker::new(policy.breaker.clone(), jitter, now);
                state.set(breaker.state().as_gauge());
                OwnBreaker {
                    breaker: Arc::new(Mutex::new(breaker)),
                    state,
                }
            });
            let shares_hedging = route.hedge == policy.hedge && route.retry == policy.retry;
            let own_hedging = route.hedge.enabled && !shares_hedging;
            RouteState {
                name: route.name.as_str().into(),
                calls: OnceLock::new(),
                breaker,
                hedging: own_hedging
                    .then(|| Arc::new(Hedging::new(&route.hedge, &route.retry, now))),
                shares_hedging,
            }
        };
        policy.routes.iter().map(one).collect()
    }

    /// Takes over `before`'s breaker and hedge state where the route kept its name and the
    /// settings they were made under (a reload keeps a tripped route's breaker open).
    pub(super) fn carry(
        &mut self,
        (before, old): (&RouteState, &Route),
        route: &Route,
        same_breaker: bool,
    ) {
        if let (Some(own), Some(before), true) = (&mut self.breaker, &before.breaker, same_breaker)
        {
            if old.own_breaker {
                own.breaker = Arc::clone(&before.breaker);
                let state = own.breaker.lock().map(|b| b.state().as_gauge());
                own.state
                    .set(state.unwrap_or_else(|e| e.into_inner().state().as_gauge()));
            }
        }
        if old.hedge == route.hedge && old.retry == route.retry {
            self.hedging.clone_from(&before.hedging);
        }
    }

    /// Its metric handles, registered under `metrics`' labels on first use.
    pub fn calls(&self, metrics: &DestinationMetrics) -> &CallMetrics {
        self.calls
            .get_or_init(|| Box::new(metrics.route_calls(&self.name)))
    }

    /// Whether the route has a breaker of its own.
    pub fn has_own_breaker(&self) -> bool {
        self.breaker.is_some()
    }
}
