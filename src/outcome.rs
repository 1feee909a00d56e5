//! What happened to a request, in one place: the local-reply reason the app sees, the status
//! it gets, and the `outcome` label the metrics record. Every failure in the proxy maps to
//! exactly one [`Reason`]; every finished request to exactly one [`Outcome`].

use http::StatusCode;

use crate::grpc_code::GrpcCode;

/// The `outcome` label of `fusebox_requests_total` (docs/ARCHITECTURE.md §4, a contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    UpstreamError,
    BreakerOpen,
    RateLimited,
    Overflow,
    Timeout,
    ConnectFailed,
    Reset,
    Denied,
    Loop,
    BadRequest,
    BadResponse,
    Internal,
    TlsVerifyFailed,
    NoEndpoint,
}

impl Outcome {
    pub const ALL: [Outcome; 15] = [
        Outcome::Ok,
        Outcome::UpstreamError,
        Outcome::BreakerOpen,
        Outcome::RateLimited,
        Outcome::Overflow,
        Outcome::Timeout,
        Outcome::ConnectFailed,
        Outcome::Reset,
        Outcome::Denied,
        Outcome::Loop,
        Outcome::BadRequest,
        Outcome::BadResponse,
        Outcome::Internal,
        Outcome::TlsVerifyFailed,
        Outcome::NoEndpoint,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::BreakerOpen => "breaker_open",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overflow => "overflow",
            Outcome::Timeout => "timeout",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::Reset => "reset",
            Outcome::Denied => "denied",
            Outcome::Loop => "loop",
            Outcome::BadRequest => "bad_request",
            Outcome::BadResponse => "bad_response",
            Outcome::Internal => "internal",
            Outcome::TlsVerifyFailed => "tls_verify_failed",
            Outcome::NoEndpoint => "no_endpoint",
        }
    }

    /// The outcome of a gRPC call the upstream ended: `failed` when its status is in
    /// `grpc_failure_codes`.
    pub fn of_grpc(failed: bool) -> Outcome {
        if failed {
            Outcome::UpstreamError
        } else {
            Outcome::Ok
        }
    }

    /// The outcome of a response that came from the upstream.
    pub fn of_upstream_status(status: StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::UpstreamError
        } else {
            Outcome::Ok
        }
    }
}

/// Why fusebox answered instead of the upstream: the `x-fusebox-reason` header value
/// (docs/ARCHITECTURE.md §5, a contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    BreakerOpen,
    RateLimited,
    Overflow,
    Timeout,
    ConnectFailed,
    UpstreamReset,
    Denied,
    Loop,
    BadRequest,
    /// The request head was too large (431); counted as `bad_request`.
    HeadersTooLarge,
    /// The request target was too long to read (414); counted as `bad_request`.
    UriTooLong,
    /// The app did not finish its request head within `--header-timeout` (408, then the
    /// connection is closed); `timeout` like any other.
    HeaderTimeout,
    /// The app did not send its request body in time: nothing for `timeouts.idle`, or not
    /// whole within `timeouts.total` or the try's time (408); the app's fault, `timeout`.
    AppBodyTimeout,
    /// The upstream answered something fusebox cannot forward: a malformed or oversized
    /// response head (502). The upstream's fault.
    BadResponse,
    /// fusebox itself failed (a bug: a panic while handling the request); 500.
    Internal,
    /// The upstream's certificate did not verify against the policy's roots (502): a trust
    /// problem, blamed on the policy, never retried and never a breaker failure.
    TlsVerifyFailed,
    /// Every endpoint of the destination is ejected or resting after a `Retry-After` (503,
    /// at once); the upstream's failure.
    NoEndpoint,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BreakerOpen => "breaker-open",
            Reason::RateLimited => "rate-limited",
            Reason::Overflow => "overflow",
            Reason::Timeout | Reason::HeaderTimeout | Reason::AppBodyTimeout => "timeout",
            Reason::ConnectFailed => "connect-failed",
            Reason::UpstreamReset => "upstream-reset",
            Reason::Denied => "denied",
            Reason::Loop => "loop",
            Reason::BadRequest | Reason::HeadersTooLarge | Reason::UriTooLong => "bad-request",
            Reason::BadResponse => "bad-response",
            Reason::Internal => "internal",
            Reason::TlsVerifyFailed => "tls-verify-failed",
            Reason::NoEndpoint => "no-endpoint",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::BreakerOpen | Reason::Overflow | Reason::NoEndpoint => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::HeaderTimeout | Reason::AppBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::ConnectFailed
            | Reason::UpstreamReset
            | Reason::BadResponse
            | Reason::TlsVerifyFailed => StatusCode::BAD_GATEWAY,
            Reason::Denied => StatusCode::FORBIDDEN,
            Reason::Loop => StatusCode::LOOP_DETECTED,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reason::UriTooLong => StatusCode::URI_TOO_LONG,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `grpc-status` of this local reply to a gRPC call (§14), after gRPC's own mapping of
    /// HTTP statuses: what a gRPC client would have made of the HTTP reply, but reliably and
    /// with fusebox's message.
    pub fn grpc_status(self) -> GrpcCode {
        match self {
            Reason::BreakerOpen
            | Reason::Overflow
            | Reason::NoEndpoint
            | Reason::ConnectFailed
            | Reason::UpstreamReset
            | Reason::BadResponse
            | Reason::TlsVerifyFailed => GrpcCode::Unavailable,
            Reason::RateLimited => GrpcCode::ResourceExhausted,
            Reason::Timeout | Reason::HeaderTimeout | Reason::AppBodyTimeout => {
                GrpcCode::DeadlineExceeded
            }
            Reason::Denied => GrpcCode::PermissionDenied,
            Reason::Loop
            | Reason::BadRequest
            | Reason::HeadersTooLarge
            | Reason::UriTooLong
            | Reason::Internal => GrpcCode::Internal,
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Reason::BreakerOpen => Outcome::BreakerOpen,
            Reason::RateLimited => Outcome::RateLimited,
            Reason::Overflow => Outcome::Overflow,
            Reason::Timeout | Reason::HeaderTimeout | Reason::AppBodyTimeout => Outcome::Timeout,
            Reason::ConnectFailed => Outcome::ConnectFailed,
            Reason::UpstreamReset => Outcome::Reset,
            Reason::Denied => Outcome::Denied,
            Reason::Loop => Outcome::Loop,
            Reason::BadRequest | Reason::HeadersTooLarge | Reason::UriTooLong => {
                Outcome::BadRequest
            }
            Reason::BadResponse => Outcome::BadResponse,
            Reason::Internal => Outcome::Internal,
            Reason::TlsVerifyFailed => Outcome::TlsVerifyFailed,
            Reason::NoEndpoint => Outcome::NoEndpoint,
        }
    }
}

