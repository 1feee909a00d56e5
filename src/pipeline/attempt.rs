//! One upstream try as values (docs/ARCHITECTURE.md §1.1): why a try was not let through
//! ([`Refusal`]), and how a try that went ahead failed ([`AttemptError`]: what failed, whose
//! fault it is, whether anything was sent, and the cause in words).
//!
//! Everything a failure means is decided here, once: whether it counts against the upstream's
//! breaker ([`AttemptError::breaker_failure`]), which retry condition it can match
//! ([`AttemptError::retry_as`]), the local reply the app gets ([`AttemptError::reason`]) and the
//! `fusebox_attempts_total` label ([`AttemptError::metric`]). Only an upstream's fault ever
//! reaches its breaker: a guard refusal, a loop or an app's broken body never trips it.

use std::time::Duration;

use crate::outcome::Reason;
use crate::pipeline::breaker::FailureKind;
use crate::pipeline::retry::TryResult;
use crate::telemetry::AttemptResult;

/// Whose fault a failed try is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The upstream (or the network to it) failed: counted by its breaker.
    Upstream,
    /// The app sent something that cannot be forwarded, or asked for fusebox itself.
    App,
    /// fusebox itself failed.
    Fusebox,
    /// A policy refused the try (the guard's address rules).
    Policy,
}

impl Blame {
    pub fn label(self) -> &'static str {
        match self {
            Blame::Upstream => "upstream",
            Blame::App => "app",
            Blame::Fusebox => "fusebox",
            Blame::Policy => "policy",
        }
    }
}

/// How much of the request may have reached the upstream when the try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// No connection was used: sending the request again is safe for any method.
    Nothing,
    /// A connection was used: the head may have arrived, the body perhaps not all of it.
    Head,
    /// The whole request may have arrived (it has no body).
    Body,
}

impl Sent {
    pub fn label(self) -> &'static str {
        match self {
            Sent::Nothing => "nothing",
            Sent::Head => "head",
            Sent::Body => "body",
        }
    }

    /// What a try that used a connection may have sent of a request with or without a body.
    pub fn on_connection(has_body: bool) -> Sent {
        if has_body {
            Sent::Head
        } else {
            Sent::Body
        }
    }
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection: refused, unreachable, unresolvable, or a failed TLS handshake.
    Connect,
    /// The upstream's certificate did not verify against the policy's roots (unknown issuer,
    /// wrong name, expired): a trust problem, the policy's (`ca_file`, `sni`), not a sick
    /// upstream. Never retried (it would fail the same way), never a breaker failure.
    TlsVerify,
    /// The upstream refused fusebox's client certificate (or its absence) with a certificate
    /// alert in the handshake: a trust problem between the policy's `client_cert` and the
    /// upstream, like [`ErrorKind::TlsVerify`]: never retried, never a breaker failure; the
    /// app gets `502 connect-failed` naming the alert.
    ClientCertRefused,
    /// No connection within `timeouts.connect`.
    ConnectTimeout,
    /// The connection was closed or reset before a response head.
    Reset,
    /// No response head within the attempt timeout.
    Timeout,
    /// A response head fusebox cannot forward: malformed or too large.
    BadResponse,
    /// The guard refused every address the host resolved to.
    Denied,
    /// The destination is one of fusebox's own listeners.
    Loop,
    /// The app's request body was malformed or broke off.
    AppBody,
    /// The app's streamed request body delivered nothing for `timeouts.idle`, or had not been
    /// sent whole when the try's time ran out while the upstream waited for it (`408`).
    AppStalled,
    /// The request names no host to connect to.
    MissingHost,
    /// Every endpoint of the destination is ejected (or resting after a `Retry-After`):
    /// nothing was sent. The upstream's failure, recorded by the destination's breaker, so
    /// that a destination with no endpoint left trips it; not retried (none would take it).
    NoEndpoint,
}

impl ErrorKind {
    pub fn blame(self) -> Blame {
        match self {
            ErrorKind::Connect
            | ErrorKind::ConnectTimeout
            | ErrorKind::Reset
            | ErrorKind::Timeout
            | ErrorKind::BadResponse
            | ErrorKind::NoEndpoint => Blame::Upstream,
            ErrorKind::Denied | ErrorKind::TlsVerify | ErrorKind::ClientCertRefused => {
                Blame::Policy
            }
            ErrorKind::Loop
            | ErrorKind::AppBody
            | ErrorKind::AppStalled
            | ErrorKind::MissingHost => Blame::App,
        }
    }
}

