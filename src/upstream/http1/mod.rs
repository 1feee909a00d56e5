//! fusebox's own keep-alive connections to HTTP/1.1 upstreams, cleartext or TLS
//! (docs/ARCHITECTURE.md §1): the data path's common case, without hyper's client.
//!
//! hyper's client runs each connection in a task of its own and hands every request and
//! response across a channel; with hyper-util's pool on top (hashing its pool key, three map
//! lookups, a task per request) that was 30 % of a proxied request's instructions. Here a
//! try writes its request head on the connection itself (a body larger than 16 KiB while it
//! reads the response: an upstream may answer first), reads the response head with httparse
//! ([`head`]), and the response body reads the rest from the socket in the task that forwards
//! it to the app ([`Http1Body`]): one task per request, no channels.
//!
//! The idle connections live on their destination ([`IdleConnections`]), each with what made
//! it: address, scheme, and for TLS the rustls configuration and server name. A try takes the
//! most recently used one that it would have made itself (never an `https://` request on a
//! cleartext connection, nor the reverse), or opens one through the egress guard
//! ([`connect`]); the body gives it back when it has been read to its end. A connection whose
//! response was not read to its end, or whose try was abandoned, is closed.
//!
//! A resting connection may have been closed by the upstream. One the upstream closed (or
//! wrote to) is noticed when it is taken and not used; one whose first write fails is
//! replaced, the request going out on a new connection: nothing of it was sent. At most
//! `pool_max_idle` connections rest per destination; one idle for `pool_idle_timeout` is not
//! reused, and the agent's upkeep closes it within 5 s ([`IdleConnections::close_expired`]).
//!
//! A TLS connection offers `h2` and `http/1.1` (ALPN), as hyper's client does; an upstream
//! that chooses `h2` is dropped before anything is sent ([`SendError::ChoseHttp2`]), and the
//! destination's requests go to hyper-util's pooled client from then on, which speaks it.
//! Requests whose body streams (larger than `max_replay_bytes`, or of unknown length on its
//! first try), HTTP/2 (gRPC) and protocol upgrades keep that client too ([`super::client`]).

mod body;
pub mod framing;
pub mod head;
mod idle;
mod stream;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Response};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::io::poll_read_buf;
use tracing::debug;

pub(crate) use body::decode_all;
use body::Home;
pub use body::Http1Body;
use head::Parsed;
pub use idle::IdleConnections;
use idle::MadeFor;
use stream::Stream;

use super::connect::{connect, ConnectError, ConnectRules};

/// How much is read from a connection at a time.
const READ_SIZE: usize = 16 * 1024;
/// A request body up to this size is written with its head, in one system call.
const WRITE_WITH_HEAD: usize = 16 * 1024;
/// How much of a response body is read ahead, at least, while the request body is still
/// being written.
const READ_AHEAD: usize = 1024 * 1024;
/// A connection's head buffer is let go once it has grown past this.
const KEEP_WRITE_CAPACITY: usize = 4 * 1024;

/// One connection to an upstream, with its buffers.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    /// Bytes read and not yet used: the rest of a response.
    read: BytesMut,
    /// The request head being written (kept for its capacity).
    write: Vec<u8>,
    /// What made it: only a try that would make the same connection may reuse it (boxed: a
    /// response body carries its connection inline).
    made_for: Box<MadeFor>,
}

impl Connection {
    fn new(stream: Stream, made_for: MadeFor) -> Self {
        Connection {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            made_for: Box::new(made_for),
        }
    }

    /// Whether a resting connection can carry a request (see [`Stream::still_open`]).
    fn still_open(&mut self) -> bool {
        self.read.is_empty() && self.stream.still_open()
    }
}

/// Where and how a destination's connections are opened and kept.
#[derive(Debug, Clone, Copy)]
pub struct Pool<'a> {
    /// The destination's resting connections; a response body gives its connection back there.
    pub idle: &'a Arc<IdleConnections>,
    pub host: &'a str,
    pub port: u16,
    /// For `https://` upstreams: the TLS settings and the server name to verify.
    pub tls: Option<Tls<'a>>,
    pub rules: &'a ConnectRules,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// Open a new connection, whatever rests: the request goes again after a kept-alive
    /// connection ended before any answer ([`SendError::Unanswered`]).
    pub fresh: bool,
    /// A TCP connection to this pool's address already opened for the try (RFC 8305's race,
    /// in the proxy): used before anything else, once.
    pub opened: Option<&'a std::sync::Mutex<Option<TcpStream>>>,
}

