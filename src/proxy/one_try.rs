//! One upstream try (docs/ARCHITECTURE.md §1.1, §17): to the endpoint picked for it, on
//! fusebox's own HTTP/1.1 connections or hyper's pooled client, under its time limit; recorded
//! through its permit. A connection that cannot be opened moves the try to another endpoint
//! it has not tried ([`Try::move_on`]). What its ending says of the endpoint is
//! [`endpoint_end`]; the attempt loop ([`super::attempt`]) records it there and decides on
//! retries.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::uri::Scheme;
use http::{header, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::eyeballs::{self, Race, Winner};
use super::failure::{attempt_error, bad_response, http1_error};
use super::resend::{copy_parts, spare_copy, Outgoing};
use crate::pipeline::attempt::{AttemptError, ErrorKind, Sent};
use crate::pipeline::backoff::retry_after_delay;
use crate::pipeline::grpc::{self, GrpcCode};
use crate::pipeline::retry::may_resend;
use crate::registry::{Destination, Pending, Permit, PickError, Picked, TryEnd, Upstream};
use crate::upstream::app_pace::{AppStalled, Pace, PaceState};
use crate::upstream::client::{ReturnSlot, Returnable};
use crate::upstream::http1::{self, framing, Http1Body, SendError};
use crate::upstream::{ConnectError, RequestBody, UpstreamBody};

/// An upstream's answer: its response head, and for a gRPC stream whose status is still to
/// come the try's [`Pending`] verdict (spent when the body ends).
#[derive(Debug)]
pub struct Answer {
    pub response: Response<UpstreamBody>,
    pub pending: Option<Pending>,
    /// How the app keeps up with a request body that still streams (a gRPC stream's).
    pub pace: Option<Pace>,
    /// When hedges were sent (§18): which copy answered, 1 being the first.
    pub copy: Option<u32>,
}

/// How tries reach the upstream (the endpoint each try goes to has both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// hyper-util's pooled client: HTTP/2 (gRPC, and upstreams that chose it in the TLS
    /// handshake), protocol upgrades.
    Pooled,
    /// fusebox's own kept-alive connections on the endpoint: HTTP/1.1, cleartext or TLS,
    /// for requests whose body is known in full; one that streams takes the pooled client, and
    /// so does a request whose upstream chooses HTTP/2 in the TLS handshake.
    Http1,
}

/// How one try ended: the upstream's answer, or why there is none.
pub(super) type Ended = Result<Answer, AttemptError>;

/// One try: where it goes and what its request is like.
pub(super) struct Try<'a> {
    pub(super) upstream: &'a Upstream,
    pub(super) path: Path,
    pub(super) destination: &'a Arc<Destination>,
    /// The endpoint it goes to (another one when a connection to it cannot be opened).
    pub(super) picked: Picked,
    /// The endpoints the request went to, this one included.
    pub(super) tried: u64,
    pub(super) has_body: bool,
    pub(super) grpc: bool,
    /// The timeouts and retry rule of the request's route (or policy).
    pub(super) plan: super::plan::Plan<'a>,
}