/// A try that went ahead and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub kind: ErrorKind,
    pub blame: Blame,
    pub sent: Sent,
    /// The failure in words, naming the destination: the local reply's text.
    pub cause: String,
}

impl AttemptError {
    pub fn new(kind: ErrorKind, sent: Sent, cause: String) -> AttemptError {
        AttemptError {
            kind,
            blame: kind.blame(),
            sent,
            cause,
        }
    }

    /// What the breaker records: only an upstream's fault is a failure.
    pub fn breaker_failure(&self) -> Option<FailureKind> {
        if self.blame != Blame::Upstream {
            return None;
        }
        Some(match self.kind {
            ErrorKind::Connect | ErrorKind::NoEndpoint => FailureKind::ConnectFailed,
            ErrorKind::ConnectTimeout | ErrorKind::Timeout => FailureKind::Timeout,
            ErrorKind::Reset => FailureKind::Reset,
            _ => FailureKind::BadResponse,
        })
    }

    /// The try's result for the retry planner; `None`: never retried (not the upstream's
    /// fault, so sending it again would fail the same way).
    pub fn retry_as(&self) -> Option<TryResult> {
        match self.kind {
            ErrorKind::Connect => Some(TryResult::ConnectFailed),
            ErrorKind::ConnectTimeout => Some(TryResult::ConnectTimeout),
            ErrorKind::Reset => Some(TryResult::Reset),
            ErrorKind::Timeout => Some(TryResult::Timeout),
            ErrorKind::BadResponse => Some(TryResult::BadResponse),
            ErrorKind::TlsVerify
            | ErrorKind::ClientCertRefused
            | ErrorKind::Denied
            | ErrorKind::Loop
            | ErrorKind::AppBody
            | ErrorKind::AppStalled
            | ErrorKind::MissingHost
            | ErrorKind::NoEndpoint => None,
        }
    }

    /// The local reply the app gets when this failure is final.
    pub fn reason(&self) -> Reason {
        match self.kind {
            ErrorKind::Connect | ErrorKind::ClientCertRefused => Reason::ConnectFailed,
            ErrorKind::TlsVerify => Reason::TlsVerifyFailed,
            ErrorKind::ConnectTimeout | ErrorKind::Timeout => Reason::Timeout,
            ErrorKind::Reset => Reason::UpstreamReset,
            ErrorKind::BadResponse => Reason::BadResponse,
            ErrorKind::Denied => Reason::Denied,
            ErrorKind::Loop => Reason::Loop,
            ErrorKind::AppBody | ErrorKind::MissingHost => Reason::BadRequest,
            ErrorKind::AppStalled => Reason::AppBodyTimeout,
            ErrorKind::NoEndpoint => Reason::NoEndpoint,
        }
    }

    /// The `result` label of `fusebox_attempts_total`; `None`: no try reached the upstream
    /// (refused by fusebox, or the app's fault), so none is counted.
    pub fn metric(&self) -> Option<AttemptResult> {
        match self.kind {
            ErrorKind::Connect
            | ErrorKind::TlsVerify
            | ErrorKind::ClientCertRefused
            | ErrorKind::NoEndpoint => Some(AttemptResult::ConnectFailed),
            ErrorKind::ConnectTimeout | ErrorKind::Timeout => Some(AttemptResult::Timeout),
            ErrorKind::Reset => Some(AttemptResult::Reset),
            ErrorKind::BadResponse => Some(AttemptResult::Failure),
            ErrorKind::Denied
            | ErrorKind::Loop
            | ErrorKind::AppBody
            | ErrorKind::AppStalled
            | ErrorKind::MissingHost => None,
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause)
    }
}

/// Why a try was not let through: nothing was sent, and nothing is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The rate limiter has no token; one will be there after `retry_after`.
    RateLimited { retry_after: Duration },
    /// The breaker is open: the next probe may go after `retry_after`, or never on its own
    /// (`None`: forced open by an operator).
    BreakerOpen { retry_after: Option<Duration> },
    /// The breaker's throttle (`mode = "throttle"`) refused the try, with this probability in
    /// thousandths, after the upstream accepted `accepts` of the last `requests`.
    Throttled {
        per_mille: u16,
        requests: u32,
        accepts: u32,
    },
}

