//! Retry decisions: which `retry.on` condition a failed attempt matches, whether the request
//! may be sent again at all, and when ([`decide`]).
//!
//! Pure functions of the policy, the attempt's result and the time left: no clock is read
//! here. The budget and the backoff schedule are separate pieces ([`super::budget`],
//! [`super::backoff`]); the attempt loop in the proxy asks all of them.

use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use super::grpc::GrpcCode;
use crate::policy::{Retry, RetryOn};

/// How one upstream try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryResult {
    /// A response head arrived with this status.
    Status(StatusCode),
    /// A gRPC call's trailers-only answer (a head with `grpc-status`) other than `ok`.
    Grpc(GrpcCode),
    /// No connection could be opened: the request was not sent.
    ConnectFailed,
    /// The connection was reset or closed before a response head.
    Reset,
    /// No response head within the attempt timeout.
    Timeout,
    /// No connection within `timeouts.connect`: like [`TryResult::ConnectFailed`], nothing
    /// was sent.
    ConnectTimeout,
    /// A response head that could not be read (malformed, too large): never retried, since
    /// the upstream did act on the request.
    BadResponse,
}

/// What the attempt loop knows after one try, for [`decide`].
#[derive(Debug, Clone, Copy)]
pub struct AfterTry {
    pub result: TryResult,
    /// Nothing of the request reached the upstream ([`crate::pipeline::attempt::Sent::Nothing`]),
    /// so sending it again is safe for any method.
    pub sent_nothing: bool,
    /// Tries made so far, this one included.
    pub tries: u32,
    /// The request body can be sent again (empty, or kept because it was small).
    pub replayable: bool,
    /// The method (or an `Idempotency-Key`) says sending the request twice is harmless.
    pub idempotent: bool,
    /// The delay a 429/503 asked for with `Retry-After`, when the policy honours it.
    pub retry_after: Option<Duration>,
    /// What is left of the request's total deadline.
    pub left: Duration,
}

/// The verdict of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the request again after `delay`, under `condition`.
    Retry { delay: Duration, condition: RetryOn },
    /// The try's answer is final.
    GiveUp(GiveUp),
}

/// Why a try is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// No `retry.on` condition matches the result.
    NotRetriable,
    /// `retry.attempts` tries were made.
    AttemptsExhausted,
    /// The body was streamed and cannot be sent again.
    BodyNotReplayable,
    /// Something was sent and the method may not be repeated.
    NotIdempotent,
    /// The delay would end at or after the deadline.
    Deadline,
}

/// Whether to retry after a try, and after how long: `Retry-After` when given, else
/// `backoff()` (called only when a retry is possible, so the schedule advances once per
/// retry). The delay is compared with what is left of the deadline, never added to an
/// instant, so no value from an upstream can overflow.
pub fn decide(policy: &Retry, after: AfterTry, backoff: impl FnOnce() -> Duration) -> Decision {
    let Some(condition) = matching_condition(policy, after.result) else {
        return Decision::GiveUp(GiveUp::NotRetriable);
    };
    if after.tries >= policy.attempts {
        return Decision::GiveUp(GiveUp::AttemptsExhausted);
    }
    if !after.replayable {
        return Decision::GiveUp(GiveUp::BodyNotReplayable);
    }
    // A request that never left fusebox may always be sent again; any other only when the
    // method (or an Idempotency-Key) says doing it twice is harmless, or when a gRPC server
    // answered a status of `grpc_codes` (gRPC's own retry design: the server says it did not
    // carry the call out, and clients retry any method on it).
    let server_says_retry = matches!(after.result, TryResult::Grpc(_));
    if !(after.idempotent || after.sent_nothing || server_says_retry) {
        return Decision::GiveUp(GiveUp::NotIdempotent);
    }
    let delay = after.retry_after.unwrap_or_else(backoff);
    if delay >= after.left {
        return Decision::GiveUp(GiveUp::Deadline);
    }
    Decision::Retry { delay, condition }
}

