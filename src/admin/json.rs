//! The JSON shapes of the admin API (docs/ARCHITECTURE.md §6, a contract). The same types
//! deserialize what the API sent, so `fusebox status` and the server cannot drift apart.
//!
//! Times are RFC 3339 in UTC with milliseconds (`2025-01-31T12:00:00.123Z`). Breaker instants
//! are monotonic ([`tokio::time::Instant`]); they are turned into wall-clock times against one
//! [`Clock`] reading per response, so every time in a response is consistent with the others.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use super::route_json::{RouteBreakerJson, RouteJson};
pub use crate::live_stats::Totals;
use crate::pipeline::breaker::{BreakerSnapshot, RecentFailure, State};
use crate::policy::BreakerMode;
use crate::policy::Route;
use crate::registry::{Destination, EndpointView, RouteState, TrustFailure, Upstream};

/// One destination's breaker: an element of `GET /upstreams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationView {
    /// The policy's name (the `upstream` metric label).
    pub upstream: String,
    /// `host:port`, IPv6 hosts in brackets (the `destination` metric label).
    pub destination: String,
    /// `closed`, `half-open` or `open`.
    pub state: String,
    /// When the breaker entered `state` (or was created), RFC 3339.
    pub since: String,
    /// The reason of the last transition (the `reason` label of
    /// `fusebox_breaker_transitions_total`), `null` before the first one.
    pub reason: Option<String>,
    /// Extra: `reason` in words, naming who caused it (an operator's `reset` is not the
    /// upstream's connection reset), `null` before the first transition.
    #[serde(default)]
    pub reason_text: Option<String>,
    /// The live window when closed; the counts that tripped it otherwise.
    pub window: WindowView,
    /// When open (and not forced): milliseconds until the next probe may go, rounded up;
    /// `0` once it may. `null` otherwise.
    pub next_probe_in_ms: Option<u64>,
    /// The last few failures, oldest first.
    pub recent: Vec<FailureView>,
    /// Requests in progress at this destination.
    pub in_flight: u64,
    /// `open` or `closed` when pinned by the admin API, `null` otherwise.
    pub forced: Option<String>,
    /// Extra: trips in a row since the breaker last closed (0 when closed).
    #[serde(default)]
    pub trips: u32,
    /// Extra: the policy's breaker mode, `enforce`, `shadow` or `off`.
    #[serde(default)]
    pub mode: String,
    /// Extra: kept-alive cleartext HTTP/1.1 connections resting at this destination, ready
    /// for its next requests (those of the pooled client for TLS and HTTP/2 are not counted).
    #[serde(default)]
    pub idle_connections: u64,
    /// Extra: the policy intercepts HTTPS (`intercept = true` and a CA): the app's `CONNECT`s
    /// to this destination are terminated and their requests counted here one by one.
    #[serde(default)]
    pub intercept: bool,
    /// Extra: for a fleet-wide rate limit (`scope = "fleet"` with `--redis`), which limit applies
    /// now: `connected` (the fleet's, in Redis) or `fallback` (local, while Redis fails); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// Extra: the concurrency limit in force, `null` when there is none; with `limit_mode`
    /// `fixed` (`max_in_flight`), `aimd` or `gradient` (adaptive, §18).
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub limit_mode: String,
    /// Extra: `mode = "throttle"` only: the refusal probability now, and the requests and
    /// accepts of `throttle_window` it comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleView>,
    /// Extra: the destination's endpoints (§17), each with its balancing and ejection state.
    #[serde(default)]
    pub endpoints: Vec<EndpointJson>,
    /// Extra: requests, upstream failures and local refusals since the destination was
    /// created (the breaker's `window` only covers its last seconds).
    #[serde(default)]
    pub totals: Totals,
    /// Extra: retries the retry budget would grant now.
    #[serde(default)]
    pub retry_budget_left: Option<f64>,
    /// Extra: tokens left in the local rate limiter, `null` without one (or for a fleet-wide
    /// limit, whose tokens are in Redis).
    #[serde(default)]
    pub rate_tokens_left: Option<f64>,
    /// Extra: the policy's `[[route]]`s, in order, with their own breakers; absent without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteJson>,
}

/// One endpoint of a destination in `/upstreams`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointJson {
    /// `ip:port`.
    pub endpoint: String,
    /// `ready`, `ejected` or `probing`.
    pub state: String,
    /// The peak-EWMA latency estimate now, in microseconds.
    pub ewma_us: u64,
    /// Tries waiting for their response head.
    pub pending: u32,
    /// Ejections since its count last started afresh.
    pub ejections: u32,
    /// Time left of its ejection.
    pub ejected_for_ms: Option<u64>,
    /// Time left of the rest its `Retry-After` asked for.
    pub retry_after_ms: Option<u64>,
    pub successes: u64,
    pub failures: u64,
}