impl Refusal {
    pub fn reason(self) -> Reason {
        match self {
            Refusal::RateLimited { .. } => Reason::RateLimited,
            Refusal::BreakerOpen { .. } | Refusal::Throttled { .. } => Reason::BreakerOpen,
        }
    }

    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after } => Some(retry_after),
            Refusal::BreakerOpen { retry_after } => retry_after,
            // No promise: the probability falls as the upstream accepts again.
            Refusal::Throttled { .. } => None,
        }
    }

    /// The refusal in words, for a destination `authority`.
    pub fn describe(self, authority: &str) -> String {
        match self {
            Refusal::RateLimited { .. } => format!("{authority} is over its rate limit"),
            Refusal::BreakerOpen {
                retry_after: Some(after),
            } => format!(
                "circuit breaker for {authority} is open; next probe in {}",
                humantime::format_duration(round_to_millis(after))
            ),
            // A forced breaker never probes: promising a time would be a lie.
            Refusal::BreakerOpen { retry_after: None } => format!(
                "circuit breaker for {authority} is forced open by an operator until it is reset"
            ),
            Refusal::Throttled {
                per_mille,
                requests,
                accepts,
            } => format!(
                "requests to {authority} are throttled, p = {}.{:03}: it accepted {accepts} \
                 of the last {requests} (client-side throttling)",
                per_mille / 1000,
                per_mille % 1000
            ),
        }
    }
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ErrorKind; 9] = [
        ErrorKind::Connect,
        ErrorKind::ConnectTimeout,
        ErrorKind::Reset,
        ErrorKind::Timeout,
        ErrorKind::BadResponse,
        ErrorKind::Denied,
        ErrorKind::Loop,
        ErrorKind::AppBody,
        ErrorKind::MissingHost,
    ];

    #[test]
    fn only_an_upstreams_fault_reaches_its_breaker_or_metrics_or_a_retry() {
        for kind in KINDS {
            let error = AttemptError::new(kind, Sent::Head, String::new());
            let upstream = error.blame == Blame::Upstream;
            assert_eq!(error.breaker_failure().is_some(), upstream, "{kind:?}");
            assert_eq!(error.metric().is_some(), upstream, "{kind:?}");
            assert_eq!(error.retry_as().is_some(), upstream, "{kind:?}");
        }
    }

    #[test]
    fn each_failure_has_its_reply_breaker_kind_and_retry_condition() {
        let table = [
            (
                ErrorKind::Connect,
                Reason::ConnectFailed,
                Some(FailureKind::ConnectFailed),
                Some(TryResult::ConnectFailed),
            ),
            (
                ErrorKind::ConnectTimeout,
                Reason::Timeout,
                Some(FailureKind::Timeout),
                Some(TryResult::ConnectTimeout),
            ),
            (
                ErrorKind::Reset,
                Reason::UpstreamReset,
                Some(FailureKind::Reset),
                Some(TryResult::Reset),
            ),
            (
                ErrorKind::BadResponse,
                Reason::BadResponse,
                Some(FailureKind::BadResponse),
                Some(TryResult::BadResponse),
            ),
            (ErrorKind::AppBody, Reason::BadRequest, None, None),
            (ErrorKind::Loop, Reason::Loop, None, None),
            (ErrorKind::Denied, Reason::Denied, None, None),
        ];
        for (kind, reason, failure, retry) in table {
            let error = AttemptError::new(kind, Sent::Nothing, "x".to_owned());
            assert_eq!(
                (error.reason(), error.breaker_failure(), error.retry_as()),
                (reason, failure, retry),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn refusals_explain_themselves() {
        let open = Refusal::BreakerOpen {
            retry_after: Some(Duration::from_micros(1_500_700)),
        };
        assert_eq!(
            open.describe("api:443"),
            "circuit breaker for api:443 is open; next probe in 1s 500ms"
        );
        let forced = Refusal::BreakerOpen { retry_after: None };
        assert!(forced.describe("api:443").contains("forced open"));
        assert_eq!(forced.retry_after(), None);
        let limited = Refusal::RateLimited {
            retry_after: Duration::from_millis(20),
        };
        assert_eq!(limited.reason(), Reason::RateLimited);
        assert_eq!(limited.retry_after(), Some(Duration::from_millis(20)));
    }
}
