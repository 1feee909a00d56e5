//! A panic while handling a request is a fusebox bug, and the app must still get an answer:
//! [`CatchPanic`] turns a panic inside a request's future into an error value, which the
//! listener answers with a local `500 internal`, logs at ERROR and counts — never a silently
//! dropped connection. `catch_unwind` costs nothing until something panics.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// `inner`, with a panic in any of its polls returned as `Err(message)`.
    pub struct CatchPanic<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchPanic<F> {
    pub fn new(inner: F) -> Self {
        CatchPanic { inner }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // A future that panicked is never polled again: the unwind-safety concern (observing
        // broken invariants inside it) does not arise.
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(message(payload.as_ref()))),
        }
    }
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_message() {
        let result = CatchPanic::new(async {
            tokio::task::yield_now().await;
            let far = tokio::time::Instant::now();
            // What an absurd `Retry-After` once did to a request task.
            far + std::time::Duration::MAX
        })
        .await;
        assert_eq!(
            result,
            Err("overflow when adding duration to instant".to_owned())
        );
        let index = 7;
        let formatted = CatchPanic::new(async move { panic!("index {index} out of range") }).await;
        assert_eq!(formatted, Err::<(), _>("index 7 out of range".to_owned()));
    }

    #[tokio::test]
    async fn a_future_that_does_not_panic_is_untouched() {
        let result = CatchPanic::new(async {
            tokio::task::yield_now().await;
            42
        })
        .await;
        assert_eq!(result, Ok(42));
    }
}