impl Try<'_> {
    /// Sends `request` under `limit`, and records the try through its permit. A try abandoned
    /// here (the app went away) drops the permit unspent, which records it as abandoned.
    /// Answers the endpoint it ended on and the endpoints tried.
    pub(super) async fn run(
        mut self,
        permit: Permit<'_>,
        request: Outgoing<'_>,
        limit: TryLimit,
    ) -> (Ended, Picked, u64) {
        let pace = request.pace();
        let started = permit.started();
        let sent = tokio::time::timeout(limit.duration(), self.send(request, started)).await;
        let ended = self.judge(sent, permit, pace, limit);
        (ended, self.picked, self.tried)
    }

    /// Records the try through its permit.
    fn judge(
        &self,
        sent: Result<Result<Response<UpstreamBody>, AttemptError>, tokio::time::error::Elapsed>,
        permit: Permit<'_>,
        pace: Option<Pace>,
        limit: TryLimit,
    ) -> Ended {
        let (destination, grpc) = (self.destination, self.grpc);
        match sent {
            Ok(Ok(response)) => {
                let pending = match verdict_of(&response, grpc) {
                    Verdict::Status(status) => {
                        permit.answered(status);
                        None
                    }
                    Verdict::Grpc(code) => {
                        permit.answered_grpc(code);
                        None
                    }
                    Verdict::AtTrailers => Some(permit.pending(Arc::clone(destination))),
                };
                let pace = pending.as_ref().and(pace);
                Ok(Answer {
                    response,
                    pending,
                    pace,
                    copy: None,
                })
            }
            Ok(Err(error)) => {
                let error = self.app_paced(error, pace.as_ref(), None);
                permit.failed(&error);
                Err(error)
            }
            Err(_) => {
                let limit = limit.describe();
                let cause = format!(
                    "no response head from {} within {limit}",
                    destination.authority
                );
                let sent = Sent::on_connection(self.has_body);
                let error = AttemptError::new(ErrorKind::Timeout, sent, cause);
                let error = self.app_paced(error, pace.as_ref(), Some(&limit));
                permit.failed(&error);
                Err(error)
            }
        }
    }

    /// A try that failed while its streamed request body waited on the app (`pace`) is the
    /// app's failure, whatever the upstream side saw: the body stalled for `timeouts.idle`, or
    /// the try's time limit (`limit`) ended while the upstream was waiting for more of it.
    fn app_paced(
        &self,
        error: AttemptError,
        pace: Option<&Pace>,
        limit: Option<&str>,
    ) -> AttemptError {
        let authority = &self.destination.authority;
        let cause = match (pace.map(Pace::state), limit) {
            (Some(PaceState::Stalled), _) => format!(
                "{}: the request to {authority} was cut off (the upstream was waiting for it)",
                AppStalled(self.plan.timeouts.idle)
            ),
            (Some(PaceState::WaitingOnApp), Some(limit)) => format!(
                "the app had not finished sending its request body to {authority} when {limit} \
                 ended: the upstream was waiting for the rest of it"
            ),
            _ => return error,
        };
        AttemptError::new(ErrorKind::AppStalled, error.sent, cause)
    }

    /// The response head, on the connection `self.path` gives; `started`: the try's start.
    async fn send(
        &mut self,
        request: Outgoing<'_>,
        started: Instant,
    ) -> Result<Response<UpstreamBody>, AttemptError> {
        match (self.path, request) {
            (Path::Pooled, request) => self.send_pooled_or_next(request.into_request()).await,
            (Path::Http1, Outgoing::Lent(head, body)) => {
                match self.send_http1_or_next(head, body, started).await {
                    Err(SendError::ChoseHttp2) => {
                        let request = Outgoing::Lent(head, body).into_request();
                        self.send_pooled_or_next(request).await
                    }
                    sent => self.http1_answer(sent),
                }
            }
            (Path::Http1, Outgoing::Owned(request)) => {
                let (head, body) = request.into_parts();
                match body {
                    RequestBody::Full(body) => {
                        match self.send_http1_or_next(&head, body.as_ref(), started).await {
                            Err(SendError::ChoseHttp2) => {
                                let request = Request::from_parts(head, RequestBody::Full(body));
                                self.send_pooled_or_next(request).await
                            }
                            sent => self.http1_answer(sent),
                        }
                    }
                    streamed => {
                        let request = Request::from_parts(head, streamed);
                        self.send_pooled_or_next(request).await
                    }
                }
            }
        }
    }

    async fn send_pooled(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, AttemptError> {
        let endpoint = &self.picked.endpoint;
        let Some(client) = self.upstream.client(endpoint, self.grpc) else {
            let cause = format!(
                "no client for {}: its TLS settings were refused",
                endpoint.label
            );
            return Err(AttemptError::new(ErrorKind::Connect, Sent::Nothing, cause));
        };
        match client.request(request).await {
            Ok(mut response) => match framing::settle_pooled(response.headers_mut()) {
                Ok(()) => Ok(response.map(UpstreamBody::Pooled)),
                Err(detail) => Err(bad_response(
                    &self.destination.authority,
                    &detail,
                    self.has_body,
                )),
            },
            Err(error) => Err(attempt_error(
                &error,
                &self.destination.authority,
                self.has_body,
            )),
        }
    }

    /// Sends on fusebox's own HTTP/1.1 connections; an upstream that chooses HTTP/2 in the
    /// TLS handshake is noted on the destination, whose requests then take the pooled client.
    /// [`Try::send_http1`]; when the connection to the endpoint cannot be opened (refused,
    /// unreachable, timed out: nothing was sent), the same again to an endpoint of the same
    /// name not yet tried, within this try. A new connection to one of several endpoints races
    /// another endpoint's after 250 ms ([`eyeballs`]).
    async fn send_http1_or_next(
        &mut self,
        head: &Parts,
        body: Option<&Bytes>,
        started: Instant,
    ) -> Result<Response<Http1Body>, SendError> {
        let tls = head.uri.scheme() == Some(&Scheme::HTTPS);
        // Every address may be tried once in this try, whatever earlier tries did.
        let mut this_try = self.picked.tried_bit();
        loop {
            let sent = match self.open_raced(&mut this_try, tls).await {
                Some(Err(error)) => Err(SendError::Connect(error)),
                Some(Ok(tcp)) => {
                    let opened = std::sync::Mutex::new(Some(tcp));
                    self.send_http1(head, body, started, Some(&opened)).await
                }
                None => self.send_http1(head, body, started, None).await,
            };
            let Err(SendError::Connect(error)) = &sent else {
                return sent;
            };
            let unopened = matches!(
                error,
                ConnectError::Io { .. } | ConnectError::Timeout { .. }
            );
            if !unopened || !self.move_on(&mut this_try, error, tls) {
                return sent;
            }
        }
    }

    /// A new connection for this try, raced against another endpoint's (RFC 8305); the
    /// winner's endpoint becomes the try's. `None`: the endpoint has resting connections, or
    /// is the only one, and [`http1::send`] takes or opens one as usual.
    async fn open_raced(
        &mut self,
        this_try: &mut u64,
        tls: bool,
    ) -> Option<Result<TcpStream, ConnectError>> {
        let set = &self.destination.endpoints;
        // The count first: the common single-endpoint case takes no lock.
        if set.len() < 2 || !self.picked.endpoint.idle.is_empty() {
            return None;
        }
        let tried_now = *this_try;
        let second = || {
            let next = self.other_endpoint(tried_now, tls)?;
            Some((next.endpoint.addr, next))
        };
        let rules = self.upstream.rules();
        let raced = eyeballs::race(self.picked.endpoint.addr, second, rules, eyeballs::STAGGER);
        let (winner, second, first_failed, second_failed) = match raced.await {
            Race::Alone(opened) => return Some(opened),
            Race::Both {
                winner,
                second,
                first_failed,
                second_failed,
            } => (winner, second, first_failed, second_failed),
        };
        *this_try |= second.tried_bit();
        self.tried |= second.tried_bit();
        let now = Instant::now();
        let end = |failed: bool| failed.then_some(TryEnd::Failed { retry_after: None });
        let record = |picked: Picked, failed: bool| match end(failed) {
            Some(end) => picked.finish(set, end, now),
            None => picked.neutral(),
        };
        match winner {
            Winner::First(tcp) => {
                record(second, second_failed);
                Some(Ok(tcp))
            }
            Winner::Second(tcp) => {
                record(std::mem::replace(&mut self.picked, second), first_failed);
                Some(Ok(tcp))
            }
            Winner::Neither(error) => {
                // The second carries on as the try's endpoint: `move_on` records it.
                record(std::mem::replace(&mut self.picked, second), first_failed);
                Some(Err(error))
            }
        }
    }

    /// An endpoint not yet tried in this try (`this_try`), of the same name over TLS.
    fn other_endpoint(&self, this_try: u64, tls: bool) -> Option<Picked> {
        let set = &self.destination.endpoints;
        let now = Instant::now();
        let next = set.pick_untried(this_try, now)?;
        let same_name = next.endpoint.authority == self.picked.endpoint.authority
            || self.upstream.rewrite_authority.is_some();
        if tls && !same_name {
            next.neutral();
            return None;
        }
        Some(next)
    }

    /// The same for hyper's pooled client, while there are several endpoints: a body known
    /// in full goes again from a copy; a streamed one is lent to each send ([`Returnable`]) and
    /// comes back unread when the connection could not be opened.
    async fn send_pooled_or_next(
        &mut self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, AttemptError> {
        let mut this_try = self.picked.tried_bit();
        let several = self.destination.endpoints.len() > 1;
        loop {
            let (sent_request, again) = if several {
                keep_for_again(request)
            } else {
                (request, Again::Never)
            };
            let tls = sent_request.uri().scheme() == Some(&Scheme::HTTPS);
            let sent = self.send_pooled(sent_request).await;
            let Err(error) = &sent else {
                return sent;
            };
            let unopened = matches!(error.kind, ErrorKind::Connect | ErrorKind::ConnectTimeout)
                && error.sent == Sent::Nothing;
            let Some(next) = again.take().filter(|_| unopened) else {
                return sent;
            };
            if !self.move_on(&mut this_try, error, tls) {
                return sent;
            }
            request = next;
        }
    }

    /// After a connection to the endpoint could not be opened: moves this try to an endpoint
    /// it has not tried (`this_try`), and records the failed one; `false` when none is left.
    /// Over TLS (`tls`) only to one that the request's name also fits: the same `endpoints`
    /// entry or name, or any under `host_rewrite`.
    fn move_on(&mut self, this_try: &mut u64, error: &dyn std::fmt::Display, tls: bool) -> bool {
        let Some(next) = self.other_endpoint(*this_try, tls) else {
            return false;
        };
        let (set, now) = (&self.destination.endpoints, Instant::now());
        debug!(failed = %self.picked.endpoint.label, %error, next = %next.endpoint.label, "no connection; trying the next endpoint");
        *this_try |= next.tried_bit();
        self.tried |= next.tried_bit();
        let failed = std::mem::replace(&mut self.picked, next);
        failed.finish(set, TryEnd::Failed { retry_after: None }, now);
        true
    }

    async fn send_http1(
        &self,
        head: &Parts,
        body: Option<&Bytes>,
        started: Instant,
        opened: Option<&std::sync::Mutex<Option<TcpStream>>>,
    ) -> Result<Response<Http1Body>, SendError> {
        let endpoint = &self.picked.endpoint;
        let policy = &self.upstream.policy;
        let tls = (head.uri.scheme() == Some(&Scheme::HTTPS)).then(|| http1::Tls {
            config: self.upstream.tls_config(),
            // As hyper-rustls names the server: the policy's `sni`, else the URI's host.
            server_name: policy.sni.as_deref().unwrap_or_else(|| {
                let host = head.uri.host().unwrap_or_default();
                host.trim_start_matches('[').trim_end_matches(']')
            }),
        });
        let pool = http1::Pool {
            idle: &endpoint.idle,
            host: &endpoint.ip,
            port: endpoint.addr.port(),
            tls,
            rules: self.upstream.rules(),
            idle_timeout: policy.pool_idle_timeout,
            max_idle: policy.pool_max_idle,
            fresh: false,
            opened,
        };
        let mut sent = http1::send(pool, head, body, started).await;
        // The upstream closed a kept-alive connection as the request went out, before any
        // answer (it cannot have acted on it: RFC 9112 §9.3.1): a request that may be sent
        // twice goes again on a new connection, as the same try. Any other never does.
        if matches!(sent, Err(SendError::Unanswered { reused: true, .. }))
            && may_resend(self.plan.retry, &head.method, &head.headers)
        {
            let destination = &self.destination.authority;
            debug!(%destination, "kept-alive upstream connection closed before answering; sending on a new one");
            let pool = http1::Pool {
                fresh: true,
                ..pool
            };
            sent = http1::send(pool, head, body, started).await;
        }
        if matches!(sent, Err(SendError::ChoseHttp2)) {
            self.destination.chose_http2();
        }
        sent
    }

    fn http1_answer(
        &self,
        sent: Result<Response<Http1Body>, SendError>,
    ) -> Result<Response<UpstreamBody>, AttemptError> {
        sent.map(|response| response.map(UpstreamBody::Http1))
            .map_err(|error| http1_error(&error, &self.destination.authority, self.has_body))
    }
}

/// How a request sent on the pooled client can go again to another endpoint.
enum Again {
    /// A copy of a request whose body is known in full.
    Copy(Request<RequestBody>),
    /// The head, and where a streamed body comes back to if it was never read.
    Returned(Parts, ReturnSlot),
    Never,
}

impl Again {
    /// The request to send again, if there is one.
    fn take(self) -> Option<Request<RequestBody>> {
        match self {
            Again::Copy(copy) => Some(copy),
            Again::Returned(head, slot) => {
                let body = slot.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                Some(Request::from_parts(head, body))
            }
            Again::Never => None,
        }
    }
}

/// The request to send now, and what is kept to send it again.
fn keep_for_again(request: Request<RequestBody>) -> (Request<RequestBody>, Again) {
    if let Some(copy) = spare_copy(&request) {
        return (request, Again::Copy(copy));
    }
    let (parts, body) = request.into_parts();
    let head = copy_parts(&parts);
    let (lent, slot) = Returnable::lend(body);
    (
        Request::from_parts(parts, lent),
        Again::Returned(head, slot),
    )
}

/// A try that found no endpoint: the name did not resolve (`connect-failed`), or every
/// endpoint is out (`no-endpoint`). Nothing was sent.
pub(super) fn unpicked(error: PickError, authority: &str) -> AttemptError {
    match error {
        PickError::Resolve(why) => AttemptError::new(
            ErrorKind::Connect,
            Sent::Nothing,
            format!("cannot resolve {authority}: {why}"),
        ),
        PickError::NoEndpoint(why) => AttemptError::new(
            ErrorKind::NoEndpoint,
            Sent::Nothing,
            format!("{authority}: {}", why.0),
        ),
    }
}

/// The authority of a try to `picked` when it differs by endpoint: a policy with several
/// `endpoints` entries and no `host_rewrite`.
pub(super) fn per_endpoint_authority<'p>(
    upstream: &Upstream,
    picked: &'p Picked,
) -> Option<&'p http::uri::Authority> {
    if upstream.rewrite_authority.is_some() || upstream.policy.endpoints.len() < 2 {
        return None;
    }
    picked.endpoint.authority.as_ref()
}

