//! HTTPS interception (docs/ARCHITECTURE.md §13): a `CONNECT` to a destination whose policy
//! has `intercept = true` is answered 200 without an upstream connection; fusebox then
//! terminates the app's TLS with a leaf certificate of its local CA for the `CONNECT` host
//! (ALPN `h2` and `http/1.1`; an SNI naming another host is refused), and every request inside
//! goes through [`super::forward::handle`] as `https://host:port/...`: the whole pipeline, per
//! request, with TLS originated to the upstream and its certificate verified as usual.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ServerConfig};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, error, info, warn};

use super::access::{Intercepted, Seen};
use super::attempt::LocalAnswer;
use super::body::ResponseBody;
use super::panic::CatchPanic;
use super::streams::{Guarded, Streams};
use super::{forward, ProxyContext};
use crate::ca::LocalCa;
use crate::outcome::Reason;
use crate::registry::{Destination, Upstream};
use crate::telemetry::Interception;

/// The CA to intercept `upstream`'s `CONNECT`s with, when its policy intercepts; `None`: an
/// ordinary tunnel.
pub fn ca_for(ctx: &ProxyContext, upstream: &Upstream) -> Option<Arc<LocalCa>> {
    ctx.ca
        .as_ref()
        .filter(|_| upstream.policy.intercept)
        .map(|ca| ca.current())
}

/// The `200` for an intercepted `CONNECT` to `authority`, with the connection served once
/// hyper has sent it. No upstream connection is opened now: each request inside gets its own
/// tries.
pub fn accept(
    ctx: &Arc<ProxyContext>,
    ca: Arc<LocalCa>,
    authority: &str,
    req: &mut Request<Incoming>,
    destination: &Arc<Destination>,
) -> Result<Response<ResponseBody>, LocalAnswer> {
    let authority = Authority::try_from(authority)
        .map_err(|e| LocalAnswer::local(Reason::BadRequest, format!("CONNECT {authority}: {e}")))?;
    let app = hyper::upgrade::on(req);
    spawn(ctx, ca, app, authority, Arc::clone(destination));
    Ok(Response::new(ResponseBody::empty()))
}

/// Serves the intercepted connection behind `app` (the `CONNECT`'s upgrade) in a task of the
/// agent's, once hyper has sent the 200.
fn spawn(
    ctx: &Arc<ProxyContext>,
    ca: Arc<LocalCa>,
    app: OnUpgrade,
    authority: Authority,
    destination: Arc<Destination>,
) {
    let ctx = Arc::clone(ctx);
    let hard_stop = ctx.hard_stop.clone();
    ctx.clone().tasks.spawn(async move {
        let served = async {
            match app.await {
                Ok(app) => serve(ctx, ca, TokioIo::new(app), authority, &destination).await,
                Err(error) => debug!(%error, "CONNECT upgrade failed"),
            }
        };
        tokio::select! {
            () = served => {}
            () = hard_stop.cancelled() => {}
        }
    });
}

async fn serve(
    ctx: Arc<ProxyContext>,
    ca: Arc<LocalCa>,
    app: TokioIo<hyper::upgrade::Upgraded>,
    authority: Authority,
    destination: &Destination,
) {
    let limits = ctx.limits;
    // An app that never finishes its handshake is held no longer than a request head may take.
    let handshake = handshake(&ca, app, authority.host(), destination);
    let tls = match tokio::time::timeout(limits.header_timeout, handshake).await {
        Ok(Some(tls)) => tls,
        Ok(None) => return,
        Err(_) => {
            destination
                .metrics
                .interception(Interception::HandshakeFailed);
            info!(destination = %destination.authority, "intercepted TLS handshake not done within --header-timeout: closing");
            return;
        }
    };
    serve_requests(ctx, tls, authority, destination).await;
}

