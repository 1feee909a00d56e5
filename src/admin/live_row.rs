//! The JSON shapes of the live view's event stream (`GET /events`, docs/ARCHITECTURE.md §6, a
//! contract): one [`LiveRow`] per destination, in `snapshot` and `update` events. The same
//! types deserialize them in `fusebox status --watch`.
//!
//! A row holds no time that moves by itself: the breaker's `since` and its next probe are
//! instants (epoch milliseconds), so a row changes only when something happened, and an
//! `update` carries only the rows that did.

use serde::{Deserialize, Serialize};

use super::json::{DestinationView, EndpointJson, RouteBreakerJson, RouteJson, Totals};
use crate::live_stats::Window;

/// One destination in the live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRow {
    /// Unique and opaque: what `removed` names.
    pub key: String,
    pub upstream: String,
    pub destination: String,
    /// `closed`, `half-open` or `open`.
    pub state: String,
    /// `open` or `closed` when pinned by an operator.
    pub forced: Option<String>,
    /// `enforce`, `shadow`, `off` or `throttle`.
    pub mode: String,
    /// When the breaker entered `state`, epoch milliseconds.
    pub since_ms: u64,
    /// When open: when the next probe may go, epoch milliseconds.
    pub next_probe_at_ms: Option<u64>,
    pub reason: Option<String>,
    pub reason_text: Option<String>,
    /// Requests per second over the window (`window_s`, less at first); `null` until there is
    /// one.
    pub rps: Option<f64>,
    /// Shares of the window's requests that failed upstream / were refused locally; `null`
    /// without requests.
    pub error_ratio: Option<f64>,
    pub reject_ratio: Option<f64>,
    /// Percentiles of the window's latency (served and failed requests), milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub in_flight: u64,
    pub limit: Option<u64>,
    pub limit_mode: String,
    /// Retries the budget would grant now, to a tenth.
    pub retry_budget_left: Option<f64>,
    /// Whole rate-limit tokens left, `null` without a local rate limit.
    pub rate_tokens_left: Option<f64>,
    pub throttle_probability: Option<f64>,
    /// Since the destination was created.
    pub totals: Totals,
    pub endpoints: Vec<LiveEndpoint>,
    /// The policy's `[[route]]`s in order; absent (so rows are as before) without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<LiveRoute>,
}

/// One route of a row: what it matches and its own breaker. Its timeouts, retry and its
/// breaker's window counts are left out (the window's counts fall as it slides, and would
/// change the row by themselves; `/upstreams` has them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRoute {
    /// Its name: the `route` label, and the `route=` of the breaker command.
    pub name: String,
    /// What it matches, in words: `POST path_prefix /v1/reports`.
    pub matches: String,
    /// Its own breaker (`breaker = "own"`); `null` when it shares the destination's.
    pub breaker: Option<LiveRouteBreaker>,
}

/// A route's own breaker, in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRouteBreaker {
    /// `closed`, `half-open` or `open`.
    pub state: String,
    /// When it entered `state`, epoch milliseconds.
    pub since_ms: u64,
    /// When open (and not forced): when its next probe may go, epoch milliseconds.
    pub next_probe_at_ms: Option<u64>,
    /// The reason of its last transition (a `reason` label), `null` before the first.
    pub reason: Option<String>,
    /// `open` or `closed` when pinned by an operator.
    pub forced: Option<String>,
}

impl LiveRoute {
    fn of(route: RouteJson, now_ms: u64) -> Self {
        LiveRoute {
            name: route.name,
            matches: route.matches,
            breaker: route.breaker.map(|b| LiveRouteBreaker::of(b, now_ms)),
        }
    }
}

impl LiveRouteBreaker {
    fn of(breaker: RouteBreakerJson, now_ms: u64) -> Self {
        LiveRouteBreaker {
            state: breaker.state,
            since_ms: epoch_ms(&breaker.since, now_ms),
            next_probe_at_ms: breaker
                .next_probe_in_ms
                .map(|ms| to_tenth(now_ms.saturating_add(ms))),
            reason: breaker.reason,
            forced: breaker.forced,
        }
    }
}

/// One endpoint of a row. Its latency estimate is left out: it decays while the endpoint is
/// idle, and would change the row every second (`/upstreams` has it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveEndpoint {
    /// `ip:port`.
    pub endpoint: String,
    /// `ready`, `ejected` or `probing`.
    pub state: String,
    /// Tries waiting for their response head.
    pub pending: u32,
    pub ejections: u32,
    /// When its ejection ends, epoch milliseconds.
    pub ejected_until_ms: Option<u64>,
    pub successes: u64,
    pub failures: u64,
}

impl LiveEndpoint {
    fn of(endpoint: EndpointJson, now_ms: u64) -> Self {
        LiveEndpoint {
            endpoint: endpoint.endpoint,
            state: endpoint.state,
            pending: endpoint.pending,
            ejections: endpoint.ejections,
            ejected_until_ms: endpoint
                .ejected_for_ms
                .map(|ms| to_tenth(now_ms.saturating_add(ms))),
            successes: endpoint.successes,
            failures: endpoint.failures,
        }
    }
}

