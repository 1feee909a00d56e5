//! The circuit breaker of one destination: a pure state machine.
//!
//! ```text
//!            a trip rule fires         open period elapsed
//!   Closed ───────────────────▶ Open ─────────────────────▶ HalfOpen
//!     ▲                          ▲                             │
//!     │                          └── a probe failed (×2) ──────┤
//!     └──────────────────────────── every probe succeeded ─────┘
//! ```
//!
//! Each state carries its own data: `Closed` a bucketed sliding window and a run of
//! consecutive failures, `Open` the instant the next probe may go and how many times the
//! breaker re-tripped in a row, `HalfOpen` its probe tally. Nothing here does I/O, reads a
//! clock, takes a lock or touches metrics: every operation takes `now`
//! (a [`tokio::time::Instant`], so paused tokio time and hand-built instants both work), jitter
//! comes from a seeded generator, and every state change is returned as a [`Transition`] for
//! the caller to count and log. The registry owns one breaker per destination behind whatever
//! synchronisation it chooses.
//!
//! **What counts as a failure is the caller's decision.** The caller classifies each attempt
//! (connect failure, reset, timeout, or a status listed in `failure_statuses`, see
//! [`CircuitBreaker::is_failure_status`]) and hands the verdict to [`CircuitBreaker::record`].
//! Local rejections (rate limited, breaker open, overflow, denied) are never recorded. A call is
//! *slow* when it took at least `slow_call_duration`, whether it failed or not.
//!
//! Trip rules in `Closed`, checked after every recorded call, first match wins:
//! 1. `consecutive_failures` (when > 0) failures in a row, however far apart in time;
//! 2. `failures / calls >= failure_rate` over the window, once `calls >= min_calls`;
//! 3. `slow / calls >= slow_call_rate` over the window, with the same `min_calls`.
//!
//! The window is ten buckets of `window / 10` that rotate with `now`, so a call is forgotten
//! between 0.9 and 1.0 × `window` after it was recorded — never later — at a fixed cost per
//! call instead of a timestamp per call.
//!
//! The open period starts at `open_base` and doubles on each re-trip from half-open, capped at
//! `open_max`; jitter (±fraction) is applied after the cap and the result is capped again, so
//! `open_max` is a hard bound. The trip count resets when the breaker closes.
//!
//! Half-open admits `half_open_probes` probes. Any failed probe re-opens the breaker; once all
//! of them succeeded it closes with a fresh window — unless `slow / probes >= slow_call_rate`,
//! which re-opens it too: a breaker tripped because the upstream was slow should not close on
//! a slow answer only to trip again `min_calls` later.
//!
//! Results that do not belong to the current state are ignored rather than trusted: in `Open`
//! every result, in `HalfOpen` every non-probe result (calls admitted while closed, or let
//! through by shadow mode) and any probe result beyond the probes still outstanding. A probe
//! result that arrives after the breaker closed (forced or reset meanwhile) is an ordinary
//! observation of the upstream and counts normally. Every half-open period is an [`Episode`]
//! and each probe carries the episode it was admitted in, so a late probe of an earlier
//! episode is ignored rather than counted in a current probe's place. A probe whose caller
//! gave up without a verdict is handed back with [`CircuitBreaker::abandon`], which frees its
//! slot for the next call; a probe that is neither recorded nor abandoned (a bug) is presumed
//! failed once it has been outstanding for `open_max`, so the breaker can never wedge.
//!
//! Modes: `shadow` runs the same state machine (transitions happen and are reported, so an
//! operator sees what `enforce` would do) but [`CircuitBreaker::admit`] answers
//! [`Admission::ShadowRejected`] instead of rejecting; `off` admits everything and records
//! nothing, and ignores the admin's force and reset as well. `throttle` never trips: each
//! call is admitted or refused by the [`Throttle`]'s probability instead
//! ([`Admission::Throttled`]), results feed its accepts (a failure or a 429 is not one), and
//! the window and recent failures are kept for explanations; force and reset still apply.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::grpc::GrpcCode;
use super::throttle::{Throttle, ThrottleCounts};
use crate::policy::{Breaker, BreakerMode};

/// A throttle's decision on one call, with its random `draw` in [0, 1).
fn throttled(throttle: &mut Throttle, now: Instant, draw: f64) -> Admission {
    match throttle.request(now, draw) {
        Ok(_) => Admission::Allowed { probe: None },
        Err(p) => Admission::Throttled {
            // In [0, 1000]: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            per_mille: (p * 1000.0).round() as u16,
            counts: throttle.counts(now),
        },
    }
}

/// Buckets of the sliding window.
const BUCKETS: u64 = 10;
/// Failures kept for [`BreakerSnapshot::recent`].
const RECENT_FAILURES: usize = 10;
/// Largest jitter fraction accepted: a full ±100% could make an open period zero.
const MAX_JITTER: f64 = 0.9;

/// The state of a breaker, for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// The value of the `fusebox_breaker_state` gauge.
    pub fn as_gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }

    /// The `from` / `to` label of `fusebox_breaker_transitions_total` (`/upstreams` spells
    /// half-open with a hyphen, as docs/ARCHITECTURE.md §6 does).
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// Why a transition happened: the `reason` label of `fusebox_breaker_transitions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ConsecutiveFailures,
    FailureRate,
    SlowCallRate,
    ProbeFailed,
    ProbeSucceeded,
    OpenElapsed,
    Forced,
    Reset,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::ProbeFailed => "probe_failed",
            Reason::ProbeSucceeded => "probe_succeeded",
            Reason::OpenElapsed => "open_elapsed",
            Reason::Forced => "forced",
            Reason::Reset => "reset",
        }
    }

    /// The reason in words for an operator: who or what caused the transition. `reset` and
    /// `forced` are an operator's commands, never something the upstream did.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => {
                "tripped: too many failures in a row (breaker.consecutive_failures)"
            }
            Reason::FailureRate => {
                "tripped: too many failures over the window (breaker.failure_rate)"
            }
            Reason::SlowCallRate => {
                "tripped: too many slow calls over the window (breaker.slow_call_rate)"
            }
            Reason::ProbeFailed => "a half-open probe failed",
            Reason::ProbeSucceeded => "every half-open probe succeeded",
            Reason::OpenElapsed => "the open period elapsed: probing",
            Reason::Forced => "forced by an operator (admin API)",
            Reason::Reset => "reset by an operator (admin API), not a connection reset",
        }
    }
}

/// A state pinned by the admin API until [`CircuitBreaker::reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forced {
    /// Reject every call; no half-open, no probes.
    Open,
    /// Admit every call and never trip (calls are still counted in the window).
    Closed,
}

impl Forced {
    pub fn label(self) -> &'static str {
        match self {
            Forced::Open => "open",
            Forced::Closed => "closed",
        }
    }
}

/// How open periods are randomised, so that breakers tripped together do not probe together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exact periods (tests).
    None,
    /// Multiply each period by a uniform factor in `[1 - f, 1 + f]` (`0.1` = ±10%), then cap it
    /// at `open_max`. `f` is clamped to `[0, 0.9]`.
    Fraction(f64),
}