/// What a try's ending says of its endpoint (§17): a failure when the upstream is to blame
/// (connect, reset, timeout), when its status is in `breaker.failure_statuses` or is a 429,
/// and with the `Retry-After` it sent; no verdict when the app or a policy is to blame.
pub(super) fn endpoint_end(upstream: &Upstream, ended: &Ended, grpc: bool) -> Option<TryEnd> {
    let breaker = &upstream.policy.breaker;
    match ended {
        Ok(answer) => {
            let response = &answer.response;
            let status = response.status().as_u16();
            let grpc_failed = grpc
                && grpc::status(response.headers()).is_some_and(|code| {
                    response.status() == StatusCode::OK
                        && breaker.grpc_failure_codes.contains(&code)
                });
            if status == 429 || breaker.failure_statuses.contains(&status) || grpc_failed {
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|value| retry_after_delay(value, SystemTime::now()));
                return Some(TryEnd::Failed { retry_after });
            }
            Some(TryEnd::Succeeded)
        }
        Err(error) if error.breaker_failure().is_some() => {
            Some(TryEnd::Failed { retry_after: None })
        }
        Err(_) => None,
    }
}

/// What a response head says of its try.
pub(super) enum Verdict {
    /// An HTTP answer (also a gRPC call answered with another status than 200).
    Status(StatusCode),
    /// A gRPC call's trailers-only answer.
    Grpc(GrpcCode),
    /// A gRPC stream: its status comes in the trailers.
    AtTrailers,
}

