//! `FakeUpstream`: a scripted HTTP server on a real loopback socket, standing in for the
//! upstream `b` that fusebox protects its caller from.
//!
//! Every request takes the next [`Reply`] from a script (the n-th request gets the n-th
//! reply, the last one repeats), optionally per path. Well-behaved replies are served by
//! hyper; misbehaviour is real socket behaviour, not a simulation: a reset closes the TCP
//! socket with `SO_LINGER 0` so the peer sees an RST, a stall keeps the connection open and
//! silent. The same script can be served over TLS (HTTP/1.1, or HTTP/2 when the server
//! config offers `h2` and the client picks it).
//!
//! The upstream records what it saw — request and connection counts, and the head and body
//! length (counted, never stored) of the last request — so tests can assert what fusebox
//! forwarded. Over TLS with a server config that asks for client certificates (mutual TLS), it
//! records the common name of the certificate each connection presented
//! ([`RecordedRequest::client_cn`]) and names it in every answer on that connection
//! ([`CLIENT_CN_HEADER`]). Dropping the upstream aborts its accept loop and every open
//! connection.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn StdError + Send + Sync>;
type ResponseBody = BoxBody<Bytes, BoxError>;

/// How the upstream answers one request. Every reply but `Echo` first reads the whole
/// request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, with the upstream's body (default: a line naming the status) and headers.
    Status(u16),
    /// Wait this long (real time), then answer as the inner reply.
    Delayed(Duration, Box<Reply>),
    /// Never answer; the connection stays open until the client or the test gives up.
    Stall,
    /// Send a head promising `promised` bytes, send `sent` of them, then reset the socket.
    ResetMidBody { promised: u64, sent: usize },
    /// Close the connection (FIN) without sending a response head.
    CloseBeforeHead,
    /// Reset the connection (RST) without sending a response head.
    ResetBeforeHead,
    /// 200, with the request body streamed back as it arrives.
    Echo,
    /// 200 with a body of this many bytes, generated on the fly (see [`download_byte`]).
    Download(u64),
}

impl Reply {
    /// This reply, after waiting `delay` before the response head.
    pub fn after(self, delay: Duration) -> Reply {
        Reply::Delayed(delay, Box::new(self))
    }

    /// The default mid-body reset: 64 KiB promised, 1 KiB sent.
    pub fn reset_mid_body() -> Reply {
        Reply::ResetMidBody {
            promised: 64 * 1024,
            sent: 1024,
        }
    }

    /// Peels off the `Delayed` layers: the total delay and the reply underneath.
    fn split_delay(self) -> (Duration, Reply) {
        match self {
            Reply::Delayed(delay, inner) => {
                let (more, reply) = inner.split_delay();
                (delay + more, reply)
            }
            reply => (Duration::ZERO, reply),
        }
    }
}

/// The byte at `offset` of every [`Reply::Download`] body (a repeating 0..251 pattern), so a
/// test can check that a large download arrived intact without keeping a copy.
pub fn download_byte(offset: u64) -> u8 {
    (offset % PATTERN_PERIOD) as u8
}

/// An address on which nothing listens: connecting to it is refused.
pub async fn refused_addr() -> SocketAddr {
    // On an address of 127/8 that nothing in the tests binds (they all bind 127.0.0.1), so
    // that the port, free when picked, cannot be taken meanwhile by another test's listener.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    SocketAddr::from(([127, 255, 255, 254], port))
}

/// The response header naming the common name of the client certificate the request's TLS
/// connection presented (absent without one).
pub const CLIENT_CN_HEADER: &str = "x-fake-upstream-client-cn";

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    /// As received: origin-form (`/path?query`) over HTTP/1.1.
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// Request body bytes read so far (final once the response has been received).
    pub body_len: u64,
    /// The common name of the client certificate its TLS connection presented, if any.
    pub client_cn: Option<String>,
}

/// Builds a [`FakeUpstream`]; every method replaces the script of the default path.
pub struct FakeUpstreamBuilder {
    default: Vec<Reply>,
    routes: Vec<(String, Vec<Reply>)>,
    body: Option<Bytes>,
    headers: Vec<(HeaderName, HeaderValue)>,
    delay: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    bind: SocketAddr,
}

impl FakeUpstreamBuilder {
    /// Listen on `addr` instead of 127.0.0.1:0 (another loopback address: another endpoint
    /// of one name, on the same port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Always answer this status.
    pub fn status(self, status: u16) -> Self {
        self.replies([Reply::Status(status)])
    }

    /// The n-th request gets the n-th status; the last one repeats.
    pub fn statuses(self, statuses: &[u16]) -> Self {
        self.replies(statuses.iter().map(|&s| Reply::Status(s)))
    }