/// How connections to an `https://` upstream are secured.
#[derive(Debug, Clone, Copy)]
pub struct Tls<'a> {
    /// The policy's rustls configuration; ALPN offers `h2` and `http/1.1`.
    pub config: &'a Arc<rustls::ClientConfig>,
    /// The name the certificate must carry (and SNI): the policy's `sni`, else the URI's host.
    pub server_name: &'a str,
}

/// Why a try on this path failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    #[error("{0}")]
    Connect(ConnectError),
    /// The TLS handshake failed: nothing was sent.
    #[error("{0}")]
    Tls(io::Error),
    /// The upstream chose HTTP/2 in the TLS handshake: nothing was sent, and requests to it
    /// belong on hyper's client.
    #[error("the upstream chose HTTP/2")]
    ChoseHttp2,
    /// Writing or reading failed; `written`: the request may have been (partly) written.
    #[error("{error}")]
    Io { error: io::Error, written: bool },
    /// The upstream closed the connection before a whole response head.
    #[error("the connection was closed")]
    Closed,
    /// The upstream closed (`error`: or reset) the connection after the request was written,
    /// before any byte of an answer; `reused`: on a kept-alive connection (which it may have
    /// closed as the request went out, without acting on it).
    #[error("the connection was closed before any answer")]
    Unanswered {
        error: Option<io::Error>,
        reused: bool,
    },
    /// The response head cannot be forwarded.
    #[error("{0}")]
    BadResponse(String),
}

/// Sends the request `head` (absolute-form URI) with `body`, known in full, on a connection of
/// `pool`, and reads the response head; `now` is the try's start.
pub async fn send(
    pool: Pool<'_>,
    head: &Parts,
    body: Option<&Bytes>,
    now: Instant,
) -> Result<Response<Http1Body>, SendError> {
    loop {
        let opened = pool
            .opened
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        let resting = if pool.fresh || opened.is_some() {
            None
        } else {
            pool.idle.take(&pool, now, pool.idle_timeout)
        };
        let (mut conn, reused) = match (resting, opened) {
            (Some(conn), _) => (conn, true),
            (None, Some(tcp)) => (Box::pin(secure(&pool, tcp)).await?, false),
            (None, None) => (Box::pin(open(&pool)).await?, false),
        };
        let body_len = body.map(Bytes::len);
        head::write_request_head(
            &mut conn.write,
            &head.method,
            &head.uri,
            &head.headers,
            body_len,
        );
        match write_request(&mut conn, body).await {
            Ok(rest) => {
                let home = Home {
                    idle: Arc::clone(pool.idle),
                    max_idle: pool.max_idle,
                    idle_limit: None,
                };
                return match read_head(conn, rest, &head.method, home).await {
                    Err(SendError::Unanswered { error, .. }) => {
                        Err(SendError::Unanswered { error, reused })
                    }
                    read => read,
                };
            }
            // Nothing of the request went out: another connection gets it.
            Err((error, 0)) if reused => {
                debug!(%error, "kept-alive upstream connection closed; sending on another");
            }
            Err((error, written)) => {
                let written = written > 0;
                return Err(SendError::Io { error, written });
            }
        }
    }
}

/// Writes the head in `conn.write`, with `body` if it is small; returns the part of `body`
/// still to be written (all of a larger one), or, on failure, how many bytes went out.
async fn write_request<'b>(
    conn: &mut Connection,
    body: Option<&'b Bytes>,
) -> Result<&'b [u8], (io::Error, usize)> {
    let Connection { stream, write, .. } = conn;
    let mut written = 0;
    let rest: &[u8] = match body {
        Some(body) if body.len() <= WRITE_WITH_HEAD => {
            write.extend_from_slice(body);
            &[]
        }
        Some(body) => body,
        None => &[],
    };
    let mut wrote = write_all(stream, write, &mut written).await;
    if wrote.is_ok() {
        // TLS may hold the last records back; plain TCP has nothing to flush.
        wrote = stream.flush().await;
    }
    if write.capacity() > KEEP_WRITE_CAPACITY {
        // A resting connection keeps room for a head, not for the largest body it sent.
        *write = Vec::new();
    }
    wrote.map(|()| rest).map_err(|error| (error, written))
}