pub(super) fn verdict_of(response: &Response<UpstreamBody>, grpc: bool) -> Verdict {
    if !grpc || response.status() != StatusCode::OK {
        return Verdict::Status(response.status());
    }
    match grpc::status(response.headers()) {
        Some(code) => Verdict::Grpc(code),
        None => Verdict::AtTrailers,
    }
}

/// The request's whole time: `timeouts.total`, or a gRPC app's shorter `grpc-timeout`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Whole {
    pub(super) total: Duration,
    pub(super) from_app: bool,
}

impl Whole {
    pub(super) fn describe(self) -> String {
        let which = if self.from_app {
            "the app's grpc-timeout"
        } else {
            "the total timeout"
        };
        format!("{which} of {}", humantime::format_duration(self.total))
    }
}

/// What limits one try: the attempt timeout, or what is left of the request's whole time.
#[derive(Debug, Clone, Copy)]
pub(super) enum TryLimit {
    Attempt(Duration),
    Deadline(Duration, Whole),
}

impl TryLimit {
    pub(super) fn duration(self) -> Duration {
        match self {
            TryLimit::Attempt(limit) | TryLimit::Deadline(limit, _) => limit,
        }
    }

    pub(super) fn describe(self) -> String {
        match self {
            TryLimit::Attempt(limit) => {
                format!(
                    "the attempt timeout of {}",
                    humantime::format_duration(limit)
                )
            }
            TryLimit::Deadline(_, whole) => whole.describe(),
        }
    }
}