/// The answer of [`CircuitBreaker::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead. A `probe` is a half-open trial call of that episode: record its result with
    /// the same `probe`.
    Allowed { probe: Option<Episode> },
    /// Fail fast. `retry_after` is the time until the next probe may go; it is
    /// [`Duration::ZERO`] when the breaker is half-open and its probes are in flight (the next
    /// slot frees as soon as one is recorded, which cannot be predicted: round it up, e.g. to a
    /// `retry-after: 1`), and `None` when the breaker is forced open: a forced breaker never
    /// probes, it stays open until an operator resets it.
    Rejected { retry_after: Option<Duration> },
    /// Shadow mode: enforce would have rejected this call, but it goes ahead (not as a probe).
    /// The caller counts `fusebox_shadow_rejections_total{kind="breaker"}` and records the
    /// result with `probe: false`.
    ShadowRejected,
    /// Throttle mode refused the call, with this probability in thousandths.
    Throttled {
        per_mille: u16,
        counts: ThrottleCounts,
    },
}

/// One half-open period of a breaker: the ticket a probe carries, so that its result counts
/// only in the episode that admitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode(u64);

/// How an upstream call failed, as classified by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    ConnectFailed,
    Reset,
    Timeout,
    /// A response whose status is in `failure_statuses`.
    Status(u16),
    /// A response head fusebox could not read: malformed or over the size limit.
    BadResponse,
    /// The response body stopped arriving for `timeouts.idle` after its head.
    BodyIdle,
    /// A gRPC call ended with a status in `grpc_failure_codes` (in its head or its trailers).
    GrpcStatus(GrpcCode),
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::ConnectFailed => "connect_failed",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Status(_) => "status",
            FailureKind::BadResponse => "bad_response",
            FailureKind::BodyIdle => "body_idle",
            FailureKind::GrpcStatus(_) => "grpc_status",
        }
    }

    /// The failure in words for an operator.
    pub fn describe(self) -> &'static str {
        match self {
            FailureKind::ConnectFailed => "the connection could not be established",
            FailureKind::Reset => {
                "the upstream reset or closed the connection before a response head"
            }
            FailureKind::Timeout => "no response head within the attempt timeout",
            FailureKind::Status(_) => "the upstream answered a status in failure_statuses",
            FailureKind::BadResponse => {
                "the upstream's response head was malformed or too large to forward"
            }
            FailureKind::BodyIdle => {
                "the upstream stopped sending the response body for timeouts.idle"
            }
            FailureKind::GrpcStatus(_) => "the gRPC call ended with a status in grpc_failure_codes",
        }
    }

    pub fn status(self) -> Option<u16> {
        match self {
            FailureKind::Status(status) => Some(status),
            _ => None,
        }
    }

    pub fn grpc_status(self) -> Option<GrpcCode> {
        match self {
            FailureKind::GrpcStatus(code) => Some(code),
            _ => None,
        }
    }
}

/// The outcome of one admitted upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallResult {
    /// `None`: the upstream answered and the answer does not count as a failure.
    pub failure: Option<FailureKind>,
    /// How long the call took (compared with `slow_call_duration`).
    pub duration: Duration,
    /// Copied from [`Admission::Allowed`].
    pub probe: Option<Episode>,
}

/// Calls seen over the sliding window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl WindowCounts {
    fn add(&mut self, other: WindowCounts) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
    }
}

/// One state change, for `fusebox_breaker_transitions_total` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub at: Instant,
    /// The window as the breaker reported it just before the change: the live window
    /// (including the call that tripped it) when leaving `Closed`, the counts of the last trip
    /// otherwise.
    pub window: WindowCounts,
}

/// A failure kept to explain a trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentFailure {
    pub at: Instant,
    pub kind: FailureKind,
}

/// What `/upstreams` and `fusebox status` show of a breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    pub state: State,
    /// When the breaker entered `state` (or was created).
    pub since: Instant,
    pub last_reason: Option<Reason>,
    /// The live window when closed; frozen at the counts of the last trip otherwise.
    pub window: WindowCounts,
    /// When open and not forced: time until the next probe may go (zero once it may).
    pub next_probe_in: Option<Duration>,
    /// The last few failures, oldest first.
    pub recent: Vec<RecentFailure>,
    pub forced: Option<Forced>,
    /// Trips in a row since the breaker last closed (0 when closed).
    pub trips: u32,
    /// Throttle mode: the refusal probability now and the counts it comes from.
    pub throttle: Option<(f64, ThrottleCounts)>,
}

#[derive(Debug, Clone)]
enum Phase {
    Closed {
        /// Boxed: ten buckets would make every `Phase` ten times its size.
        window: Box<Window>,
        consecutive: u32,
    },
    Open {
        until: Instant,
        trips: u32,
    },
    HalfOpen {
        episode: Episode,
        admitted: u32,
        succeeded: u32,
        slow: u32,
        trips: u32,
        /// When the last probe was admitted: the start of the lost-probe lease.
        last_admit: Instant,
    },
}

/// A circuit breaker for one destination. See the module docs.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: Breaker,
    jitter: f64,
    rng: fastrand::Rng,
    phase: Phase,
    since: Instant,
    forced: Option<Forced>,
    /// The window counts when the breaker last left `Closed`.
    tripped_with: WindowCounts,
    last_transition: Option<Transition>,
    recent: VecDeque<RecentFailure>,
    /// Half-open episodes so far: the next one is numbered one more.
    episodes: u64,
    /// `mode = "throttle"`: the refusal probability's counts.
    throttle: Option<Box<Throttle>>,
}

impl CircuitBreaker {
    /// A closed breaker; jitter is seeded from fastrand's thread-local generator.
    pub fn new(config: Breaker, jitter: Jitter, now: Instant) -> Self {
        Self::with_seed(config, jitter, fastrand::u64(..), now)
    }

    /// Like [`CircuitBreaker::new`] with a fixed jitter seed, for reproducible runs.
    pub fn with_seed(config: Breaker, jitter: Jitter, seed: u64, now: Instant) -> Self {
        let jitter = match jitter {
            Jitter::Fraction(f) if f.is_finite() => f.clamp(0.0, MAX_JITTER),
            Jitter::Fraction(_) | Jitter::None => 0.0,
        };
        let window = Box::new(Window::new(config.window, now));
        CircuitBreaker {
            jitter,
            rng: fastrand::Rng::with_seed(seed),
            phase: Phase::Closed {
                window,
                consecutive: 0,
            },
            since: now,
            forced: None,
            tripped_with: WindowCounts::default(),
            last_transition: None,
            recent: VecDeque::with_capacity(RECENT_FAILURES),
            episodes: 0,
            throttle: (config.mode == BreakerMode::Throttle).then(|| {
                Box::new(Throttle::new(
                    config.throttle_window,
                    config.throttle_k,
                    now,
                ))
            }),
            config,
        }
    }

