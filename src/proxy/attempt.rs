//! The attempt loop (docs/ARCHITECTURE.md §1): one app request, past its policy, guard and
//! concurrency gate, becomes one or more upstream tries. Each try passes the rate limiter and the
//! breaker, runs under the attempt timeout (never past the request's deadline), is classified and
//! recorded in the breaker; the retry decision is taken on the response head, asking the `retry.on`
//! conditions, the method, the body, the backoff or `Retry-After`, the deadline and the retry
//! budget. Only the final answer leaves this module.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::failure::classify_error;
use crate::outcome::Reason;
use crate::pipeline::backoff::{retry_after_delay, Backoff};
use crate::pipeline::breaker::{Admission, CallResult, FailureKind};
use crate::pipeline::limiter::LimitDecision;
use crate::pipeline::retry::{decide, may_resend, AfterTry, Decision, TryResult};
use crate::policy::RetryOn;
use crate::registry::{Destination, Upstream};
use crate::telemetry::AttemptResult;
use crate::upstream::{Client, RequestBody};

/// What fusebox answers itself when the loop ends without an upstream response to pass on.
#[derive(Debug)]
pub struct LocalAnswer {
    pub reason: Reason,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

impl LocalAnswer {
    fn new(reason: Reason, detail: String) -> LocalAnswer {
        LocalAnswer {
            reason,
            detail,
            retry_after: None,
        }
    }
}

/// Asks the limiter and the breaker to let one try through; `Ok(probe)` when they do.
pub fn admit(destination: &Destination) -> Result<bool, LocalAnswer> {
    if let Some(limiter) = &destination.limiter {
        match limiter.check() {
            LimitDecision::Allowed => {}
            LimitDecision::ShadowRejected => destination.metrics.shadow_rate_limit.increment(1),
            LimitDecision::Rejected { retry_after } => {
                return Err(LocalAnswer {
                    reason: Reason::RateLimited,
                    detail: format!("{} is over its rate limit", destination.authority),
                    retry_after: Some(retry_after),
                });
            }
        }
    }
    match destination.admit() {
        Admission::Allowed { probe } => Ok(probe),
        Admission::ShadowRejected => {
            destination.metrics.shadow_breaker.increment(1);
            Ok(false)
        }
        Admission::Rejected {
            retry_after: Some(retry_after),
        } => Err(LocalAnswer {
            reason: Reason::BreakerOpen,
            detail: format!(
                "circuit breaker for {} is open; next probe in {}",
                destination.authority,
                humantime::format_duration(round_to_millis(retry_after))
            ),
            retry_after: Some(retry_after),
        }),
        // A forced breaker never probes: promising a time would be a lie.
        Admission::Rejected { retry_after: None } => Err(LocalAnswer {
            reason: Reason::BreakerOpen,
            detail: format!(
                "circuit breaker for {} is forced open by an operator until it is reset",
                destination.authority
            ),
            retry_after: None,
        }),
    }
}

/// Sends the request, retrying as the policy allows, until an answer is final.
/// `tries` counts the upstream tries made (0 when the request was refused before the first).
pub async fn run(
    upstream: &Upstream,
    client: &Client,
    destination: &Destination,
    parts: Parts,
    body: Incoming,
    jitter: bool,
    tries: &mut u32,
) -> Result<Response<Incoming>, LocalAnswer> {
    let policy = &upstream.policy;
    let retry = &policy.retry;
    let deadline = deadline_after(policy.timeouts.total);
    let body = prepare_body(body, &parts, retry.max_replay_bytes, deadline).await?;
    let replayable = matches!(body, Body::Replayable(_));
    let resendable = replayable && may_resend(retry, &parts.method, &parts.headers);
    destination.budget.deposit();

    let mut parts = Some(parts);
    let mut body = Some(body);
    let mut backoff: Option<Backoff> = None;
    // The condition that allowed the retry about to be made; counted once it is really sent.
    let mut retrying: Option<RetryOn> = None;
    // The answer of the last try, kept while waiting to retry: if the retry cannot be made after
    // all (deadline, limiter, open breaker), the app gets this real answer, not a local one.
    let mut previous: Option<Result<Response<Incoming>, LocalAnswer>> = None;
    loop {
        // The deadline first: a try that cannot be made must not take a limiter token or a
        // half-open probe slot (an admitted probe that is never recorded holds its slot until
        // the breaker's lost-probe lease, `open_max`, runs out).
        let Some(remaining) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return previous
                .unwrap_or_else(|| Err(total_timeout(destination, policy.timeouts.total)));
        };
        let probe = match admit(destination) {
            Ok(probe) => probe,
            Err(refused) => return previous.unwrap_or(Err(refused)),
        };
        drop(previous.take());
        if let Some(condition) = retrying.take() {
            destination.metrics.retry(condition);
        }
        let limit = policy.timeouts.attempt.min(remaining);
        // The last possible try takes the request itself; earlier ones send copies.
        let last_possible = *tries + 1 >= retry.attempts || !replayable;
        let (request_parts, request_body) = match (last_possible, parts.take(), body.take()) {
            (_, Some(p), Some(Body::Streaming(incoming))) => (p, RequestBody::Streaming(incoming)),
            (true, Some(p), Some(Body::Replayable(bytes))) => (p, RequestBody::Full(bytes)),
            (false, Some(p), Some(Body::Replayable(bytes))) => {
                let copy = copy_parts(&p);
                parts = Some(p);
                body = Some(Body::Replayable(bytes.clone()));
                (copy, RequestBody::Full(bytes))
            }
            _ => unreachable!("the loop ends once the request has been sent for good"),
        };
        let request = Request::from_parts(request_parts, request_body);

        *tries += 1;
        let mut probe_guard = ProbeGuard::new(destination, probe);
        let started = Instant::now();
        let result = tokio::time::timeout(limit, client.request(request)).await;
        let elapsed = started.elapsed();
        probe_guard.disarm();

        let (try_result, ending) = match result {
            Ok(Ok(response)) => {
                let status = response.status();
                let failed = policy.breaker.failure_statuses.contains(&status.as_u16());
                destination.record(CallResult {
                    failure: failed.then_some(FailureKind::Status(status.as_u16())),
                    duration: elapsed,
                    probe,
                });
                let result = if failed {
                    AttemptResult::Failure
                } else {
                    AttemptResult::Success
                };
                destination.metrics.attempt(result, elapsed);
                (TryResult::Status(status), Ok(response))
            }
            Ok(Err(error)) => {
                let (reason, attempt, detail) = classify_error(&error, &destination.authority);
                let Some(attempt) = attempt else {
                    // fusebox refused to connect (guard, loop) or the app's body broke off: not
                    // the upstream's failure, so nothing is recorded (a probe slot left open is
                    // reclaimed by the breaker).
                    return Err(LocalAnswer::new(reason, detail));
                };
                let (kind, try_result) = match attempt {
                    // A connector error that is a timeout: the connection never opened.
                    AttemptResult::Timeout if error.is_connect() => {
                        (FailureKind::Timeout, TryResult::ConnectTimeout)
                    }
                    AttemptResult::Timeout => (FailureKind::Timeout, TryResult::Timeout),
                    AttemptResult::Reset => (FailureKind::Reset, TryResult::Reset),
                    // `classify_error` reports a failed try only for an unreadable head.
                    AttemptResult::Failure => (FailureKind::BadResponse, TryResult::BadResponse),
                    _ => (FailureKind::ConnectFailed, TryResult::ConnectFailed),
                };
                destination.record(CallResult {
                    failure: Some(kind),
                    duration: elapsed,
                    probe,
                });
                destination.metrics.attempt(attempt, elapsed);
                (try_result, Err(LocalAnswer::new(reason, detail)))
            }
            Err(_) => {
                destination.record(CallResult {
                    failure: Some(FailureKind::Timeout),
                    duration: elapsed,
                    probe,
                });
                destination.metrics.attempt(AttemptResult::Timeout, elapsed);
                let detail = format!(
                    "no response head from {} within {}",
                    destination.authority,
                    humantime::format_duration(limit)
                );
                (
                    TryResult::Timeout,
                    Err(LocalAnswer::new(Reason::Timeout, detail)),
                )
            }
        };

        // The retry decision, on the response head.
        let after = AfterTry {
            result: try_result,
            tries: *tries,
            replayable: body.is_some(),
            idempotent: resendable,
            retry_after: retry_after(retry.honor_retry_after, &ending),
            left: deadline.saturating_duration_since(Instant::now()),
        };
        let backoff = || {
            backoff
                .get_or_insert_with(|| Backoff::new(retry, jitter))
                .delay()
        };
        let (delay, condition) = match decide(retry, after, backoff) {
            Decision::Retry { delay, condition } => (delay, condition),
            Decision::GiveUp(_) => return ending,
        };
        if !destination.budget.try_withdraw() {
            destination.metrics.retry_budget_exhausted.increment(1);
            return ending;
        }
        retrying = Some(condition);
        previous = Some(ending);
        tokio::time::sleep(delay).await;
    }
}

