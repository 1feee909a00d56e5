//! Listeners: accept app connections and serve HTTP/1.1 on them, until shutdown.
//!
//! The egress listener is a forward proxy (absolute-form, origin-form with `Host`, CONNECT);
//! a route listener sends everything to its policy's endpoints, and also speaks HTTP/2
//! cleartext to an app that opens with the HTTP/2 preface (prior knowledge, as gRPC clients
//! do; docs/ARCHITECTURE.md §14). Both stop accepting on shutdown and let in-flight requests
//! finish within the grace period.
//!
//! Every listening socket is made by [`bind`], with an accept queue of [`BACKLOG`]: the
//! standard library's 128 drops the SYNs of an app that opens a few hundred connections at
//! once (a pool filling up under a burst), and each dropped SYN costs that request a
//! retransmission a second later.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::access::Seen;
use super::app_conn::{Clock, ConnPhase, Expired, RequestDone, Watched};
use super::body::ResponseBody;
use super::panic::CatchPanic;
use super::streams::{Guarded, Streams};
use super::{forward, tunnel, ProxyContext};
use crate::outcome::Reason;
use crate::telemetry::{StreamTimeout, Telemetry};

/// Limits that protect fusebox from its apps.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// The largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// How long an app may take to send a request head, from its first byte
    /// (`--header-timeout`).
    pub header_timeout: Duration,
    /// How long an app connection may sit idle between requests (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// How long an idle HTTP/1.1 app connection keeps hyper's state (buffers) before it rests
    /// with only its socket (`app_conn`; 1 s).
    pub rest_after: Duration,
}

/// Serves `listener` until `shutdown` is cancelled. Connections are spawned on
/// `ctx.tasks`; on shutdown each finishes its in-flight request and closes (the agent waits
/// for them, up to the drain timeout).
/// The accept queue of every listener (capped by the kernel's `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;

/// A listening socket on `addr` (`SO_REUSEADDR`, as the standard library's, and an accept
/// queue of [`BACKLOG`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    route: Option<Arc<ArcSwap<String>>>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(http1_builder(limits));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = AppConn {
            ctx: Arc::clone(&ctx),
            route: route.clone(),
            limits,
            peer,
        };
        spawn_connection(&builder, app, stream, shutdown.clone());
    }
}

fn http1_builder(limits: ServerLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Replaced by the connection's own clock (`app_conn`), which does not count idle time
        // between requests as a slow request head.
        .header_read_timeout(None)
        // hyper answers a bare 431 past its buffer; keep room above the limit so that the
        // check in `dispatch` answers first, with a local reply on a connection that stays up.
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    builder
}

/// What every request of one app connection shares.
#[derive(Clone)]
struct AppConn {
    ctx: Arc<ProxyContext>,
    /// The policy name of a route listener (a reload may rename it: read per request).
    route: Option<Arc<ArcSwap<String>>>,
    limits: ServerLimits,
    peer: SocketAddr,
}

/// Serves one app connection in a task of the agent's until it ends, shutdown finishes it,
/// or the drain timeout is over. On a route listener, a connection that opens with the HTTP/2
/// preface is served as HTTP/2.
fn spawn_connection(
    builder: &Arc<http1::Builder>,
    app: AppConn,
    stream: TcpStream,
    shutdown: CancellationToken,
) {
    let builder = Arc::clone(builder);
    app.ctx.clone().tasks.spawn(async move {
        let mut counted = Counted::new(app.ctx.registry.telemetry());
        if app.route.is_some() {
            match which_protocol(&app, &stream).await {
                // Boxed: the task of every HTTP/1.1 connection stays the size of HTTP/1.1's.
                Some(Protocol::Http2) => return Box::pin(serve_h2(app, stream, shutdown)).await,
                Some(Protocol::Http1) => {}
                None => return,
            }
        }
        serve_h1(&builder, app, stream, shutdown, &mut counted).await;
    });
}

/// One app connection in `fusebox_app_connections`: `active` from accept to close, `resting`
/// instead while it rests.
struct Counted {
    telemetry: Arc<Telemetry>,
    resting: bool,
}

impl Counted {
    fn new(telemetry: &Arc<Telemetry>) -> Counted {
        telemetry.app_connections_active.increment(1.0);
        Counted {
            telemetry: Arc::clone(telemetry),
            resting: false,
        }
    }

