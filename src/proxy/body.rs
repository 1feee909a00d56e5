//! The body of a response sent to the app: the upstream's, streamed, or a local reply's text.
//!
//! An upstream body that delivers nothing for `timeouts.idle` is cut off: the app's response
//! ends with an error (hyper closes its connection), the concurrency slot is freed,
//! `fusebox_stream_timeouts_total{kind="body_idle"}` counts it, and the breaker records a
//! `body_idle` failure. Only the upstream can cause it: while the app does not read, hyper does
//! not poll the body, so the timer does not run. The timer only exists once the
//! body has had to wait: a body that arrives with its head costs nothing.
//!
//! A gRPC stream whose status comes in its trailers carries a [`GrpcEnd`]: when the trailers
//! pass, their `grpc-status` is the try's verdict for the breaker and the request is counted
//! and logged with it; a stream that ends without a status counts as `internal`, one the
//! upstream cuts (reset, idle) as that failure, and one the app cancels as abandoned.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use super::access::Seen;
use crate::outcome::Outcome;
use crate::pipeline::breaker::FailureKind;
use crate::pipeline::grpc::{self, GrpcCode};
use crate::registry::{Destination, InFlight, Pending};
use crate::telemetry::StreamTimeout;
use crate::upstream::app_pace::{Pace, PaceState};
use crate::upstream::UpstreamBody;

/// The error the app's connection ends with: the upstream's, or an idle timeout.
pub use crate::upstream::BodyError;

/// Nearly every response is `Upstream`: boxing it to even the variants out would cost an
/// allocation per response to save a few bytes on the rare local reply.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ResponseBody {
    /// The upstream's body; the request counts as in flight until it is done or dropped.
    Upstream(Streamed),
    Local(Option<Bytes>),
}

/// An upstream body on its way to the app.
#[derive(Debug)]
pub struct Streamed {
    body: UpstreamBody,
    in_flight: Option<InFlight>,
    destination: Arc<Destination>,
    /// The `[[route]]` the request took: whose breaker hears of a stalled body (an index
    /// below `MAX_ROUTES`, kept small: every response carries it).
    route: Option<u8>,
    idle: Duration,
    /// Armed the first time the body has to wait; pushed back by every frame.
    timer: Option<Pin<Box<Sleep>>>,
    /// A gRPC stream's verdict and request record, until its trailers (boxed: rare and large).
    grpc: Option<Box<GrpcEnd>>,
}

/// What a gRPC stream records when it ends; see the module docs.
#[derive(Debug)]
pub struct GrpcEnd {
    pending: Option<Pending>,
    seen: Seen,
    attempts: u32,
    /// The app's pace on its request stream: a stream cut because the app stalled is not the
    /// upstream's failure.
    pace: Option<Pace>,
}

impl GrpcEnd {
    pub fn new(pending: Pending, seen: Seen, attempts: u32) -> Box<GrpcEnd> {
        Box::new(GrpcEnd {
            pending: Some(pending),
            seen,
            attempts,
            pace: None,
        })
    }

    /// The same, knowing how the app keeps up with its request stream.
    pub fn with_pace(mut self: Box<Self>, pace: Option<Pace>) -> Box<GrpcEnd> {
        self.pace = pace;
        self
    }

    /// The upstream ended the stream with `code`.
    fn ended(&mut self, destination: &Destination, code: GrpcCode) {
        let failed = self.pending.take().is_some_and(|p| p.ended(code));
        let outcome = Outcome::of_grpc(failed);
        self.seen
            .finish_grpc(destination, code, outcome, self.attempts, None);
    }

    /// The upstream cut the stream (`kind`); the app's gRPC client sees `internal`. When the
    /// app's request stream stalled first, the cut is the app's doing: the try is abandoned,
    /// not failed, and the request's outcome is `timeout`.
    fn cut(&mut self, destination: &Destination, kind: FailureKind, outcome: Outcome) {
        let app_stalled = self.pace.as_ref().map(Pace::state) == Some(PaceState::Stalled);
        let outcome = if app_stalled {
            Outcome::Timeout
        } else {
            outcome
        };
        if let Some(pending) = self.pending.take() {
            if app_stalled {
                drop(pending);
            } else {
                pending.cut(kind);
            }
        }
        self.seen.finish_grpc(
            destination,
            GrpcCode::Internal,
            outcome,
            self.attempts,
            None,
        );
    }
}

impl Drop for GrpcEnd {
    /// Not ended: the app cancelled the call. The pending verdict records the try as abandoned.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            let destination = pending.destination();
            drop(pending);
            self.seen.finish_grpc(
                &destination,
                GrpcCode::Cancelled,
                Outcome::Ok,
                self.attempts,
                None,
            );
        }
    }
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
    /// a frame; `grpc` for a gRPC stream whose status is in its trailers. (fusebox's own
    /// HTTP/1.1 connection goes back to its destination by itself when the body ends.)
    pub fn upstream(
        body: UpstreamBody,
        in_flight: InFlight,
        (destination, route): (Arc<Destination>, Option<usize>),
        idle: Duration,
        grpc: Option<Box<GrpcEnd>>,
    ) -> ResponseBody {
        let streamed = Streamed {
            body,
            in_flight: Some(in_flight),
            destination,
            route: route.and_then(|index| u8::try_from(index).ok()),
            idle,
            timer: None,
            grpc,
        };
        ResponseBody::Upstream(streamed)
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
                match self.grpc.take() {
                    Some(mut end) => end.cut(destination, FailureKind::BodyIdle, Outcome::Timeout),
                    None => destination.body_stalled(self.route.map(usize::from), idle),
                }
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
                if self.grpc.is_some() {
                    self.grpc_frame(&frame);
                }
                Poll::Ready(frame)
            }
        }
    }
}

impl Streamed {
    /// Ends a gRPC stream at its trailers, its end or its error.
    fn grpc_frame(&mut self, frame: &Option<Result<Frame<Bytes>, BodyError>>) {
        let destination = &self.destination;
        match frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc::status(trailers).unwrap_or(GrpcCode::Internal);
                    if let Some(mut end) = self.grpc.take() {
                        end.ended(destination, code);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(mut end) = self.grpc.take() {
                    end.cut(destination, FailureKind::Reset, Outcome::Reset);
                }
            }
            // The stream ended without trailers: no status, which gRPC clients see as
            // `internal`.
            None => {
                if let Some(mut end) = self.grpc.take() {
                    end.ended(destination, GrpcCode::Internal);
                }
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
