//! The `routes` of a destination in `GET /upstreams` (docs/ARCHITECTURE.md §6): each
//! `[[route]]` of its policy, what it matches, the settings its requests get, its totals,
//! and its own breaker when it has one.

use serde::{Deserialize, Serialize};

use crate::policy::route::HeaderMatch;
use crate::policy::Route;

/// One route of a destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteJson {
    /// Its name: the `route` metric label.
    pub name: String,
    /// What it matches, as the policy says it: `GET,HEAD path_prefix /v1/status`.
    pub matches: String,
    /// Its attempt and total timeouts, in milliseconds.
    pub attempt_timeout_ms: u64,
    pub total_timeout_ms: u64,
    /// Its `retry.attempts` (1: no retry).
    pub retry_attempts: u32,
    /// Whether its requests may be hedged.
    pub hedge: bool,
    /// Its own breaker (`breaker = "own"`); `null` when it shares the destination's.
    pub breaker: Option<RouteBreakerJson>,
}

/// A route's own breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteBreakerJson {
    /// `closed`, `half-open` or `open`.
    pub state: String,
    /// When it entered `state`, RFC 3339.
    pub since: String,
    /// The reason of its last transition, `null` before the first.
    pub reason: Option<String>,
    /// Its window: calls, failures and slow calls.
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
    /// When open: milliseconds until the next probe may go.
    pub next_probe_in_ms: Option<u64>,
    /// `open` or `closed` when pinned by the admin API.
    pub forced: Option<String>,
}

impl RouteJson {
    /// A route's view, its breaker (`None`: it shares the destination's) given.
    pub fn of(route: &Route, breaker: Option<RouteBreakerJson>) -> RouteJson {
        RouteJson {
            name: route.name.clone(),
            matches: describe(route),
            attempt_timeout_ms: millis(route.timeouts.attempt),
            total_timeout_ms: millis(route.timeouts.total),
            retry_attempts: route.retry.attempts,
            hedge: route.hedge.enabled,
            breaker,
        }
    }
}

/// `GET,HEAD path_prefix /v1/status header x-tier=gold`.
fn describe(route: &Route) -> String {
    let methods = if route.methods.is_empty() {
        "any method".to_owned()
    } else {
        route.methods.join(",")
    };
    let mut text = format!("{methods} {}", route.path.describe());
    if let Some(HeaderMatch { name, value }) = &route.header {
        match value {
            Some(value) => text.push_str(&format!(" header {name}={value}")),
            None => text.push_str(&format!(" header {name}")),
        }
    }
    text
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
