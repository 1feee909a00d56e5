//! The registry: for the active policies, one [`Upstream`] per policy (its TLS settings and
//! connect rules) and, inside it, one [`Destination`] per `host:port` that traffic actually
//! reached, created on first use, with its endpoint set ([`endpoints`], [`resolution`]): the
//! addresses its tries are shared between, each with its clients and idle connections.
//!
//! The policy snapshot is behind an `ArcSwap` (lock-free reads). Each upstream's destinations
//! are in a sharded map (`dashmap`): a lookup takes one shard's read lock, an insert one shard's
//! write lock, so creating a destination costs the same however many exist (a copy-on-write
//! map used to copy them all). Inserts of one upstream are serialised by a small mutex so that
//! two racing requests create one destination, not two, and label slots are counted exactly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use http::uri::Authority;
use tokio::time::Instant;
use tracing::warn;

mod endpoints;
mod notes;
mod permit;
mod resolution;
mod routes;

pub use endpoints::{
    Endpoint as SetEndpoint, EndpointSet, EndpointView, NoEndpoint, Picked, SetConfig, TryEnd,
};
pub use notes::{Notes, TrustFailure};
pub use permit::{Pending, Permit};
pub use resolution::{Resolution, Source};
pub use routes::RouteState;

use crate::fleet::{FleetLimit, FleetRedis};
use crate::guard::GuardRules;
use crate::live_stats::LiveStats;
use crate::pipeline::adaptive::Signal;
use crate::pipeline::breaker::{
    Admission, BreakerSnapshot, CallResult, CircuitBreaker, Episode, FailureKind, Forced, Jitter,
    State, Transition,
};
use crate::pipeline::budget::RetryBudget;
use crate::pipeline::gate::{Gate, GatePermit};
use crate::pipeline::grpc::GrpcCode;
use crate::pipeline::hedge::Hedging;
use crate::pipeline::limiter::RateLimiter;
use crate::policy::{Endpoint, Policy, PolicySet};
use crate::telemetry::{CallMetrics, DestinationMetrics, Telemetry, OTHER_DESTINATION};
use crate::upstream::connect::ConnectRules;
use crate::upstream::resolve::Resolver;
use crate::upstream::{client, Client, SelfAddrs};

/// Runtime state of one policy.
pub struct Upstream {
    pub policy: Arc<Policy>,
    /// The connect rules the clients were built with.
    rules: ConnectRules,
    /// The TLS configuration the clients were built with, for fusebox's own connections.
    tls: Arc<rustls::ClientConfig>,
    /// `host_rewrite`, parsed once for upstream URIs.
    pub rewrite_authority: Option<Authority>,
    next_endpoint: AtomicUsize,
    /// Sharded: a lookup takes one shard's read lock, an insert one shard's write lock, so
    /// creating the 10,000th destination costs what creating the 10th did (a copy-on-write map
    /// copied every entry on every insert).
    destinations: DashMap<Box<str>, Arc<Destination>>,
    insert: Mutex<()>,
    name: Arc<str>,
    /// Destinations that were given their own `destination` label.
    labelled: AtomicUsize,
    settings: Settings,
    /// Shared by every destination beyond `metrics_max_destinations`.
    other_metrics: std::sync::OnceLock<Arc<DestinationMetrics>>,
    /// The destination of requests that have none of their own ([`Upstream::other_destination`]).
    other: std::sync::OnceLock<Arc<Destination>>,
    telemetry: Arc<Telemetry>,
}

/// State of one policy × destination `host:port`: its breaker, limiter, retry budget,
/// concurrency gate, metric handles and endpoint set.
#[derive(Debug)]
pub struct Destination {
    /// `host:port`, as in the `destination` metric label (IPv6 hosts in brackets).
    pub authority: Box<str>,
    /// The same, parsed once for upstream URIs (`None` for `_other`).
    pub uri_authority: Option<Authority>,
    /// The addresses its requests are shared between (§17), and where they come from.
    pub endpoints: Arc<EndpointSet>,
    resolution: Arc<Resolution>,
    /// The policy's name, for logs.
    pub upstream: Arc<str>,
    pub metrics: Arc<DestinationMetrics>,
    pub gate: Gate,
    /// The limiter, budget and breaker are shared with the destination's previous version
    /// when a reload left their part of the policy unchanged (see [`Destination::carried`]).
    pub limiter: Option<Arc<RateLimiter>>,
    /// The fleet-wide limit (`scope = "fleet"` with `--redis`), instead of `limiter`.
    pub fleet: Option<Arc<FleetLimit>>,
    pub budget: Arc<RetryBudget>,
    /// `[hedge] enabled`: the hedge delay's latencies and the hedge budget (§18).
    pub hedging: Option<Arc<Hedging>>,
    /// Locked only for a few instructions, never across an await.
    breaker: Arc<Mutex<CircuitBreaker>>,
    /// The upstream chose HTTP/2 in a TLS handshake: its requests go on the pooled client,
    /// which speaks it, rather than on fusebox's own HTTP/1.1 connections.
    http2_chosen: AtomicBool,
    /// A request looked it up since the last eviction pass ([`Upstream::make_room`]).
    used: AtomicBool,
    /// The last certificate failure, and when an app's refusal of the local CA was logged.
    pub notes: Notes,
    /// The live view's totals and latency histogram: its own even when its metrics are the
    /// shared `_other` series, and kept across reloads.
    pub live: Arc<LiveStats>,
    /// One per `[[route]]` of the policy, in its order (empty without routes).
    pub routes: Box<[RouteState]>,
}

