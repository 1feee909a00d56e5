//! Below `fusebox status`'s table: the `[[route]]`s of each destination whose policy has them
//! (docs/ARCHITECTURE.md §3 Routes), what each matches, the timeouts and retries its requests
//! get, and its own breaker's state when it has one.

use crate::admin::json::{DestinationView, RouteJson};

/// Appends the routes of every row that has some; `ago` says how long ago an RFC 3339 time was.
pub fn push_routes(out: &mut String, rows: &[DestinationView], ago: impl Fn(&str) -> String) {
    for row in rows.iter().filter(|row| !row.routes.is_empty()) {
        out.push_str(&format!("\n{} {} routes:\n", row.upstream, row.destination));
        for route in &row.routes {
            out.push_str(&route_line(route, &ago));
            out.push('\n');
        }
    }
}

/// `  reports  POST path_prefix /v1/reports  attempt 30s total 60s  tries 1  breaker open 4s ago`
fn route_line(route: &RouteJson, ago: impl Fn(&str) -> String) -> String {
    let mut line = format!(
        "  {}  {}  attempt {} total {}  tries {}",
        route.name,
        route.matches,
        millis(route.attempt_timeout_ms),
        millis(route.total_timeout_ms),
        route.retry_attempts
    );
    if route.hedge {
        line.push_str("  hedged");
    }
    match &route.breaker {
        None => line.push_str("  breaker shared"),
        Some(breaker) => {
            line.push_str(&format!(
                "  own breaker {} {}  window {}/{}/{}",
                breaker.state,
                ago(&breaker.since),
                breaker.calls,
                breaker.failures,
                breaker.slow
            ));
            if let Some(reason) = &breaker.reason {
                line.push_str(&format!("  ({reason})"));
            }
            if let Some(forced) = &breaker.forced {
                line.push_str(&format!("  forced {forced}"));
            }
        }
    }
    line
}

fn millis(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::json::RouteBreakerJson;

    #[test]
    fn a_route_line_says_what_it_matches_and_its_breaker() {
        let ago = |_: &str| "4s ago".to_owned();
        let route = RouteJson {
            name: "reports".into(),
            matches: "POST path_prefix /v1/reports".into(),
            attempt_timeout_ms: 30_000,
            total_timeout_ms: 60_000,
            retry_attempts: 1,
            hedge: false,
            breaker: Some(RouteBreakerJson {
                state: "open".into(),
                since: "2025-01-31T12:00:06Z".into(),
                reason: Some("consecutive_failures".into()),
                calls: 3,
                failures: 3,
                slow: 0,
                next_probe_in_ms: Some(1000),
                forced: None,
            }),
        };
        let line = route_line(&route, ago);
        assert!(
            line.starts_with(
                "  reports  POST path_prefix /v1/reports  attempt 30s total 1m  tries 1"
            ),
            "{line}"
        );
        assert!(
            line.contains("own breaker open 4s ago  window 3/3/0  (consecutive_failures)"),
            "{line}"
        );
        let shared = RouteJson {
            breaker: None,
            hedge: true,
            ..route
        };
        assert!(route_line(&shared, ago).ends_with("  hedged  breaker shared"));
    }
}
