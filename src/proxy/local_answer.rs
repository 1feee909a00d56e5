//! What fusebox answers itself instead of an upstream's response: a [`Reason`] (the contract
//! of docs/ARCHITECTURE.md §5), a line naming the destination and cause, and for refusals the
//! time after which a retry may succeed. [`super::reply`] turns it into a response.

use std::time::Duration;

use crate::outcome::Reason;
use crate::pipeline::attempt::{AttemptError, Refusal};

/// What fusebox answers itself when the loop ends without an upstream response to pass on.
#[derive(Debug)]
pub struct LocalAnswer {
    pub reason: Reason,
    pub detail: String,
    pub retry_after: Option<Duration>,
}

impl LocalAnswer {
    /// An answer of fusebox's own, before or instead of any try.
    pub fn local(reason: Reason, detail: String) -> LocalAnswer {
        LocalAnswer {
            reason,
            detail,
            retry_after: None,
        }
    }

    /// The answer to a try the limiter or the breaker refused at `authority`.
    pub fn refused(refusal: Refusal, authority: &str) -> LocalAnswer {
        LocalAnswer {
            reason: refusal.reason(),
            detail: refusal.describe(authority),
            retry_after: refusal.retry_after(),
        }
    }

    /// The answer to a failed try.
    pub fn failed(error: AttemptError) -> LocalAnswer {
        LocalAnswer::local(error.reason(), error.cause)
    }
}