/// An RFC 3339 time as epoch milliseconds to the nearest tenth of a second (`now_ms` if it
/// does not parse).
fn epoch_ms(rfc3339: &str, now_ms: u64) -> u64 {
    to_tenth(
        humantime::parse_rfc3339(rfc3339)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now_ms, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// Epoch milliseconds to the nearest tenth of a second: instants computed afresh from two
/// clocks at every reading would otherwise differ by a millisecond now and then.
fn to_tenth(ms: u64) -> u64 {
    ms.saturating_add(50) / 100 * 100
}

/// The data of a `snapshot` event: every row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEvent {
    /// Epoch milliseconds of the reading.
    pub time: u64,
    /// The length of the window rates are counted over once it is full, seconds.
    pub window_s: u64,
    pub rows: Vec<LiveRow>,
}

/// The data of an `update` event: rows that changed or are new, keys of rows gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateEvent {
    pub time: u64,
    pub rows: Vec<LiveRow>,
    pub removed: Vec<String>,
}

/// The key of a destination: unambiguous whatever the policy's name holds.
pub fn key(upstream: &str, destination: &str) -> String {
    format!("{}:{upstream}{destination}", upstream.len())
}

impl LiveRow {
    /// The row of a destination's view, with its window `window` over `span_ms` (0: none yet).
    pub fn of(view: DestinationView, window: Option<&Window>, span_ms: u64, now_ms: u64) -> Self {
        let rates = window.filter(|_| span_ms > 0);
        let requests = rates.map(|w| w.totals.requests);
        #[allow(clippy::cast_precision_loss)]
        let share = |part: fn(&Window) -> u64| {
            rates
                .filter(|w| w.totals.requests > 0)
                .map(|w| round(part(w) as f64 / w.totals.requests as f64, 1000.0))
        };
        #[allow(clippy::cast_precision_loss)]
        let millis = |us: Option<u64>| us.map(|us| round(us as f64 / 1000.0, 10.0));
        #[allow(clippy::cast_precision_loss)]
        let rps = requests.map(|n| round(n as f64 * 1000.0 / span_ms as f64, 10.0));
        LiveRow {
            key: key(&view.upstream, &view.destination),
            since_ms: epoch_ms(&view.since, now_ms),
            next_probe_at_ms: view
                .next_probe_in_ms
                .map(|ms| to_tenth(now_ms.saturating_add(ms))),
            rps,
            error_ratio: share(|w| w.totals.errors),
            reject_ratio: share(|w| w.totals.rejected),
            p50_ms: millis(rates.and_then(|w| w.p50_us)),
            p99_ms: millis(rates.and_then(|w| w.p99_us)),
            retry_budget_left: view.retry_budget_left.map(|left| floor(left, 10.0)),
            rate_tokens_left: view.rate_tokens_left.map(f64::floor),
            throttle_probability: view.throttle.map(|t| round(t.probability, 1000.0)),
            upstream: view.upstream,
            destination: view.destination,
            state: view.state,
            forced: view.forced,
            mode: view.mode,
            reason: view.reason,
            reason_text: view.reason_text,
            in_flight: view.in_flight,
            limit: view.limit,
            limit_mode: view.limit_mode,
            totals: view.totals,
            endpoints: view
                .endpoints
                .into_iter()
                .map(|e| LiveEndpoint::of(e, now_ms))
                .collect(),
            routes: view
                .routes
                .into_iter()
                .map(|r| LiveRoute::of(r, now_ms))
                .collect(),
        }
    }
}

/// `value` rounded to `1 / per`.
fn round(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}

fn floor(value: f64, per: f64) -> f64 {
    (value * per).floor() / per
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A destination's view as `/upstreams` would send it, with these `routes`.
    fn view(routes: &serde_json::Value) -> DestinationView {
        serde_json::from_value(json!({
            "upstream": "svc", "destination": "api.test:80", "state": "closed",
            "since": "2025-01-31T12:00:00.000Z", "reason": null,
            "window": {"calls": 0, "failures": 0, "slow": 0}, "next_probe_in_ms": null,
            "recent": [], "in_flight": 0, "forced": null, "routes": routes,
        }))
        .unwrap()
    }

    #[test]
    fn routes_keep_their_breaker_as_instants_and_are_absent_without() {
        let now_ms = 1_738_324_810_000; // 2025-01-31T12:00:10Z
        let routes = json!([
            {"name": "reports", "matches": "POST path_prefix /v1/reports",
             "attempt_timeout_ms": 1000, "total_timeout_ms": 2000, "retry_attempts": 1,
             "hedge": false,
             "breaker": {"state": "open", "since": "2025-01-31T12:00:04.321Z",
                         "reason": "consecutive_failures", "calls": 3, "failures": 3,
                         "slow": 0, "next_probe_in_ms": 49_960, "forced": null}},
            {"name": "status", "matches": "GET path /v1/status",
             "attempt_timeout_ms": 1000, "total_timeout_ms": 2000, "retry_attempts": 2,
             "hedge": false, "breaker": null},
        ]);
        let row = LiveRow::of(view(&routes), None, 0, now_ms);
        let reports = LiveRouteBreaker {
            state: "open".into(),
            since_ms: 1_738_324_804_300,
            next_probe_at_ms: Some(1_738_324_860_000),
            reason: Some("consecutive_failures".into()),
            forced: None,
        };
        assert_eq!(
            row.routes,
            [
                LiveRoute {
                    name: "reports".into(),
                    matches: "POST path_prefix /v1/reports".into(),
                    breaker: Some(reports),
                },
                LiveRoute {
                    name: "status".into(),
                    matches: "GET path /v1/status".into(),
                    breaker: None,
                },
            ]
        );
        // The window's counts are not in the row: they fall by themselves as it slides.
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["routes"][0]["breaker"].as_object().unwrap().len(), 5);
        let back: LiveRow = serde_json::from_value(json).unwrap();
        assert_eq!(back, row);

        let plain = LiveRow::of(view(&json!([])), None, 0, now_ms);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("routes").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<LiveRow>(json).unwrap(), plain);
    }
}
