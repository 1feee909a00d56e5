//! What a destination remembers for people besides its breaker: the last certificate failure
//! (a trust problem of the policy's, so not a breaker failure and not in the breaker's recent
//! list, but shown beside it in `/upstreams` and `fusebox status`), and when fusebox last
//! warned that an app refused its local CA (at most once a minute per destination).
//!
//! Written only on those failures and read by the admin: a lock taken on rare paths.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often an app's refusal of fusebox's CA is logged, per destination.
pub const CA_REJECTED_WARN_EVERY: Duration = Duration::from_secs(60);

/// A destination's notes; see the module docs.
#[derive(Debug, Default)]
pub struct Notes(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    trust: Option<TrustFailure>,
    ca_rejected_warned: Option<Instant>,
}

/// The upstream's certificate did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustFailure {
    pub at: Instant,
    /// The local reply's line: the rustls cause and the fix.
    pub cause: Box<str>,
}

impl Notes {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes a certificate failure at `at`.
    pub fn trust_failed(&self, at: Instant, cause: &str) {
        self.inner().trust = Some(TrustFailure {
            at,
            cause: cause.into(),
        });
    }

    /// The last certificate failure, if any.
    pub fn trust_failure(&self) -> Option<TrustFailure> {
        self.inner().trust.clone()
    }

    /// Whether an app's refusal of fusebox's CA at `now` is to be logged: the first time, and
    /// then once per [`CA_REJECTED_WARN_EVERY`].
    pub fn warn_ca_rejected(&self, now: Instant) -> bool {
        let mut inner = self.inner();
        let due = inner
            .ca_rejected_warned
            .is_none_or(|last| now.saturating_duration_since(last) >= CA_REJECTED_WARN_EVERY);
        if due {
            inner.ca_rejected_warned = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_ca_is_warned_about_once_a_minute() {
        let notes = Notes::default();
        let t0 = Instant::now();
        assert!(notes.warn_ca_rejected(t0));
        assert!(!notes.warn_ca_rejected(t0 + Duration::from_secs(59)));
        assert!(notes.warn_ca_rejected(t0 + Duration::from_secs(60)));
        assert!(!notes.warn_ca_rejected(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn the_last_trust_failure_is_kept() {
        let notes = Notes::default();
        assert_eq!(notes.trust_failure(), None);
        let t0 = Instant::now();
        notes.trust_failed(t0, "first");
        notes.trust_failed(t0, "second");
        assert_eq!(notes.trust_failure().unwrap().cause.as_ref(), "second");
    }
}