impl Destination {
    fn new(
        policy: &Policy,
        upstream: Arc<str>,
        authority: Box<str>,
        metrics: Arc<DestinationMetrics>,
        settings: &Settings,
    ) -> Destination {
        let fleet = settings
            .fleet
            .as_ref()
            .and_then(|redis| FleetLimit::new(redis, policy, &authority, Arc::clone(&metrics)))
            .map(Arc::new);
        let jitter = if settings.jitter {
            Jitter::Fraction(BREAKER_JITTER)
        } else {
            Jitter::None
        };
        let now = Instant::now();
        let (set, resolution) = endpoint_set(policy, &authority, &metrics, settings, now);
        let gate = Gate::new(&policy.concurrency);
        let routes = RouteState::all(policy, &metrics, jitter, now);
        if let Some(limit) = gate.max_in_flight().filter(|_| gate.is_adaptive()) {
            metrics.set_concurrency_limit(limit);
        }
        Destination {
            uri_authority: Authority::try_from(&*authority).ok(),
            endpoints: Arc::new(set),
            resolution: Arc::new(resolution),
            authority,
            upstream,
            metrics,
            gate,
            // A fleet limit replaces the local one.
            limiter: fleet
                .is_none()
                .then(|| RateLimiter::new(&policy.rate_limit.local()).map(Arc::new))
                .flatten(),
            fleet,
            budget: Arc::new(RetryBudget::new(&policy.retry)),
            hedging: policy
                .hedge
                .enabled
                .then(|| Arc::new(Hedging::new(&policy.hedge, &policy.retry, now))),
            breaker: Arc::new(Mutex::new(CircuitBreaker::new(
                policy.breaker.clone(),
                jitter,
                now,
            ))),
            http2_chosen: AtomicBool::new(false),
            used: AtomicBool::new(true),
            notes: Notes::default(),
            live: Arc::default(),
            routes,
        }
    }

    /// Marks it used (a load first: most lookups find it marked, and write nothing).
    fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Kept-alive HTTP/1.1 connections resting at its endpoints.
    pub fn idle_connections(&self) -> usize {
        let members = self.endpoints.members();
        members.iter().map(|endpoint| endpoint.idle.len()).sum()
    }

    /// Whether the upstream chose HTTP/2 in a TLS handshake.
    pub fn speaks_http2(&self) -> bool {
        self.http2_chosen.load(Ordering::Relaxed)
    }

    /// Notes that the upstream chose HTTP/2 in a TLS handshake.
    pub fn chose_http2(&self) {
        self.http2_chosen.store(true, Ordering::Relaxed);
    }

    /// This destination under a changed policy, carried component by component: the breaker
    /// when `[breaker]` is unchanged, the limiter when `[rate_limit]` is, the budget when the
    /// budget's keys are; the gate's count always (its requests are really in flight), and
    /// the metric handles (same labels). A breaker that starts afresh keeps an operator's force.
    fn carried(
        &self,
        before: &Policy,
        policy: &Policy,
        upstream: Arc<str>,
        settings: &Settings,
    ) -> Self {
        let same_budget = before.retry.budget_ratio.to_bits()
            == policy.retry.budget_ratio.to_bits()
            && before.retry.budget_min_per_second == policy.retry.budget_min_per_second;
        let mut next = Destination::new(
            policy,
            upstream,
            self.authority.clone(),
            Arc::clone(&self.metrics),
            settings,
        );
        next.live = Arc::clone(&self.live);
        let same_gate = before.concurrency == policy.concurrency;
        next.gate = Gate::carried(&policy.concurrency, &self.gate, same_gate);
        if before.rate_limit == policy.rate_limit {
            next.limiter.clone_from(&self.limiter);
            next.fleet.clone_from(&self.fleet);
            // The new destination's own fleet limit set the gauge to `connected`: the carried
            // one's mode is what applies (it may be `fallback` while Redis is down).
            if let Some(fleet) = &next.fleet {
                next.metrics.fleet_state(fleet.mode());
            }
        }
        if same_budget {
            next.budget = Arc::clone(&self.budget);
        }
        if before.hedge == policy.hedge {
            next.hedging.clone_from(&self.hedging);
        }
        if same_endpoint_set(before, policy) {
            next.endpoints = Arc::clone(&self.endpoints);
            next.resolution = Arc::clone(&self.resolution);
        }
        next.carry_routes(self, before, policy);
        if before.breaker == policy.breaker {
            next.breaker = Arc::clone(&self.breaker);
        } else if let Some(forced) = self.breaker_snapshot(None).forced {
            next.command(
                None,
                match forced {
                    Forced::Open => BreakerCommand::ForceOpen,
                    Forced::Closed => BreakerCommand::ForceClosed,
                },
            );
        }
        next.metrics
            .breaker_state
            .set(next.breaker(None).state().as_gauge());
        next
    }

    /// Each route's breaker and hedge state from `old`'s route of the same name, where the
    /// settings they were made under did not change.
    fn carry_routes(&mut self, old: &Destination, before: &Policy, policy: &Policy) {
        let same_breaker = before.breaker == policy.breaker;
        for (state, route) in self.routes.iter_mut().zip(&policy.routes) {
            let mut found = old.routes.iter().zip(&before.routes);
            if let Some(old) = found.find(|(_, old)| old.name == route.name) {
                state.carry(old, route, same_breaker);
            }
        }
    }

    /// The breaker of a try of `route`: the route's own (`breaker = "own"`) or the
    /// destination's.
    fn breaker(&self, route: Option<usize>) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        let own = route.and_then(|i| self.routes.get(i)?.breaker.as_ref());
        let cell = own.map_or(&self.breaker, |own| &own.breaker);
        // A panic while holding the lock cannot leave the breaker half-updated in a way that
        // matters more than losing traffic: keep serving.
        cell.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `route` has a breaker of its own.
    fn has_own_breaker(&self, route: Option<usize>) -> bool {
        route.is_some_and(|i| self.routes.get(i).is_some_and(RouteState::has_own_breaker))
    }