async fn write_all(stream: &mut Stream, mut bytes: &[u8], written: &mut usize) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = stream.write(bytes).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Writes the `rest` of the request body while it reads the response head to a `method`
/// request, skipping interim (1xx) responses.
///
/// An upstream may answer before it has read the whole body. An answer that closes the
/// connection (a 413 or a 401 with `Connection: close`, RFC 9112 §9.6) ends the writing: it is
/// forwarded at once, the rest of the body is not sent. One that keeps the connection open is
/// forwarded once the body is written, since the upstream may be answering as it reads (an
/// echo); meanwhile as much of its body is read ahead as the request body's size, or
/// [`READ_AHEAD`] if that is more. An answer that outgrows that while the upstream does not
/// read the upload is forwarded then, the rest of the upload not sent (it would otherwise wait
/// for the try's timeout). A write that fails once the upstream has answered does not lose
/// the answer. A connection whose request was not written whole is not reused.
async fn read_head(
    mut conn: Connection,
    mut rest: &[u8],
    method: &Method,
    home: Home,
) -> Result<Response<Http1Body>, SendError> {
    let mut write_failed = None;
    let mut answered: Option<head::Head> = None;
    let mut received = false;
    let read_ahead_limit = READ_AHEAD.max(rest.len());
    loop {
        if answered.is_none() && !conn.read.is_empty() {
            match head::parse_response(&mut conn.read, method).map_err(SendError::BadResponse)? {
                Parsed::Final(head) => answered = Some(head),
                Parsed::Interim(len) => {
                    conn.read.advance(len);
                    continue;
                }
                Parsed::Partial => {}
            }
        }
        let outgrown = conn.read.len() >= read_ahead_limit;
        let failed = write_failed.is_some();
        if let Some((head, reuse)) = ready(&mut answered, rest.is_empty(), failed, outgrown) {
            return Ok(answer(conn, head, reuse, home));
        }
        conn.read.reserve(READ_SIZE);
        let read_error = match read_or_write(&mut conn, &mut rest).await {
            Ok(Step::Read(0)) => match answered.take() {
                // Closed after answering: the body's framing says whether it came whole.
                Some(head) => return Ok(answer(conn, head, false, home)),
                None => None,
            },
            Ok(Step::Read(_)) => {
                received = true;
                continue;
            }
            Ok(Step::Wrote) => continue,
            Err(Failed::Write(error)) => {
                // The upstream may have answered before it closed: read what it sent.
                write_failed = Some(error);
                rest = &[];
                continue;
            }
            Err(Failed::Read(error)) => Some(error),
        };
        return Err(no_answer(received, write_failed, read_error));
    }
}

/// The answer to forward now, and whether its connection may be reused: once the request went
/// out whole, or never will (the upstream closes the connection, or a write failed), or once
/// the answer has `outgrown` the read-ahead while the upstream does not read the upload
/// (which then stops). `None`: keep writing and reading.
fn ready(
    answered: &mut Option<head::Head>,
    sent_all: bool,
    write_failed: bool,
    outgrown: bool,
) -> Option<(head::Head, bool)> {
    let head = answered.take()?;
    let sent_whole = sent_all && !write_failed;
    if sent_whole || !head.keep_alive || write_failed || outgrown {
        let reuse = head.keep_alive && sent_whole;
        return Some((head, reuse));
    }
    *answered = Some(head);
    None
}

/// Why a connection ended without an answer to forward: before any byte of one with the
/// request written whole ([`SendError::Unanswered`]), after part of one, or after a failed write.
fn no_answer(
    received: bool,
    write_failed: Option<io::Error>,
    read_error: Option<io::Error>,
) -> SendError {
    match (write_failed, read_error) {
        (Some(error), _) => SendError::Io {
            error,
            written: true,
        },
        (None, error) if !received => SendError::Unanswered {
            error,
            reused: false,
        },
        (None, Some(error)) => SendError::Io {
            error,
            written: true,
        },
        (None, None) => SendError::Closed,
    }
}

/// The response of `head`, its body read from `conn`; its connection goes `home` afterwards
/// only when `reuse`, before the upstream's `Keep-Alive: timeout=` (if any) runs out.
fn answer(conn: Connection, head: head::Head, reuse: bool, home: Home) -> Response<Http1Body> {
    let home = reuse.then(|| Home {
        idle_limit: head.idle_limit,
        ..home
    });
    let body = Http1Body::new(conn, head.framing, home);
    head.response.map(|()| body)
}

/// What one step of [`read_head`] did.
enum Step {
    /// Read this many bytes of the response (0: the upstream closed).
    Read(usize),
    /// Wrote some of the request body.
    Wrote,
}

