//! Retry decisions: which `retry.on` condition a failed attempt matches, and whether the
//! request may be sent again at all.
//!
//! Pure functions of the policy and the attempt's result. The budget, the backoff and the
//! deadline are separate pieces ([`super::budget`], [`super::backoff`]); the attempt loop in
//! the proxy asks all of them.

use http::{HeaderMap, Method, StatusCode};

use crate::policy::{Retry, RetryOn};

/// How one upstream try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryResult {
    /// A response head arrived with this status.
    Status(StatusCode),
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

impl TryResult {
    /// Nothing of the request reached the upstream, so sending it again is safe for any
    /// method.
    pub fn sent_nothing(self) -> bool {
        matches!(self, TryResult::ConnectFailed | TryResult::ConnectTimeout)
    }
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
    fn a_connect_timeout_sent_nothing_and_is_a_connect_failure_first() {
        assert!(
            TryResult::ConnectTimeout.sent_nothing() && TryResult::ConnectFailed.sent_nothing()
        );
        assert!(!TryResult::Timeout.sent_nothing() && !TryResult::Reset.sent_nothing());
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