    /// Whether an operator forced its breaker or one of its routes' own.
    fn any_forced(&self) -> bool {
        let route_forced = (0..self.routes.len())
            .filter(|&i| self.has_own_breaker(Some(i)))
            .any(|i| self.breaker(Some(i)).forced().is_some());
        route_forced || self.breaker(None).forced().is_some()
    }

    /// The metric handles of requests of `route` (`None`: no route took them).
    pub fn calls(&self, route: Option<usize>) -> &CallMetrics {
        match route.and_then(|i| self.routes.get(i)) {
            Some(state) => state.calls(&self.metrics),
            None => self.metrics.calls(),
        }
    }

    /// The hedge state of requests of `route`: the route's own when its hedge or retry settings
    /// differ from the policy's, the destination's otherwise.
    pub fn hedging(&self, route: Option<usize>) -> Option<&Hedging> {
        match route.and_then(|i| self.routes.get(i)) {
            Some(state) if !state.shares_hedging => state.hedging.as_deref(),
            _ => self.hedging.as_deref(),
        }
    }

    /// The endpoint for a try (§17): resolves the destination's name the first time, refreshes
    /// it in the background after its TTL. `tried`: the endpoints this request went to.
    /// `now`: the try's start; `limit`: the try's time, which a first resolution must fit in.
    pub async fn pick(
        &self,
        tried: u64,
        now: Instant,
        limit: Duration,
    ) -> Result<Picked, PickError> {
        self.resolution
            .ensure(&self.endpoints, now, limit)
            .await
            .map_err(PickError::Resolve)?;
        self.endpoints
            .pick(tried, now)
            .map_err(PickError::NoEndpoint)
    }

    /// One try's latency to its head and what it says of the upstream's load, for an adaptive
    /// concurrency limit (a new limit goes to `fusebox_concurrency_limit`) and a percentile
    /// hedge delay (served tries only).
    fn observe_latency(&self, route: Option<usize>, rtt: Duration, signal: Signal) {
        if let Some(limit) = self.gate.sample(rtt, signal) {
            self.metrics.set_concurrency_limit(limit);
        }
        if let Some(hedging) = self.hedging(route).filter(|_| signal == Signal::Served) {
            hedging.record(Instant::now(), rtt);
        }
    }

    /// Enters the concurrency gate; `None` when it is full (503 `overflow`).
    pub fn enter(&self) -> Option<InFlight> {
        let permit = self.gate.try_enter()?;
        self.metrics.in_flight.increment(1.0);
        Some(InFlight {
            _permit: permit,
            gauge: self.metrics.in_flight.clone(),
        })
    }

    /// Asks the breaker to let one attempt through (through [`Destination::begin`]).
    fn admit(&self, route: Option<usize>, now: Instant) -> Admission {
        let (admission, transition, throttle) = {
            let mut breaker = self.breaker(route);
            let (admission, transition) = breaker.admit(now);
            (admission, transition, breaker.throttle_probability())
        };
        // `fusebox_throttle_ratio` is the destination breaker's (a route's own is seen in
        // `/upstreams`).
        if let Some(probability) = throttle.filter(|_| !self.has_own_breaker(route)) {
            self.metrics.set_throttle_ratio(probability);
        }
        if let Some(transition) = transition {
            self.observe(route, &transition);
        }
        admission
    }

    /// Tells the breaker how an attempt it let through ended (through a [`Permit`]).
    fn record(&self, route: Option<usize>, call: CallResult) {
        let transition = self.breaker(route).record(Instant::now(), call);
        if let Some(transition) = transition {
            self.observe(route, &transition);
        }
    }

    /// Records a response head with `status`, under one lock; returns whether the policy's
    /// `failure_statuses` count it as a failure.
    fn record_status(
        &self,
        route: Option<usize>,
        status: u16,
        duration: Duration,
        probe: Option<Episode>,
    ) -> bool {
        self.record_judged(route, duration, probe, |breaker| {
            breaker
                .is_failure_status(status)
                .then_some(FailureKind::Status(status))
        })
    }

    /// Records a gRPC call that ended with `code`, under one lock; returns whether the policy's
    /// `grpc_failure_codes` count it as a failure.
    fn record_grpc(
        &self,
        route: Option<usize>,
        code: GrpcCode,
        duration: Duration,
        probe: Option<Episode>,
    ) -> bool {
        self.record_judged(route, duration, probe, |breaker| {
            breaker
                .is_failure_grpc(code)
                .then_some(FailureKind::GrpcStatus(code))
        })
    }

    /// Records a stream whose success was recorded at its head (a half-open probe) and that
    /// ended with `code`: only as a failure, if `grpc_failure_codes` count it as one (an
    /// ordinary call, judged by its time to the head); returns whether it failed.
    fn record_grpc_failure(&self, route: Option<usize>, code: GrpcCode, to_head: Duration) -> bool {
        let transition = {
            let mut breaker = self.breaker(route);
            if !breaker.is_failure_grpc(code) {
                return false;
            }
            let call = CallResult {
                failure: Some(FailureKind::GrpcStatus(code)),
                duration: to_head,
                probe: None,
            };
            breaker.record(Instant::now(), call)
        };
        if let Some(transition) = transition {
            self.observe(route, &transition);
        }
        true
    }

    /// Records a call that `judge` finds failed or not by the breaker's own configuration, under
    /// the one lock that records it; returns whether it failed.
    fn record_judged(
        &self,
        route: Option<usize>,
        duration: Duration,
        probe: Option<Episode>,
        judge: impl FnOnce(&CircuitBreaker) -> Option<FailureKind>,
    ) -> bool {
        let (failed, transition) = {
            let mut breaker = self.breaker(route);
            let failure = judge(&breaker);
            let call = CallResult {
                failure,
                duration,
                probe,
            };
            (failure.is_some(), breaker.record(Instant::now(), call))
        };
        if let Some(transition) = transition {
            self.observe(route, &transition);
        }
        failed
    }

