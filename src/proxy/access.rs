//! The end of every app request, in one place: its metrics (`fusebox_requests_total`,
//! `fusebox_request_duration_seconds`) and its access-log line (target `fusebox::access`, one
//! structured event per request: upstream, destination, method, path without the query,
//! status (and `grpc_status` for gRPC calls), outcome, attempts, duration, the local-reply
//! reason if any, `intercepted` for requests that came through HTTPS interception, `copy`
//! for hedged requests: which copy answered, and `route` for requests a `[[route]]` took).

use std::time::Instant;

use http::{Method, Request, StatusCode, Uri};

use crate::logging::AccessLine;

use crate::outcome::{Outcome, Reason};
use crate::pipeline::grpc::GrpcCode;
use crate::registry::Destination;

/// How a request ended, for its access-log line.
#[derive(Debug, Clone, Copy)]
struct Ending<'a> {
    status: StatusCode,
    grpc_status: Option<GrpcCode>,
    outcome: Outcome,
    attempts: u32,
    reason: Option<(Reason, &'a str)>,
}

/// Marks a request that arrived inside an intercepted `CONNECT` (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Intercepted;

/// What is known of a request from its first byte: enough to log it however it ends.
#[derive(Debug)]
pub struct Seen {
    pub started: Instant,
    /// A gRPC call (`content-type: application/grpc`): answered and counted as one (§14).
    pub grpc: bool,
    method: Method,
    uri: Uri,
    intercepted: bool,
    /// When hedges were sent (§18): which copy answered, 1 the first.
    pub copy: Option<u32>,
    /// The `[[route]]` of the policy that took the request, if any (its metrics and log).
    pub route: Option<usize>,
}

impl Seen {
    pub fn of<B>(req: &Request<B>) -> Seen {
        Seen {
            intercepted: req.extensions().get::<Intercepted>().is_some(),
            grpc: crate::pipeline::grpc::is_grpc(req.headers()),
            ..Seen::new(req.method().clone(), req.uri().clone())
        }
    }

    /// A request whose head could not be read: logged as method `-` and path `*`.
    pub fn unparsed() -> Seen {
        let method = Method::from_bytes(b"-").unwrap_or_default();
        Seen::new(method, Uri::from_static("*"))
    }

    pub fn new(method: Method, uri: Uri) -> Seen {
        Seen {
            started: Instant::now(),
            grpc: false,
            method,
            uri,
            intercepted: false,
            copy: None,
            route: None,
        }
    }

    /// Records the request as answered with `status` (`reason`: answered by fusebox itself,
    /// with the reply's line).
    pub fn finish(
        &self,
        destination: &Destination,
        status: StatusCode,
        outcome: Outcome,
        attempts: u32,
        reason: Option<(Reason, &str)>,
    ) {
        let elapsed = self.started.elapsed();
        destination
            .calls(self.route)
            .request(outcome, status, elapsed);
        destination.live.record(outcome, elapsed);
        let ending = Ending {
            status,
            grpc_status: None,
            outcome,
            attempts,
            reason,
        };
        self.log(destination, &ending, elapsed);
    }

    /// Records a gRPC call answered (`200`) with `code`: by the upstream, or by fusebox itself
    /// (`reason`, with the reply's line).
    pub fn finish_grpc(
        &self,
        destination: &Destination,
        code: GrpcCode,
        outcome: Outcome,
        attempts: u32,
        reason: Option<(Reason, &str)>,
    ) {
        let elapsed = self.started.elapsed();
        destination
            .calls(self.route)
            .request_grpc(outcome, code, elapsed);
        destination.live.record(outcome, elapsed);
        let ending = Ending {
            status: StatusCode::OK,
            grpc_status: Some(code),
            outcome,
            attempts,
            reason,
        };
        self.log(destination, &ending, elapsed);
    }

    /// The access-log line, with the `elapsed` the metrics recorded (one clock read per
    /// request).
    fn log(&self, destination: &Destination, ending: &Ending<'_>, elapsed: std::time::Duration) {
        let Ending {
            status,
            grpc_status,
            outcome,
            attempts,
            reason,
        } = *ending;
        crate::logging::access(&AccessLine {
            upstream: &destination.upstream,
            destination: &destination.authority,
            method: self.method.as_str(),
            // CONNECT targets have no path: log the authority instead.
            path: self.uri.path_and_query().map_or_else(
                || self.uri.authority().map_or("", |a| a.as_str()),
                |_| self.uri.path(),
            ),
            status: status.as_u16(),
            grpc_status: grpc_status.map(GrpcCode::name),
            outcome: outcome.label(),
            attempts,
            duration_micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            reason: reason.map(|(reason, _)| reason.as_str()),
            cause: reason.map(|(_, cause)| cause),
            intercepted: self.intercepted,
            copy: self.copy,
            route: self
                .route
                .and_then(|i| Some(&*destination.routes.get(i)?.name)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intercepted_request_is_seen_as_one() {
        let mut req = Request::new(());
        assert!(!Seen::of(&req).intercepted);
        req.extensions_mut().insert(Intercepted);
        assert!(Seen::of(&req).intercepted);
    }
}