    fn set_resting(&mut self, resting: bool) {
        if self.resting != resting {
            self.gauge().decrement(1.0);
            self.resting = resting;
            self.gauge().increment(1.0);
        }
    }

    fn gauge(&self) -> &Gauge {
        if self.resting {
            &self.telemetry.app_connections_resting
        } else {
            &self.telemetry.app_connections_active
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge().decrement(1.0);
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a route listener's connection speaks.
enum Protocol {
    Http1,
    /// It opened with the HTTP/2 preface (prior knowledge).
    Http2,
}

/// Tells HTTP/2 from HTTP/1.1 by the app's first bytes, read without consuming them: the
/// first byte may take `--idle-timeout`, the rest of a preface no longer than a request head
/// may (`--header-timeout`: an app that sends `PRI` and stops is not held). `None`: the
/// connection ended or timed out (counted and logged).
async fn which_protocol(app: &AppConn, stream: &TcpStream) -> Option<Protocol> {
    let peer = app.peer;
    match tokio::time::timeout(app.limits.idle_timeout, stream.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return None,
        Err(_) => {
            debug!(%peer, "app connection closed: idle for --idle-timeout");
            return None;
        }
    }
    match tokio::time::timeout(app.limits.header_timeout, opens_with_h2_preface(stream)).await {
        Ok(true) => Some(Protocol::Http2),
        Ok(false) => Some(Protocol::Http1),
        Err(_) => {
            let snapshot = app.ctx.registry.load();
            let unrouted = snapshot.default().other_destination();
            unrouted.metrics.stream_timeout(StreamTimeout::Header);
            info!(%peer, "app connection closed: the HTTP/2 preface not whole within --header-timeout");
            None
        }
    }
}

/// Whether the app's first bytes are the HTTP/2 preface, read without consuming them.
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if buf[..n] != H2_PREFACE[..n] => return false,
            Ok(n) if n == H2_PREFACE.len() => return true,
            // A preface split across segments (rare): the rest is on its way. The socket stays
            // readable meanwhile, so it is looked at again after a pause that grows.
            Ok(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// Serves an HTTP/2 cleartext connection of a route listener: every stream is a request of its
/// own; the connection closes (`GOAWAY`) once idle for `--idle-timeout`, or at shutdown.
async fn serve_h2(app: AppConn, stream: TcpStream, shutdown: CancellationToken) {
    let streams = Streams::new();
    let service_streams = Arc::clone(&streams);
    let service_app = app.clone();
    let service = service_fn(move |req| {
        let stream = service_streams.open();
        let app = service_app.clone();
        async move {
            let response = handle(&app, req).await;
            Ok::<_, Infallible>(response.map(|body| Guarded::new(body, stream)))
        }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(app.limits.max_header_bytes).unwrap_or(u32::MAX))
        // Finds apps that vanished without closing.
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let hard_stop = app.ctx.hard_stop.clone();
    let idle = app.limits.idle_timeout;
    // After GOAWAY, an idle connection's app has `--header-timeout` to answer its PING (one
    // that never does is not waited for); on shutdown, the requests in progress have until
    // the drain timeout.
    let (closing, answer_within) = tokio::select! {
        result = connection.as_mut() => return connection_ended(&app, None, result),
        () = shutdown.cancelled() => ("shutdown", Duration::MAX),
        () = streams.idle(idle) => ("idle for --idle-timeout", app.limits.header_timeout),
    };
    debug!(peer = %app.peer, closing, "closing an HTTP/2 app connection");
    connection.as_mut().graceful_shutdown();
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = hard_stop.cancelled() => Ok(()),
        () = sleep_for(answer_within) => Ok(()),
    };
    connection_ended(&app, None, result);
}

/// Sleeps for `limit`; never returns for a limit too large to reach.
async fn sleep_for(limit: Duration) {
    match tokio::time::Instant::now().checked_add(limit) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Serves an HTTP/1.1 app connection, with its own clock (`app_conn`). Each time the
/// connection rests, hyper's connection is let go and a new one is built when the app sends
/// its next bytes.
async fn serve_h1(
    builder: &http1::Builder,
    app: AppConn,
    stream: TcpStream,
    shutdown: CancellationToken,
    counted: &mut Counted,
) {
    let phase = ConnPhase::new();
    let service_phase = Arc::clone(&phase);
    let service_app = app.clone();
    let mut service = service_fn(move |req| {
        service_phase.request_started();
        let done = RequestDone(Arc::clone(&service_phase));
        answer(service_app.clone(), done, req)
    });
    let limits = app.limits;
    let clock = Clock {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
        rest_after: limits.rest_after,
    };
    let mut socket = Watched::new(stream, Arc::clone(&phase), clock);
    let hard_stop = app.ctx.hard_stop.clone();
    loop {
        // Boxed, so that a resting connection's task holds only the socket.
        let mut connection = Box::new(
            builder
                .serve_connection(TokioIo::new(socket), service)
                .with_upgrades(),
        );
        // Boxed too: the resting task keeps none of this state.
        let result = Box::pin(async {
            match until_rest_or_shutdown(&mut connection, &phase, &shutdown).await {
                Serving::Ended(result) => result,
                Serving::Resting => {
                    // Idle, so hyper closes at once and hands back the socket.
                    Pin::new(&mut *connection).graceful_shutdown();
                    (&mut *connection).await
                }
                Serving::Shutdown => {
                    // Finish the request in flight (if any), then close instead of keeping
                    // alive; once the drain timeout is over, close whatever is left.
                    Pin::new(&mut *connection).graceful_shutdown();
                    tokio::select! {
                        result = &mut *connection => result,
                        () = hard_stop.cancelled() => Ok(()),
                    }
                }
            }
        })
        .await;
        let parts = match connection.into_parts() {
            Some(parts) if result.is_ok() && phase.is_resting() => parts,
            _ => return connection_ended(&app, Some(&phase), result),
        };
        socket = parts.io.into_inner();
        service = parts.service;
        socket.replay(&parts.read_buf);
        // hyper's read buffer, freed before the rest (not at the end of this iteration).
        drop(parts.read_buf);
        if !socket.has_replay() {
            let rest = limits.idle_timeout.saturating_sub(limits.rest_after);
            counted.set_resting(true);
            let woke = next_bytes(socket.get_ref(), rest, &shutdown).await;
            counted.set_resting(false);
            match woke {
                Woke::Bytes => {}
                Woke::Closed => return,
                Woke::Idle => {
                    phase.expire_idle();
                    return connection_ended(&app, Some(&phase), Ok(()));
                }
            }
        }
        phase.awake();
    }
}

/// Why serving an HTTP/1.1 connection stopped.
enum Serving<T> {
    /// hyper's connection ended.
    Ended(T),
    /// The connection started to rest.
    Resting,
    /// fusebox is shutting down.
    Shutdown,
}

/// Drives `connection` until it ends, rests or shutdown begins. The rest is marked by the
/// connection's own socket, inside this poll, so a flag is enough; the shutdown future is
/// polled once to register, then only once the token says it was cancelled (a task's waker
/// does not change), which keeps each wake-up of a busy connection to one poll of hyper's.
async fn until_rest_or_shutdown<F: Future + Unpin>(
    connection: &mut F,
    phase: &ConnPhase,
    shutdown: &CancellationToken,
) -> Serving<F::Output> {
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut *connection).poll(cx) {
            return Poll::Ready(Serving::Ended(result));
        }
        if phase.is_resting() {
            return Poll::Ready(Serving::Resting);
        }
        if !registered || shutdown.is_cancelled() {
            registered = true;
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Serving::Shutdown);
            }
        }
        Poll::Pending
    })
    .await
}