/// Which side of a connection failed.
enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// Reads what the upstream sent if there is anything, else writes some of `rest`; pending
/// until either can be done. Reading comes first: an answer may end the writing.
fn read_or_write<'a, 'b>(
    conn: &'a mut Connection,
    rest: &'a mut &'b [u8],
) -> impl Future<Output = Result<Step, Failed>> + use<'a, 'b> {
    std::future::poll_fn(move |cx| {
        let Connection {
            stream, read: buf, ..
        } = &mut *conn;
        if let Poll::Ready(result) = poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            return Poll::Ready(result.map(Step::Read).map_err(Failed::Read));
        }
        if rest.is_empty() {
            // Waits for the answer, once what TLS may have held back is out.
            return match Pin::new(stream).poll_flush(cx) {
                Poll::Ready(Err(error)) => Poll::Ready(Err(Failed::Write(error))),
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
            };
        }
        Pin::new(stream)
            .poll_write(cx, rest)
            .map(|wrote| match wrote {
                Ok(0) => Err(Failed::Write(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    *rest = &rest[n..];
                    Ok(Step::Wrote)
                }
                Err(error) => Err(Failed::Write(error)),
            })
    })
}

/// A new connection through the egress guard, secured with TLS for an `https://` upstream.
async fn open(pool: &Pool<'_>) -> Result<Connection, SendError> {
    let tcp = connect(pool.host, pool.port, pool.rules)
        .await
        .map_err(SendError::Connect)?;
    secure(pool, tcp).await
}