    /// The n-th request gets the n-th reply; the last one repeats.
    pub fn replies(mut self, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.default = script(replies);
        self
    }

    /// A separate script for requests whose path is exactly `path` (with its own count).
    pub fn route(mut self, path: &str, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.routes.push((path.to_owned(), script(replies)));
        self
    }

    /// The body of every `Status` reply.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// An extra header on every response head (e.g. `Retry-After`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((
            HeaderName::try_from(name).expect("valid header name"),
            HeaderValue::try_from(value).expect("valid header value"),
        ));
        self
    }

    /// Wait this long before every response head (added to any per-reply delay).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Never answer.
    pub fn stall(self) -> Self {
        self.replies([Reply::Stall])
    }

    /// Send part of a body, then reset (see [`Reply::reset_mid_body`]).
    pub fn reset_mid_body(self) -> Self {
        self.replies([Reply::reset_mid_body()])
    }

    /// Read the request, then close without answering.
    pub fn close_before_head(self) -> Self {
        self.replies([Reply::CloseBeforeHead])
    }

    /// Read the request, then reset without answering.
    pub fn reset_before_head(self) -> Self {
        self.replies([Reply::ResetBeforeHead])
    }

    /// Answer 200 with the request body streamed back.
    pub fn echo(self) -> Self {
        self.replies([Reply::Echo])
    }

    /// Answer 200 with `len` generated bytes.
    pub fn download(self, len: u64) -> Self {
        self.replies([Reply::Download(len)])
    }

    /// Serve over TLS with this config (see `TestPki`).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Binds 127.0.0.1:0 (or its `bind` address) and starts serving.
    pub async fn start(self) -> FakeUpstream {
        let listener = TcpListener::bind(self.bind)
            .await
            .unwrap_or_else(|e| panic!("bind {}: {e}", self.bind));
        let addr = listener.local_addr().expect("local addr");
        let (hits, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            scripts: Mutex::new(Scripts {
                default: Script::new(self.default),
                routes: self
                    .routes
                    .into_iter()
                    .map(|(path, replies)| (path, Script::new(replies)))
                    .collect(),
            }),
            body: self.body,
            headers: self.headers,
            delay: self.delay,
            hits,
            connections: AtomicU64::new(0),
            last: Mutex::new(None),
            arrivals: Mutex::new(Vec::new()),
        });
        let acceptor = self.tls.map(TlsAcceptor::from);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), acceptor));
        FakeUpstream { addr, shared, task }
    }
}

fn script(replies: impl IntoIterator<Item = Reply>) -> Vec<Reply> {
    let replies: Vec<Reply> = replies.into_iter().collect();
    assert!(
        !replies.is_empty(),
        "a reply script needs at least one reply"
    );
    replies
}