/// The first condition of `retry.on` that allows retrying `result`, if any.
pub fn matching_condition(policy: &Retry, result: TryResult) -> Option<RetryOn> {
    let allowed = |condition: RetryOn| policy.on.contains(&condition).then_some(condition);
    match result {
        TryResult::ConnectFailed => allowed(RetryOn::ConnectFailure),
        TryResult::ConnectTimeout => {
            allowed(RetryOn::ConnectFailure).or_else(|| allowed(RetryOn::Timeout))
        }
        TryResult::Reset => allowed(RetryOn::Reset),
        TryResult::BadResponse => None,
        TryResult::Timeout => allowed(RetryOn::Timeout),
        TryResult::Grpc(code) => policy
            .grpc_codes
            .contains(&code)
            .then_some(RetryOn::GrpcStatus),
        TryResult::Status(status) => {
            let code = status.as_u16();
            let gateway = matches!(code, 502..=504);
            (if gateway {
                allowed(RetryOn::GatewayError)
            } else {
                None
            })
            .or_else(|| {
                if status.is_server_error() {
                    allowed(RetryOn::FiveXx)
                } else {
                    None
                }
            })
            .or_else(|| {
                if policy.statuses.contains(&code) {
                    allowed(RetryOn::RetriableStatus)
                } else {
                    None
                }
            })
        }
    }
}