    /// A response body that stopped arriving for `idle` after its head: the upstream's failure,
    /// recorded as one more call (the try itself was recorded on its head).
    pub fn body_stalled(&self, route: Option<usize>, idle: Duration) {
        self.record(
            route,
            CallResult {
                failure: Some(FailureKind::BodyIdle),
                duration: idle,
                probe: None,
            },
        );
    }

    /// Hands back an abandoned probe's slot (through a [`Permit`]).
    fn abandon(&self, route: Option<usize>, probe: Episode) {
        self.breaker(route).abandon(probe);
    }

    /// Applies an operator's command to the breaker (admin API): `route`'s own, or the
    /// destination's.
    pub fn command(&self, route: Option<usize>, command: BreakerCommand) {
        let now = Instant::now();
        let transition = {
            let mut breaker = self.breaker(route);
            match command {
                BreakerCommand::ForceOpen => breaker.force_open(now),
                BreakerCommand::ForceClosed => breaker.force_closed(now),
                BreakerCommand::Reset => breaker.reset(now),
            }
        };
        if let Some(transition) = transition {
            self.observe(route, &transition);
        }
    }

    /// The breaker's state for explanations (admin API): `route`'s own, or the destination's.
    pub fn breaker_snapshot(&self, route: Option<usize>) -> BreakerSnapshot {
        self.breaker(route).snapshot(Instant::now())
    }

    fn observe(&self, route: Option<usize>, transition: &Transition) {
        let (from, to, reason) = (
            transition.from.label(),
            transition.to.label(),
            transition.reason.label(),
        );
        let own = route.and_then(|i| Some((i, self.routes.get(i)?.breaker.as_ref()?)));
        let route_name = match own {
            Some((i, own)) => {
                own.state.set(transition.to.as_gauge());
                let name = &*self.routes[i].name;
                self.metrics
                    .route_breaker_transition(name, (from, to, reason));
                name
            }
            None => {
                self.metrics.breaker_state.set(transition.to.as_gauge());
                self.metrics.transition(from, to, reason);
                crate::telemetry::DEFAULT_ROUTE
            }
        };
        let w = transition.window;
        warn!(
            upstream = %self.upstream,
            destination = %self.authority,
            route = route_name,
            from = transition.from.label(),
            to = transition.to.label(),
            reason = transition.reason.label(),
            window_calls = w.calls,
            window_failures = w.failures,
            window_slow = w.slow,
            "breaker state changed"
        );
    }
}

/// A destination's endpoint set under `policy`, and where its endpoints come from: the
/// policy's `endpoints`, or the destination's own `host:port` (none for `_other`).
fn endpoint_set(
    policy: &Policy,
    authority: &str,
    metrics: &Arc<DestinationMetrics>,
    settings: &Settings,
    now: Instant,
) -> (EndpointSet, Resolution) {
    let config = SetConfig {
        balance: policy.balance,
        outlier: policy.outlier,
        jitter: settings.jitter,
    };
    let set = EndpointSet::new(config, Arc::clone(metrics), now);
    let sources = if policy.endpoints.is_empty() {
        split_authority(authority)
            .map(|(host, port)| vec![Source::new(host, port)])
            .unwrap_or_default()
    } else {
        let each = |e: &Endpoint| Source::new(&e.host, e.port);
        policy.endpoints.iter().map(each).collect()
    };
    let resolver = settings.resolver.clone();
    let resolution = Resolution::new(sources, policy.dns, resolver, &set, now);
    (set, resolution)
}

/// Whether a destination keeps its endpoint set from `before` to `policy`: the set's own
/// settings are the same, and so are the connection settings its endpoints' clients and
/// connections were made under (a change there must not reuse them).
fn same_endpoint_set(before: &Policy, policy: &Policy) -> bool {
    before.endpoints == policy.endpoints
        && before.balance == policy.balance
        && before.outlier == policy.outlier
        && before.dns == policy.dns
        && before.tls == policy.tls
        && before.sni == policy.sni
        && before.ca_file == policy.ca_file
        && before.client_cert == policy.client_cert
        && before.client_key == policy.client_key
        && before.allow_private == policy.allow_private
        && before.allow_link_local == policy.allow_link_local
        && before.timeouts.connect == policy.timeouts.connect
        && before.pool_idle_timeout == policy.pool_idle_timeout
        && before.pool_max_idle == policy.pool_max_idle
}

/// Why a try has no endpoint to go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickError {
    /// The name did not resolve (the first time: later failures keep the last good set).
    Resolve(String),
    /// Every endpoint is ejected or resting.
    NoEndpoint(NoEndpoint),
}

/// One request in progress at a destination: holds its concurrency slot and its
/// `fusebox_in_flight` count until dropped.
#[derive(Debug)]
pub struct InFlight {
    _permit: GatePermit,
    gauge: metrics::Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// What an operator can do to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerCommand {
    ForceOpen,
    ForceClosed,
    Reset,
}

/// ±10 % on open periods, so that many fusebox instances do not probe an upstream in lockstep.
const BREAKER_JITTER: f64 = 0.1;

