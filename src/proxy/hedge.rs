//! The hedged race (docs/ARCHITECTURE.md §18): a try that has no response head after the
//! destination's hedge delay gets a copy beside it, to another endpoint (or, with one, on
//! another connection), paid from the hedge budget and admitted like any try (breaker,
//! limiter). The first copy whose answer is final wins; the others are dropped, which closes
//! their connections (never reused) and records their permits as `abandoned`: never a breaker
//! failure, never an endpoint's failure.
//!
//! A body of unknown length (every gRPC call's) is recorded by the first copy; a hedge waits
//! until it went through whole, within `max_replay_bytes`.
//!
//! A copy that failed (no answer, or a 5xx) while another still runs does not end the race: the
//! other may still answer. A gRPC status in `[retry] grpc_codes` sends the next copy at once
//! (gRFC A6). A hedge the budget refuses is asked for again after each further delay while
//! the request waits: a request stuck for long gets its copy as soon as the budget has one,
//! one that was only a little late does not take it. Copies and retries together never exceed
//! `retry.attempts`; copies at once never `hedge.max_attempts`.

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::local_answer::LocalAnswer;
use super::one_try::{verdict_of, Ended, TryLimit, Verdict};
use super::sending::{admit, Copy, Sending};
use crate::pipeline::hedge::Hedging;
use crate::policy::Retry;
use crate::telemetry::HedgeResult;

/// How many tries a request has made and may make.
pub(super) struct TryCount<'t> {
    pub(super) made: &'t mut u32,
    pub(super) max: u32,
}

/// The race's ending, and which copy it came from (1 = the first) when hedges were sent.
pub(super) struct Raced {
    pub(super) ended: Ended,
    pub(super) copy: Option<u32>,
}

/// What one copy's ending means for the race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    /// An answer to give the app: the race is won.
    Final,
    /// No answer, or a 5xx: another copy may do better.
    Failed,
    /// A gRPC status the policy retries: the next copy goes at once.
    HedgeNow,
}

/// Races copies of the request, the first under `permit` and `limit`; `limit_now` gives the
/// limit of a copy starting now and what is left of the request's time (`None` once its
/// deadline passed).
pub(super) async fn race<'a>(
    sending: &mut Sending<'a>,
    hedging: &Hedging,
    retry: &Retry,
    permit: crate::registry::Permit<'a>,
    limit: TryLimit,
    tries: TryCount<'_>,
    limit_now: impl Fn() -> Option<(TryLimit, Duration)>,
) -> Result<Raced, LocalAnswer> {
    let first = sending.copy(permit, limit, true).await?;
    let Some(delay) = hedging.delay() else {
        let (ended, tried) = first.await;
        sending.tried |= tried;
        return Ok(Raced { ended, copy: None });
    };
    let mut race = Race {
        running: vec![(0, first)],
        launched: 1,
        max_copies: hedging.config().max_attempts,
        fallback: None,
        refused: false,
        tries,
    };
    let mut due = Some(Instant::now() + delay);
    loop {
        match race.next(due).await {
            Event::Ended(index, ended, tried) => {
                let ended = *ended;
                sending.tried |= tried;
                let meaning = meaning(&ended, retry, sending.grpc);
                if meaning == Meaning::Final {
                    return Ok(race.won(sending, index, ended));
                }
                race.fallback = Some((index, ended));
                if meaning == Meaning::HedgeNow && race.may_hedge() {
                    due = Some(Instant::now());
                } else if race.running.is_empty() {
                    // Nothing left to wait for: the retry loop decides what comes next.
                    return race.lost(sending);
                }
            }
            Event::Due => {
                let again = race.hedge(sending, hedging, &limit_now).await;
                if race.running.is_empty() {
                    return race.lost(sending);
                }
                due = again.map(|()| Instant::now() + delay);
            }
        }
    }
}

