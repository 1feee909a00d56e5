//! `CONNECT host:port` tunnels, which is how apps reach `https://` URLs through
//! `HTTPS_PROXY`. fusebox connects first (policy, guard, connect timeout), answers 200 only
//! once the upstream accepted, then splices bytes both ways until either side closes, the
//! tunnel has been silent for `timeouts.tunnel_idle`, or it has lived for `timeouts.tunnel_max`
//! (each counted in `fusebox_stream_timeouts_total` and logged).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::access::Seen;
use super::attempt;
use super::body::ResponseBody;
use super::failure::classify_connect_error;
use super::reply::local_reply_with_retry_after;
use super::target::connect_target;
use super::ProxyContext;
use crate::outcome::{Outcome, Reason};
use crate::pipeline::breaker::{CallResult, FailureKind};
use crate::registry::Destination;
use crate::telemetry::{AttemptResult, StreamTimeout};
use crate::upstream::connect;

pub async fn handle(ctx: &ProxyContext, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let seen = Seen::of(&req);
    let snapshot = ctx.registry.load();
    let target = match connect_target(&req) {
        Ok(target) => target,
        Err(message) => {
            return super::forward::reject_unrouted(ctx, &seen, Reason::BadRequest, &message)
        }
    };
    let upstream = snapshot.lookup(&target.host, target.port);
    let name = upstream.policy.name.as_str();
    let (host, port) = match upstream.next_endpoint() {
        Some((endpoint, _)) => (endpoint.host.as_str(), endpoint.port),
        None => (target.host.as_ref(), target.port),
    };
    let destination = upstream.destination(host, port);
    let reject_after = |reason: Reason, detail: &str, retry_after: Option<Duration>, tries| {
        debug!(detail, "tunnel refused");
        let reply = local_reply_with_retry_after(reason, name, detail, retry_after);
        seen.finish(
            &destination,
            reply.status(),
            reason.outcome(),
            tries,
            Some(reason),
        );
        reply
    };
    let reject = |reason: Reason, detail: &str| reject_after(reason, detail, None, 0);
    if !upstream.policy.allow {
        return reject(
            Reason::Denied,
            &format!("{} is not allowed by policy {name}", destination.authority),
        );
    }
    if super::headers::has_looped(req.headers(), &ctx.via_token) {
        return reject(Reason::Loop, "request came back to this fusebox (Via)");
    }

    // The gate, the limiter and the breaker guard the tunnel's set-up; what flows through an
    // open tunnel is opaque (TLS) and is not judged.
    let Some(in_flight) = destination.enter() else {
        let detail = format!(
            "{} already has {} requests in flight (concurrency.max_in_flight)",
            destination.authority,
            destination.gate.in_flight()
        );
        return reject(Reason::Overflow, &detail);
    };
    let probe = match attempt::admit(&destination) {
        Ok(probe) => probe,
        Err(answer) => return reject_after(answer.reason, &answer.detail, answer.retry_after, 0),
    };
    let rules = upstream.connect_rules(ctx.registry.self_addrs());
    let attempt_started = Instant::now();
    // An app that gives up while fusebox connects drops this future: the probe is still answered.
    let mut probe_guard = attempt::ProbeGuard::new(&destination, probe);
    let connected = connect::connect(host, port, &rules).await;
    probe_guard.disarm();
    let elapsed = attempt_started.elapsed();
    drop(in_flight);
    let stream = match connected {
        Ok(stream) => stream,
        Err(error) => {
            let (reason, attempt, detail) = classify_connect_error(&error);
            if let Some(attempt) = attempt {
                let kind = if attempt == AttemptResult::Timeout {
                    FailureKind::Timeout
                } else {
                    FailureKind::ConnectFailed
                };
                destination.record(CallResult {
                    failure: Some(kind),
                    duration: elapsed,
                    probe,
                });
                destination.metrics.attempt(attempt, elapsed);
            }
            let tries = u32::from(attempt.is_some());
            return reject_after(reason, &detail, None, tries);
        }
    };
    destination.record(CallResult {
        failure: None,
        duration: elapsed,
        probe,
    });
    destination.metrics.attempt(AttemptResult::Success, elapsed);

    let app = hyper::upgrade::on(&mut req);
    let limits = TunnelLimits {
        idle: upstream.policy.timeouts.tunnel_idle,
        max: upstream.policy.timeouts.tunnel_max,
    };
    let tunnel_destination = std::sync::Arc::clone(&destination);
    let hard_stop = ctx.hard_stop.clone();
    ctx.tasks.spawn(async move {
        match app.await {
            Ok(app) => splice(app, stream, &tunnel_destination, limits, &hard_stop).await,
            Err(error) => debug!(%error, "CONNECT upgrade failed"),
        }
    });
    let response = Response::new(ResponseBody::empty());
    seen.finish(&destination, response.status(), Outcome::Ok, 1, None);
    response
}