/// Whether a request with this method and these headers may be sent more than once:
/// methods listed in `retry.methods`, or any method with an `Idempotency-Key` header.
pub fn may_resend(policy: &Retry, method: &Method, headers: &HeaderMap) -> bool {
    policy.methods.iter().any(|m| m == method.as_str()) || headers.contains_key("idempotency-key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryOn], statuses: &[u16]) -> Retry {
        Retry {
            on: on.to_vec(),
            statuses: statuses.to_vec(),
            ..Retry::default()
        }
    }

    fn after(result: TryResult) -> AfterTry {
        AfterTry {
            result,
            sent_nothing: matches!(result, TryResult::ConnectFailed | TryResult::ConnectTimeout),
            tries: 1,
            replayable: true,
            idempotent: true,
            retry_after: None,
            left: Duration::from_secs(5),
        }
    }

    const BACKOFF: Duration = Duration::from_millis(40);

    #[test]
    fn decide_retries_with_the_backoff_or_the_retry_after() {
        let retry = Retry::default();
        let status = |code| TryResult::Status(StatusCode::from_u16(code).unwrap());
        assert_eq!(
            decide(&retry, after(TryResult::Reset), || BACKOFF),
            Decision::Retry {
                delay: BACKOFF,
                condition: RetryOn::Reset
            }
        );
        let asked = AfterTry {
            retry_after: Some(Duration::from_secs(2)),
            ..after(status(503))
        };
        assert_eq!(
            decide(&retry, asked, || panic!(
                "no backoff when Retry-After is given"
            )),
            Decision::Retry {
                delay: Duration::from_secs(2),
                condition: RetryOn::GatewayError
            }
        );
    }

    #[test]
    fn decide_gives_up_for_each_reason_without_touching_the_backoff() {
        let retry = Retry::default();
        let no_backoff =
            || -> Duration { panic!("the backoff advanced for a retry that cannot be") };
        let cases = [
            (after(TryResult::Timeout), GiveUp::NotRetriable),
            (
                AfterTry {
                    tries: 3,
                    ..after(TryResult::Reset)
                },
                GiveUp::AttemptsExhausted,
            ),
            (
                AfterTry {
                    replayable: false,
                    ..after(TryResult::Reset)
                },
                GiveUp::BodyNotReplayable,
            ),
            (
                AfterTry {
                    idempotent: false,
                    ..after(TryResult::Reset)
                },
                GiveUp::NotIdempotent,
            ),
        ];
        for (state, why) in cases {
            assert_eq!(
                decide(&retry, state, no_backoff),
                Decision::GiveUp(why),
                "{state:?}"
            );
        }
    }

    #[test]
    fn a_grpc_status_in_grpc_codes_is_retried_for_a_post_and_no_other() {
        let retry = Retry::default();
        let post = |code| AfterTry {
            idempotent: false,
            ..after(TryResult::Grpc(code))
        };
        assert_eq!(
            decide(&retry, post(GrpcCode::Unavailable), || BACKOFF),
            Decision::Retry {
                delay: BACKOFF,
                condition: RetryOn::GrpcStatus
            }
        );
        for code in [
            GrpcCode::Internal,
            GrpcCode::NotFound,
            GrpcCode::DeadlineExceeded,
        ] {
            assert_eq!(
                decide(&retry, post(code), || BACKOFF),
                Decision::GiveUp(GiveUp::NotRetriable),
                "{code:?}"
            );
        }
        let off = Retry {
            grpc_codes: Vec::new(),
            ..Retry::default()
        };
        assert_eq!(
            decide(&off, post(GrpcCode::Unavailable), || BACKOFF),
            Decision::GiveUp(GiveUp::NotRetriable)
        );
        let streamed = AfterTry {
            replayable: false,
            ..post(GrpcCode::Unavailable)
        };
        assert_eq!(
            decide(&retry, streamed, || BACKOFF),
            Decision::GiveUp(GiveUp::BodyNotReplayable)
        );
    }

    #[test]
    fn nothing_sent_is_retried_for_any_method_within_the_deadline() {
        let retry = Retry::default();
        for result in [TryResult::ConnectFailed, TryResult::ConnectTimeout] {
            let post = AfterTry {
                idempotent: false,
                ..after(result)
            };
            assert!(matches!(
                decide(&retry, post, || BACKOFF),
                Decision::Retry { .. }
            ));
        }
        // A delay that does not end before the deadline ends retrying, however large it is.
        for (retry_after, left) in [
            (Some(Duration::MAX), Duration::from_secs(5)),
            (Some(Duration::from_secs(5)), Duration::from_secs(5)),
            (None, Duration::from_millis(40)),
            (None, Duration::ZERO),
        ] {
            let late = AfterTry {
                retry_after,
                left,
                ..after(TryResult::ConnectFailed)
            };
            assert_eq!(
                decide(&retry, late, || BACKOFF),
                Decision::GiveUp(GiveUp::Deadline),
                "{late:?}"
            );
        }
    }

    #[test]
    fn conditions_match_their_results() {
        let all = policy(&RetryOn::ALL, &[429]);
        assert_eq!(
            matching_condition(&all, TryResult::ConnectFailed),
            Some(RetryOn::ConnectFailure)
        );
        assert_eq!(
            matching_condition(&all, TryResult::Reset),
            Some(RetryOn::Reset)
        );
        assert_eq!(
            matching_condition(&all, TryResult::Timeout),
            Some(RetryOn::Timeout)
        );
        let status = |code| TryResult::Status(StatusCode::from_u16(code).unwrap());
        assert_eq!(
            matching_condition(&all, status(503)),
            Some(RetryOn::GatewayError)
        );
        assert_eq!(matching_condition(&all, status(500)), Some(RetryOn::FiveXx));
        assert_eq!(
            matching_condition(&all, status(429)),
            Some(RetryOn::RetriableStatus)
        );
        assert_eq!(matching_condition(&all, status(200)), None);
        assert_eq!(matching_condition(&all, status(404)), None);
    }

    #[test]
    fn only_listed_conditions_apply() {
        let defaults = policy(
            &[
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::GatewayError,
            ],
            &[503],
        );
        let status = |code| TryResult::Status(StatusCode::from_u16(code).unwrap());
        assert_eq!(matching_condition(&defaults, TryResult::Timeout), None);
        assert_eq!(matching_condition(&defaults, status(500)), None);
        assert_eq!(
            matching_condition(&defaults, status(502)),
            Some(RetryOn::GatewayError)
        );
        let statuses_only = policy(&[RetryOn::RetriableStatus], &[503]);
        assert_eq!(
            matching_condition(&statuses_only, status(503)),
            Some(RetryOn::RetriableStatus)
        );
        assert_eq!(matching_condition(&statuses_only, status(502)), None);
    }

    #[test]
    fn a_connect_timeout_is_a_connect_failure_first() {
        let connect = policy(&[RetryOn::ConnectFailure], &[]);
        assert_eq!(
            matching_condition(&connect, TryResult::ConnectTimeout),
            Some(RetryOn::ConnectFailure)
        );
        assert_eq!(matching_condition(&connect, TryResult::Timeout), None);
        let timeout = policy(&[RetryOn::Timeout], &[]);
        assert_eq!(
            matching_condition(&timeout, TryResult::ConnectTimeout),
            Some(RetryOn::Timeout)
        );
        let neither = policy(&[RetryOn::Reset], &[]);
        assert_eq!(
            matching_condition(&neither, TryResult::ConnectTimeout),
            None
        );
    }

    #[test]
    fn non_idempotent_methods_need_an_idempotency_key() {
        let retry = Retry::default();
        let mut headers = HeaderMap::new();
        assert!(may_resend(&retry, &Method::GET, &headers));
        assert!(may_resend(&retry, &Method::PUT, &headers));
        assert!(!may_resend(&retry, &Method::POST, &headers));
        assert!(!may_resend(&retry, &Method::PATCH, &headers));
        headers.insert("idempotency-key", "abc".parse().unwrap());
        assert!(may_resend(&retry, &Method::POST, &headers));
    }
}
