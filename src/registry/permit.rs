//! One try's admission (docs/ARCHITECTURE.md §1.1): [`Destination::begin`] asks the breaker and
//! then the rate limiter (a fleet-wide one through [`Permit::fleet_admit`]), and answers a
//! [`Permit`] or a [`Refusal`]; a try the breaker refuses spends no token. The permit is the
//! only way to record a try, and it is spent by recording it: [`Permit::answered`] (a response head),
//! [`Permit::connected`] (a tunnel), [`Permit::failed`] (an [`AttemptError`]). A permit dropped
//! without one of them (the app went away mid-try) records "abandoned": its half-open probe
//! slot goes back to the breaker with no verdict on the upstream, so no caller can wedge a
//! breaker by forgetting to record.
//!
//! A gRPC call whose status comes in the response's trailers is judged when its stream ends:
//! [`Permit::pending`] turns the permit into a [`Pending`] verdict that travels with the response
//! body (which owns its destination) and is spent by [`Pending::ended`] or [`Pending::cut`];
//! dropped unspent (the app cancelled the stream), it too records "abandoned". A half-open
//! probe's verdict is not kept waiting: a stream that started has passed it ([`Permit::pending`]).
//!
//! The concurrency gate is not part of the permit: its slot belongs to the request
//! ([`super::InFlight`]), which outlives a try (it is held across retries and backoff sleeps,
//! and while the response body streams).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::Destination;
use crate::pipeline::adaptive::Signal;
use crate::pipeline::attempt::{AttemptError, ErrorKind, Refusal};
use crate::pipeline::breaker::{Admission, CallResult, Episode, FailureKind};
use crate::pipeline::grpc::GrpcCode;
use crate::pipeline::limiter::LimitDecision;
use crate::telemetry::AttemptResult;

impl Destination {
    /// Asks the breaker, then the local rate limiter, to let one try through now. The breaker
    /// first: a try it refuses spends no token (a limiter that refuses hands a half-open probe
    /// slot back). A fleet-wide limit is asked after this, through [`Permit::fleet_admit`].
    /// `route`: the `[[route]]` the request took (its breaker and metrics), if any.
    pub fn begin(&self, route: Option<usize>) -> Result<Permit<'_>, Refusal> {
        // One clock read for the breaker's decision and the try's start.
        let now = Instant::now();
        let probe = match self.admit(route, now) {
            Admission::Allowed { probe } => probe,
            Admission::ShadowRejected => {
                self.metrics.shadow_breaker.increment(1);
                None
            }
            Admission::Rejected { retry_after } => {
                return Err(Refusal::BreakerOpen { retry_after })
            }
            Admission::Throttled { per_mille, counts } => {
                return Err(Refusal::Throttled {
                    per_mille,
                    requests: counts.requests,
                    accepts: counts.accepts,
                })
            }
        };
        if let Some(limiter) = &self.limiter {
            match limiter.check() {
                LimitDecision::Allowed => {}
                LimitDecision::ShadowRejected => self.metrics.shadow_rate_limit.increment(1),
                LimitDecision::Rejected { retry_after } => {
                    if let Some(episode) = probe {
                        self.abandon(route, episode);
                    }
                    return Err(Refusal::RateLimited { retry_after });
                }
            }
        }
        Ok(Permit {
            destination: self,
            ticket: Ticket {
                probe,
                started: now,
                spent: false,
                route,
            },
        })
    }
}

/// Leave for one try at a destination; see the module docs.
#[derive(Debug)]
#[must_use = "a try is recorded through its permit"]
pub struct Permit<'d> {
    destination: &'d Destination,
    ticket: Ticket,
}

/// A try answered with a gRPC stream whose status is still to come; see the module docs.
#[derive(Debug)]
#[must_use = "a try is recorded through its pending verdict"]
pub struct Pending {
    destination: Arc<Destination>,
    ticket: Ticket,
    /// The time from the try's start to the response head: the latency the breaker judges.
    to_head: Duration,
    /// A half-open probe, already recorded as passed at the head: only a failure is recorded
    /// at the end.
    judged_at_head: bool,
}

