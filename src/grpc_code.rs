//! The gRPC status codes (docs/ARCHITECTURE.md §14): their names in policy files and metric
//! labels, and their value in a `grpc-status` header. A leaf that policies, outcomes and
//! telemetry name codes with, below the pipeline that judges them ([`crate::pipeline::grpc`]).

use http::HeaderValue;
use serde::Serialize;

/// The gRPC status codes, named as in policy files (`[breaker] grpc_failure_codes`,
/// `[retry] grpc_codes`) and in the `code` label (`grpc-unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code, in numeric order (`ALL[n]` is code `n`).
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The name in policy files: lower case with hyphens (`resource-exhausted`).
    pub fn name(self) -> &'static str {
        self.names().0
    }

    /// The `code` label of a gRPC call's `fusebox_requests_total` (`grpc-resource-exhausted`).
    pub fn label(self) -> &'static str {
        self.names().1
    }

    fn names(self) -> (&'static str, &'static str) {
        match self {
            GrpcCode::Ok => ("ok", "grpc-ok"),
            GrpcCode::Cancelled => ("cancelled", "grpc-cancelled"),
            GrpcCode::Unknown => ("unknown", "grpc-unknown"),
            GrpcCode::InvalidArgument => ("invalid-argument", "grpc-invalid-argument"),
            GrpcCode::DeadlineExceeded => ("deadline-exceeded", "grpc-deadline-exceeded"),
            GrpcCode::NotFound => ("not-found", "grpc-not-found"),
            GrpcCode::AlreadyExists => ("already-exists", "grpc-already-exists"),
            GrpcCode::PermissionDenied => ("permission-denied", "grpc-permission-denied"),
            GrpcCode::ResourceExhausted => ("resource-exhausted", "grpc-resource-exhausted"),
            GrpcCode::FailedPrecondition => ("failed-precondition", "grpc-failed-precondition"),
            GrpcCode::Aborted => ("aborted", "grpc-aborted"),
            GrpcCode::OutOfRange => ("out-of-range", "grpc-out-of-range"),
            GrpcCode::Unimplemented => ("unimplemented", "grpc-unimplemented"),
            GrpcCode::Internal => ("internal", "grpc-internal"),
            GrpcCode::Unavailable => ("unavailable", "grpc-unavailable"),
            GrpcCode::DataLoss => ("data-loss", "grpc-data-loss"),
            GrpcCode::Unauthenticated => ("unauthenticated", "grpc-unauthenticated"),
        }
    }

    /// The code named `name` in a policy file.
    pub fn from_name(name: &str) -> Option<GrpcCode> {
        GrpcCode::ALL.into_iter().find(|code| code.name() == name)
    }

    /// The code of a `grpc-status` value; a number outside 0–16 is `unknown`, as the gRPC
    /// specification says; `None` for a value that is not a number at all.
    pub fn from_header(value: &HeaderValue) -> Option<GrpcCode> {
        let text = value.to_str().ok()?.trim();
        if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number: u64 = text.parse().ok()?;
        Some(
            usize::try_from(number)
                .ok()
                .and_then(|n| GrpcCode::ALL.get(n).copied())
                .unwrap_or(GrpcCode::Unknown),
        )
    }
}
