//! The request between tries (docs/ARCHITECTURE.md §1.1): its body read in full when it may
//! have to be sent again (within `timeouts.total` and, frame to frame, `timeouts.idle`),
//! lent to every try but the last possible one, or streamed once under the app's idle limit
//! ([`AppIdle`]), an unsized one recorded for a replay.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::local_answer::LocalAnswer;
use crate::outcome::Reason;
use crate::pipeline::grpc;
use crate::upstream::app_pace::{AppIdle, AppStalled, Pace};
use crate::upstream::recorded::Recording;
use crate::upstream::RequestBody;

/// The request body, kept in memory when it may have to be sent again.
pub(super) enum Body {
    /// Complete and at most `max_replay_bytes`: can be sent on every try.
    Replayable(Option<Bytes>),
    /// Larger than `max_replay_bytes`: sent once, as it streams.
    Streaming(Incoming),
    /// Of unknown length: streamed, and recorded on the way for a replay (§14).
    Unsized(Incoming),
}

/// One try's request: lent (head and a body kept whole) to a try that may be followed by
/// another, or handed over to the last possible one, and always when its body streams.
// Moved once, into the try; boxing the owned request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Outgoing<'r> {
    Lent(&'r Parts, Option<&'r Bytes>),
    Owned(Request<RequestBody>),
}

impl Outgoing<'_> {
    /// How the app keeps up with the body, when it streams.
    pub(super) fn pace(&self) -> Option<Pace> {
        match self {
            Outgoing::Lent(..) => None,
            Outgoing::Owned(request) => request.body().pace(),
        }
    }

    /// The request as hyper's client takes it (a lent head is copied).
    pub(super) fn into_request(self) -> Request<RequestBody> {
        match self {
            Outgoing::Lent(head, body) => {
                Request::from_parts(copy_parts(head), RequestBody::Full(body.cloned()))
            }
            Outgoing::Owned(request) => request,
        }
    }
}

/// The request between tries: a body kept whole is lent to every try but the last possible one;
/// a streamed one goes out once (an unsized one's first try with a copy of the head kept, for a
/// replay of its recording).
pub(super) struct Resend {
    parts: Option<Parts>,
    body: Option<Body>,
    /// An unsized body's recording, while its first try is out.
    recording: Option<Arc<Recording>>,
    max_replay: u64,
    /// `timeouts.idle`: how long a streamed body may deliver nothing while it is asked for more.
    idle: Duration,
}

impl Resend {
    pub(super) fn new(parts: Parts, body: Body, max_replay: u64, idle: Duration) -> Self {
        Resend {
            parts: Some(parts),
            body: Some(body),
            recording: None,
            max_replay,
            idle,
        }
    }

    /// Whether the request can still be sent again: an unsized body once its first try sent
    /// it whole, within `max_replay_bytes`.
    pub(super) fn replayable(&mut self) -> bool {
        if self.body.is_none() {
            if let Some(bytes) = self.recording.take().and_then(|r| r.replay()) {
                self.body = Some(Body::Replayable(bytes));
            }
        }
        self.body.is_some()
    }

    /// Sends the next try to `authority` (the URI's, so also HTTP/2's `:authority` and the
    /// TLS name): a policy's `endpoints` entries may each have their own.
    pub(super) fn set_authority(&mut self, authority: &http::uri::Authority) {
        let Some(parts) = self.parts.as_mut() else {
            return;
        };
        if parts.uri.authority() == Some(authority) {
            return;
        }
        let mut uri = parts.uri.clone().into_parts();
        uri.authority = Some(authority.clone());
        if let Ok(next) = http::Uri::from_parts(uri) {
            parts.uri = next;
        }
    }

    /// Replaces an app's `grpc-timeout` with the time `left` of its deadline.
    pub(super) fn set_grpc_timeout(&mut self, left: Duration) {
        if let Some(parts) = self.parts.as_mut() {
            if parts.headers.contains_key("grpc-timeout") {
                parts
                    .headers
                    .insert("grpc-timeout", grpc::timeout_value(left));
            }
        }
    }

    /// The request head, while it is kept.
    pub(super) fn head(&self) -> Option<&Parts> {
        self.parts.as_ref()
    }

    /// Whether copies of the request can run side by side (a hedged race, §18): its body is
    /// kept whole, or of unknown length (recorded by the first copy; later ones wait until it
    /// went through whole, [`Resend::copyable`]).
    pub(super) fn may_race(&self) -> bool {
        matches!(self.body, Some(Body::Replayable(_) | Body::Unsized(_)))
    }

    /// Whether a copy can be made now: a recorded body that went through whole (within
    /// `max_replay_bytes`) is kept from then on.
    pub(super) fn copyable(&mut self) -> bool {
        if self.body.is_none() {
            if let Some(bytes) = self.recording.as_ref().and_then(|r| r.replay()) {
                self.recording = None;
                self.body = Some(Body::Replayable(bytes));
            }
        }
        matches!(self.body, Some(Body::Replayable(_)))
    }

