//! The body of a response sent to the app: the upstream's, streamed, or a local reply's text.
//!
//! An upstream body that delivers nothing for `timeouts.idle` is cut off: the app's response
//! ends with an error (hyper closes its connection), the concurrency slot is freed,
//! `fusebox_stream_timeouts_total{kind="body_idle"}` counts it, and the breaker records a
//! `body_idle` failure. Only the upstream can cause it: while the app does not read, hyper does
//! not poll the body, so the timer does not run. The timer only exists once the
//! body has had to wait: a body that arrives with its head costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tracing::warn;

use crate::registry::{Destination, InFlight};
use crate::telemetry::StreamTimeout;

/// The error the app's connection ends with: the upstream's, or an idle timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ResponseBody {
    /// The upstream's body; the request counts as in flight until it is done or dropped.
    Upstream(Streamed),
    Local(Option<Bytes>),
}

/// An upstream body on its way to the app.
#[derive(Debug)]
pub struct Streamed {
    body: Incoming,
    in_flight: Option<InFlight>,
    destination: Arc<Destination>,
    idle: Duration,
    /// Armed the first time the body has to wait; pushed back by every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The upstream stopped sending its body for `timeouts.idle`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing of the response body for {} (timeouts.idle)", humantime::format_duration(*.0))]
pub struct IdleTimeout(Duration);

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::Local(None)
    }

    /// The upstream's `body`, holding `in_flight` until it ends, cut off after `idle` without
    /// a frame.
    pub fn upstream(
        body: Incoming,
        in_flight: InFlight,
        destination: Arc<Destination>,
        idle: Duration,
    ) -> ResponseBody {
        ResponseBody::Upstream(Streamed {
            body,
            in_flight: Some(in_flight),
            destination,
            idle,
            timer: None,
        })
    }
}

impl Streamed {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.in_flight.take();
                let destination = &self.destination;
                destination.metrics.stream_timeout(StreamTimeout::BodyIdle);
                destination.body_stalled(idle);
                warn!(
                    upstream = %destination.upstream,
                    destination = %destination.authority,
                    idle = %humantime::format_duration(idle),
                    "response body cut off: the upstream sent nothing for timeouts.idle"
                );
                Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))))
            }
            Poll::Ready(frame) => {
                if let Some(timer) = self.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + self.idle);
                }
                if matches!(frame, None | Some(Err(_))) {
                    // Done: free the concurrency slot now, not when hyper drops the body.
                    self.in_flight.take();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(streamed) => streamed.poll_frame(cx),
            ResponseBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(streamed) => streamed.body.is_end_stream(),
            ResponseBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(streamed) => streamed.body.size_hint(),
            ResponseBody::Local(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Local(None) => SizeHint::with_exact(0),
        }
    }
}
