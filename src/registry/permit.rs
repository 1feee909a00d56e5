//! One try's admission (docs/ARCHITECTURE.md §1.1): [`Destination::begin`] asks the rate limiter
//! and the breaker, and answers a [`Permit`] or a [`Refusal`]. The permit is the only way to
//! record a try, and it is spent by recording it: [`Permit::answered`] (a response head),
//! [`Permit::connected`] (a tunnel), [`Permit::failed`] (an [`AttemptError`]). A permit dropped
//! without one of them (the app went away mid-try) records "abandoned": its half-open probe
//! slot goes back to the breaker with no verdict on the upstream, so no caller can wedge a
//! breaker by forgetting to record.
//!
//! The concurrency gate is not part of the permit: its slot belongs to the request
//! ([`super::InFlight`]), which outlives a try (it is held across retries and backoff sleeps,
//! and while the response body streams).

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::Destination;
use crate::pipeline::attempt::{AttemptError, Refusal};
use crate::pipeline::breaker::{Admission, CallResult, Episode};
use crate::pipeline::limiter::LimitDecision;
use crate::telemetry::AttemptResult;

impl Destination {
    /// Asks the limiter, then the breaker, to let one try through now.
    pub fn begin(&self) -> Result<Permit<'_>, Refusal> {
        if let Some(limiter) = &self.limiter {
            match limiter.check() {
                LimitDecision::Allowed => {}
                LimitDecision::ShadowRejected => self.metrics.shadow_rate_limit.increment(1),
                LimitDecision::Rejected { retry_after } => {
                    return Err(Refusal::RateLimited { retry_after })
                }
            }
        }
        let probe = match self.admit() {
            Admission::Allowed { probe } => probe,
            Admission::ShadowRejected => {
                self.metrics.shadow_breaker.increment(1);
                None
            }
            Admission::Rejected { retry_after } => {
                return Err(Refusal::BreakerOpen { retry_after })
            }
        };
        Ok(Permit {
            destination: self,
            probe,
            started: Instant::now(),
            spent: false,
        })
    }
}

/// Leave for one try at a destination; see the module docs.
#[derive(Debug)]
#[must_use = "a try is recorded through its permit"]
pub struct Permit<'d> {
    destination: &'d Destination,
    probe: Option<Episode>,
    started: Instant,
    spent: bool,
}

impl Permit<'_> {
    /// Whether this try is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// A response head arrived: a failure when its status is in `failure_statuses`.
    pub fn answered(mut self, status: StatusCode) {
        let elapsed = self.spend();
        let failed = self
            .destination
            .record_status(status.as_u16(), elapsed, self.probe);
        let result = if failed {
            AttemptResult::Failure
        } else {
            AttemptResult::Success
        };
        self.destination.metrics.attempt(result, elapsed);
    }

    /// The tunnel's connection is open.
    pub fn connected(mut self) {
        let elapsed = self.spend();
        self.destination.record(CallResult {
            failure: None,
            duration: elapsed,
            probe: self.probe,
        });
        self.destination
            .metrics
            .attempt(AttemptResult::Success, elapsed);
    }

    /// The try failed: the breaker hears of it only when the upstream is to blame; otherwise a
    /// probe's slot is handed back, as for an abandoned try.
    pub fn failed(mut self, error: &AttemptError) {
        let elapsed = self.spend();
        match error.breaker_failure() {
            Some(kind) => self.destination.record(CallResult {
                failure: Some(kind),
                duration: elapsed,
                probe: self.probe,
            }),
            None => self.hand_back(),
        }
        if let Some(result) = error.metric() {
            self.destination.metrics.attempt(result, elapsed);
        }
    }

    fn spend(&mut self) -> Duration {
        self.spent = true;
        self.started.elapsed()
    }

    fn hand_back(&self) {
        if let Some(episode) = self.probe {
            self.destination.abandon(episode);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.hand_back();
            let elapsed = self.started.elapsed();
            self.destination
                .metrics
                .attempt(AttemptResult::Abandoned, elapsed);
        }
    }
}