impl From<EndpointView> for EndpointJson {
    fn from(view: EndpointView) -> Self {
        EndpointJson {
            endpoint: view.label,
            state: view.state.to_owned(),
            ewma_us: u64::try_from(view.ewma.as_micros()).unwrap_or(u64::MAX),
            pending: view.pending,
            ejections: view.ejections,
            ejected_for_ms: view.ejected_for.map(ceil_millis),
            retry_after_ms: view.resting_for.map(ceil_millis),
            successes: view.successes,
            failures: view.failures,
        }
    }
}

/// Calls seen over the breaker's sliding window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowView {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
    /// Extra: how many seconds the window covers (the policy's `breaker.window`).
    #[serde(default)]
    pub seconds: u64,
}

/// The `kind` of a certificate failure in `recent`.
pub const TLS_VERIFY_FAILED: &str = "tls_verify_failed";

/// One recent failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureView {
    /// RFC 3339.
    pub time: String,
    /// `connect_failed`, `reset`, `timeout`, `status`, `bad_response`, `body_idle` or
    /// `grpc_status` (breaker failures); or [`TLS_VERIFY_FAILED`], the destination's last
    /// certificate failure, which is the policy's problem and not a breaker failure.
    pub kind: String,
    /// The upstream's status when `kind` is `status`, `null` otherwise.
    pub status: Option<u16>,
    /// Extra: the gRPC status name when `kind` is `grpc_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Extra: `kind` in words.
    #[serde(default)]
    pub text: String,
}

/// The body of every admin error: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// One reading of both clocks, to turn monotonic instants into wall-clock times.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub instant: Instant,
    pub system: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// The wall-clock time of a monotonic instant (instants after the reading count as now).
    pub fn system_time(self, at: Instant) -> SystemTime {
        let ago = self.instant.saturating_duration_since(at);
        self.system.checked_sub(ago).unwrap_or(self.system)
    }

    /// An instant as RFC 3339 UTC with milliseconds.
    pub fn rfc3339(self, at: Instant) -> String {
        humantime::format_rfc3339_millis(self.system_time(at)).to_string()
    }
}

/// The `state` of `/upstreams`.
pub fn state_label(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::HalfOpen => "half-open",
        State::Open => "open",
    }
}

/// A breaker mode as written in policy files.
pub fn mode_label(mode: BreakerMode) -> &'static str {
    match mode {
        BreakerMode::Enforce => "enforce",
        BreakerMode::Shadow => "shadow",
        BreakerMode::Off => "off",
        BreakerMode::Throttle => "throttle",
    }
}