/// A running fake upstream; see the module docs.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// A builder whose default script answers 200.
    pub fn builder() -> FakeUpstreamBuilder {
        FakeUpstreamBuilder {
            default: vec![Reply::Status(200)],
            routes: Vec::new(),
            body: None,
            headers: Vec::new(),
            delay: Duration::ZERO,
            tls: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// An upstream that always answers this status.
    pub async fn with_status(status: u16) -> FakeUpstream {
        Self::builder().status(status).start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT/path` (a leading `/` on `path` is optional).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// `https://localhost:PORT/path`: the name the test leaf certificate is issued for.
    pub fn https_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}/{}",
            self.addr.port(),
            path.trim_start_matches('/')
        )
    }

    /// Requests received (a request counts as soon as its head has been read).
    pub fn hits(&self) -> u64 {
        *self.shared.hits.borrow()
    }

    /// TCP connections accepted (including ones whose TLS handshake then failed).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have been received.
    pub async fn wait_hits(&self, n: u64) {
        let mut hits = self.shared.hits.subscribe();
        hits.wait_for(|&hits| hits >= n)
            .await
            .expect("the upstream outlives this borrow");
    }

    /// The last request received, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        let last = self.shared.last.lock().expect("lock");
        last.as_ref().map(|(head, body_len)| RecordedRequest {
            body_len: body_len.load(Ordering::SeqCst),
            ..head.clone()
        })
    }

    /// When each request head arrived, on tokio's clock.
    pub fn arrivals(&self) -> Vec<tokio::time::Instant> {
        self.shared.arrivals.lock().expect("lock").clone()
    }

    /// Replaces the default script (and restarts its count): e.g. a failing upstream heals.
    pub fn set_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.scripts.lock().expect("lock").default = Script::new(script(replies));
    }

    /// Stops the upstream and waits until its listener and connections are closed
    /// (dropping it only starts that).
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Replaces the default script with these statuses.
    pub fn set_statuses(&self, statuses: &[u16]) {
        self.set_replies(statuses.iter().map(|&s| Reply::Status(s)));
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

struct Shared {
    scripts: Mutex<Scripts>,
    body: Option<Bytes>,
    headers: Vec<(HeaderName, HeaderValue)>,
    delay: Duration,
    hits: watch::Sender<u64>,
    connections: AtomicU64,
    last: Mutex<Option<(RecordedRequest, Arc<AtomicU64>)>>,
    /// When each request head arrived, on tokio's clock (paused in schedule tests).
    arrivals: Mutex<Vec<tokio::time::Instant>>,
}

struct Scripts {
    default: Script,
    routes: Vec<(String, Script)>,
}

struct Script {
    replies: Vec<Reply>,
    served: usize,
}

impl Script {
    fn new(replies: Vec<Reply>) -> Self {
        Script { replies, served: 0 }
    }

    fn next(&mut self) -> Reply {
        let reply = self.replies[self.served.min(self.replies.len() - 1)].clone();
        self.served += 1;
        reply
    }
}

impl Shared {
    fn next_reply(&self, path: &str) -> Reply {
        let mut scripts = self.scripts.lock().expect("lock");
        let Scripts { default, routes } = &mut *scripts;
        routes
            .iter_mut()
            .find(|(route, _)| route == path)
            .map_or(default, |(_, script)| script)
            .next()
    }

    /// Records the request head and returns the counter for its body bytes.
    fn record<B>(&self, req: &Request<B>, client_cn: Option<&str>) -> Arc<AtomicU64> {
        let body_len = Arc::new(AtomicU64::new(0));
        let head = RecordedRequest {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body_len: 0,
            client_cn: client_cn.map(str::to_owned),
        };
        *self.last.lock().expect("lock") = Some((head, Arc::clone(&body_len)));
        self.arrivals
            .lock()
            .expect("lock")
            .push(tokio::time::Instant::now());
        self.hits.send_modify(|hits| *hits += 1);
        body_len
    }

    fn response(&self, status: StatusCode, body: ResponseBody) -> Response<ResponseBody> {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        for (name, value) in &self.headers {
            response.headers_mut().append(name.clone(), value.clone());
        }
        response
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve_connection(Arc::clone(&shared), stream, tls.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Per-connection switches the request handler uses to misbehave at the socket level.
#[derive(Default)]
struct Abort {
    /// Close with `SO_LINGER 0` (an RST) instead of a FIN.
    reset: AtomicBool,
    /// Drop the connection now.
    kill: Notify,
}

impl Abort {
    fn close(&self, reset: bool) {
        self.reset.store(reset, Ordering::SeqCst);
        self.kill.notify_one();
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, tls: Option<TlsAcceptor>) {
    // Small writes (a head, a partial body) must leave at once, before a reset.
    let _ = stream.set_nodelay(true);
    let io = match tls {
        None => Io::Plain(stream),
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(stream) => Io::Tls(Box::new(stream)),
            Err(_) => return,
        },
    };
    let h2 = matches!(&io, Io::Tls(s) if s.get_ref().1.alpn_protocol() == Some(b"h2"));
    let client_cn: Option<Arc<str>> = match &io {
        Io::Tls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Arc::from(common_name(leaf).unwrap_or_else(|| "?".to_owned()))),
        Io::Plain(_) => None,
    };
    let abort = Arc::new(Abort::default());
    let io = TokioIo::new(ResetOnDrop {
        io,
        abort: Arc::clone(&abort),
    });
    let service = {
        let abort = Arc::clone(&abort);
        hyper::service::service_fn(move |req| {
            handle(
                Arc::clone(&shared),
                Arc::clone(&abort),
                client_cn.clone(),
                req,
            )
        })
    };
    // Either branch ending drops the connection, and with it the socket.
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service);
        tokio::select! {
            _ = conn => {}
            () = abort.kill.notified() => {}
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        tokio::select! {
            _ = conn => {}
            () = abort.kill.notified() => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    abort: Arc<Abort>,
    client_cn: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Aborted> {
    let body_len = shared.record(&req, client_cn.as_deref());
    let mut response = answer(shared, abort, body_len, req).await?;
    if let Some(cn) = client_cn.as_deref() {
        let value = HeaderValue::try_from(cn).unwrap_or(HeaderValue::from_static("?"));
        response.headers_mut().insert(CLIENT_CN_HEADER, value);
    }
    Ok(response)
}

/// The scripted answer to a recorded request.
async fn answer(
    shared: Arc<Shared>,
    abort: Arc<Abort>,
    body_len: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Aborted> {
    let reply = shared.next_reply(req.uri().path());
    let body = req.into_body().map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            body_len.fetch_add(data.len() as u64, Ordering::SeqCst);
        }
        frame
    });
    let (delay, reply) = reply.split_delay();
    let delay = delay + shared.delay;

    if reply == Reply::Echo {
        tokio::time::sleep(delay).await;
        return Ok(shared.response(StatusCode::OK, body.map_err(BoxError::from).boxed()));
    }
    drain(body).await?;
    tokio::time::sleep(delay).await;
    match reply {
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).expect("valid status code");
            let body = shared.body.clone().unwrap_or_else(|| {
                let reason = status.canonical_reason().unwrap_or("");
                Bytes::from(format!("fake upstream: {code} {reason}\n"))
            });
            let mut response = shared.response(status, full(body));
            response
                .headers_mut()
                .entry(CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("text/plain"));
            Ok(response)
        }
        Reply::Download(len) => {
            let mut response = shared.response(StatusCode::OK, Generated::new(len, None).boxed());
            response
                .headers_mut()
                .entry(CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/octet-stream"));
            Ok(response)
        }
        Reply::ResetMidBody { promised, sent } => {
            assert!(
                (sent as u64) < promised,
                "a mid-body reset sends less than promised"
            );
            let body = Generated::new(sent as u64, Some(abort));
            let mut response = shared.response(StatusCode::OK, body.boxed());
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(promised));
            Ok(response)
        }
        Reply::Stall => std::future::pending().await,
        Reply::CloseBeforeHead | Reply::ResetBeforeHead => {
            abort.close(reply == Reply::ResetBeforeHead);
            Err(Aborted)
        }
        Reply::Echo | Reply::Delayed(..) => unreachable!("handled above"),
    }
}

/// Reads a body to its end, keeping nothing.
async fn drain<B>(mut body: B) -> Result<(), Aborted>
where
    B: Body + Unpin,
{
    while let Some(frame) = body.frame().await {
        frame.map_err(|_| Aborted)?;
    }
    Ok(())
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The error a handler returns to make hyper drop the connection without answering.
#[derive(Debug)]
struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fake upstream aborted the connection")
    }
}

