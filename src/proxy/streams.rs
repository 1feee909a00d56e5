//! The idle limit of a multiplexed app connection: HTTP/2 cleartext on a route listener, or an
//! intercepted `CONNECT` (docs/ARCHITECTURE.md §14). Such a connection carries many requests at
//! once, so the one-request-at-a-time clock of [`super::app_conn`] does not fit it; instead
//! [`Streams`] counts the requests whose response is not finished, and [`Streams::idle`]
//! completes once none has been open for `--idle-timeout`. The connection then closes
//! gracefully (HTTP/2 `GOAWAY`, HTTP/1.1 `Connection: close`).
//!
//! [`Guarded`] is how a request stays counted until its response is sent: a response body that
//! holds a guard ([`StreamGuard`] here, the HTTP/1.1 clock's `RequestDone` in the listener).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use super::body::{BodyError, ResponseBody};

/// The requests in progress on one connection.
#[derive(Debug, Default)]
pub struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

/// One request in progress: open until dropped (with its response body).
#[derive(Debug)]
pub struct StreamGuard(Arc<Streams>);

impl Streams {
    pub fn new() -> Arc<Streams> {
        Arc::default()
    }

    /// Counts one more request in progress.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        StreamGuard(Arc::clone(self))
    }

    /// Completes once no request has been in progress for `limit`.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read, so no change in between is missed.
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(limit) => return,
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body holding `G` until it is sent or dropped.
#[derive(Debug)]
pub struct Guarded<G> {
    body: ResponseBody,
    _guard: G,
}

impl<G> Guarded<G> {
    pub fn new(body: ResponseBody, guard: G) -> Guarded<G> {
        Guarded {
            body,
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_the_last_stream_then_the_limit() {
        let streams = Streams::new();
        let limit = Duration::from_secs(10);
        let guard = streams.open();
        let start = tokio::time::Instant::now();
        let idle = {
            let streams = Arc::clone(&streams);
            tokio::spawn(async move {
                streams.idle(limit).await;
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "a stream is open: never idle");
        drop(guard);
        let second = streams.open();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(second);
        let ended = idle.await.unwrap();
        assert_eq!(ended - start, Duration::from_secs(45));
    }
}