/// What recording a try needs, whoever holds it: the breaker's probe episode, the start, and
/// whether it was recorded.
#[derive(Debug)]
struct Ticket {
    probe: Option<Episode>,
    started: Instant,
    spent: bool,
    /// The `[[route]]` the request took: its breaker (when it has its own) and its metrics.
    route: Option<usize>,
}

impl Permit<'_> {
    /// Asks the fleet-wide limit (`scope = "fleet"`), when the destination has one, for a token:
    /// from its lease, or a Redis round trip shared with concurrent requests (§15). Asked once
    /// the breaker and the local limiter let the try through, so that a refused try leases
    /// nothing. Refused, the permit is given back unspent (a probe slot returns to the
    /// breaker, and no try is recorded); admitted, the try starts now.
    pub async fn fleet_admit(mut self) -> Result<Self, Refusal> {
        let destination = self.destination;
        let Some(fleet) = &destination.fleet else {
            return Ok(self);
        };
        match fleet.acquire().await {
            LimitDecision::Allowed => {}
            LimitDecision::ShadowRejected => destination.metrics.shadow_rate_limit.increment(1),
            LimitDecision::Rejected { retry_after } => {
                self.ticket.hand_back(destination);
                self.ticket.spent = true;
                return Err(Refusal::RateLimited { retry_after });
            }
        }
        self.ticket.started = Instant::now();
        Ok(self)
    }

    /// When the try began.
    pub fn started(&self) -> Instant {
        self.ticket.started
    }

    /// Whether this try is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.probe.is_some()
    }

    /// A response head arrived: a failure when its status is in `failure_statuses`.
    pub fn answered(mut self, status: StatusCode) {
        self.ticket.answered(self.destination, status);
    }

    /// A gRPC call's trailers-only answer: a failure when `code` is in `grpc_failure_codes`.
    pub fn answered_grpc(mut self, code: GrpcCode) -> bool {
        self.ticket.grpc_ended(self.destination, code)
    }

    /// The tunnel's connection is open.
    pub fn connected(mut self) {
        let elapsed = self.ticket.spend();
        let route = self.ticket.route;
        let call = CallResult {
            failure: None,
            duration: elapsed,
            probe: self.ticket.probe,
        };
        self.destination.record(route, call);
        let calls = self.destination.calls(route);
        calls.attempt(AttemptResult::Success, elapsed);
    }

    /// The try failed: the breaker hears of it only when the upstream is to blame; otherwise a
    /// probe's slot is handed back, as for an abandoned try.
    pub fn failed(mut self, error: &AttemptError) {
        let elapsed = self.ticket.spend();
        if error.kind == ErrorKind::TlsVerify {
            self.destination
                .notes
                .trust_failed(Instant::now(), &error.cause);
        }
        match error.breaker_failure() {
            Some(kind) => self.ticket.record_failure(self.destination, kind, elapsed),
            None => self.ticket.hand_back(self.destination),
        }
        // A timeout is the upstream saying "too much"; a refused or reset connection says
        // nothing about its latency.
        if matches!(error.kind, ErrorKind::Timeout | ErrorKind::ConnectTimeout) {
            let route = self.ticket.route;
            self.destination
                .observe_latency(route, elapsed, Signal::TimedOut);
        }
        if let Some(result) = error.metric() {
            let calls = self.destination.calls(self.ticket.route);
            calls.attempt(result, elapsed);
        }
    }

    /// The verdict waits for the end of the response stream; `destination` is this permit's.
    ///
    /// Two things are decided at the head already. A half-open probe's verdict: a stream that
    /// started is an upstream that answers, and a long one must not hold the breaker half-open
    /// (every other call `breaker-open`) until it ends, nor come back as a lost probe; a
    /// failing status in its trailers is still recorded, as an ordinary failure. And the
    /// latency the breaker judges slowness by: the time to the head, not the stream's length.
    pub fn pending(mut self, destination: Arc<Destination>) -> Pending {
        debug_assert!(std::ptr::eq(self.destination, &*destination));
        let to_head = self.ticket.started.elapsed();
        let route = self.ticket.route;
        destination.observe_latency(route, to_head, Signal::Served);
        let probe_passed = self.ticket.probe.take().inspect(|&episode| {
            destination.record(
                route,
                CallResult {
                    failure: None,
                    duration: to_head,
                    probe: Some(episode),
                },
            );
        });
        let ticket = Ticket {
            spent: false,
            ..self.ticket
        };
        self.ticket.spent = true;
        Pending {
            destination,
            ticket,
            to_head,
            judged_at_head: probe_passed.is_some(),
        }
    }
}