/// `now + total`, or a year from now for a `total` too large to add (never a panic).
fn deadline_after(total: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(total)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// The delay a 429 or 503 asks for with `Retry-After`, when the policy honours it.
fn retry_after(honor: bool, ending: &Result<Response<Incoming>, LocalAnswer>) -> Option<Duration> {
    let response = ending.as_ref().ok().filter(|_| honor)?;
    if !matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    retry_after_delay(
        response.headers().get(header::RETRY_AFTER)?,
        SystemTime::now(),
    )
}

fn total_timeout(destination: &Destination, total: Duration) -> LocalAnswer {
    LocalAnswer::new(
        Reason::Timeout,
        format!(
            "no response from {} within the total timeout of {}",
            destination.authority,
            humantime::format_duration(total)
        ),
    )
}

/// The request body, kept in memory when it may have to be sent again.
enum Body {
    /// Complete and at most `max_replay_bytes`: can be sent on every try.
    Replayable(Option<Bytes>),
    /// Larger, or of unknown length: sent once, as it streams.
    Streaming(Incoming),
}

async fn prepare_body(
    body: Incoming,
    parts: &Parts,
    max_replay: u64,
    deadline: Instant,
) -> Result<Body, LocalAnswer> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(Body::Replayable(None));
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) if length <= max_replay => {
            let collected = tokio::time::timeout_at(deadline, body.collect()).await;
            match collected {
                Ok(Ok(collected)) => Ok(Body::Replayable(Some(collected.to_bytes()))),
                Ok(Err(error)) => Err(LocalAnswer::new(
                    Reason::BadRequest,
                    format!("reading the request body failed: {error}"),
                )),
                Err(_) => Err(LocalAnswer::new(
                    Reason::Timeout,
                    "the app did not send its request body within the total timeout".to_owned(),
                )),
            }
        }
        _ => Ok(Body::Streaming(body)),
    }
}

/// `http::request::Parts` is not `Clone`; a try needs method, URI, version and headers.
fn copy_parts(parts: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A half-open probe whose try is abandoned (the app went away mid-try) must still be
/// answered, or the breaker would wait for it. It is recorded as a reset: the upstream did not
/// prove itself healthy.
/// Used by every kind of try: forwarded requests and CONNECT tunnels.
pub(super) struct ProbeGuard<'a> {
    destination: &'a Destination,
    armed: bool,
}

impl<'a> ProbeGuard<'a> {
    /// Armed when the try is a probe; [`ProbeGuard::disarm`] once its result is recorded.
    pub(super) fn new(destination: &'a Destination, probe: bool) -> Self {
        ProbeGuard {
            destination,
            armed: probe,
        }
    }

    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.destination.record(CallResult {
                failure: Some(FailureKind::Reset),
                duration: Duration::ZERO,
                probe: true,
            });
        }
    }
}