    /// May a call go ahead now? Also performs the time-driven transitions (open period
    /// elapsed, lost probe), which it returns.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let allowed = Admission::Allowed { probe: None };
        if self.config.mode == BreakerMode::Off {
            return (allowed, None);
        }
        match self.forced {
            Some(Forced::Open) => return (self.reject(None), None),
            Some(Forced::Closed) => return (allowed, None),
            None => {}
        }
        if let Some(throttle) = &mut self.throttle {
            return (throttled(throttle, now, self.rng.f64()), None);
        }
        let transition = self.expire(now);
        let probes = self.config.half_open_probes;
        let admission = match &mut self.phase {
            Phase::Closed { .. } => allowed,
            Phase::Open { until, .. } => {
                let retry_after = until.saturating_duration_since(now);
                self.reject(Some(retry_after))
            }
            Phase::HalfOpen {
                episode,
                admitted,
                last_admit,
                ..
            } => {
                if *admitted < probes {
                    *admitted += 1;
                    *last_admit = now;
                    Admission::Allowed {
                        probe: Some(*episode),
                    }
                } else {
                    self.reject(Some(Duration::ZERO))
                }
            }
        };
        (admission, transition)
    }

    /// Record the result of an admitted call; returns the transition it caused, if any.
    pub fn record(&mut self, now: Instant, call: CallResult) -> Option<Transition> {
        if self.config.mode == BreakerMode::Off {
            return None;
        }
        if let Some(kind) = call.failure {
            if self.recent.len() == RECENT_FAILURES {
                self.recent.pop_front();
            }
            self.recent.push_back(RecentFailure { at: now, kind });
        }
        if let Some(transition) = self.expire(now) {
            // The breaker has just left the state this result belonged to.
            return Some(transition);
        }
        if let Some(throttle) = &mut self.throttle {
            if call.failure.is_none() {
                throttle.accepted(now);
            }
        }
        let failed = call.failure.is_some();
        let slow = call.duration >= self.config.slow_call_duration;
        match self.phase {
            Phase::Closed { .. } => self.record_closed(now, failed, slow),
            Phase::Open { .. } => None,
            Phase::HalfOpen { .. } => self.record_probe(now, call.probe, failed, slow),
        }
    }

    /// A result while closed: into the window, then the trip rules (unless forced).
    fn record_closed(&mut self, now: Instant, failed: bool, slow: bool) -> Option<Transition> {
        let Phase::Closed {
            window,
            consecutive,
        } = &mut self.phase
        else {
            return None;
        };
        window.record(now, failed, slow);
        *consecutive = if failed {
            consecutive.saturating_add(1)
        } else {
            0
        };
        let (counts, consecutive) = (window.counts(now), *consecutive);
        if self.forced.is_some() || self.throttle.is_some() {
            return None;
        }
        let reason = self.trip_reason(consecutive, counts)?;
        Some(self.trip(now, 1, reason))
    }

    /// A result while half-open: counts only as a probe of the current episode still
    /// outstanding. A failed probe re-opens; the last successful one decides.
    fn record_probe(
        &mut self,
        now: Instant,
        probe: Option<Episode>,
        failed: bool,
        slow: bool,
    ) -> Option<Transition> {
        let probes = self.config.half_open_probes;
        let Phase::HalfOpen {
            episode,
            admitted,
            succeeded,
            slow: slow_probes,
            trips,
            ..
        } = &mut self.phase
        else {
            return None;
        };
        if probe != Some(*episode) || *admitted <= *succeeded {
            return None;
        }
        let trips = trips.saturating_add(1);
        if failed {
            return Some(self.trip(now, trips, Reason::ProbeFailed));
        }
        *succeeded += 1;
        if slow {
            *slow_probes += 1;
        }
        if *succeeded < probes {
            return None;
        }
        let slow_rate = f64::from(*slow_probes) / f64::from(probes);
        Some(if slow_rate >= self.config.slow_call_rate {
            self.trip(now, trips, Reason::ProbeFailed)
        } else {
            self.close(now, Reason::ProbeSucceeded)
        })
    }

    /// Hands back a probe whose caller gave up before a verdict (the app went away): no
    /// verdict on the upstream, and its slot goes to the next call. Anything else is ignored.
    pub fn abandon(&mut self, probe: Episode) {
        if let Phase::HalfOpen {
            episode,
            admitted,
            succeeded,
            ..
        } = &mut self.phase
        {
            if *episode == probe && *admitted > *succeeded {
                *admitted -= 1;
            }
        }
    }

    /// Admin: reject every call until [`CircuitBreaker::reset`]. No-op in mode `off`.
    pub fn force_open(&mut self, now: Instant) -> Option<Transition> {
        if self.config.mode == BreakerMode::Off {
            return None;
        }
        self.forced = Some(Forced::Open);
        if matches!(self.phase, Phase::Open { .. }) {
            return None;
        }
        let trips = self.trips();
        Some(self.enter(now, Phase::Open { until: now, trips }, Reason::Forced))
    }

    /// Admin: admit every call and never trip until [`CircuitBreaker::reset`]. No-op in mode
    /// `off`.
    pub fn force_closed(&mut self, now: Instant) -> Option<Transition> {
        if self.config.mode == BreakerMode::Off {
            return None;
        }
        self.forced = Some(Forced::Closed);
        if matches!(self.phase, Phase::Closed { .. }) {
            return None;
        }
        Some(self.close(now, Reason::Forced))
    }

    /// Admin: back to a fresh `Closed` (empty window, no trips, nothing forced). No-op in mode
    /// `off`.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        if self.config.mode == BreakerMode::Off {
            return None;
        }
        self.forced = None;
        if matches!(self.phase, Phase::Closed { .. }) {
            self.phase = self.fresh_closed(now);
            return None;
        }
        Some(self.close(now, Reason::Reset))
    }

    /// Whether a gRPC status counts as a failure (`grpc_failure_codes`).
    pub fn is_failure_grpc(&self, code: GrpcCode) -> bool {
        self.config.grpc_failure_codes.contains(&code)
    }

    /// Whether a response status counts as a failure (`failure_statuses`; in throttle mode
    /// also a 429: the upstream did not accept the call).
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.config.failure_statuses.contains(&status) || (status == 429 && self.throttle.is_some())
    }

    /// Throttle mode: the probability the last call was decided with.
    pub fn throttle_probability(&self) -> Option<f64> {
        self.throttle.as_ref().map(|t| t.last_probability())
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    pub fn forced(&self) -> Option<Forced> {
        self.forced
    }

    pub fn mode(&self) -> BreakerMode {
        self.config.mode
    }

    pub fn config(&self) -> &Breaker {
        &self.config
    }

    pub fn last_transition(&self) -> Option<Transition> {
        self.last_transition
    }

    /// The last few failures recorded, oldest first.
    pub fn recent_failures(&self) -> impl Iterator<Item = &RecentFailure> {
        self.recent.iter()
    }

    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let next_probe_in = match (&self.phase, self.forced) {
            (Phase::Open { until, .. }, None) => Some(until.saturating_duration_since(now)),
            _ => None,
        };
        BreakerSnapshot {
            state: self.state(),
            since: self.since,
            last_reason: self.last_transition.map(|t| t.reason),
            window: self.window_counts(now),
            next_probe_in,
            recent: self.recent.iter().copied().collect(),
            forced: self.forced,
            trips: self.trips(),
            throttle: self
                .throttle
                .as_ref()
                .map(|t| (t.probability(now), t.counts(now))),
        }
    }

    fn reject(&self, retry_after: Option<Duration>) -> Admission {
        match self.config.mode {
            BreakerMode::Shadow => Admission::ShadowRejected,
            BreakerMode::Enforce | BreakerMode::Off | BreakerMode::Throttle => {
                Admission::Rejected { retry_after }
            }
        }
    }

    /// The transitions driven by time alone.
    fn expire(&mut self, now: Instant) -> Option<Transition> {
        if self.forced.is_some() {
            return None;
        }
        match self.phase {
            Phase::Open { until, trips } if now >= until => {
                self.episodes += 1;
                let half_open = Phase::HalfOpen {
                    episode: Episode(self.episodes),
                    admitted: 0,
                    succeeded: 0,
                    slow: 0,
                    trips,
                    last_admit: now,
                };
                Some(self.enter(now, half_open, Reason::OpenElapsed))
            }
            Phase::HalfOpen {
                admitted,
                succeeded,
                trips,
                last_admit,
                ..
            } if admitted > succeeded
                && now.saturating_duration_since(last_admit) >= self.config.open_max =>
            {
                Some(self.trip(now, trips.saturating_add(1), Reason::ProbeFailed))
            }
            _ => None,
        }
    }

    fn trip_reason(&self, consecutive: u32, counts: WindowCounts) -> Option<Reason> {
        let c = &self.config;
        if c.consecutive_failures > 0 && consecutive >= c.consecutive_failures {
            return Some(Reason::ConsecutiveFailures);
        }
        if counts.calls == 0 || counts.calls < c.min_calls {
            return None;
        }
        let calls = f64::from(counts.calls);
        if f64::from(counts.failures) / calls >= c.failure_rate {
            Some(Reason::FailureRate)
        } else if f64::from(counts.slow) / calls >= c.slow_call_rate {
            Some(Reason::SlowCallRate)
        } else {
            None
        }
    }

    /// Open for the period of the `trips`-th trip in a row.
    fn trip(&mut self, now: Instant, trips: u32, reason: Reason) -> Transition {
        let period = self.open_period(trips);
        let until = now
            .checked_add(period)
            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        self.enter(now, Phase::Open { until, trips }, reason)
    }

    fn close(&mut self, now: Instant, reason: Reason) -> Transition {
        let closed = self.fresh_closed(now);
        self.enter(now, closed, reason)
    }

    fn fresh_closed(&self, now: Instant) -> Phase {
        Phase::Closed {
            window: Box::new(Window::new(self.config.window, now)),
            consecutive: 0,
        }
    }

    fn enter(&mut self, now: Instant, phase: Phase, reason: Reason) -> Transition {
        let from = self.state();
        let window = self.window_counts(now);
        if from == State::Closed {
            self.tripped_with = window;
        }
        self.phase = phase;
        self.since = now;
        let transition = Transition {
            from,
            to: self.state(),
            reason,
            at: now,
            window,
        };
        self.last_transition = Some(transition);
        transition
    }

    fn open_period(&mut self, trips: u32) -> Duration {
        let max = self.config.open_max;
        let period = 2u32
            .checked_pow(trips.saturating_sub(1))
            .and_then(|factor| self.config.open_base.checked_mul(factor))
            .map_or(max, |period| period.min(max));
        if self.jitter == 0.0 {
            return period;
        }
        let factor = 1.0 + self.jitter * (2.0 * self.rng.f64() - 1.0);
        Duration::try_from_secs_f64(period.as_secs_f64() * factor)
            .map_or(period, |jittered| jittered.min(max))
    }

    fn window_counts(&self, now: Instant) -> WindowCounts {
        match &self.phase {
            Phase::Closed { window, .. } => window.counts(now),
            Phase::Open { .. } | Phase::HalfOpen { .. } => self.tripped_with,
        }
    }

    fn trips(&self) -> u32 {
        match self.phase {
            Phase::Closed { .. } => 0,
            Phase::Open { trips, .. } | Phase::HalfOpen { trips, .. } => trips,
        }
    }
}