impl StdError for Aborted {}

const PATTERN_PERIOD: u64 = 251;
/// A whole number of pattern periods, so every chunk starts at pattern offset 0.
const CHUNK_LEN: usize = 251 * 256;
static PATTERN: [u8; CHUNK_LEN] = pattern();

const fn pattern() -> [u8; CHUNK_LEN] {
    let mut bytes = [0; CHUNK_LEN];
    let mut i = 0;
    while i < CHUNK_LEN {
        bytes[i] = (i as u64 % PATTERN_PERIOD) as u8;
        i += 1;
    }
    bytes
}

/// A body of `remaining` pattern bytes produced chunk by chunk. With `reset`, it then waits
/// one turn (so hyper flushes what was sent) and resets the connection instead of ending.
struct Generated {
    remaining: u64,
    reset: Option<Arc<Abort>>,
    flushed: bool,
}

impl Generated {
    fn new(len: u64, reset: Option<Arc<Abort>>) -> Self {
        Generated {
            remaining: len,
            reset,
            flushed: false,
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining > 0 {
            let len = self.remaining.min(CHUNK_LEN as u64);
            self.remaining -= len;
            let chunk = Bytes::from_static(&PATTERN[..len as usize]);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(abort) = self.reset.clone() else {
            return Poll::Ready(None);
        };
        if !self.flushed {
            // hyper flushes its write buffer whenever the body is pending.
            self.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        abort.close(true);
        Poll::Ready(Some(Err(Box::new(Aborted))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.reset.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.reset.is_some() {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.remaining)
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connection's socket; closes it with an RST when the handler asked for a reset.
struct ResetOnDrop {
    io: Io,
    abort: Arc<Abort>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.abort.reset.load(Ordering::SeqCst) {
            let tcp = match &self.io {
                Io::Plain(tcp) => tcp,
                Io::Tls(tls) => tls.get_ref().0,
            };
            let _ = tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

/// The subject common name of a DER certificate (the first CN attribute of the subject), read
/// with a minimal DER walk: certificate → tbsCertificate → [version], serial, signature,
/// issuer, validity, subject.
pub fn common_name(cert: &[u8]) -> Option<String> {
    /// One DER element: (tag, contents, the bytes after it).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

    let (SEQUENCE, certificate, _) = tlv(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serial, signature algorithm, issuer, validity
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut subject, _) = tlv(rest)? else {
        return None;
    };
    while !subject.is_empty() {
        let (tag, set, after) = tlv(subject)?;
        subject = after;
        if tag != SET {
            return None;
        }
        let (SEQUENCE, attribute, _) = tlv(set)? else {
            return None;
        };
        let (0x06, oid, value) = tlv(attribute)? else {
            return None;
        };
        if oid == OID_CN {
            let (_, text, _) = tlv(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}