/// Copies bytes both ways until either side closes, the tunnel has been silent both ways for
/// `timeouts.tunnel_idle`, it has lived for `timeouts.tunnel_max`, or the drain timeout is over.
async fn splice(
    app: hyper::upgrade::Upgraded,
    upstream: TcpStream,
    destination: &Destination,
    limits: TunnelLimits,
    hard_stop: &CancellationToken,
) {
    destination.metrics.tunnels_active.increment(1.0);
    let last_activity = Arc::new(AtomicU64::new(0));
    let opened = Instant::now();
    let mut app = Activity::new(TokioIo::new(app), &last_activity, opened);
    let mut upstream = Activity::new(upstream, &last_activity, opened);
    let cut = |kind: StreamTimeout, limit: Duration| {
        destination.metrics.stream_timeout(kind);
        info!(
            upstream = %destination.upstream,
            destination = %destination.authority,
            limit = %humantime::format_duration(limit),
            "tunnel closed by timeouts.{}",
            kind.label()
        );
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut app, &mut upstream) => match copied {
            Ok((to_upstream, to_app)) => {
                debug!(destination = %destination.authority, to_upstream, to_app, "tunnel closed");
            }
            Err(error) => {
                debug!(destination = %destination.authority, %error, "tunnel ended with an error");
            }
        },
        () = idle_for(limits.idle, &last_activity, opened) => cut(StreamTimeout::TunnelIdle, limits.idle),
        () = tokio::time::sleep(limits.max) => cut(StreamTimeout::TunnelMax, limits.max),
        () = hard_stop.cancelled() => debug!(destination = %destination.authority, "tunnel closed: drain timeout over"),
    }
    destination.metrics.tunnels_active.decrement(1.0);
}

/// A tunnel's time limits (`timeouts.tunnel_idle`, `timeouts.tunnel_max`).
#[derive(Debug, Clone, Copy)]
struct TunnelLimits {
    idle: Duration,
    max: Duration,
}

/// Returns once nothing has been read on either side for `idle`: sleeps until `idle` after
/// the last activity, looks again, and so on (one timer per `idle` period, not per read).
async fn idle_for(idle: Duration, last_activity: &AtomicU64, opened: Instant) {
    loop {
        let last = opened + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

pin_project_lite::pin_project! {
    /// A stream that notes when it last read something (milliseconds since `opened`).
    struct Activity<T> {
        #[pin]
        inner: T,
        last_activity: Arc<AtomicU64>,
        opened: Instant,
    }
}

impl<T> Activity<T> {
    fn new(inner: T, last_activity: &Arc<AtomicU64>, opened: Instant) -> Self {
        Activity {
            inner,
            last_activity: Arc::clone(last_activity),
            opened,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            let since = u64::try_from(this.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last_activity.store(since, Ordering::Relaxed);
        }
        read
    }
}

impl<T: AsyncWrite> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
