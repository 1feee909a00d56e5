//! The attempt loop (docs/ARCHITECTURE.md §1.1): one app request, past its policy, guard and
//! concurrency gate, becomes one or more upstream tries. Each try takes a
//! [`Permit`](crate::registry::Permit) from its destination (rate limiter, breaker), runs under
//! the attempt timeout (never past the request's deadline), and is recorded through the permit
//! as an answer or an [`AttemptError`]. The retry planner ([`decide`]) then looks at the result,
//! the method, the body, the backoff or `Retry-After` and the deadline, and the retry budget has
//! the last word. Only the final answer leaves this module.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::request::Parts;
use http::{header, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::hedge::{race, Raced, TryCount};
pub use super::plan::Plan;
use super::resend::{prepare_body, Resend};
use super::sending::{admit, Sending};
use crate::outcome::Reason;
use crate::pipeline::attempt::Sent;
use crate::pipeline::backoff::{retry_after_delay, Backoff};
use crate::pipeline::grpc::{self, GrpcCode};
use crate::pipeline::hedge::Hedging;
use crate::pipeline::retry::{decide, may_resend, AfterTry, Decision, TryResult};
use crate::policy::{Retry, RetryOn, Timeouts};
use crate::registry::{Destination, Permit, Upstream};
use crate::upstream::UpstreamBody;

pub use super::local_answer::LocalAnswer;
use super::one_try::{verdict_of, Ended, TryLimit, Verdict, Whole};
pub use super::one_try::{Answer, Path};

/// Sends the request, retrying as the policy allows, until an answer is final.
/// `tries` counts the upstream tries made (0 when the request was refused before the first).
/// `plan`: the timeouts and retry of the request's route (or policy), and the route.
pub async fn run(
    upstream: &Upstream,
    path: Path,
    destination: &Arc<Destination>,
    (parts, body): (Parts, Incoming),
    plan: Plan<'_>,
    jitter: bool,
    tries: &mut u32,
) -> Result<Answer, LocalAnswer> {
    let grpc = grpc::is_grpc(&parts.headers);
    let bounds = Bounds::of(plan.timeouts, &parts, grpc);
    let (deadline, whole) = (bounds.deadline, bounds.whole);
    let (max_replay, idle) = (plan.retry.max_replay_bytes, plan.timeouts.idle);
    let body = prepare_body(body, &parts, max_replay, deadline, idle).await?;
    let mut retrying = Retrying::new(plan.retry, &parts, jitter, grpc);
    let mut sending = Sending {
        upstream,
        path,
        destination,
        grpc,
        request: Resend::new(parts, body, max_replay, idle),
        tried: 0,
        plan,
    };
    destination.budget.deposit();
    let hedging = hedging(destination, plan.route, &retrying, &sending.request);
    let hedged = hedging.map(|hedging| Hedged {
        hedging,
        plan,
        bounds,
    });
    // The answer of the last try, kept while waiting to retry: if the retry cannot be made after
    // all (deadline, limiter, open breaker), the app gets this real answer, not a local one.
    let mut previous: Option<Ended> = None;
    loop {
        // The deadline first: a try that cannot be made must not take a limiter token or a
        // half-open probe slot.
        let Some(remaining) = time_left(deadline) else {
            return final_answer(previous, || total_timeout(destination, whole));
        };
        if grpc {
            // A retry tells the upstream what is left of the app's deadline, not the original.
            sending.request.set_grpc_timeout(remaining);
        }
        let last = *tries + 1 >= plan.retry.attempts;
        let permit = match admit(destination, plan.route).await {
            Ok(permit) => permit,
            Err(refusal) => {
                let refused = || LocalAnswer::refused(refusal, &destination.authority);
                return final_answer(previous, refused);
            }
        };
        drop(previous.take());
        retrying.count_sent(destination);
        *tries += 1;
        let limit = bounds.limit(remaining, plan.timeouts.attempt);
        let ended = match &hedged {
            // Boxed: a race's state would otherwise enlarge every request's future.
            Some(hedged) => Box::pin(hedged.run(&mut sending, permit, limit, tries)).await?,
            None => sending.one(permit, limit, last).await?,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let replayable = sending.request.replayable();
        match retrying.delay(destination, &ended, *tries, replayable, left) {
            Some(delay) => {
                previous = Some(ended);
                tokio::time::sleep(delay).await;
            }
            None => return ended.map_err(LocalAnswer::failed),
        }
    }
}

/// The hedging (§18) of the request's route or destination when this request may be hedged:
/// sent more than once (an idempotent method or an `Idempotency-Key`), its body kept whole or
/// recorded (not one that streams once), no protocol upgrade. Every request earns the hedge
/// budget its share.
fn hedging<'d>(
    destination: &'d Destination,
    route: Option<usize>,
    retrying: &Retrying<'_>,
    request: &Resend,
) -> Option<&'d Hedging> {
    let hedging = destination.hedging(route)?;
    hedging.deposit(Instant::now());
    let upgrading = request
        .head()
        .is_some_and(|h| h.headers.contains_key(header::UPGRADE));
    (retrying.resendable && request.may_race() && !upgrading).then_some(hedging)
}

/// A hedged request's tries: copies raced under the policy (§18).
struct Hedged<'r> {
    hedging: &'r Hedging,
    plan: Plan<'r>,
    bounds: Bounds,
}