impl Pending {
    /// The destination the try went to.
    pub fn destination(&self) -> Arc<Destination> {
        Arc::clone(&self.destination)
    }

    /// The stream ended with `code` (its trailers' `grpc-status`); returns whether the policy's
    /// `grpc_failure_codes` count it as a failure.
    pub fn ended(mut self, code: GrpcCode) -> bool {
        let elapsed = self.ticket.spend();
        let (destination, route) = (&self.destination, self.ticket.route);
        let failed = if self.judged_at_head {
            destination.record_grpc_failure(route, code, self.to_head)
        } else {
            destination.record_grpc(route, code, self.to_head, None)
        };
        destination.calls(route).attempt(verdict(failed), elapsed);
        failed
    }

    /// The stream was cut by the upstream (`kind`: a reset, or an idle body): a failure.
    pub fn cut(mut self, kind: FailureKind) {
        let elapsed = self.ticket.spend();
        self.ticket
            .record_failure(&self.destination, kind, self.to_head);
        let calls = self.destination.calls(self.ticket.route);
        calls.attempt(AttemptResult::Failure, elapsed);
    }
}

impl Ticket {
    fn spend(&mut self) -> Duration {
        self.spent = true;
        self.started.elapsed()
    }

    fn answered(&mut self, destination: &Destination, status: StatusCode) {
        let elapsed = self.spend();
        let refused = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let route = self.route;
        destination.observe_latency(route, elapsed, Signal::refused_if(refused));
        let failed = destination.record_status(route, status.as_u16(), elapsed, self.probe);
        destination.calls(route).attempt(verdict(failed), elapsed);
    }

    fn grpc_ended(&mut self, destination: &Destination, code: GrpcCode) -> bool {
        let elapsed = self.spend();
        let refused = matches!(code, GrpcCode::ResourceExhausted | GrpcCode::Unavailable);
        let route = self.route;
        destination.observe_latency(route, elapsed, Signal::refused_if(refused));
        let failed = destination.record_grpc(route, code, elapsed, self.probe);
        destination.calls(route).attempt(verdict(failed), elapsed);
        failed
    }

    fn record_failure(&self, destination: &Destination, kind: FailureKind, elapsed: Duration) {
        destination.record(
            self.route,
            CallResult {
                failure: Some(kind),
                duration: elapsed,
                probe: self.probe,
            },
        );
    }

    fn hand_back(&self, destination: &Destination) {
        if let Some(episode) = self.probe {
            destination.abandon(self.route, episode);
        }
    }

    /// Records an unspent ticket as abandoned (its holder is being dropped).
    fn abandon(&mut self, destination: &Destination) {
        if !self.spent {
            self.hand_back(destination);
            let elapsed = self.spend();
            let calls = destination.calls(self.route);
            calls.attempt(AttemptResult::Abandoned, elapsed);
        }
    }
}

fn verdict(failed: bool) -> AttemptResult {
    if failed {
        AttemptResult::Failure
    } else {
        AttemptResult::Success
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.ticket.abandon(self.destination);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.ticket.abandon(&self.destination);
    }
}