/// A connection on `tcp`, with the pool's TLS handshake when it has one.
async fn secure(pool: &Pool<'_>, tcp: TcpStream) -> Result<Connection, SendError> {
    let Some(tls) = pool.tls else {
        return Ok(Connection::new(Stream::Plain(tcp), MadeFor::new(pool)));
    };
    let name = ServerName::try_from(tls.server_name.to_owned())
        .map_err(|e| SendError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let secured = TlsConnector::from(Arc::clone(tls.config))
        .connect(name, tcp)
        .await
        .map_err(SendError::Tls)?;
    if secured.get_ref().1.alpn_protocol() == Some(b"h2") {
        return Err(SendError::ChoseHttp2);
    }
    Ok(Connection::new(
        Stream::Tls(Box::new(secured)),
        MadeFor::new(pool),
    ))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn rules() -> ConnectRules {
        ConnectRules {
            guard: crate::guard::GuardRules {
                allow_private: true,
                allow_link_local: true,
            },
            timeout: Duration::from_secs(1),
            self_addrs: Arc::default(),
        }
    }

    /// A pool of connections to 127.0.0.1:1, cleartext or with `tls`.
    fn pool<'a>(
        idle: &'a Arc<IdleConnections>,
        rules: &'a ConnectRules,
        tls: Option<Tls<'a>>,
    ) -> Pool<'a> {
        Pool {
            idle,
            host: "127.0.0.1",
            port: 1,
            tls,
            rules,
            idle_timeout: Duration::from_secs(90),
            max_idle: 8,
            fresh: false,
            opened: None,
        }
    }

    fn tls_config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A connected pair on loopback: fusebox's side, made for `pool`, and the upstream's.
    async fn pair_for(pool: &Pool<'_>) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let conn = Connection::new(Stream::Plain(ours.unwrap()), MadeFor::new(pool));
        (conn, theirs.unwrap().0)
    }

    /// A connected pair made for a cleartext pool.
    async fn pair() -> (Connection, TcpStream) {
        let (idle, rules) = (Arc::new(IdleConnections::default()), rules());
        pair_for(&pool(&idle, &rules, None)).await
    }

    /// Makes the runtime's IO driver take in what happened on every socket so far: a round
    /// trip on a pair of its own, after the events of interest (loopback delivers at once).
    async fn let_the_driver_see() {
        let (mut a, mut b) = pair().await;
        b.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        a.stream.read_exact(&mut byte).await.unwrap();
    }

    #[tokio::test]
    async fn a_resting_connection_serves_only_a_try_that_would_make_the_same_one() {
        let (idle, rules) = (Arc::new(IdleConnections::default()), rules());
        let (config, other_roots) = (tls_config(), tls_config());
        let tls = |config, server_name| {
            Some(Tls {
                config,
                server_name,
            })
        };
        let plain = pool(&idle, &rules, None);
        let secured = pool(&idle, &rules, tls(&config, "a.test"));
        let now = Instant::now();
        let (cleartext, _a) = pair_for(&plain).await;
        idle.give_back(cleartext, now, 8, None);
        let timeout = Duration::from_secs(90);
        assert!(
            idle.take(&secured, now, timeout).is_none(),
            "https on cleartext"
        );
        let (verified, _b) = pair_for(&secured).await;
        idle.give_back(verified, now, 8, None);
        for other in [
            pool(&idle, &rules, tls(&other_roots, "a.test")),
            pool(&idle, &rules, tls(&config, "b.test")),
            Pool { port: 2, ..secured },
            Pool {
                host: "127.0.0.2",
                ..secured
            },
        ] {
            assert!(idle.take(&other, now, timeout).is_none(), "{other:?}");
        }
        let taken = idle.take(&plain, now, timeout).expect("the cleartext one");
        assert!(taken.made_for.serves(&plain));
        let taken = idle.take(&secured, now, timeout).expect("the TLS one");
        assert!(taken.made_for.serves(&secured));
        assert!(idle.is_empty());
    }

    #[tokio::test]
    async fn a_resting_connection_the_upstream_closed_or_wrote_to_is_not_taken() {
        let (idle, rules) = (Arc::new(IdleConnections::default()), rules());
        let plain = pool(&idle, &rules, None);
        let now = Instant::now();
        let (open_conn, _kept) = pair().await;
        let (closed, upstream) = pair().await;
        let (written_to, mut chatty) = pair().await;
        idle.give_back(open_conn, now, 8, None);
        idle.give_back(closed, now, 8, None);
        idle.give_back(written_to, now, 8, None);
        drop(upstream);
        chatty.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let_the_driver_see().await;
        let mut taken = idle
            .take(&plain, now, Duration::from_secs(90))
            .expect("the open one");
        assert!(taken.still_open());
        assert!(
            idle.is_empty(),
            "the closed and the written-to ones are gone"
        );
    }

    #[tokio::test]
    async fn idle_connections_expire_and_at_most_max_idle_rest() {
        let (idle, rules) = (Arc::new(IdleConnections::default()), rules());
        let plain = pool(&idle, &rules, None);
        let start = Instant::now();
        let mut upstreams = Vec::new();
        for n in 0..3 {
            let (conn, upstream) = pair().await;
            upstreams.push(upstream);
            idle.give_back(conn, start + Duration::from_secs(n), 2, None);
        }
        assert_eq!(idle.len(), 2, "the oldest was closed");
        idle.close_expired(start + Duration::from_secs(91), Duration::from_secs(90));
        assert_eq!(idle.len(), 1, "the one given back at 1 s expired");
        assert!(idle
            .take(
                &plain,
                start + Duration::from_secs(92),
                Duration::from_secs(90)
            )
            .is_none());
        assert!(idle.is_empty());
    }

    #[tokio::test]
    async fn a_connection_is_not_taken_near_the_upstream_s_keep_alive_timeout() {
        let (idle, rules) = (Arc::new(IdleConnections::default()), rules());
        let plain = pool(&idle, &rules, None);
        let (start, timeout) = (Instant::now(), Duration::from_secs(90));
        let (five, _a) = pair().await;
        idle.give_back(five, start, 8, Some(Duration::from_secs(5)));
        let at = |ms| start + Duration::from_millis(ms);
        assert!(
            idle.take(&plain, at(3_999), timeout).is_some(),
            "within 5 s less a second"
        );
        let (five, _b) = pair().await;
        idle.give_back(five, start, 8, Some(Duration::from_secs(5)));
        assert!(
            idle.take(&plain, at(4_000), timeout).is_none(),
            "a second before the upstream closes it"
        );
        assert!(idle.is_empty(), "closed, not kept");
        // A short limit keeps half of it; `timeout=0` is never reused.
        let (one, _c) = pair().await;
        idle.give_back(one, start, 8, Some(Duration::from_secs(1)));
        assert!(idle.take(&plain, at(499), timeout).is_some());
        let (zero, _d) = pair().await;
        idle.give_back(zero, start, 8, Some(Duration::ZERO));
        assert!(idle.take(&plain, start, timeout).is_none());
        // The upkeep closes them too.
        let (five, _e) = pair().await;
        idle.give_back(five, start, 8, Some(Duration::from_secs(5)));
        idle.close_expired(at(4_000), timeout);
        assert!(idle.is_empty());
    }
}