/// A sliding window of [`BUCKETS`] buckets. Bucket `n` covers
/// `[origin + n × width, origin + (n + 1) × width)`; slot `n % BUCKETS` holds it until bucket
/// `n + BUCKETS` needs the slot.
#[derive(Debug, Clone)]
struct Window {
    origin: Instant,
    width_nanos: u128,
    /// The newest bucket seen: time never runs backwards for the window, even when callers
    /// pass slightly older instants.
    head: u64,
    buckets: [Bucket; BUCKETS as usize],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    index: u64,
    counts: WindowCounts,
}

impl Window {
    fn new(span: Duration, now: Instant) -> Self {
        Window {
            origin: now,
            width_nanos: (span.as_nanos() / u128::from(BUCKETS)).max(1),
            head: 0,
            buckets: [Bucket::default(); BUCKETS as usize],
        }
    }

    fn bucket_index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.width_nanos)
            .unwrap_or(u64::MAX)
            .max(self.head)
    }

    fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        let index = self.bucket_index(now);
        self.head = index;
        let bucket = &mut self.buckets[(index % BUCKETS) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                counts: WindowCounts::default(),
            };
        }
        bucket.counts.add(WindowCounts {
            calls: 1,
            failures: u32::from(failed),
            slow: u32::from(slow),
        });
    }

    fn counts(&self, now: Instant) -> WindowCounts {
        let index = self.bucket_index(now);
        let mut total = WindowCounts::default();
        for bucket in &self.buckets {
            if index - bucket.index < BUCKETS {
                total.add(bucket.counts);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> Breaker {
        Breaker {
            mode: BreakerMode::Enforce,
            consecutive_failures: 0,
            failure_rate: 1.0,
            window: Duration::from_secs(10),
            min_calls: 1000,
            slow_call_duration: Duration::from_secs(1),
            slow_call_rate: 1.0,
            failure_statuses: vec![500, 502, 503, 504],
            grpc_failure_codes: vec![GrpcCode::Unavailable],
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(60),
            half_open_probes: 1,
            throttle_window: Duration::from_secs(120),
            throttle_k: 2.0,
        }
    }

    fn breaker(config: Breaker) -> (CircuitBreaker, Instant) {
        let t0 = Instant::now();
        (CircuitBreaker::new(config, Jitter::None, t0), t0)
    }

    fn ok() -> CallResult {
        CallResult {
            failure: None,
            duration: MS,
            probe: None,
        }
    }

    fn slow() -> CallResult {
        CallResult {
            duration: Duration::from_secs(3),
            ..ok()
        }
    }

    fn fail() -> CallResult {
        CallResult {
            failure: Some(FailureKind::Status(503)),
            ..ok()
        }
    }

    /// `call` as a probe of the breaker's current half-open episode.
    fn probe(b: &CircuitBreaker, call: CallResult) -> CallResult {
        let episode = match b.phase {
            Phase::HalfOpen { episode, .. } => episode,
            _ => Episode(u64::MAX),
        };
        CallResult {
            probe: Some(episode),
            ..call
        }
    }

    fn is_probe(admission: Admission) -> bool {
        matches!(admission, Admission::Allowed { probe: Some(_) })
    }

    /// Trip a breaker with `consecutive_failures = 1`.
    fn trip(b: &mut CircuitBreaker, now: Instant) -> Transition {
        assert_eq!(b.admit(now).0, Admission::Allowed { probe: None });
        b.record(now, fail()).expect("trips")
    }

    fn counts(calls: u32, failures: u32, slow: u32) -> WindowCounts {
        WindowCounts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn labels_match_the_metrics_contract() {
        let reasons = [
            (Reason::ConsecutiveFailures, "consecutive_failures"),
            (Reason::FailureRate, "failure_rate"),
            (Reason::SlowCallRate, "slow_call_rate"),
            (Reason::ProbeFailed, "probe_failed"),
            (Reason::ProbeSucceeded, "probe_succeeded"),
            (Reason::OpenElapsed, "open_elapsed"),
            (Reason::Forced, "forced"),
            (Reason::Reset, "reset"),
        ];
        for (reason, label) in reasons {
            assert_eq!(reason.label(), label);
        }
        assert_eq!(State::Closed.label(), "closed");
        assert_eq!(State::HalfOpen.label(), "half_open");
        assert_eq!(State::Open.label(), "open");
        assert_eq!(State::Closed.as_gauge(), 0.0);
        assert_eq!(State::HalfOpen.as_gauge(), 1.0);
        assert_eq!(State::Open.as_gauge(), 2.0);
    }

    #[test]
    fn consecutive_failures_trip_and_a_success_breaks_the_run() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 3,
            ..config()
        });
        b.record(t0, fail());
        b.record(t0, fail());
        b.record(t0, ok());
        assert_eq!(b.record(t0, fail()), None);
        assert_eq!(b.record(t0, fail()), None);
        let t = b
            .record(t0 + MS, fail())
            .expect("third failure in a row trips");
        assert_eq!(
            t,
            Transition {
                from: State::Closed,
                to: State::Open,
                reason: Reason::ConsecutiveFailures,
                at: t0 + MS,
                window: counts(6, 5, 0),
            }
        );
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            b.admit(t0 + MS).0,
            Admission::Rejected {
                retry_after: Some(Duration::from_secs(5))
            }
        );
    }

    #[test]
    fn consecutive_failures_zero_turns_the_rule_off() {
        let (mut b, t0) = breaker(config());
        for _ in 0..100 {
            assert_eq!(b.record(t0, fail()), None);
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn failure_rate_trips_once_min_calls_is_reached() {
        let (mut b, t0) = breaker(Breaker {
            failure_rate: 0.5,
            min_calls: 4,
            ..config()
        });
        for _ in 0..3 {
            assert_eq!(b.record(t0, fail()), None, "below min_calls");
        }
        // The fourth call reaches min_calls: 3/4 failed, even though this one succeeded.
        let t = b.record(t0, ok()).expect("trips");
        assert_eq!(t.reason, Reason::FailureRate);
        assert_eq!(t.window, counts(4, 3, 0));
        assert_eq!(b.snapshot(t0).window, counts(4, 3, 0), "frozen while open");
    }

    #[test]
    fn failure_rate_below_threshold_does_not_trip() {
        let (mut b, t0) = breaker(Breaker {
            failure_rate: 0.5,
            min_calls: 4,
            ..config()
        });
        for _ in 0..10 {
            assert_eq!(b.record(t0, ok()), None);
            assert_eq!(b.record(t0, ok()), None);
            assert_eq!(b.record(t0, fail()), None);
        }
        assert_eq!(b.snapshot(t0).window, counts(30, 10, 0));
    }

    #[test]
    fn failures_older_than_the_window_stop_counting() {
        let (mut b, t0) = breaker(Breaker {
            failure_rate: 0.5,
            min_calls: 4,
            ..config()
        });
        for _ in 0..3 {
            b.record(t0, fail());
        }
        // Still inside the window at 0.9 × window...
        assert_eq!(b.snapshot(t0 + Duration::from_secs(9)).window.failures, 3);
        // ...forgotten after a whole window.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.snapshot(later).window, WindowCounts::default());
        assert_eq!(b.record(later, ok()), None);
        assert_eq!(b.record(later, fail()), None);
        assert_eq!(b.record(later, ok()), None);
        assert_eq!(b.snapshot(later).window, counts(3, 1, 0));
        // Buckets rotate: calls spread over time expire one bucket at a time.
        assert_eq!(b.record(later + Duration::from_secs(5), ok()), None);
        let snap = b.snapshot(later + Duration::from_secs(12));
        assert_eq!(snap.window, counts(1, 0, 0));
    }

    #[test]
    fn slow_call_rate_trips() {
        let (mut b, t0) = breaker(Breaker {
            slow_call_rate: 0.5,
            min_calls: 4,
            ..config()
        });
        b.record(t0, slow());
        b.record(t0, ok());
        b.record(t0, slow());
        let t = b.record(t0, ok()).expect("2 of 4 slow trips");
        assert_eq!(t.reason, Reason::SlowCallRate);
        assert_eq!(t.window, counts(4, 0, 2));
    }

    #[test]
    fn slow_is_at_least_slow_call_duration() {
        let (mut b, t0) = breaker(Breaker {
            min_calls: 1,
            ..config()
        });
        let almost = CallResult {
            duration: Duration::from_secs(1) - Duration::from_nanos(1),
            ..ok()
        };
        assert_eq!(b.record(t0, almost), None);
        let (mut b, t0) = breaker(Breaker {
            min_calls: 1,
            ..config()
        });
        let exactly = CallResult {
            duration: Duration::from_secs(1),
            ..ok()
        };
        assert_eq!(
            b.record(t0, exactly).map(|t| t.reason),
            Some(Reason::SlowCallRate)
        );
    }

    #[test]
    fn half_open_admits_one_probe_and_closes_on_success() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            ..config()
        });
        b.record(t0, ok());
        trip(&mut b, t0);
        let before = t0 + Duration::from_secs(4);
        assert_eq!(
            b.admit(before),
            (
                Admission::Rejected {
                    retry_after: Some(Duration::from_secs(1))
                },
                None
            )
        );
        assert_eq!(
            b.snapshot(before).next_probe_in,
            Some(Duration::from_secs(1))
        );

        let t1 = t0 + Duration::from_secs(5);
        let (admission, transition) = b.admit(t1);
        assert!(is_probe(admission));
        let transition = transition.expect("open elapsed");
        assert_eq!(
            (transition.from, transition.to, transition.reason),
            (State::Open, State::HalfOpen, Reason::OpenElapsed)
        );
        assert_eq!(
            b.admit(t1),
            (
                Admission::Rejected {
                    retry_after: Some(Duration::ZERO)
                },
                None
            ),
            "one probe at a time"
        );

        let t = b.record(t1 + MS, probe(&b, ok())).expect("closes");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::HalfOpen, State::Closed, Reason::ProbeSucceeded)
        );
        let snap = b.snapshot(t1 + MS);
        assert_eq!(snap.window, WindowCounts::default(), "fresh window");
        assert_eq!(snap.trips, 0);
        assert_eq!(snap.since, t1 + MS);
        assert_eq!(snap.last_reason, Some(Reason::ProbeSucceeded));
        assert_eq!(b.admit(t1 + MS).0, Admission::Allowed { probe: None });
    }

    #[test]
    fn all_probes_must_succeed() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            half_open_probes: 3,
            ..config()
        });
        trip(&mut b, t0);
        let t1 = t0 + Duration::from_secs(5);
        for _ in 0..3 {
            assert!(is_probe(b.admit(t1).0));
        }
        assert!(matches!(b.admit(t1).0, Admission::Rejected { .. }));
        assert_eq!(b.record(t1, probe(&b, ok())), None);
        assert_eq!(b.record(t1, probe(&b, ok())), None);
        assert_eq!(b.state(), State::HalfOpen);
        let t = b.record(t1, probe(&b, fail())).expect("reopens");
        assert_eq!((t.to, t.reason), (State::Open, Reason::ProbeFailed));
        assert_eq!(b.snapshot(t1).trips, 2);
        assert_eq!(
            b.snapshot(t1).next_probe_in,
            Some(Duration::from_secs(10)),
            "doubled"
        );
    }

    #[test]
    fn slow_probes_reopen_under_the_slow_call_rate() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            slow_call_rate: 0.5,
            half_open_probes: 2,
            ..config()
        });
        trip(&mut b, t0);
        let t1 = t0 + Duration::from_secs(5);
        b.admit(t1);
        b.admit(t1);
        assert_eq!(b.record(t1, probe(&b, slow())), None);
        let t = b.record(t1, probe(&b, ok())).expect("decided");
        assert_eq!((t.to, t.reason), (State::Open, Reason::ProbeFailed));
    }

    #[test]
    fn open_period_doubles_up_to_open_max_and_resets_on_close() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(30),
            ..config()
        });
        trip(&mut b, t0);
        let mut now = t0;
        let mut periods = vec![];
        for _ in 0..5 {
            let period = b.snapshot(now).next_probe_in.unwrap();
            periods.push(period.as_secs());
            now += period;
            assert!(is_probe(b.admit(now).0));
            b.record(now, probe(&b, fail())).expect("probe failed");
        }
        assert_eq!(periods, [5, 10, 20, 30, 30]);

        now += Duration::from_secs(30);
        b.admit(now);
        b.record(now, probe(&b, ok())).expect("closed");
        trip(&mut b, now);
        assert_eq!(b.snapshot(now).next_probe_in, Some(Duration::from_secs(5)));
    }

    #[test]
    fn open_base_above_open_max_is_capped() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            open_base: Duration::from_secs(90),
            ..config()
        });
        trip(&mut b, t0);
        assert_eq!(b.snapshot(t0).next_probe_in, Some(Duration::from_secs(60)));
    }

    #[test]
    fn jittered_periods_stay_within_bounds_and_open_max() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(40);
        let mut seen = (Duration::MAX, Duration::ZERO);
        for seed in 0..200 {
            let t0 = Instant::now();
            let cfg = Breaker {
                consecutive_failures: 1,
                open_base: base,
                open_max: max,
                ..config()
            };
            let mut b = CircuitBreaker::with_seed(cfg, Jitter::Fraction(0.2), seed, t0);
            trip(&mut b, t0);
            let first = b.snapshot(t0).next_probe_in.unwrap();
            assert!(
                first >= base.mul_f64(0.8) && first <= base.mul_f64(1.2),
                "{first:?}"
            );
            seen = (seen.0.min(first), seen.1.max(first));

            // Re-trip until capped: jitter may shorten the period but never exceed open_max.
            let mut now = t0;
            for _ in 0..4 {
                now += b.snapshot(now).next_probe_in.unwrap();
                b.admit(now);
                b.record(now, probe(&b, fail()));
            }
            let capped = b.snapshot(now).next_probe_in.unwrap();
            assert!(capped >= max.mul_f64(0.8) && capped <= max, "{capped:?}");
        }
        assert!(seen.0 < base && seen.1 > base, "jitter spreads: {seen:?}");
    }

    #[test]
    fn jitter_fraction_is_clamped() {
        let t0 = Instant::now();
        let cfg = Breaker {
            consecutive_failures: 1,
            ..config()
        };
        for fraction in [5.0, f64::NAN, -1.0] {
            for seed in 0..50 {
                let mut b =
                    CircuitBreaker::with_seed(cfg.clone(), Jitter::Fraction(fraction), seed, t0);
                trip(&mut b, t0);
                let period = b.snapshot(t0).next_probe_in.unwrap();
                assert!(
                    period >= Duration::from_millis(500),
                    "{fraction}: {period:?}"
                );
            }
        }
    }

    #[test]
    fn shadow_mode_transitions_but_never_rejects() {
        let (mut b, t0) = breaker(Breaker {
            mode: BreakerMode::Shadow,
            consecutive_failures: 1,
            half_open_probes: 1,
            ..config()
        });
        let t = trip(&mut b, t0);
        assert_eq!(t.to, State::Open);
        assert_eq!(b.admit(t0), (Admission::ShadowRejected, None));
        // Calls let through while open are not probes and leave the state alone.
        assert_eq!(b.record(t0, fail()), None);
        assert_eq!(b.record(t0, ok()), None);

        let t1 = t0 + Duration::from_secs(5);
        let (admission, transition) = b.admit(t1);
        assert!(is_probe(admission));
        assert_eq!(transition.map(|t| t.reason), Some(Reason::OpenElapsed));
        assert_eq!(b.admit(t1).0, Admission::ShadowRejected);
        assert_eq!(b.record(t1, ok()), None, "not the probe");
        assert_eq!(
            b.record(t1, probe(&b, ok())).map(|t| t.reason),
            Some(Reason::ProbeSucceeded)
        );

        b.force_open(t1);
        assert_eq!(b.admit(t1).0, Admission::ShadowRejected);
    }

    #[test]
    fn off_mode_admits_everything_and_records_nothing() {
        let (mut b, t0) = breaker(Breaker {
            mode: BreakerMode::Off,
            consecutive_failures: 1,
            min_calls: 1,
            failure_rate: 0.1,
            ..config()
        });
        for _ in 0..10 {
            assert_eq!(b.admit(t0), (Admission::Allowed { probe: None }, None));
            assert_eq!(b.record(t0, fail()), None);
        }
        assert_eq!(b.force_open(t0), None);
        assert_eq!(b.force_closed(t0), None);
        assert_eq!(b.reset(t0), None);
        let snap = b.snapshot(t0);
        assert_eq!(snap.state, State::Closed);
        assert_eq!(snap.window, WindowCounts::default());
        assert!(snap.recent.is_empty());
        assert_eq!(snap.forced, None);
    }

    #[test]
    fn force_open_rejects_until_reset_without_probing() {
        let (mut b, t0) = breaker(config());
        let t = b.force_open(t0).expect("closed to open");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Closed, State::Open, Reason::Forced)
        );
        assert_eq!(b.forced(), Some(Forced::Open));
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!(
            b.admit(much_later),
            (Admission::Rejected { retry_after: None }, None)
        );
        assert_eq!(b.record(much_later, probe(&b, ok())), None);
        let snap = b.snapshot(much_later);
        assert_eq!((snap.state, snap.next_probe_in), (State::Open, None));

        let t = b.reset(much_later).expect("open to closed");
        assert_eq!((t.to, t.reason), (State::Closed, Reason::Reset));
        assert_eq!(b.forced(), None);
        assert_eq!(b.admit(much_later).0, Admission::Allowed { probe: None });
    }

    #[test]
    fn force_open_on_an_open_breaker_pins_it() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            ..config()
        });
        trip(&mut b, t0);
        assert_eq!(b.force_open(t0), None, "no state change");
        assert!(matches!(
            b.admit(t0 + Duration::from_secs(10)).0,
            Admission::Rejected { .. }
        ));
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            b.snapshot(t0).last_reason,
            Some(Reason::ConsecutiveFailures)
        );
    }

    #[test]
    fn force_closed_admits_and_never_trips_until_reset() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 2,
            ..config()
        });
        trip_twice(&mut b, t0);
        let t = b.force_closed(t0).expect("open to closed");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Open, State::Closed, Reason::Forced)
        );
        for _ in 0..10 {
            assert_eq!(b.admit(t0).0, Admission::Allowed { probe: None });
            assert_eq!(b.record(t0, fail()), None);
        }
        let snap = b.snapshot(t0);
        assert_eq!(
            (snap.forced, snap.window),
            (Some(Forced::Closed), counts(10, 10, 0))
        );

        assert_eq!(b.reset(t0), None, "already closed");
        let snap = b.snapshot(t0);
        assert_eq!((snap.forced, snap.window), (None, WindowCounts::default()));
        assert_eq!(
            b.record(t0, fail()),
            None,
            "the run of failures was reset too"
        );
        assert!(b.record(t0, fail()).is_some());
    }

    fn trip_twice(b: &mut CircuitBreaker, now: Instant) {
        b.record(now, fail());
        b.record(now, fail()).expect("trips");
    }

    #[test]
    fn forced_from_half_open() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            ..config()
        });
        trip(&mut b, t0);
        let t1 = t0 + Duration::from_secs(5);
        b.admit(t1);
        let t = b.force_open(t1).expect("half-open to open");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert_eq!(
            b.record(t1, probe(&b, ok())),
            None,
            "the probe's result is ignored"
        );
        let t = b.force_closed(t1).expect("open to closed");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Open, State::Closed, Reason::Forced)
        );
        assert_eq!(b.snapshot(t1).trips, 0);
    }

    #[test]
    fn stale_results_do_not_corrupt_state() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            half_open_probes: 2,
            ..config()
        });
        // A probe result while closed is counted like any call.
        assert_eq!(
            b.record(t0, probe(&b, fail())).map(|t| t.reason),
            Some(Reason::ConsecutiveFailures)
        );
        // Results while open are ignored (calls admitted before the trip finishing late).
        assert_eq!(b.record(t0, fail()), None);
        assert_eq!(b.record(t0, probe(&b, ok())), None);
        assert_eq!(b.state(), State::Open);

        let t1 = t0 + Duration::from_secs(5);
        assert!(is_probe(b.admit(t1).0));
        // Half-open: non-probe results are ignored...
        assert_eq!(b.record(t1, fail()), None);
        // ...and so are probe results beyond the one probe outstanding.
        assert_eq!(b.record(t1, probe(&b, ok())), None);
        assert_eq!(b.record(t1, probe(&b, fail())), None);
        assert_eq!(b.state(), State::HalfOpen);
        // The second probe decides.
        assert!(is_probe(b.admit(t1).0));
        assert_eq!(
            b.record(t1, probe(&b, ok())).map(|t| t.reason),
            Some(Reason::ProbeSucceeded)
        );
    }

    #[test]
    fn a_lost_probe_reopens_after_open_max() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            ..config()
        });
        trip(&mut b, t0);
        let t1 = t0 + Duration::from_secs(5);
        assert!(is_probe(b.admit(t1).0));
        // Never recorded.
        assert!(matches!(
            b.admit(t1 + Duration::from_secs(59)),
            (Admission::Rejected { .. }, None)
        ));
        let (admission, transition) = b.admit(t1 + Duration::from_secs(60));
        assert_eq!(
            admission,
            Admission::Rejected {
                retry_after: Some(Duration::from_secs(10))
            }
        );
        let transition = transition.expect("presumed failed");
        assert_eq!(
            (transition.from, transition.to, transition.reason),
            (State::HalfOpen, State::Open, Reason::ProbeFailed)
        );
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot_without_a_verdict() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            ..config()
        });
        trip(&mut b, t0);
        let t1 = t0 + Duration::from_secs(5);
        let Admission::Allowed { probe: Some(first) } = b.admit(t1).0 else {
            panic!("a probe");
        };
        assert!(matches!(b.admit(t1).0, Admission::Rejected { .. }));
        b.abandon(first);
        assert_eq!(b.state(), State::HalfOpen, "no verdict on the upstream");
        assert!(is_probe(b.admit(t1).0), "the slot went to the next call");
        assert!(matches!(b.admit(t1).0, Admission::Rejected { .. }));
    }

    #[test]
    fn a_late_probe_of_an_earlier_episode_is_ignored() {
        let (mut b, t0) = breaker(Breaker {
            consecutive_failures: 1,
            ..config()
        });
        trip(&mut b, t0);
        let t1 = t0 + Duration::from_secs(5);
        let Admission::Allowed { probe: Some(old) } = b.admit(t1).0 else {
            panic!("a probe");
        };
        // The lease runs out: the breaker re-opens and half-opens again (a new episode).
        let t2 = t1 + Duration::from_secs(60);
        b.admit(t2);
        let t3 = t2 + Duration::from_secs(10);
        assert!(is_probe(b.admit(t3).0));
        let late = CallResult {
            probe: Some(old),
            ..ok()
        };
        assert_eq!(b.record(t3, late), None, "the old episode's answer");
        b.abandon(old);
        assert!(
            matches!(b.admit(t3).0, Admission::Rejected { .. }),
            "the current probe still holds its slot"
        );
        assert_eq!(
            b.record(t3, probe(&b, ok())).map(|t| t.reason),
            Some(Reason::ProbeSucceeded)
        );
    }

    #[test]
    fn recent_failures_keep_the_last_ten() {
        let (mut b, t0) = breaker(config());
        for i in 0..12u16 {
            b.record(t0 + MS * u32::from(i), fail_with(500 + i));
        }
        b.record(t0, ok());
        let recent = b.snapshot(t0).recent;
        assert_eq!(recent.len(), 10);
        assert_eq!(recent[0].kind, FailureKind::Status(502));
        assert_eq!(recent[0].at, t0 + MS * 2);
        assert_eq!(recent[9].kind, FailureKind::Status(511));
        assert_eq!(b.recent_failures().count(), 10);
    }

    fn fail_with(status: u16) -> CallResult {
        CallResult {
            failure: Some(FailureKind::Status(status)),
            ..ok()
        }
    }

    #[test]
    fn failure_statuses_come_from_the_policy() {
        let (b, _) = breaker(config());
        assert!(b.is_failure_status(503));
        assert!(!b.is_failure_status(404));
        assert_eq!(FailureKind::Status(503).status(), Some(503));
        assert_eq!(FailureKind::Timeout.label(), "timeout");
    }

    #[test]
    fn earlier_instants_do_not_rewind_the_window() {
        let (mut b, t0) = breaker(Breaker {
            min_calls: 1000,
            ..config()
        });
        let late = t0 + Duration::from_secs(30);
        b.record(late, fail());
        b.record(t0, fail());
        assert_eq!(b.snapshot(late).window, counts(2, 2, 0));
        assert_eq!(b.snapshot(t0).window, counts(2, 2, 0));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Event {
            Admit,
            /// Record the in-flight call at this index (modulo), as a failure, slow, or fine.
            Complete(usize, Outcome),
            /// The in-flight call at this index (modulo) is abandoned without a verdict.
            Abandon(usize),
            Advance(Duration),
            ForceOpen,
            ForceClosed,
            Reset,
        }

        #[derive(Debug, Clone, Copy)]
        enum Outcome {
            Ok,
            Slow,
            Failed,
        }

        fn event() -> impl Strategy<Value = Event> {
            let outcome = prop_oneof![
                Just(Outcome::Ok),
                Just(Outcome::Slow),
                Just(Outcome::Failed)
            ];
            prop_oneof![
                10 => Just(Event::Admit),
                10 => (any::<usize>(), outcome).prop_map(|(i, o)| Event::Complete(i, o)),
                2 => any::<usize>().prop_map(Event::Abandon),
                6 => (0u64..3_000).prop_map(|ms| Event::Advance(Duration::from_millis(ms))),
                1 => (0u64..120).prop_map(|s| Event::Advance(Duration::from_secs(s))),
                1 => Just(Event::ForceOpen),
                1 => Just(Event::ForceClosed),
                1 => Just(Event::Reset),
            ]
        }

        fn breaker_config() -> impl Strategy<Value = Breaker> {
            let mode = prop_oneof![
                4 => Just(BreakerMode::Enforce),
                2 => Just(BreakerMode::Shadow),
                1 => Just(BreakerMode::Off),
            ];
            (
                mode,
                0u32..5,
                0.01f64..=1.0,
                1u64..20_000,
                0u32..10,
                1u64..2_000,
                0.01f64..=1.0,
                1u64..10_000,
                1u64..60_000,
                1u32..4,
            )
                .prop_map(
                    |(
                        mode,
                        consecutive,
                        rate,
                        window,
                        min_calls,
                        slow,
                        slow_rate,
                        base,
                        max,
                        probes,
                    )| {
                        Breaker {
                            mode,
                            consecutive_failures: consecutive,
                            failure_rate: rate,
                            window: Duration::from_millis(window),
                            min_calls,
                            slow_call_duration: Duration::from_millis(slow),
                            slow_call_rate: slow_rate,
                            failure_statuses: vec![500, 503],
                            grpc_failure_codes: Vec::new(),
                            open_base: Duration::from_millis(base),
                            open_max: Duration::from_millis(max),
                            half_open_probes: probes,
                            throttle_window: Duration::from_secs(120),
                            throttle_k: 2.0,
                        }
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn invariants_hold(
                cfg in breaker_config(),
                jitter in 0.0f64..0.5,
                seed in any::<u64>(),
                events in prop::collection::vec(event(), 1..200),
            ) {
                let t0 = Instant::now();
                let mut now = t0;
                let mut b = CircuitBreaker::with_seed(cfg.clone(), Jitter::Fraction(jitter), seed, t0);
                let mut in_flight: Vec<Option<Episode>> = vec![];
                let mut state = State::Closed;
                let mut probes_this_episode = 0u32;

                for event in events {
                    let before = b.snapshot(now);
                    // An admission that half-opens the breaker counts its probe itself.
                    let admitting = matches!(event, Event::Admit);
                    let transitions: Vec<Transition> = match event {
                        Event::Admit => {
                            let (admission, transition) = b.admit(now);
                            if cfg.mode == BreakerMode::Shadow {
                                let rejected = matches!(admission, Admission::Rejected { .. });
                                prop_assert!(!rejected, "shadow mode rejected");
                            }
                            if let Some(t) = transition {
                                if t.to == State::HalfOpen {
                                    probes_this_episode = 0;
                                }
                            }
                            match admission {
                                Admission::Allowed { probe } => {
                                    let pinned = before.forced == Some(Forced::Open);
                                    let waiting = before.state == State::Open
                                        && before.next_probe_in.is_some_and(|d| d > Duration::ZERO);
                                    prop_assert!(!pinned && !waiting, "allowed while open: {before:?}");
                                    if probe.is_some() {
                                        prop_assert_eq!(b.state(), State::HalfOpen);
                                        probes_this_episode += 1;
                                        prop_assert!(probes_this_episode <= cfg.half_open_probes);
                                    }
                                    in_flight.push(probe);
                                }
                                Admission::ShadowRejected => {
                                    prop_assert_eq!(cfg.mode, BreakerMode::Shadow);
                                    in_flight.push(None);
                                }
                                Admission::Rejected { retry_after } => {
                                    prop_assert_eq!(cfg.mode, BreakerMode::Enforce);
                                    prop_assert!(retry_after.is_none_or(|after| after <= cfg.open_max));
                                }
                                Admission::Throttled { .. } => {
                                    prop_assert!(false, "throttled outside throttle mode");
                                }
                            }
                            transition.into_iter().collect()
                        }
                        Event::Complete(index, outcome) => {
                            if in_flight.is_empty() {
                                continue;
                            }
                            let probe = in_flight.swap_remove(index % in_flight.len());
                            let (failure, duration) = match outcome {
                                Outcome::Ok => (None, Duration::ZERO),
                                Outcome::Slow => (None, cfg.slow_call_duration),
                                Outcome::Failed => (Some(FailureKind::Reset), MS),
                            };
                            b.record(now, CallResult { failure, duration, probe }).into_iter().collect()
                        }
                        Event::Abandon(index) => {
                            if in_flight.is_empty() {
                                continue;
                            }
                            let probe = in_flight.swap_remove(index % in_flight.len());
                            if let Some(episode) = probe {
                                let current = matches!(
                                    b.phase,
                                    Phase::HalfOpen { episode: e, .. } if e == episode
                                );
                                // Its slot goes to the next call: one more may be admitted.
                                if current {
                                    probes_this_episode -= 1;
                                }
                                b.abandon(episode);
                            }
                            prop_assert_eq!(b.state(), before.state, "abandoning decides nothing");
                            vec![]
                        }
                        Event::Advance(d) => {
                            now += d;
                            vec![]
                        }
                        Event::ForceOpen => b.force_open(now).into_iter().collect(),
                        Event::ForceClosed => b.force_closed(now).into_iter().collect(),
                        Event::Reset => b.reset(now).into_iter().collect(),
                    };

                    for t in transitions {
                        prop_assert_eq!(t.from, state);
                        prop_assert_ne!(t.from, t.to);
                        prop_assert_eq!(t.at, now);
                        prop_assert!(cfg.mode != BreakerMode::Off);
                        state = t.to;
                        if t.to == State::HalfOpen && !admitting {
                            probes_this_episode = 0;
                        }
                        if t.to == State::Open && t.reason != Reason::Forced {
                            let period = b.snapshot(now).next_probe_in.expect("scheduled");
                            prop_assert!(period <= cfg.open_max, "{period:?} > {:?}", cfg.open_max);
                        }
                    }
                    let snap = b.snapshot(now);
                    prop_assert_eq!(snap.state, state);
                    if let Some(last) = b.last_transition() {
                        prop_assert_eq!(snap.state, last.to);
                        prop_assert_eq!(snap.last_reason, Some(last.reason));
                        prop_assert_eq!(snap.since, last.at);
                    }
                    prop_assert!(snap.recent.len() <= RECENT_FAILURES);
                    if let Some(next) = snap.next_probe_in {
                        prop_assert!(next <= cfg.open_max);
                    }
                }
            }
        }
    }
}
