//! A request's plan (docs/ARCHITECTURE.md §3, `[[route]]`): the timeouts and retry rule its
//! tries run under, and the route whose breaker, hedge state and metrics they use. The first
//! route of the policy that matches the request's method, path and headers sets them; a
//! request no route takes gets the policy's own (`route="_default"`).

use http::request::Parts;

use crate::policy::route::route_for;
use crate::policy::{Policy, Retry, Timeouts};

/// See the module docs. Borrowed from the request's policy: a reload cannot change it midway.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'p> {
    /// The index of the route in the policy (and in its destinations' route states).
    pub route: Option<usize>,
    pub timeouts: &'p Timeouts,
    pub retry: &'p Retry,
}

impl<'p> Plan<'p> {
    /// The plan of a request with this head under `policy`.
    pub fn choose(policy: &'p Policy, head: &Parts) -> Plan<'p> {
        let route = if policy.routes.is_empty() {
            None
        } else {
            route_for(&policy.routes, &head.method, head.uri.path(), &head.headers)
        };
        Plan::of(policy, route)
    }

    /// The plan of `route` (`None`: the policy's own).
    pub fn of(policy: &'p Policy, route: Option<usize>) -> Plan<'p> {
        match route.and_then(|i| policy.routes.get(i)) {
            Some(taken) => Plan {
                route,
                timeouts: &taken.timeouts,
                retry: &taken.retry,
            },
            None => Plan {
                route: None,
                timeouts: &policy.timeouts,
                retry: &policy.retry,
            },
        }
    }
}