/// Milliseconds, rounded up, so that a wait still to come never reads as 0.
pub fn ceil_millis(d: Duration) -> u64 {
    let millis = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

impl DestinationView {
    /// The view of one destination of `upstream`, now.
    pub fn of(upstream: &Upstream, destination: &Destination, clock: Clock) -> DestinationView {
        let snapshot = destination.breaker_snapshot(None);
        let in_flight = u64::try_from(destination.gate.in_flight()).unwrap_or(u64::MAX);
        let mut view = DestinationView {
            idle_connections: u64::try_from(destination.idle_connections()).unwrap_or(u64::MAX),
            // `run` refuses `intercept = true` without a CA: the policy's word is enough.
            intercept: upstream.policy.intercept,
            limit: destination
                .gate
                .max_in_flight()
                .map(|limit| u64::try_from(limit).unwrap_or(u64::MAX)),
            limit_mode: upstream.policy.concurrency.mode.label().to_owned(),
            fleet: destination
                .fleet
                .as_ref()
                .map(|fleet| fleet.mode().label().to_owned()),
            endpoints: destination
                .endpoints
                .view(Instant::now())
                .into_iter()
                .map(EndpointJson::from)
                .collect(),
            totals: destination.live.totals(),
            retry_budget_left: Some(destination.budget.available_at(Instant::now())),
            rate_tokens_left: destination.limiter.as_ref().map(|l| l.tokens_left()),
            routes: routes_of(destination, &upstream.policy.routes, clock),
            ..DestinationView::from_snapshot(
                &upstream.policy.name,
                &destination.authority,
                mode_label(upstream.policy.breaker.mode),
                &snapshot,
                in_flight,
                clock,
            )
        };
        view.window.seconds = upstream.policy.breaker.window.as_secs();
        if let Some(trust) = destination.notes.trust_failure() {
            let after = snapshot.recent.iter().filter(|f| f.at <= trust.at).count();
            view.recent.insert(after, FailureView::trust(&trust, clock));
        }
        view
    }

    /// The view of a breaker snapshot (pure: unit-tested with hand-built snapshots).
    pub fn from_snapshot(
        upstream: &str,
        destination: &str,
        mode: &str,
        snapshot: &BreakerSnapshot,
        in_flight: u64,
        clock: Clock,
    ) -> DestinationView {
        let w = snapshot.window;
        DestinationView {
            upstream: upstream.to_owned(),
            destination: destination.to_owned(),
            state: state_label(snapshot.state).to_owned(),
            since: clock.rfc3339(snapshot.since),
            reason: snapshot.last_reason.map(|r| r.label().to_owned()),
            reason_text: snapshot.last_reason.map(|r| r.describe().to_owned()),
            window: WindowView {
                calls: w.calls,
                failures: w.failures,
                slow: w.slow,
                seconds: 0,
            },
            next_probe_in_ms: snapshot.next_probe_in.map(ceil_millis),
            recent: snapshot
                .recent
                .iter()
                .map(|f| FailureView::of(f, clock))
                .collect(),
            in_flight,
            forced: snapshot.forced.map(|f| f.label().to_owned()),
            trips: snapshot.trips,
            mode: mode.to_owned(),
            idle_connections: 0,
            endpoints: Vec::new(),
            intercept: false,
            fleet: None,
            limit: None,
            limit_mode: "fixed".to_owned(),
            totals: Totals::default(),
            retry_budget_left: None,
            rate_tokens_left: None,
            routes: Vec::new(),
            throttle: snapshot.throttle.map(|(probability, counts)| ThrottleView {
                probability,
                requests: counts.requests,
                accepts: counts.accepts,
            }),
        }
    }
}

/// The routes of `destination`, whose policy's routes are `routes`.
fn routes_of(destination: &Destination, routes: &[Route], clock: Clock) -> Vec<RouteJson> {
    let one = |(index, route): (usize, &Route)| {
        let own = destination
            .routes
            .get(index)
            .is_some_and(RouteState::has_own_breaker);
        let breaker = own.then(|| {
            let snapshot = destination.breaker_snapshot(Some(index));
            RouteBreakerJson {
                state: state_label(snapshot.state).to_owned(),
                since: clock.rfc3339(snapshot.since),
                reason: snapshot.last_reason.map(|r| r.label().to_owned()),
                calls: snapshot.window.calls,
                failures: snapshot.window.failures,
                slow: snapshot.window.slow,
                next_probe_in_ms: snapshot.next_probe_in.map(ceil_millis),
                forced: snapshot.forced.map(|f| f.label().to_owned()),
            }
        });
        RouteJson::of(route, breaker)
    };
    routes.iter().enumerate().map(one).collect()
}

/// A throttling breaker's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThrottleView {
    pub probability: f64,
    pub requests: u32,
    pub accepts: u32,
}

impl FailureView {
    /// The last certificate failure (not a breaker failure: kept beside the breaker's).
    fn trust(failure: &TrustFailure, clock: Clock) -> FailureView {
        FailureView {
            time: clock.rfc3339(failure.at),
            kind: TLS_VERIFY_FAILED.to_owned(),
            status: None,
            grpc_status: None,
            text: failure.cause.to_string(),
        }
    }

    fn of(failure: &RecentFailure, clock: Clock) -> FailureView {
        FailureView {
            time: clock.rfc3339(failure.at),
            kind: failure.kind.label().to_owned(),
            status: failure.kind.status(),
            grpc_status: failure.kind.grpc_status().map(|c| c.name().to_owned()),
            text: failure.kind.describe().to_owned(),
        }
    }
}