/// How a resting connection's wait ended.
enum Woke {
    /// The app sent its next bytes.
    Bytes,
    /// Shutdown, or the socket failed.
    Closed,
    /// Nothing for the rest of `--idle-timeout`.
    Idle,
}

/// Waits, holding only the socket, for the app's next bytes.
async fn next_bytes(stream: &TcpStream, rest: Duration, shutdown: &CancellationToken) -> Woke {
    tokio::select! {
        woke = tokio::time::timeout(rest, stream.readable()) => match woke {
            Ok(Ok(())) => Woke::Bytes,
            Ok(Err(_)) => Woke::Closed,
            Err(_) => Woke::Idle,
        },
        () = shutdown.cancelled() => Woke::Closed,
    }
}

/// One HTTP/1.1 request's answer, which may turn the connection into a tunnel.
async fn answer(
    app: AppConn,
    done: RequestDone,
    req: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    let connect = req.method() == Method::CONNECT;
    let response = handle(&app, req).await;
    if became_tunnel(connect, response.status()) {
        done.0.upgraded();
    }
    Ok(response.map(|body| Guarded::new(body, done)))
}

/// One request's answer; a panic while handling it becomes a local `500 internal`.
async fn handle(app: &AppConn, req: Request<Incoming>) -> Response<ResponseBody> {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let route = app.route.as_ref().map(|r| r.load_full());
    let route = route.as_deref().map(String::as_str);
    let handled = CatchPanic::new(dispatch(&app.ctx, route, app.limits, req)).await;
    handled.unwrap_or_else(|panic| {
        let peer = app.peer;
        error!(%peer, %method, %uri, panic, "request handling panicked: a fusebox bug");
        let seen = Seen::new(method, uri);
        let detail = "fusebox failed while handling this request (logged)";
        forward::reject_unrouted(&app.ctx, &seen, Reason::Internal, detail)
    })
}