/// Serves the requests inside an intercepted connection (HTTP/1.1 or HTTP/2, as ALPN chose)
/// until the app closes it, it has been idle for `--idle-timeout`, or the agent drains.
async fn serve_requests(
    ctx: Arc<ProxyContext>,
    tls: tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>,
    authority: Authority,
    destination: &Destination,
) {
    let (limits, draining) = (ctx.limits, ctx.draining.clone());
    let builder = server_builder(&ctx);
    let streams = Streams::new();
    let service_streams = Arc::clone(&streams);
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        let authority = authority.clone();
        let stream = service_streams.open();
        async move {
            let response = answer(&ctx, &authority, req).await;
            Ok::<_, Infallible>(response.map(|body| Guarded::new(body, stream)))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let closing = tokio::select! {
        result = connection.as_mut() => return ended(result),
        () = streams.idle(limits.idle_timeout) => Closing::Idle,
        () = draining.cancelled() => Closing::Drain,
    };
    debug!(destination = %destination.authority, ?closing, "closing an intercepted connection gracefully");
    // HTTP/2: GOAWAY; HTTP/1.1: `Connection: close` on the response in progress, if any; then
    // TLS close_notify as the connection shuts down. An idle connection's app gets
    // `--header-timeout` to take part (an HTTP/2 app answers GOAWAY's PING); on a drain, the
    // requests in progress get until the drain timeout ends (the task is cancelled then).
    connection.as_mut().graceful_shutdown();
    let result = match closing {
        Closing::Idle => match tokio::time::timeout(limits.header_timeout, connection).await {
            Ok(result) => result,
            Err(_) => {
                return debug!("intercepted connection not closed by the app in time: dropped")
            }
        },
        Closing::Drain => connection.await,
    };
    ended(result);
}

/// The server for an intercepted connection's requests, under the app connections' limits.
fn server_builder(ctx: &ProxyContext) -> auto::Builder<TokioExecutor> {
    let limits = ctx.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size((limits.max_header_bytes * 2).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Why an intercepted connection is being closed.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// No request for `--idle-timeout`.
    Idle,
    /// The agent is draining.
    Drain,
}

fn ended(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        debug!(%error, "intercepted connection ended with an error");
    }
}

/// The TLS handshake with the app, presenting the leaf for `host`; `None` (counted and
/// logged) when the app names another host or the handshake fails.
async fn handshake(
    ca: &LocalCa,
    app: TokioIo<hyper::upgrade::Upgraded>,
    host: &str,
    destination: &Destination,
) -> Option<tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let refused = |result: Interception, why: &str| {
        destination.metrics.interception(result);
        info!(destination = %destination.authority, why, "intercepted TLS handshake refused");
    };
    let start = match LazyConfigAcceptor::new(Acceptor::default(), app).await {
        Ok(start) => start,
        Err(error) => {
            refused(Interception::HandshakeFailed, &error.to_string());
            return None;
        }
    };
    if let Some(sni) = start.client_hello().server_name() {
        if !sni.trim_end_matches('.').eq_ignore_ascii_case(host) {
            refused(
                Interception::SniMismatch,
                &format!("SNI {sni} is not {host}"),
            );
            return None;
        }
    }
    let leaf = match ca.leaf(host, SystemTime::now()) {
        Ok(leaf) => leaf,
        Err(error) => {
            error!(%error, "cannot mint a certificate for an intercepted connection");
            refused(Interception::HandshakeFailed, &error.to_string());
            return None;
        }
    };
    match start.into_stream(server_config(leaf)).await {
        Ok(tls) => {
            destination.metrics.interception(Interception::Ok);
            Some(tls)
        }
        Err(error) => {
            match refused_certificate(&error) {
                Some(alert) => ca_rejected(destination, alert),
                None => {
                    refused(Interception::HandshakeFailed, &error.to_string());
                    if error.kind() == std::io::ErrorKind::UnexpectedEof {
                        closed_silently(destination);
                    }
                }
            }
            None
        }
    }
}

/// The alert of an app that refused fusebox's certificate (it does not trust the local CA),
/// if that is how the handshake failed.
fn refused_certificate(error: &std::io::Error) -> Option<AlertDescription> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate),
        ) => Some(*alert),
        _ => None,
    }
}

/// Counts an app's refusal of fusebox's certificate, and says what to do about it at WARN,
/// once a minute per destination (an app retrying in a loop must not flood the log).
fn ca_rejected(destination: &Destination, alert: AlertDescription) {
    destination.metrics.interception(Interception::CaRejected);
    if destination
        .notes
        .warn_ca_rejected(tokio::time::Instant::now())
    {
        warn!(
            upstream = %destination.upstream,
            destination = %destination.authority,
            ?alert,
            "the app refused fusebox's certificate: it does not trust fusebox's local CA. Give \
             the app the CA (`fusebox ca show --dir DIR`; e.g. REQUESTS_CA_BUNDLE, \
             NODE_EXTRA_CA_CERTS, CARGO_HTTP_CAINFO), or set intercept = false for this \
             destination (logged once a minute per destination)"
        );
    }
}

/// An app that closed the handshake after fusebox's certificate without an alert: Node.js
/// (npm) and Java do that when they do not trust the CA, so it is counted `handshake_failed`
/// (it cannot be told apart from an app that died) but the fix is said, as for `ca_rejected`,
/// once a minute per destination.
fn closed_silently(destination: &Destination) {
    if destination
        .notes
        .warn_ca_rejected(tokio::time::Instant::now())
    {
        warn!(
            upstream = %destination.upstream,
            destination = %destination.authority,
            "the app closed the TLS handshake after fusebox's certificate without saying why: \
             Node.js (npm) and Java do that when they do not trust fusebox's local CA. Give the \
             app the CA (`fusebox ca show --dir DIR`; e.g. NODE_EXTRA_CA_CERTS, npm's cafile, a \
             Java trustStore), or set intercept = false for this destination (logged once a \
             minute per destination)"
        );
    }
}

/// One request inside an intercepted connection, as `https://{authority}{path}`: the `CONNECT`
/// authority, whatever the request itself names (no fronting to another host).
async fn answer(
    ctx: &ProxyContext,
    authority: &Authority,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    if req.method() == Method::CONNECT {
        let seen = Seen::of(&req);
        let detail = "CONNECT inside an intercepted connection";
        return forward::reject_unrouted(ctx, &seen, Reason::BadRequest, detail);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Ok(uri) = Uri::builder()
        .scheme(Scheme::HTTPS)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
    req.extensions_mut().insert(Intercepted);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    match CatchPanic::new(forward::handle(ctx, None, req)).await {
        Ok(response) => response,
        Err(panic) => {
            error!(%method, %uri, panic, "intercepted request handling panicked: a fusebox bug");
            let detail = "fusebox failed while handling this request (logged)";
            forward::reject_unrouted(ctx, &Seen::new(method, uri), Reason::Internal, detail)
        }
    }
}

/// A server configuration presenting `leaf`, offering HTTP/2 and HTTP/1.1.
fn server_config(leaf: Arc<CertifiedKey>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Leaf(leaf)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Always the one leaf of this connection.
#[derive(Debug)]
struct Leaf(Arc<CertifiedKey>);

impl ResolvesServerCert for Leaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