/// Sorts views by upstream, then destination (the order of `/upstreams`).
pub fn sort(views: &mut [DestinationView]) {
    views.sort_by(|a, b| {
        (a.upstream.as_str(), a.destination.as_str())
            .cmp(&(b.upstream.as_str(), b.destination.as_str()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::breaker::{FailureKind, Forced, Reason, WindowCounts};

    fn clock() -> Clock {
        Clock {
            instant: Instant::now(),
            system: humantime::parse_rfc3339("2025-01-31T12:00:00Z").unwrap(),
        }
    }

    #[test]
    fn an_open_breaker_serializes_every_contract_field() {
        let clock = clock();
        let snapshot = BreakerSnapshot {
            throttle: None,
            state: State::Open,
            since: clock.instant - Duration::from_millis(1500),
            last_reason: Some(Reason::ConsecutiveFailures),
            window: WindowCounts {
                calls: 3,
                failures: 2,
                slow: 1,
            },
            next_probe_in: Some(Duration::from_micros(2_500_001)),
            recent: vec![
                RecentFailure {
                    at: clock.instant - Duration::from_secs(2),
                    kind: FailureKind::Status(503),
                },
                RecentFailure {
                    at: clock.instant - Duration::from_secs(1),
                    kind: FailureKind::ConnectFailed,
                },
            ],
            forced: None,
            trips: 1,
        };
        let view = DestinationView::from_snapshot(
            "payments",
            "[::1]:8080",
            "enforce",
            &snapshot,
            4,
            clock,
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "upstream": "payments",
                "destination": "[::1]:8080",
                "state": "open",
                "since": "2025-01-31T11:59:58.500Z",
                "reason": "consecutive_failures",
                "reason_text": "tripped: too many failures in a row (breaker.consecutive_failures)",
                "window": {"calls": 3, "failures": 2, "slow": 1, "seconds": 0},
                "next_probe_in_ms": 2501,
                "recent": [
                    {"time": "2025-01-31T11:59:58.000Z", "kind": "status", "status": 503,
                     "text": "the upstream answered a status in failure_statuses"},
                    {"time": "2025-01-31T11:59:59.000Z", "kind": "connect_failed", "status": null,
                     "text": "the connection could not be established"},
                ],
                "in_flight": 4,
                "limit": null,
                "limit_mode": "fixed",
                "forced": null,
                "trips": 1,
                "mode": "enforce",
                "idle_connections": 0,
                "endpoints": [],
                "intercept": false,
                "totals": {"requests": 0, "errors": 0, "rejected": 0},
                "retry_budget_left": null,
                "rate_tokens_left": null,
            })
        );
        let back: DestinationView = serde_json::from_value(json).unwrap();
        assert_eq!(back, view);
    }

    #[test]
    fn a_fresh_forced_breaker_has_nulls_where_nothing_happened() {
        let clock = clock();
        let snapshot = BreakerSnapshot {
            throttle: None,
            state: State::HalfOpen,
            since: clock.instant,
            last_reason: None,
            window: WindowCounts::default(),
            next_probe_in: None,
            recent: Vec::new(),
            forced: Some(Forced::Closed),
            trips: 0,
        };
        let view = DestinationView::from_snapshot("a", "b:1", "shadow", &snapshot, 0, clock);
        assert_eq!(view.state, "half-open");
        assert_eq!(view.reason, None);
        assert_eq!(view.forced.as_deref(), Some("closed"));
        let json = serde_json::to_value(&view).unwrap();
        assert!(json["reason"].is_null());
        assert!(json["next_probe_in_ms"].is_null());
    }

    #[test]
    fn an_operator_reset_is_told_apart_from_a_connection_reset() {
        let clock = clock();
        let snapshot = BreakerSnapshot {
            throttle: None,
            state: State::Closed,
            since: clock.instant,
            last_reason: Some(Reason::Reset),
            window: WindowCounts::default(),
            next_probe_in: None,
            recent: vec![RecentFailure {
                at: clock.instant,
                kind: FailureKind::Reset,
            }],
            forced: None,
            trips: 0,
        };
        let view = DestinationView::from_snapshot("a", "b:1", "enforce", &snapshot, 0, clock);
        assert_eq!(view.reason.as_deref(), Some("reset"));
        let said = view.reason_text.as_deref().unwrap();
        assert!(said.contains("operator") && said.contains("not a connection reset"));
        assert_eq!(view.recent[0].kind, "reset");
        assert!(view.recent[0]
            .text
            .contains("upstream reset or closed the connection"));
    }

    #[test]
    fn extras_are_optional_when_reading() {
        let json = serde_json::json!({
            "upstream": "a", "destination": "b:1", "state": "closed",
            "since": "2025-01-31T12:00:00.000Z", "reason": null,
            "window": {"calls": 0, "failures": 0, "slow": 0}, "next_probe_in_ms": null,
            "recent": [], "in_flight": 0, "forced": null,
        });
        let view: DestinationView = serde_json::from_value(json).unwrap();
        assert_eq!(view.trips, 0);
        assert_eq!(view.mode, "");
    }

    #[test]
    fn ceil_millis_rounds_up() {
        assert_eq!(ceil_millis(Duration::ZERO), 0);
        assert_eq!(ceil_millis(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_millis(Duration::from_millis(7)), 7);
    }
}