    /// The first copy of a race: a copy when the body is kept whole, else the body itself,
    /// recorded as it goes (see [`Resend::may_race`]).
    pub(super) fn first_copy(&mut self) -> Option<(Request<RequestBody>, bool)> {
        if self.copyable() {
            return self.copy();
        }
        match self.next(false)? {
            (Outgoing::Owned(request), has_body) => Some((request, has_body)),
            (Outgoing::Lent(..), _) => None,
        }
    }

    /// A copy of the request for a try beside others (a hedge), and whether it has a body;
    /// `None` unless its body is kept whole.
    pub(super) fn copy(&self) -> Option<(Request<RequestBody>, bool)> {
        let (Some(parts), Some(Body::Replayable(bytes))) = (&self.parts, &self.body) else {
            return None;
        };
        let body = RequestBody::Full(bytes.clone());
        Some((
            Request::from_parts(copy_parts(parts), body),
            bytes.is_some(),
        ))
    }

    /// The next try's request, and whether it has a body; `None` once it was sent for good.
    pub(super) fn next(&mut self, last: bool) -> Option<(Outgoing<'_>, bool)> {
        if !last && matches!(self.body, Some(Body::Replayable(_))) {
            let (Some(parts), Some(Body::Replayable(bytes))) = (&self.parts, &self.body) else {
                return None;
            };
            return Some((Outgoing::Lent(parts, bytes.as_ref()), bytes.is_some()));
        }
        let (parts, body) = match (last, self.parts.take()?, self.body.take()?) {
            (_, parts, Body::Streaming(incoming)) | (true, parts, Body::Unsized(incoming)) => (
                parts,
                RequestBody::Streaming(incoming, AppIdle::new(self.idle)),
            ),
            (false, parts, Body::Unsized(incoming)) => {
                let recording = Arc::new(Recording::new(self.max_replay));
                self.recording = Some(Arc::clone(&recording));
                self.parts = Some(copy_parts(&parts));
                let idle = AppIdle::new(self.idle);
                (parts, RequestBody::Recorded(incoming, recording, idle))
            }
            // The last try (earlier ones borrow it above).
            (_, parts, Body::Replayable(bytes)) => (parts, RequestBody::Full(bytes)),
        };
        let has_body = !matches!(&body, RequestBody::Full(None));
        Some((Outgoing::Owned(Request::from_parts(parts, body)), has_body))
    }
}

/// The app's body as the tries will send it: read in full now when it has a length within
/// `max_replay`, before `deadline` and with no wait longer than `idle` for its next frame.
/// Reading fails as the app's fault: a body that broke off is a `400`, one that stalled a `408`.
pub(super) async fn prepare_body(
    body: Incoming,
    parts: &Parts,
    max_replay: u64,
    deadline: Instant,
    idle: Duration,
) -> Result<Body, LocalAnswer> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(Body::Replayable(None));
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        None => Ok(Body::Unsized(body)),
        Some(length) if length <= max_replay => {
            let capacity = usize::try_from(length).unwrap_or(0);
            // Boxed: a body read in full is rarer than none, and its timer and buffers would
            // otherwise enlarge every request's future (moved, and copied, as it is polled).
            let bytes = Box::pin(read_whole(body, capacity, deadline, idle)).await?;
            Ok(Body::Replayable((!bytes.is_empty()).then_some(bytes)))
        }
        _ => Ok(Body::Streaming(body)),
    }
}

/// Reads `body` to its end (trailers dropped), frame by frame, within `deadline` and `idle`.
/// A body of one frame (the usual case) is kept as it came, without a copy.
async fn read_whole(
    mut body: Incoming,
    capacity: usize,
    deadline: Instant,
    idle: Duration,
) -> Result<Bytes, LocalAnswer> {
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    loop {
        let idle_until = Instant::now().checked_add(idle).unwrap_or(deadline);
        let frame = match tokio::time::timeout_at(deadline.min(idle_until), body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) if more.is_empty() => return Ok(first.unwrap_or_default()),
            Ok(None) => return Ok(more.freeze()),
            Ok(Some(Err(error))) => {
                let detail = format!("reading the request body failed: {error}");
                return Err(LocalAnswer::local(Reason::BadRequest, detail));
            }
            Err(_) => return Err(stalled(idle_until < deadline, idle)),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match first.take() {
            None if more.is_empty() => first = Some(data),
            None => more.extend_from_slice(&data),
            Some(earlier) => {
                more.reserve(capacity);
                more.extend_from_slice(&earlier);
                more.extend_from_slice(&data);
            }
        }
    }
}

/// The `408` of a body the app did not send in time: `idle` ran out (`by_idle`), or the total.
fn stalled(by_idle: bool, idle: Duration) -> LocalAnswer {
    let detail = if by_idle {
        format!("{} (the request was not sent upstream)", AppStalled(idle))
    } else {
        "the app did not send its request body within the total timeout (the request was not \
         sent upstream)"
            .to_owned()
    };
    LocalAnswer::local(Reason::AppBodyTimeout, detail)
}

/// `http::request::Parts` is not `Clone`; a try needs method, URI, version and headers.
/// A copy of a request whose body is known in full, to send again when its connection could
/// not be opened; `None` for a streamed body.
pub(super) fn spare_copy(request: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let RequestBody::Full(body) = request.body() else {
        return None;
    };
    let mut copy = Request::new(RequestBody::Full(body.clone()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

pub(super) fn copy_parts(parts: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}