/// The copies of one request.
struct Race<'a, 't> {
    /// Running copies and their index (0 = the first).
    running: Vec<(u32, Copy<'a>)>,
    launched: u32,
    max_copies: u32,
    /// The latest copy that failed, answered if no copy wins.
    fallback: Option<(u32, Ended)>,
    /// The budget refused a hedge (counted once per request).
    refused: bool,
    tries: TryCount<'t>,
}

enum Event {
    /// Boxed: an ending is large, and a race is rare.
    Ended(u32, Box<Ended>, u64),
    Due,
}

impl<'a> Race<'a, '_> {
    /// The next copy to end, or the hedge coming due.
    async fn next(&mut self, due: Option<Instant>) -> Event {
        let mut timer = due.map(|at| Box::pin(sleep_until(at)));
        poll_fn(|cx| {
            for i in 0..self.running.len() {
                if let Poll::Ready((ended, tried)) = self.running[i].1.as_mut().poll(cx) {
                    let (index, _) = self.running.swap_remove(i);
                    return Poll::Ready(Event::Ended(index, Box::new(ended), tried));
                }
            }
            match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Event::Due),
                _ => Poll::Pending,
            }
        })
        .await
    }

    fn may_hedge(&self) -> bool {
        self.launched < self.max_copies && *self.tries.made < self.tries.max
    }

    /// Sends a hedge if allowed and paid for. `Some(())`: ask again after the next delay (a
    /// hedge was sent, or the budget had none yet); `None`: no more hedges for this request.
    async fn hedge(
        &mut self,
        sending: &mut Sending<'a>,
        hedging: &Hedging,
        limit_now: &impl Fn() -> Option<(TryLimit, Duration)>,
    ) -> Option<()> {
        if !self.may_hedge() {
            return None;
        }
        let (limit, remaining) = limit_now()?;
        let destination = sending.destination;
        if !sending.request.copyable() {
            // A body of unknown length still going through its first copy: not yet.
            return Some(());
        }
        if !hedging.try_pay(Instant::now()) {
            if !self.refused {
                self.refused = true;
                destination.metrics.hedge(HedgeResult::Budget);
            }
            return Some(());
        }
        // A hedge is a try like any: the breaker and the limiter have their say.
        let permit = admit(destination, sending.plan.route).await.ok()?;
        if sending.grpc {
            // A copy tells the upstream what is left of the app's deadline.
            sending.request.set_grpc_timeout(remaining);
        }
        let copy = sending.copy(permit, limit, false).await.ok()?;
        *self.tries.made += 1;
        destination.metrics.hedge(HedgeResult::Sent);
        self.running.push((self.launched, copy));
        self.launched += 1;
        Some(())
    }

    /// Copy `index` won: the others are dropped (cancelled).
    fn won(self, sending: &Sending<'_>, index: u32, ended: Ended) -> Raced {
        let metrics = &sending.destination.metrics;
        let hedges = self.launched - 1;
        if index > 0 {
            metrics.hedge(HedgeResult::Won);
        }
        for _ in 0..hedges - u32::from(index > 0) {
            metrics.hedge(HedgeResult::Lost);
        }
        Raced {
            ended,
            copy: (hedges > 0).then_some(index + 1),
        }
    }

    /// No copy won: the last failure is the race's ending.
    fn lost(mut self, sending: &Sending<'_>) -> Result<Raced, LocalAnswer> {
        for _ in 1..self.launched {
            sending.destination.metrics.hedge(HedgeResult::Lost);
        }
        // A race ends only after a copy ended: never `None`.
        let Some((index, ended)) = self.fallback.take() else {
            let detail = "a hedged race ended with no copy".to_owned();
            return Err(LocalAnswer::local(crate::outcome::Reason::Internal, detail));
        };
        Ok(Raced {
            ended,
            copy: (self.launched > 1).then_some(index + 1),
        })
    }
}

fn meaning(ended: &Ended, retry: &Retry, grpc: bool) -> Meaning {
    let Ok(answer) = ended else {
        return Meaning::Failed;
    };
    match verdict_of(&answer.response, grpc) {
        Verdict::Grpc(code) if retry.grpc_codes.contains(&code) => Meaning::HedgeNow,
        _ if answer.response.status().is_server_error() => Meaning::Failed,
        _ => Meaning::Final,
    }
}