/// Above this many destinations in one policy, creating another first drops the least recently
/// used ([`Upstream::make_room`]). Bounds memory for a forward proxy to arbitrary hosts.
const MAX_DESTINATIONS: usize = 10_000;

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("policy", &self.policy.name)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    fn new(
        policy: Arc<Policy>,
        telemetry: Arc<Telemetry>,
        self_addrs: &Arc<SelfAddrs>,
        settings: &Settings,
    ) -> Result<Upstream, String> {
        let rules = connect_rules(&policy, self_addrs);
        let identity = policy.client_cert.as_ref().zip(policy.client_key.as_ref());
        let tls = crate::upstream::tls::client_config(policy.ca_file.as_ref(), identity)
            .map_err(|e| format!("policy {}: {e}", policy.name))?;
        if let Some(cert) = &policy.client_cert {
            telemetry.client_cert_expiry(&policy.name, cert.not_after);
        }
        // Built once to refuse a policy whose TLS settings cannot make a client; each
        // endpoint's own clients are built the same way on first use.
        client::build(&policy, Arc::clone(&tls), rules.clone(), None, false)
            .map_err(|e| format!("policy {}: {e}", policy.name))?;
        Ok(Upstream {
            rewrite_authority: policy
                .host_rewrite
                .as_deref()
                .and_then(|h| Authority::try_from(h).ok()),
            name: Arc::from(policy.name.as_str()),
            labelled: AtomicUsize::new(0),
            settings: settings.clone(),
            policy,
            rules,
            tls,
            next_endpoint: AtomicUsize::new(0),
            destinations: DashMap::new(),
            insert: Mutex::new(()),
            other_metrics: std::sync::OnceLock::new(),
            other: std::sync::OnceLock::new(),
            telemetry,
        })
    }

    /// The connect rules the clients were built with, for fusebox's own connections.
    pub fn rules(&self) -> &ConnectRules {
        &self.rules
    }

    /// The TLS configuration the clients were built with, for fusebox's own connections.
    pub fn tls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// The connect rules of this policy, for CONNECT tunnels (which bypass the client).
    pub fn connect_rules(&self, self_addrs: &Arc<SelfAddrs>) -> ConnectRules {
        connect_rules(&self.policy, self_addrs)
    }

    /// The next `endpoints` entry, round robin, and its index, for an opaque CONNECT tunnel
    /// (which has no endpoint set: it connects to the entry's name as it resolves).
    pub fn next_endpoint(&self) -> Option<(usize, &Endpoint)> {
        let endpoints = &self.policy.endpoints;
        if endpoints.is_empty() {
            return None;
        }
        let n = self.next_endpoint.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Some((n, &endpoints[n]))
    }

    /// The pooled client pinned to `endpoint` (its connections go there whatever the URI
    /// says); for a gRPC call (`grpc`), its HTTP/2-only twin. Built on first use; `None` only
    /// if the policy's TLS settings cannot make one, which [`Upstream::new`] already refused.
    pub fn client<'e>(&self, endpoint: &'e SetEndpoint, grpc: bool) -> Option<&'e Client> {
        let slot = &endpoint.clients[usize::from(grpc)];
        slot.get_or_init(|| {
            let pinned = Endpoint {
                host: endpoint.ip.to_string(),
                port: endpoint.addr.port(),
            };
            let built = client::build(
                &self.policy,
                Arc::clone(&self.tls),
                self.rules.clone(),
                Some(&pinned),
                grpc,
            );
            built
                .inspect_err(|error| warn!(policy = %self.policy.name, %error, "no client"))
                .ok()
        })
        .as_ref()
    }

    /// The one destination of a policy with `endpoints`, named after its first endpoint.
    pub fn endpoints_destination(&self) -> Option<Arc<Destination>> {
        let first = self.policy.endpoints.first()?;
        Some(self.destination(&first.host, first.port))
    }

    /// The state of `host:port`, created on first use. `host` is lowercase, unbracketed.
    pub fn destination(&self, host: &str, port: u16) -> Arc<Destination> {
        let mut key = AuthorityBuf::default();
        let key = key.format(host, port);
        if let Some(found) = self.destinations.get(key) {
            found.touch();
            return Arc::clone(found.value());
        }
        // One creator at a time per policy: label slots are counted, and a destination is
        // created once.
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = self.destinations.get(key) {
            return Arc::clone(found.value());
        }
        // Label slots are never given back, so eviction cannot push cardinality past the limit.
        let labelled = self.labelled.load(Ordering::Relaxed);
        let metrics = if labelled < self.policy.metrics_max_destinations {
            self.labelled.store(labelled + 1, Ordering::Relaxed);
            Arc::new(self.telemetry.destination(&self.policy.name, key))
        } else {
            self.other_metrics()
        };
        let destination = Arc::new(Destination::new(
            &self.policy,
            Arc::clone(&self.name),
            key.into(),
            metrics,
            &self.settings,
        ));
        destination
            .metrics
            .breaker_state
            .set(State::Closed.as_gauge());
        self.make_room(MAX_DESTINATIONS);
        self.destinations
            .insert(key.into(), Arc::clone(&destination));
        destination
    }

    /// Keeps the destinations below `max` whatever their state (an open breaker of a host no
    /// request asks for any more is dropped too, its series with it), least recently used
    /// first, in the CLOCK manner: a pass drops the ones no request looked up since the last
    /// pass and marks the rest unused. Only an operator's forced breaker is kept (his command
    /// would be lost); if that is not enough, any other goes. In-flight requests keep the
    /// destination they hold until they end.
    fn make_room(&self, max: usize) {
        if self.destinations.len() < max {
            return;
        }
        let forced = |d: &Destination| d.any_forced();
        self.destinations
            .retain(|_, d| forced(d) || d.used.swap(false, Ordering::Relaxed));
        let target = max - max / 10;
        if self.destinations.len() >= target {
            let excess = self.destinations.len() + 1 - target;
            let dropped: Vec<Box<str>> = self
                .destinations
                .iter()
                .filter(|entry| !forced(entry.value()))
                .take(excess)
                .map(|entry| entry.key().clone())
                .collect();
            for key in dropped {
                self.destinations.remove(&key);
            }
        }
    }

    /// The state shared by requests that have no destination of their own (bad requests),
    /// exported as `destination="_other"`: made once, and without touching the shared
    /// `_other` gauges (a destination folded into them may have an open breaker).
    pub fn other_destination(&self) -> Arc<Destination> {
        Arc::clone(self.other.get_or_init(|| {
            Arc::new(Destination::new(
                &self.policy,
                Arc::clone(&self.name),
                OTHER_DESTINATION.into(),
                self.other_metrics(),
                &Settings::default(),
            ))
        }))
    }

    fn other_metrics(&self) -> Arc<DestinationMetrics> {
        Arc::clone(self.other_metrics.get_or_init(|| {
            Arc::new(
                self.telemetry
                    .destination(&self.policy.name, OTHER_DESTINATION),
            )
        }))
    }

    /// Carries the destinations of the previous version of this policy over, component by
    /// component ([`Destination::carried`]); their label slots come along with them.
    fn carry_from(&self, before: &Upstream) {
        for entry in &before.destinations {
            let next = entry.value().carried(
                &before.policy,
                &self.policy,
                Arc::clone(&self.name),
                &self.settings,
            );
            self.destinations
                .insert(entry.key().clone(), Arc::new(next));
        }
        let labelled = before.labelled.load(Ordering::Relaxed);
        self.labelled.store(labelled, Ordering::Relaxed);
        if let Some(other) = before.other_metrics.get() {
            let _ = self.other_metrics.set(Arc::clone(other));
        }
    }

    /// Every destination seen so far.
    pub fn destinations(&self) -> Vec<Arc<Destination>> {
        self.destinations
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect()
    }
}

