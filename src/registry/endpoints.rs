//! A destination's endpoint set (docs/ARCHITECTURE.md §17): the addresses its requests are
//! shared between, each with its own latency estimate, requests waiting for a head, ejection
//! state, idle connections and pooled clients.
//!
//! The members are behind an `ArcSwap`: a pick reads them, and each endpoint's state it
//! compares, without a lock or an allocation ([`EndpointSet::pick`]). A try records its end
//! on the endpoint it went to through its [`Picked`]; only then is the endpoint's small
//! ejection lock taken. Resolution ([`super::resolution`]) replaces the members, keeping the
//! endpoints whose address stays: their state, their connections, their in-flight tries. A
//! removed endpoint is dropped once its last try and connection are done with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use tokio::time::Instant;

use crate::pipeline::ejection::{max_ejected, Change, Ejection};
use crate::pipeline::p2c;
use crate::pipeline::peak_ewma::{cost, AtomicEstimate, Estimate};
use crate::policy::{Balance, BalanceMode, Outlier, PanicMode};
use crate::telemetry::{DestinationMetrics, EndpointMetrics};
use crate::upstream::http1::IdleConnections;
use crate::upstream::Client;

/// One address of a destination.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port` (IPv6 in brackets): its `endpoint` label and its name in explanations.
    pub label: Box<str>,
    /// The IP as text, to connect to.
    pub ip: Box<str>,
    /// What requests to it carry as their URI authority (and TLS name) when the policy has no
    /// `host_rewrite`: the name or `endpoints` entry it was resolved from.
    pub authority: Option<Authority>,
    /// Its kept-alive HTTP/1.1 connections.
    pub idle: Arc<IdleConnections>,
    /// Its pooled hyper clients (ordinary, HTTP/2-only), built on first use.
    pub clients: [OnceLock<Option<Client>>; 2],
    estimate: AtomicEstimate,
    /// Tries sent to it that have no response head yet.
    pending: AtomicU32,
    /// Out of picks until this time (milliseconds of the set's clock): its `Retry-After`.
    not_before_ms: AtomicU64,
    /// A copy of the ejection state for lock-free picks: [`Health::as_gauge`].
    health: AtomicU8,
    /// When an ejection ends (milliseconds of the set's clock).
    until_ms: AtomicU64,
    ejection: Mutex<Ejection>,
    /// Ready, no failure in a row, no re-admission to settle: a success changes nothing in
    /// `ejection`, whose lock it then skips.
    clean: AtomicBool,
    metrics: EndpointMetrics,
    /// Endpoint tries recorded as failures.
    failures: AtomicU64,
    successes: AtomicU64,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What `/upstreams` shows of an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub label: String,
    pub state: &'static str,
    pub ewma: Duration,
    pub pending: u32,
    pub ejections: u32,
    /// Time left of its ejection.
    pub ejected_for: Option<Duration>,
    /// Time left of its `Retry-After`.
    pub resting_for: Option<Duration>,
    pub successes: u64,
    pub failures: u64,
}

/// The settings a set was made with.
#[derive(Debug, Clone, Copy)]
pub struct SetConfig {
    pub balance: Balance,
    pub outlier: Outlier,
    /// Ejection lengths are spread by up to ±10 % when true.
    pub jitter: bool,
}

/// A destination's endpoints; see the module docs.
pub struct EndpointSet {
    members: ArcSwap<Vec<Arc<Endpoint>>>,
    config: SetConfig,
    /// The zero of the set's millisecond clock.
    epoch: Instant,
    next_round_robin: AtomicUsize,
    /// Members ejected now.
    ejected: AtomicUsize,
    /// How many members there are (read without loading them).
    len: AtomicUsize,
    /// Labels given out (at most `max_endpoints`; the rest share `_other`).
    labelled: AtomicUsize,
    metrics: Arc<DestinationMetrics>,
    /// Seeded randomness for tests; the thread's generator otherwise.
    seeded: Option<Mutex<fastrand::Rng>>,
    /// The set was in panic at its last ejection (logged once per episode).
    panicking: AtomicBool,
}

impl std::fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSet")
            .field("members", &self.members.load().len())
            .finish_non_exhaustive()
    }
}

/// Why no endpoint could be picked: the text of the `503 no-endpoint` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEndpoint(pub String);