/// Says why an app connection ended: a limit of its own clock (counted and logged), or an error.
fn connection_ended(app: &AppConn, phase: Option<&ConnPhase>, result: hyper::Result<()>) {
    let peer = app.peer;
    if let Some(head) = phase.and_then(ConnPhase::unread_head) {
        // The app got fusebox's reply instead of hyper's; count it as every local reply is.
        let _ = forward::reject_unrouted(&app.ctx, &Seen::unparsed(), head.reason(), head.detail());
        debug!(%peer, detail = head.detail(), "app connection closed: request head not readable");
        return;
    }
    match phase.and_then(ConnPhase::expired) {
        Some(Expired::Header) => {
            let snapshot = app.ctx.registry.load();
            let unrouted = snapshot.default().other_destination();
            unrouted.metrics.stream_timeout(StreamTimeout::Header);
            info!(%peer, "app connection closed: no complete request head within --header-timeout");
        }
        Some(Expired::Idle) => debug!(%peer, "app connection closed: idle for --idle-timeout"),
        Some(Expired::ResponseUnread) => {
            let snapshot = app.ctx.registry.load();
            let unrouted = snapshot.default().other_destination();
            unrouted
                .metrics
                .stream_timeout(StreamTimeout::ResponseUnread);
            info!(%peer, "app connection closed: the app took nothing of its response for --idle-timeout");
        }
        None => {
            if let Err(error) = result {
                debug!(%peer, %error, "app connection ended with an error");
            }
        }
    }
}

async fn dispatch(
    ctx: &Arc<ProxyContext>,
    route: Option<&str>,
    limits: ServerLimits,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if head_size(&req) > limits.max_header_bytes {
        let detail = format!(
            "request head is larger than {} bytes",
            limits.max_header_bytes
        );
        return forward::reject_unrouted(ctx, &Seen::of(&req), Reason::HeadersTooLarge, &detail);
    }
    match (req.method() == Method::CONNECT, route) {
        // Boxed: a tunnel's set-up is a large future, which would otherwise enlarge every plain
        // request's (with the fleet limit's call boxed too: 12.0 → 9.0 KB per request).
        (true, None) => Box::pin(tunnel::handle(ctx, req)).await,
        (true, Some(_)) => forward::reject_unrouted(
            ctx,
            &Seen::of(&req),
            Reason::BadRequest,
            "CONNECT is not supported on a route listener",
        ),
        (false, route) => forward::handle(ctx, route, req).await,
    }
}

/// Whether answering a request (a CONNECT or not) with `status` turns the connection into a tunnel: a CONNECT
/// that succeeded, or `101 Switching Protocols`.
fn became_tunnel(connect: bool, status: http::StatusCode) -> bool {
    (connect && status.is_success()) || status == http::StatusCode::SWITCHING_PROTOCOLS
}

/// A response on its way to the app; dropping it (sent or abandoned) ends the request's phase
/// of the connection's clock.
type AppBody = Guarded<RequestDone>;

/// The size of a request head as it was on the wire, near enough: request line and headers.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len() + 4
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 600 apps connect at once to a listener that accepts none of them yet: with the
    /// standard library's backlog of 128 most would wait for a SYN retransmission.
    #[tokio::test]
    async fn a_burst_of_connections_fits_the_accept_queue() {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if somaxconn.is_some_and(|max| max < 600) {
            return; // The kernel caps every backlog below the burst: nothing to show here.
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = listener.local_addr().unwrap();
        let connects = (0..600).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, 600);
        drop(listener);
    }

    /// Awaits every future, concurrently (the crate has no `futures` dependency).
    async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.expect("task"));
        }
        out
    }
}