impl Hedged<'_> {
    /// Races copies of the request from a first one under `permit` and `limit`; the copies
    /// count in `tries`. The answer says which copy it came from.
    async fn run<'a>(
        &self,
        sending: &mut Sending<'a>,
        permit: Permit<'a>,
        limit: TryLimit,
        tries: &mut u32,
    ) -> Result<Ended, LocalAnswer> {
        let (plan, bounds) = (self.plan, self.bounds);
        let count = TryCount {
            made: tries,
            max: plan.retry.attempts,
        };
        let limit_now = || bounds.limit_now(plan.timeouts.attempt);
        let retry = plan.retry;
        let raced = race(
            sending,
            self.hedging,
            retry,
            permit,
            limit,
            count,
            limit_now,
        )
        .await?;
        let Raced { mut ended, copy } = raced;
        if let Ok(answer) = &mut ended {
            answer.copy = copy;
        }
        Ok(ended)
    }
}

/// The request's time: its deadline, and what set it.
#[derive(Clone, Copy)]
struct Bounds {
    deadline: Instant,
    whole: Whole,
}

impl Bounds {
    /// The request's deadline: `timeouts.total`, or a gRPC app's own deadline when shorter
    /// (it then caps every attempt too).
    fn of(timeouts: &Timeouts, parts: &Parts, grpc: bool) -> Bounds {
        let app_deadline = grpc.then(|| grpc::timeout(&parts.headers)).flatten();
        let configured = timeouts.total;
        let total = app_deadline.map_or(configured, |t| t.min(configured));
        Bounds {
            deadline: deadline_after(total),
            whole: Whole {
                total,
                from_app: app_deadline.is_some_and(|t| t == total),
            },
        }
    }

    /// A try's limit with `remaining` of the request's time: the attempt timeout, or what is
    /// left of the whole when that is less.
    fn limit(self, remaining: Duration, attempt: Duration) -> TryLimit {
        if remaining < attempt {
            TryLimit::Deadline(remaining, self.whole)
        } else {
            TryLimit::Attempt(attempt)
        }
    }

    /// The limit of a try starting now and what is left of the request's time; `None` once
    /// the deadline passed.
    fn limit_now(self, attempt: Duration) -> Option<(TryLimit, Duration)> {
        time_left(self.deadline).map(|remaining| (self.limit(remaining, attempt), remaining))
    }
}

/// The last try's ending when there was one, else the local answer `otherwise` makes.
fn final_answer(
    previous: Option<Ended>,
    otherwise: impl FnOnce() -> LocalAnswer,
) -> Result<Answer, LocalAnswer> {
    match previous {
        Some(ended) => ended.map_err(LocalAnswer::failed),
        None => Err(otherwise()),
    }
}

/// What is left until `deadline`; `None` once nothing is.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// The retry side of the loop: the policy, the backoff schedule, and the condition of the
/// retry about to be made (counted once it is really sent).
struct Retrying<'p> {
    retry: &'p Retry,
    jitter: bool,
    /// The request is a gRPC call: a trailers-only `grpc-status` is its result.
    grpc: bool,
    /// The method (or an `Idempotency-Key`) allows sending the request more than once.
    resendable: bool,
    backoff: Option<Backoff>,
    condition: Option<RetryOn>,
}

impl<'p> Retrying<'p> {
    fn new(retry: &'p Retry, parts: &Parts, jitter: bool, grpc: bool) -> Self {
        Retrying {
            retry,
            jitter,
            grpc,
            resendable: may_resend(retry, &parts.method, &parts.headers),
            backoff: None,
            condition: None,
        }
    }

    /// Counts the retry that is being sent, if this try is one.
    fn count_sent(&mut self, destination: &Destination) {
        if let Some(condition) = self.condition.take() {
            destination.metrics.retry(condition);
        }
    }

    /// What a response head means for retrying: a gRPC status other than `ok` in a
    /// trailers-only answer, else the HTTP status.
    fn try_result(&self, response: &Response<UpstreamBody>) -> TryResult {
        match verdict_of(response, self.grpc) {
            Verdict::Grpc(code) if code != GrpcCode::Ok => TryResult::Grpc(code),
            _ => TryResult::Status(response.status()),
        }
    }

    /// How long to wait before retrying after `ended`; `None`: the answer is final.
    fn delay(
        &mut self,
        destination: &Destination,
        ended: &Ended,
        tries: u32,
        replayable: bool,
        left: Duration,
    ) -> Option<Duration> {
        let (result, sent_nothing) = match ended {
            Ok(answer) => (self.try_result(&answer.response), false),
            Err(error) => (error.retry_as()?, error.sent == Sent::Nothing),
        };
        let after = AfterTry {
            result,
            sent_nothing,
            tries,
            replayable,
            idempotent: self.resendable,
            retry_after: retry_after(self.retry.honor_retry_after, ended),
            left,
        };
        let (retry, jitter, backoff) = (self.retry, self.jitter, &mut self.backoff);
        let next_backoff = || {
            backoff
                .get_or_insert_with(|| Backoff::new(retry, jitter))
                .delay()
        };
        let Decision::Retry { delay, condition } = decide(retry, after, next_backoff) else {
            return None;
        };
        if !destination.budget.try_withdraw() {
            destination.metrics.retry_budget_exhausted.increment(1);
            return None;
        }
        self.condition = Some(condition);
        Some(delay)
    }
}

/// `now + total`, or a year from now for a `total` too large to add (never a panic).
pub(super) fn deadline_after(total: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(total)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// The delay a 429 or 503 asks for with `Retry-After`, when the policy honours it.
fn retry_after(honor: bool, ended: &Ended) -> Option<Duration> {
    let response = &ended.as_ref().ok().filter(|_| honor)?.response;
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

fn total_timeout(destination: &Destination, whole: Whole) -> LocalAnswer {
    LocalAnswer::local(
        Reason::Timeout,
        format!(
            "no response from {} within {}",
            destination.authority,
            whole.describe()
        ),
    )
}