impl EndpointSet {
    pub fn new(config: SetConfig, metrics: Arc<DestinationMetrics>, now: Instant) -> Self {
        EndpointSet {
            members: ArcSwap::from_pointee(Vec::new()),
            config,
            epoch: now,
            next_round_robin: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            labelled: AtomicUsize::new(0),
            metrics,
            seeded: None,
            panicking: AtomicBool::new(false),
        }
    }

    /// The same, with randomness from `seed` (tests: a repeatable sequence of picks).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seeded = Some(Mutex::new(fastrand::Rng::with_seed(seed)));
        self
    }

    pub fn config(&self) -> &SetConfig {
        &self.config
    }

    pub fn members(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.members.load_full()
    }

    /// How many endpoints the set has now (no load of the members).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.members.load().is_empty()
    }

    /// Replaces the members by `addrs` (each with the authority its requests carry): an
    /// address already a member keeps its endpoint.
    pub fn replace(&self, addrs: &[(SocketAddr, Option<Authority>)], now: Instant) {
        let before = self.members.load_full();
        let next: Vec<Arc<Endpoint>> = addrs
            .iter()
            .map(|(addr, authority)| {
                before
                    .iter()
                    .find(|e| e.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(self.endpoint(*addr, authority.clone(), now)))
            })
            .collect();
        let ejected = next
            .iter()
            .filter(|e| e.health.load(Ordering::Relaxed) != 0)
            .count();
        self.ejected.store(ejected, Ordering::Relaxed);
        self.len.store(next.len(), Ordering::Relaxed);
        self.members.store(Arc::new(next));
    }

    fn endpoint(&self, addr: SocketAddr, authority: Option<Authority>, now: Instant) -> Endpoint {
        let label = crate::address::authority_text(addr);
        let n = self.labelled.fetch_add(1, Ordering::Relaxed);
        let metrics = if n < self.config.balance.max_endpoints {
            self.metrics.endpoint(&label)
        } else {
            self.metrics.endpoint("_other")
        };
        let default_rtt = self.config.balance.default_rtt;
        metrics.cost.set(default_rtt.as_secs_f64());
        metrics.state.set(0.0);
        Endpoint {
            addr,
            ip: addr.ip().to_string().into(),
            label: label.into(),
            authority,
            idle: Arc::default(),
            clients: [OnceLock::new(), OnceLock::new()],
            estimate: AtomicEstimate::new(Estimate::new(default_rtt, self.ms(now))),
            pending: AtomicU32::new(0),
            not_before_ms: AtomicU64::new(0),
            health: AtomicU8::new(0),
            until_ms: AtomicU64::new(0),
            ejection: Mutex::new(Ejection::default()),
            clean: AtomicBool::new(true),
            metrics,
            failures: AtomicU64::new(0),
            successes: AtomicU64::new(0),
        }
    }

    /// Milliseconds of the set's clock at `now`.
    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn ms64(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn random_pair(&self) -> (u64, u64) {
        match &self.seeded {
            Some(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                (rng.u64(..), rng.u64(..))
            }
            None => (fastrand::u64(..), fastrand::u64(..)),
        }
    }

    /// More members are ejected than `max_ejected_percent` allows.
    fn in_panic(&self, len: usize) -> bool {
        self.ejected.load(Ordering::Relaxed)
            > max_ejected(len, self.config.outlier.max_ejected_percent)
    }

    /// Picks the endpoint for a try at `now`. `tried`: the endpoints this request already went
    /// to (bit `index % 64`), avoided while another is eligible. An endpoint whose ejection
    /// ended gets the try as its probe first.
    pub fn pick(self: &Arc<Self>, tried: u64, now: Instant) -> Result<Picked, NoEndpoint> {
        let members = self.members.load();
        let len = members.len();
        if len == 1 {
            // The only endpoint: never ejected (its breaker guards it), nothing to choose.
            return Ok(self.picked(&members, 0, now, false));
        }
        let now_ms = self.ms64(now);
        if let Some(index) = self.due_probe(&members, now, now_ms) {
            return Ok(self.picked(&members, index, now, true));
        }
        let route_all = self.config.outlier.panic == PanicMode::RouteAll && self.in_panic(len);
        // Preferred first: not yet tried by this request and not resting after a
        // `Retry-After`; then resting ones; then any that takes tries at all.
        let open = |i: usize| members[i].takes_tries(route_all);
        let awake = |i: usize| open(i) && members[i].awake(now_ms);
        let untried = |i: usize| tried & (1u64 << (i % 64)) == 0 && awake(i);
        let index = self
            .choose(&members, now_ms, untried)
            .or_else(|| self.choose(&members, now_ms, awake))
            .or_else(|| self.choose(&members, now_ms, open))
            .ok_or_else(|| self.no_endpoint(&members, now))?;
        Ok(self.picked(&members, index, now, false))
    }

    /// An endpoint this request has not tried, ready and awake, for the same try after a
    /// connection to another could not be opened; no probe, no fallback to tried ones.
    pub fn pick_untried(&self, tried: u64, now: Instant) -> Option<Picked> {
        let members = self.members.load();
        let now_ms = self.ms64(now);
        let untried = |i: usize| {
            tried & (1u64 << (i % 64)) == 0
                && members[i].takes_tries(false)
                && members[i].awake(now_ms)
        };
        let index = self.choose(&members, now_ms, untried)?;
        Some(self.picked(&members, index, now, false))
    }

    fn choose(
        &self,
        members: &[Arc<Endpoint>],
        now_ms: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = members.len();
        match self.config.balance.mode {
            BalanceMode::P2cEwma => {
                let decay = self.config.balance.decay;
                let now32 = now_ms as u32;
                p2c::pick(len, self.random_pair(), eligible, |i| {
                    members[i].cost(now32, decay)
                })
            }
            BalanceMode::RoundRobin => {
                let start = self.next_round_robin.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| (start + k) % len.max(1))
                    .find(|&i| eligible(i))
            }
        }
    }

    /// The first member whose ejection ended and whose probe this caller claimed.
    fn due_probe(&self, members: &[Arc<Endpoint>], now: Instant, now_ms: u64) -> Option<usize> {
        members.iter().position(|e| {
            e.health.load(Ordering::Relaxed) == 1
                && e.until_ms.load(Ordering::Relaxed) <= now_ms
                && e.claim_probe(now)
        })
    }

    fn picked(&self, members: &[Arc<Endpoint>], index: usize, now: Instant, probe: bool) -> Picked {
        let endpoint = Arc::clone(&members[index]);
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        Picked {
            endpoint,
            index,
            started: now,
            probe,
            done: false,
        }
    }

    fn no_endpoint(&self, members: &[Arc<Endpoint>], now: Instant) -> NoEndpoint {
        if members.is_empty() {
            return NoEndpoint("the destination has no endpoint".to_owned());
        }
        let now_ms = self.ms64(now);
        let each: Vec<String> = members
            .iter()
            .map(|e| e.explain(now_ms, self.config.outlier.panic))
            .collect();
        NoEndpoint(format!("no endpoint is ready: {}", each.join("; ")))
    }

    /// Records the end of a try on its endpoint; see [`Picked::succeeded`] and
    /// [`Picked::failed`].
    fn record(&self, picked: &Picked, outcome: TryEnd, now: Instant) {
        let endpoint = &picked.endpoint;
        let balance = &self.config.balance;
        let now_ms = self.ms(now);
        let change = match outcome {
            TryEnd::Succeeded => {
                endpoint.successes.fetch_add(1, Ordering::Relaxed);
                endpoint.metrics.success.increment(1);
                if endpoint.clean.load(Ordering::Relaxed) {
                    // The only endpoint of a set has nothing to be compared with: its estimate
                    // is not kept (a success of a clean endpoint changes nothing else).
                    if self.len.load(Ordering::Relaxed) > 1 {
                        let rtt = now.saturating_duration_since(picked.started);
                        let estimate = endpoint.estimate.sample(rtt, now_ms, balance.decay);
                        endpoint.metrics.cost.set(f64::from(estimate.nanos) / 1e9);
                    }
                    return;
                }
                let rtt = now.saturating_duration_since(picked.started);
                let mut ejection = endpoint.ejection();
                let change = ejection.succeeded(now, &self.config.outlier);
                endpoint.clean.store(ejection.is_clean(), Ordering::Relaxed);
                drop(ejection);
                if change == Some(Change::Readmitted) {
                    // A re-admitted endpoint starts from what its probe measured.
                    endpoint.estimate.reset(Estimate::new(rtt, now_ms));
                } else {
                    endpoint.estimate.sample(rtt, now_ms, balance.decay);
                }
                change
            }
            TryEnd::Failed { retry_after } => {
                endpoint.failures.fetch_add(1, Ordering::Relaxed);
                endpoint.metrics.failure.increment(1);
                endpoint
                    .estimate
                    .sample(balance.failure_penalty, now_ms, balance.decay);
                if let Some(after) = retry_after {
                    // An absurd `Retry-After` rests it no longer than an ejection could.
                    let after = after.min(self.config.outlier.max_ejection);
                    let until = self.ms64(now + after);
                    endpoint.not_before_ms.fetch_max(until, Ordering::Relaxed);
                }
                self.failed(endpoint, now)
            }
        };
        let estimate = endpoint.estimate.load().nanos;
        endpoint.metrics.cost.set(f64::from(estimate) / 1e9);
        if let Some(change) = change {
            self.changed(endpoint, change);
        }
    }

    fn failed(&self, endpoint: &Endpoint, now: Instant) -> Option<Change> {
        // One endpoint is the destination: its breaker guards it, not ejection.
        let may_eject = self.len.load(Ordering::Relaxed) > 1;
        let jitter = if self.config.jitter {
            fastrand::f64() * 2.0 - 1.0
        } else {
            0.0
        };
        endpoint.clean.store(false, Ordering::Relaxed);
        let change = endpoint
            .ejection()
            .failed(now, &self.config.outlier, may_eject, jitter);
        if let Some(Change::Ejected { .. }) = change {
            let counter = if endpoint.health.load(Ordering::Relaxed) == 2 {
                &endpoint.metrics.ejected_probe
            } else {
                &endpoint.metrics.ejected_failures
            };
            counter.increment(1);
        }
        change
    }

    /// Mirrors a change of an endpoint's health for picks, metrics and logs.
    fn changed(&self, endpoint: &Endpoint, change: Change) {
        let was = endpoint.health.load(Ordering::Relaxed);
        match change {
            Change::Ejected { until, times } => {
                endpoint.until_ms.store(self.ms64(until), Ordering::Relaxed);
                endpoint.health.store(1, Ordering::Relaxed);
                // Ejected and probing endpoints are both out: only one from ready counts.
                if was == 0 {
                    self.ejected.fetch_add(1, Ordering::Relaxed);
                }
                endpoint.metrics.state.set(1.0);
                let len = self.len.load(Ordering::Relaxed);
                let panic = self.in_panic(len);
                let first = panic && !self.panicking.swap(true, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %endpoint.label,
                    ejected_for_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                    times,
                    "endpoint ejected"
                );
                if first {
                    tracing::warn!(
                        ejected = self.ejected.load(Ordering::Relaxed),
                        endpoints = len,
                        panic = self.config.outlier.panic.label(),
                        "more endpoints ejected than outlier.max_ejected_percent allows"
                    );
                }
            }
            Change::Readmitted => {
                endpoint.health.store(0, Ordering::Relaxed);
                self.ejected.fetch_sub(1, Ordering::Relaxed);
                endpoint.metrics.state.set(0.0);
                self.panicking.store(false, Ordering::Relaxed);
                tracing::info!(endpoint = %endpoint.label, "endpoint re-admitted after its probe");
            }
        }
    }

    /// What `/upstreams` shows of each member.
    pub fn view(&self, now: Instant) -> Vec<EndpointView> {
        let now_ms = self.ms64(now);
        let decay = self.config.balance.decay;
        let left = |until: u64| (until > now_ms).then(|| Duration::from_millis(until - now_ms));
        self.members
            .load()
            .iter()
            .map(|e| {
                let ejection = e.ejection().clone();
                let health = e.health.load(Ordering::Relaxed);
                EndpointView {
                    label: e.label.to_string(),
                    state: ejection.health().label(),
                    ewma: Duration::from_nanos(
                        e.estimate.load().decayed(now_ms as u32, decay) as u64
                    ),
                    pending: e.pending.load(Ordering::Relaxed),
                    ejections: ejection.times_ejected(),
                    ejected_for: (health == 1)
                        .then(|| left(e.until_ms.load(Ordering::Relaxed)))
                        .flatten(),
                    resting_for: left(e.not_before_ms.load(Ordering::Relaxed)),
                    successes: e.successes.load(Ordering::Relaxed),
                    failures: e.failures.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

impl Endpoint {
    fn ejection(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether picks may choose it: ready, or in any state when the set routes to all.
    fn takes_tries(&self, route_all: bool) -> bool {
        route_all || self.health.load(Ordering::Relaxed) == 0
    }

    /// Not resting after a `Retry-After` at `now_ms`.
    fn awake(&self, now_ms: u64) -> bool {
        self.not_before_ms.load(Ordering::Relaxed) <= now_ms
    }

    fn cost(&self, now_ms: u32, decay: Duration) -> f32 {
        cost(
            self.estimate.load().decayed(now_ms, decay),
            self.pending.load(Ordering::Relaxed),
        )
    }

    /// A probe ended without a verdict: due again at once (an ejection that ended at the
    /// set's time zero).
    fn probe_abandoned(&self) {
        self.ejection().probe_abandoned(Instant::now());
        self.until_ms.store(0, Ordering::Relaxed);
        self.health.store(1, Ordering::Relaxed);
        self.metrics.state.set(1.0);
    }

    fn claim_probe(&self, now: Instant) -> bool {
        let claimed = self.ejection().claim_probe(now);
        if claimed {
            self.health.store(2, Ordering::Relaxed);
            self.metrics.state.set(2.0);
        }
        claimed
    }

    /// Why it takes no tries, for the `no-endpoint` answer.
    fn explain(&self, now_ms: u64, panic: PanicMode) -> String {
        let until = self.until_ms.load(Ordering::Relaxed);
        let rest = self.not_before_ms.load(Ordering::Relaxed);
        match self.health.load(Ordering::Relaxed) {
            1 => format!(
                "{} ejected for {} ms more (outlier.panic = {})",
                self.label,
                until.saturating_sub(now_ms),
                panic.label()
            ),
            2 => format!("{} is being probed", self.label),
            _ if rest > now_ms => format!(
                "{} asked for no requests for {} ms more (Retry-After)",
                self.label,
                rest - now_ms
            ),
            _ => format!("{} is ready", self.label),
        }
    }
}

/// How a try ended, for its endpoint.
#[derive(Debug, Clone, Copy)]
pub enum TryEnd {
    /// A response head that is not the endpoint's failure.
    Succeeded,
    /// The endpoint's failure (connect, reset, timeout, a failure status, 429);
    /// `retry_after`: it asked for no requests for this long.
    Failed { retry_after: Option<Duration> },
}

/// The endpoint a try goes to; counts as pending there until recorded or dropped.
#[derive(Debug)]
pub struct Picked {
    pub endpoint: Arc<Endpoint>,
    /// Its index in the members when picked: the request's `tried` bit.
    pub index: usize,
    started: Instant,
    /// The try is the endpoint's probe after an ejection.
    pub probe: bool,
    done: bool,
}

impl Picked {
    /// The bit of `tried` this endpoint takes.
    pub fn tried_bit(&self) -> u64 {
        1u64 << (self.index % 64)
    }

    /// Records how the try ended on `set` (the set it was picked from), at `now`.
    pub fn finish(mut self, set: &EndpointSet, end: TryEnd, now: Instant) {
        self.settle();
        set.record(&self, end, now);
    }

    /// The try ended with no verdict on the endpoint (the app's fault, or it went away): as
    /// when it is dropped, it only stops counting as pending, and a probe is due again.
    pub fn neutral(self) {
        drop(self);
    }

    /// Stops counting as pending, once; `false` if it already had.
    fn settle(&mut self) -> bool {
        if self.done {
            return false;
        }
        self.done = true;
        self.endpoint.pending.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if self.settle() && self.probe {
            self.endpoint.probe_abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn set(mode: BalanceMode, outlier: Outlier, addrs: &[&str]) -> Arc<EndpointSet> {
        let telemetry = Telemetry::new();
        let metrics = Arc::new(telemetry.destination("u", "d"));
        let balance = Balance {
            mode,
            ..Balance::default()
        };
        let config = SetConfig {
            balance,
            outlier,
            jitter: false,
        };
        let set = EndpointSet::new(config, metrics, Instant::now()).seeded(7);
        let addrs: Vec<_> = addrs.iter().map(|a| (a.parse().unwrap(), None)).collect();
        set.replace(&addrs, Instant::now());
        Arc::new(set)
    }

    fn ejecting_after(n: u32) -> Outlier {
        Outlier {
            consecutive_failures: n,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            ..Outlier::default()
        }
    }

    const FAILED: TryEnd = TryEnd::Failed { retry_after: None };

    /// Picks, waits `rtt` of paused time, records `end`; answers the endpoint's label.
    async fn one(set: &Arc<EndpointSet>, rtt: Duration, end: Option<TryEnd>) -> String {
        let picked = set.pick(0, Instant::now()).expect("an endpoint");
        let label = picked.endpoint.label.to_string();
        tokio::time::sleep(rtt).await;
        match end {
            Some(end) => picked.finish(set, end, Instant::now()),
            None => drop(picked),
        }
        label
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_learns_the_slow_endpoint_and_retries_avoid_tried_ones() {
        let set = set(
            BalanceMode::P2cEwma,
            Outlier::default(),
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        let mut to_slow = 0;
        for _ in 0..50 {
            let picked = set.pick(0, Instant::now()).unwrap();
            let slow = picked.endpoint.label.as_ref() == "10.0.0.1:80";
            tokio::time::sleep(Duration::from_millis(if slow { 500 } else { 5 })).await;
            to_slow += usize::from(slow);
            picked.finish(&set, TryEnd::Succeeded, Instant::now());
        }
        assert!(to_slow <= 1, "{to_slow} of 50 went to the slow endpoint");
        // A retry that tried the fast one goes to the slow one: it is the only other.
        let fast = set.pick(0, Instant::now()).unwrap();
        let retry = set.pick(fast.tried_bit(), Instant::now()).unwrap();
        assert_ne!(fast.endpoint.label, retry.endpoint.label);
        // With everything tried, a retry may go back.
        let both = fast.tried_bit() | retry.tried_bit();
        assert!(set.pick(both, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_avoided_endpoint_decays_until_it_is_tried_again() {
        let set = set(
            BalanceMode::P2cEwma,
            Outlier::default(),
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        // Make 10.0.0.1 look slow once (400 ms); 10.0.0.2 answers in 20 ms.
        loop {
            let picked = set.pick(0, Instant::now()).unwrap();
            let first = picked.endpoint.label.as_ref() == "10.0.0.1:80";
            tokio::time::sleep(Duration::from_millis(if first { 400 } else { 20 })).await;
            picked.finish(&set, TryEnd::Succeeded, Instant::now());
            if first {
                break;
            }
        }
        // One request a second: the fast one keeps its 20 ms, the avoided one's 400 ms decays
        // (decay 10 s) below that after 10 s × ln(20) ≈ 30 s, and then it gets a try.
        let mut seconds = 0;
        while one(&set, Duration::from_millis(20), Some(TryEnd::Succeeded)).await == "10.0.0.2:80" {
            tokio::time::sleep(Duration::from_millis(980)).await;
            seconds += 1;
            assert!(seconds < 40, "never tried again");
        }
        assert!(
            (29..=31).contains(&seconds),
            "tried again after {seconds} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_then_one_probe_then_readmission_on_the_paused_clock() {
        let set = set(
            BalanceMode::RoundRobin,
            ejecting_after(2),
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        // Round robin: 10.0.0.1 fails, 10.0.0.2 succeeds, twice: ejected.
        for _ in 0..2 {
            assert_eq!(
                one(&set, Duration::from_millis(1), Some(FAILED)).await,
                "10.0.0.1:80"
            );
            assert_eq!(
                one(&set, Duration::from_millis(1), Some(TryEnd::Succeeded)).await,
                "10.0.0.2:80"
            );
        }
        let view = &set.view(Instant::now())[0];
        assert_eq!((view.state, view.ejections), ("ejected", 1));
        assert_eq!(view.ejected_for, Some(Duration::from_millis(9_999)));
        for _ in 0..5 {
            assert_eq!(
                one(&set, Duration::from_millis(1), Some(TryEnd::Succeeded)).await,
                "10.0.0.2:80"
            );
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The ejection ended: the next pick is its probe, and only one at a time.
        let probe = set.pick(0, Instant::now()).unwrap();
        assert!(probe.probe);
        assert_eq!(probe.endpoint.label.as_ref(), "10.0.0.1:80");
        let other = set.pick(0, Instant::now()).unwrap();
        assert_eq!(other.endpoint.label.as_ref(), "10.0.0.2:80");
        other.finish(&set, TryEnd::Succeeded, Instant::now());
        // The probe fails: ejected again for twice as long.
        probe.finish(&set, FAILED, Instant::now());
        let view = &set.view(Instant::now())[0];
        assert_eq!((view.state, view.ejections), ("ejected", 2));
        assert_eq!(view.ejected_for, Some(Duration::from_secs(20)));
        tokio::time::sleep(Duration::from_secs(20)).await;
        // This probe is abandoned (the app went away): due again at once.
        drop(set.pick(0, Instant::now()).unwrap());
        let probe = set.pick(0, Instant::now()).unwrap();
        assert!(probe.probe, "the abandoned probe is due again");
        probe.finish(&set, TryEnd::Succeeded, Instant::now());
        assert_eq!(set.view(Instant::now())[0].state, "ready");
    }

    #[tokio::test(start_paused = true)]
    async fn the_only_endpoint_is_never_ejected_and_all_ejected_is_no_endpoint() {
        let single = set(BalanceMode::P2cEwma, ejecting_after(1), &["10.0.0.1:80"]);
        for _ in 0..5 {
            one(&single, Duration::from_millis(1), Some(FAILED)).await;
        }
        assert_eq!(single.view(Instant::now())[0].state, "ready");

        let pair = set(
            BalanceMode::RoundRobin,
            ejecting_after(1),
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        one(&pair, Duration::from_millis(1), Some(FAILED)).await;
        one(&pair, Duration::from_millis(1), Some(FAILED)).await;
        let NoEndpoint(why) = pair.pick(0, Instant::now()).unwrap_err();
        assert!(
            why.contains("10.0.0.1:80 ejected for 9999 ms more"),
            "{why}"
        );
        assert!(
            why.contains("10.0.0.2:80 ejected for 10000 ms more"),
            "{why}"
        );

        let panicky = Outlier {
            panic: PanicMode::RouteAll,
            ..ejecting_after(1)
        };
        let pair = set(
            BalanceMode::RoundRobin,
            panicky,
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        one(&pair, Duration::from_millis(1), Some(FAILED)).await;
        one(&pair, Duration::from_millis(1), Some(FAILED)).await;
        assert!(
            pair.pick(0, Instant::now()).is_ok(),
            "route-all picks ejected endpoints"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_rests_an_endpoint_while_another_is_there() {
        let set = set(
            BalanceMode::RoundRobin,
            ejecting_after(100),
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        let rest = TryEnd::Failed {
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            one(&set, Duration::from_millis(1), Some(rest)).await,
            "10.0.0.1:80"
        );
        for _ in 0..4 {
            assert_eq!(
                one(&set, Duration::from_millis(1), Some(TryEnd::Succeeded)).await,
                "10.0.0.2:80"
            );
        }
        assert_eq!(
            set.view(Instant::now())[0].resting_for,
            Some(Duration::from_millis(29_996))
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        let back: Vec<String> = [
            one(&set, Duration::ZERO, None).await,
            one(&set, Duration::ZERO, None).await,
        ]
        .into();
        assert!(back.contains(&"10.0.0.1:80".to_owned()), "{back:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_answer_keeps_the_endpoints_that_stay() {
        let set = set(
            BalanceMode::RoundRobin,
            ejecting_after(1),
            &["10.0.0.1:80", "10.0.0.2:80"],
        );
        one(&set, Duration::from_millis(1), Some(FAILED)).await;
        let kept: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let new: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let in_flight = set.pick(0, Instant::now()).unwrap();
        assert_eq!(in_flight.endpoint.label.as_ref(), "10.0.0.2:80");
        set.replace(&[(kept, None), (new, None)], Instant::now());
        let views = set.view(Instant::now());
        assert_eq!(views.len(), 2);
        assert_eq!(
            (views[0].label.as_str(), views[0].state),
            ("10.0.0.1:80", "ejected")
        );
        // The removed endpoint's try still finishes on it.
        in_flight.finish(&set, TryEnd::Succeeded, Instant::now());
        assert_eq!(one(&set, Duration::ZERO, None).await, "10.0.0.3:80");
    }
}