fn connect_rules(policy: &Policy, self_addrs: &Arc<SelfAddrs>) -> ConnectRules {
    ConnectRules {
        guard: GuardRules {
            allow_private: policy.allow_private,
            allow_link_local: policy.allow_link_local,
        },
        timeout: policy.timeouts.connect,
        self_addrs: Arc::clone(self_addrs),
    }
}

/// Splits `host:port` or `[v6]:port`, as made by [`AuthorityBuf`].
pub fn split_authority(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// Formats `host:port` (brackets around IPv6) into a stack buffer, so that looking up an
/// existing destination allocates nothing; only absurdly long names fall back to the heap.
struct AuthorityBuf {
    bytes: [u8; 300],
    heap: String,
}

impl Default for AuthorityBuf {
    fn default() -> Self {
        AuthorityBuf {
            bytes: [0; 300],
            heap: String::new(),
        }
    }
}

impl AuthorityBuf {
    fn format(&mut self, host: &str, port: u16) -> &str {
        let mut digits = itoa::Buffer::new();
        let port = digits.format(port);
        let (open, close) = if host.contains(':') {
            ("[", "]:")
        } else {
            ("", ":")
        };
        let parts = [open, host, close, port];
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len > self.bytes.len() {
            self.heap = parts.concat();
            return &self.heap;
        }
        let mut at = 0;
        for part in parts {
            self.bytes[at..at + part.len()].copy_from_slice(part.as_bytes());
            at += part.len();
        }
        // Whole UTF-8 strings copied end to end: always valid.
        std::str::from_utf8(&self.bytes[..len]).unwrap_or_default()
    }
}

/// One generation of policies with their runtime state.
#[derive(Debug)]
pub struct Snapshot {
    pub policies: PolicySet,
    pub generation: u64,
    default: Arc<Upstream>,
    others: Vec<Arc<Upstream>>,
}

impl Snapshot {
    /// The upstream for a requested destination (policy matching, docs/ARCHITECTURE.md §1).
    pub fn lookup(&self, host: &str, port: u16) -> &Arc<Upstream> {
        match self.policies.lookup_index(host, port) {
            Some(index) => &self.others[index],
            None => &self.default,
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Upstream>> {
        if self.default.policy.name == name {
            return Some(&self.default);
        }
        self.others
            .binary_search_by(|u| u.policy.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.others[i])
    }

    /// The default policy's upstream.
    pub fn default(&self) -> &Arc<Upstream> {
        &self.default
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        std::iter::once(&self.default).chain(self.others.iter())
    }
}

/// The active snapshot, swapped atomically.
#[derive(Debug)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
    telemetry: Arc<Telemetry>,
    self_addrs: Arc<SelfAddrs>,
    settings: Settings,
}

/// What every destination is built with beside its policy.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `false` makes breaker open periods and retry backoff exact (tests).
    pub jitter: bool,
    /// The Redis of fleet-wide limits (`--redis`).
    pub fleet: Option<Arc<FleetRedis>>,
    /// The DNS resolver of endpoint sets (`--dns-server`, or the system's configuration);
    /// `None`: getaddrinfo, without TTLs (unit tests).
    pub resolver: Option<Arc<Resolver>>,
}

impl Registry {
    pub fn new(
        policies: PolicySet,
        telemetry: Arc<Telemetry>,
        self_addrs: Arc<SelfAddrs>,
        settings: Settings,
    ) -> Result<Registry, String> {
        let snapshot = build_snapshot(policies, 1, None, &telemetry, &self_addrs, &settings)?;
        telemetry.config_generation.set(1.0);
        Ok(Registry {
            current: ArcSwap::from_pointee(snapshot),
            telemetry,
            self_addrs,
            settings,
        })
    }

    /// Builds the next generation from `policies`: a policy that did not change keeps its
    /// upstream (pooled client, every destination's breaker, limiter, budget and gate); a
    /// changed or new one starts fresh, except that breakers an operator forced stay forced.
    /// Nothing is swapped in yet: see [`Registry::swap`].
    pub fn prepare(&self, policies: PolicySet) -> Result<Snapshot, String> {
        let current = self.current.load_full();
        build_snapshot(
            policies,
            current.generation + 1,
            Some(&current),
            &self.telemetry,
            &self.self_addrs,
            &self.settings,
        )
    }

    /// Makes `next` the active generation, atomically; requests already under way finish with
    /// the snapshot they started with. Returns the previous one, for the caller to drop where
    /// freeing it (every client of every changed policy) stalls no request.
    pub fn swap(&self, next: Snapshot) -> (u64, Arc<Snapshot>) {
        let generation = next.generation;
        let previous = self.current.swap(Arc::new(next));
        // A gauge holds an f64; generations stay far below 2^53.
        #[allow(clippy::cast_precision_loss)]
        self.telemetry.config_generation.set(generation as f64);
        (generation, previous)
    }

    /// The Prometheus text of `/metrics`: every metric, less the series of policies,
    /// destinations and endpoints that no longer exist ([`Telemetry::render_where`]).
    pub fn render_metrics(&self) -> String {
        let snapshot = self.load();
        set_idle_connections(&snapshot);
        self.telemetry.render_where(
            |upstream, destination, endpoint| {
                let Some(upstream) = snapshot.by_name(upstream) else {
                    return false;
                };
                if destination == OTHER_DESTINATION {
                    return true;
                }
                let Some(found) = upstream.destinations.get(destination) else {
                    return false;
                };
                match endpoint {
                    Some(endpoint) if endpoint != OTHER_DESTINATION => {
                        let members = found.endpoints.members();
                        members.iter().any(|member| &*member.label == endpoint)
                    }
                    _ => true,
                }
            },
            |name, upstream| {
                // A policy's own series: its client certificate's expiry only while it has one.
                snapshot.by_name(upstream).is_some_and(|upstream| {
                    name != "fusebox_client_cert_expiry_seconds"
                        || upstream.policy.client_cert.is_some()
                })
            },
        )
    }

    /// The active policies and their state; cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn self_addrs(&self) -> &Arc<SelfAddrs> {
        &self.self_addrs
    }

    /// Whether breaker open periods and retry backoff are randomised.
    pub fn jitter(&self) -> bool {
        self.settings.jitter
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Closes the upstream connections that have rested for their policy's
    /// `pool_idle_timeout` as of `now`; the agent's upkeep calls this every 5 s.
    pub fn close_idle_connections(&self, now: Instant) {
        for upstream in self.load().upstreams() {
            let timeout = upstream.policy.pool_idle_timeout;
            for entry in &upstream.destinations {
                for endpoint in entry.value().endpoints.members().iter() {
                    endpoint.idle.close_expired(now, timeout);
                }
            }
        }
    }
}

/// Sets every destination's `fusebox_upstream_idle_connections`; destinations that share the
/// `_other` series add up.
fn set_idle_connections(snapshot: &Snapshot) {
    let mut counts: HashMap<*const DestinationMetrics, (Arc<DestinationMetrics>, usize)> =
        HashMap::new();
    for upstream in snapshot.upstreams() {
        for entry in &upstream.destinations {
            let destination = entry.value();
            let metrics = &destination.metrics;
            let count = counts
                .entry(Arc::as_ptr(metrics))
                .or_insert_with(|| (Arc::clone(metrics), 0));
            count.1 += destination.idle_connections();
        }
    }
    for (metrics, count) in counts.values() {
        metrics.set_idle_connections(*count);
    }
}

fn build_snapshot(
    policies: PolicySet,
    generation: u64,
    previous: Option<&Snapshot>,
    telemetry: &Arc<Telemetry>,
    self_addrs: &Arc<SelfAddrs>,
    settings: &Settings,
) -> Result<Snapshot, String> {
    let make = |policy: &Arc<Policy>| -> Result<Arc<Upstream>, String> {
        let before = previous.and_then(|p| p.by_name(&policy.name));
        if let Some(before) = before.filter(|b| *b.policy == **policy) {
            return Ok(Arc::clone(before));
        }
        let fresh = Upstream::new(
            Arc::clone(policy),
            Arc::clone(telemetry),
            self_addrs,
            settings,
        )?;
        if let Some(before) = before {
            fresh.carry_from(before);
        }
        Ok(Arc::new(fresh))
    };
    let default = make(&policies.default)?;
    let others = policies
        .others
        .iter()
        .map(make)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot {
        policies,
        generation,
        default,
        others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::attempt::{AttemptError, ErrorKind, Sent};
    use crate::policy::load::{load_sources, Source};

    /// A registry on `text` as the default policy, and that policy's upstream.
    fn registry(text: &str) -> (Registry, Arc<Upstream>) {
        let source = Source {
            name: "default".to_owned(),
            file: "default.toml".into(),
            text: text.to_owned(),
        };
        let set = load_sources(std::path::Path::new("."), &[source], Vec::new()).unwrap();
        let registry =
            Registry::new(set, Telemetry::new(), Arc::default(), Settings::default()).unwrap();
        let upstream = Arc::clone(registry.load().default());
        (registry, upstream)
    }

    /// The destination `api.example:80` of a policy `api` whose text is `text`.
    fn api_destination(text: &str) -> Arc<Destination> {
        let sources = [
            ("default", String::new()),
            ("api", format!("hosts = [\"api.example\"]\n{text}")),
        ]
        .map(|(name, text)| Source {
            name: name.to_owned(),
            file: format!("{name}.toml").into(),
            text,
        });
        let set = load_sources(std::path::Path::new("."), &sources, Vec::new()).unwrap();
        let registry =
            Registry::new(set, Telemetry::new(), Arc::default(), Settings::default()).unwrap();
        let upstream = Arc::clone(registry.load().by_name("api").unwrap());
        upstream.destination("api.example", 80)
    }

    #[test]
    fn a_route_hedges_on_its_own_state_only_when_its_settings_differ() {
        let text = "[hedge]\nenabled = true\ndelay = \"20ms\"\n\
                    [[route]]\nname = \"same\"\npath_prefix = \"/a\"\n[route.timeouts]\ntotal = \"9s\"\n\
                    [[route]]\nname = \"own\"\npath_prefix = \"/b\"\n[route.hedge]\ndelay = \"5ms\"\n\
                    [[route]]\nname = \"none\"\npath_prefix = \"/c\"\n[route.hedge]\nenabled = false\n";
        let destination = api_destination(text);
        let shared = destination.hedging(None).expect("the policy hedges");
        let same = destination.hedging(Some(0)).expect("shared");
        assert!(std::ptr::eq(shared, same));
        let own = destination.hedging(Some(1)).expect("its own");
        assert!(!std::ptr::eq(shared, own));
        assert!(destination.hedging(Some(2)).is_none());
    }

    #[test]
    fn a_route_s_own_breaker_trips_alone_and_keeps_the_destination_alive() {
        let text = "[breaker]\nconsecutive_failures = 1\n\
                    [[route]]\nname = \"own\"\nbreaker = \"own\"\n\
                    [[route]]\nname = \"shared\"\npath_prefix = \"/s\"\n";
        let destination = api_destination(text);
        let permit = destination.begin(Some(0)).unwrap();
        permit.failed(&AttemptError::new(
            ErrorKind::Reset,
            Sent::Nothing,
            "reset".into(),
        ));
        assert_eq!(destination.breaker_snapshot(Some(0)).state, State::Open);
        assert_eq!(destination.breaker_snapshot(None).state, State::Closed);
        assert!(destination.begin(Some(0)).is_err());
        assert!(
            destination.begin(Some(1)).is_ok(),
            "a shared route uses the destination's"
        );
        destination.command(Some(0), BreakerCommand::Reset);
        assert_eq!(destination.breaker_snapshot(Some(0)).state, State::Closed);
    }

    /// Opens `destination`'s breaker (one failure trips it under the test policy).
    fn trip(destination: &Destination) {
        let permit = destination.begin(None).unwrap();
        permit.failed(&AttemptError::new(
            ErrorKind::Reset,
            Sent::Nothing,
            "reset".into(),
        ));
        assert_eq!(destination.breaker_snapshot(None).state, State::Open);
    }

    #[test]
    fn the_destination_bound_holds_whatever_the_breakers_say() {
        let (_registry, upstream) = registry("[breaker]\nconsecutive_failures = 1\n");
        let host = |n: usize| format!("h{n}.test");
        for n in 0..100 {
            trip(&upstream.destination(&host(n), 80));
        }
        upstream
            .destination(&host(0), 80)
            .command(None, BreakerCommand::ForceOpen);
        upstream.make_room(100);
        let kept: Vec<Box<str>> = upstream
            .destinations
            .iter()
            .map(|e| e.key().clone())
            .collect();
        assert!(
            kept.len() < 90,
            "open breakers do not hold the bound up: {}",
            kept.len()
        );
        assert!(
            upstream.destinations.contains_key("h0.test:80"),
            "a forced breaker stays"
        );
        // The least recently used go first: a pass drops what no request looked up since.
        let looked_up = &kept[..10];
        for key in looked_up {
            let (host, port) = split_authority(key).unwrap();
            upstream.destination(host, port);
        }
        upstream.make_room(kept.len());
        let mut left: Vec<Box<str>> = upstream
            .destinations
            .iter()
            .map(|e| e.key().clone())
            .collect();
        left.sort();
        let mut expected: Vec<Box<str>> = looked_up.to_vec();
        if !expected.iter().any(|k| &**k == "h0.test:80") {
            expected.push("h0.test:80".into());
        }
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn requests_without_a_destination_share_one_and_leave_the_gauge_alone() {
        let (registry, upstream) = registry("metrics_max_destinations = 1\n");
        upstream.destination("labelled.test", 80);
        let folded = upstream.destination("folded.test", 80);
        folded.command(None, BreakerCommand::ForceOpen);
        let open = r#"fusebox_breaker_state{upstream="default",destination="_other"} 2"#;
        let gauge = || registry.render_metrics().contains(open);
        assert!(gauge(), "{}", registry.render_metrics());
        let first = upstream.other_destination();
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&first, &upstream.other_destination()));
        }
        assert!(gauge(), "a bad request reset the shared gauge");
    }

    /// A half-open probe answered with a gRPC stream passes at its head; the status in its
    /// trailers still counts, as an ordinary call of the closed breaker.
    #[tokio::test(start_paused = true)]
    async fn a_streaming_probe_passes_at_its_head_and_its_trailers_still_count() {
        let policy = "[breaker]\nconsecutive_failures = 1\nopen_base = \"1s\"\n";
        let (_registry, upstream) = registry(policy);
        let destination = upstream.destination("grpc.test", 80);
        trip(&destination);
        tokio::time::advance(Duration::from_secs(2)).await;
        let permit = destination.begin(None).unwrap();
        assert!(permit.is_probe());
        let pending = permit.pending(Arc::clone(&destination));
        assert_eq!(
            destination.breaker_snapshot(None).state,
            State::Closed,
            "at the head"
        );
        // A long stream: far past open_max, nothing is lost.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(destination.breaker_snapshot(None).state, State::Closed);
        assert!(pending.ended(GrpcCode::Unavailable), "a failure");
        assert_eq!(
            destination.breaker_snapshot(None).state,
            State::Open,
            "it trips again"
        );
    }

    /// A stream is judged slow or not by its time to the head, not by how long it runs.
    #[tokio::test(start_paused = true)]
    async fn a_long_stream_is_not_a_slow_call() {
        let (_registry, upstream) = registry("[breaker]\nslow_call_duration = \"1s\"\n");
        let destination = upstream.destination("grpc.test", 80);
        let pending = destination
            .begin(None)
            .unwrap()
            .pending(Arc::clone(&destination));
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!pending.ended(GrpcCode::Ok));
        let window = destination.breaker_snapshot(None).window;
        assert_eq!((window.calls, window.slow), (1, 0), "{window:?}");
    }

    #[test]
    fn authority_brackets_ipv6() {
        assert_eq!(
            AuthorityBuf::default().format("example.com", 80),
            "example.com:80"
        );
        assert_eq!(AuthorityBuf::default().format("::1", 8080), "[::1]:8080");
        let long = "a".repeat(400);
        assert_eq!(
            AuthorityBuf::default().format(&long, 1),
            format!("{long}:1")
        );
    }
}