/// The `code` label: the status class sent to the app, `"1xx"` … `"5xx"`.
pub fn code_class(status: StatusCode) -> &'static str {
    CODE_CLASSES[code_class_index(status)]
}

pub(crate) const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) fn code_class_index(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_maps_to_its_contract_status() {
        let table = [
            (
                Reason::BreakerOpen,
                503,
                "breaker-open",
                Outcome::BreakerOpen,
            ),
            (
                Reason::RateLimited,
                429,
                "rate-limited",
                Outcome::RateLimited,
            ),
            (Reason::Overflow, 503, "overflow", Outcome::Overflow),
            (Reason::Timeout, 504, "timeout", Outcome::Timeout),
            (Reason::HeaderTimeout, 408, "timeout", Outcome::Timeout),
            (Reason::AppBodyTimeout, 408, "timeout", Outcome::Timeout),
            (
                Reason::ConnectFailed,
                502,
                "connect-failed",
                Outcome::ConnectFailed,
            ),
            (Reason::UpstreamReset, 502, "upstream-reset", Outcome::Reset),
            (Reason::Denied, 403, "denied", Outcome::Denied),
            (Reason::Loop, 508, "loop", Outcome::Loop),
            (Reason::BadRequest, 400, "bad-request", Outcome::BadRequest),
            (Reason::UriTooLong, 414, "bad-request", Outcome::BadRequest),
            (
                Reason::HeadersTooLarge,
                431,
                "bad-request",
                Outcome::BadRequest,
            ),
            (
                Reason::BadResponse,
                502,
                "bad-response",
                Outcome::BadResponse,
            ),
            (Reason::Internal, 500, "internal", Outcome::Internal),
            (
                Reason::TlsVerifyFailed,
                502,
                "tls-verify-failed",
                Outcome::TlsVerifyFailed,
            ),
            (Reason::NoEndpoint, 503, "no-endpoint", Outcome::NoEndpoint),
        ];
        for (reason, status, text, outcome) in table {
            assert_eq!(reason.status().as_u16(), status, "{reason:?}");
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.outcome(), outcome);
        }
    }

    #[test]
    fn code_classes() {
        assert_eq!(code_class(StatusCode::OK), "2xx");
        assert_eq!(code_class(StatusCode::LOOP_DETECTED), "5xx");
        assert_eq!(code_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(code_class(StatusCode::NOT_FOUND), "4xx");
    }
}
