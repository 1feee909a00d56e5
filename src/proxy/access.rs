//! The end of every app request, in one place: its metrics (`fusebox_requests_total`,
//! `fusebox_request_duration_seconds`) and its access-log line (target `fusebox::access`, one
//! structured event per request: upstream, destination, method, path without the query,
//! status, outcome, attempts, duration and the local-reply reason if any).

use std::time::Instant;

use http::{Method, Request, StatusCode, Uri};
use tracing::info;

use crate::outcome::{Outcome, Reason};
use crate::registry::Destination;

/// What is known of a request from its first byte: enough to log it however it ends.
#[derive(Debug)]
pub struct Seen {
    pub started: Instant,
    method: Method,
    uri: Uri,
}

impl Seen {
    pub fn of<B>(req: &Request<B>) -> Seen {
        Seen::new(req.method().clone(), req.uri().clone())
    }

    pub fn new(method: Method, uri: Uri) -> Seen {
        Seen {
            started: Instant::now(),
            method,
            uri,
        }
    }

    /// Records the request as answered with `status` (`reason`: answered by fusebox itself).
    pub fn finish(
        &self,
        destination: &Destination,
        status: StatusCode,
        outcome: Outcome,
        attempts: u32,
        reason: Option<Reason>,
    ) {
        let elapsed = self.started.elapsed();
        destination.metrics.request(outcome, status, elapsed);
        info!(
            target: "fusebox::access",
            upstream = %destination.upstream,
            destination = %destination.authority,
            method = %self.method,
            // CONNECT targets have no path: log the authority instead.
            path = self.uri.path_and_query().map_or_else(|| self.uri.authority().map_or("", |a| a.as_str()), |_| self.uri.path()),
            status = status.as_u16(),
            outcome = outcome.label(),
            attempts,
            // Whole microseconds: at most three decimals (`38.991`, `38.99`), never
            // `38.990868999999996`. An exact conversion for any duration under 285 years.
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            reason = reason.map(Reason::as_str),
        );
    }
}
