//! fusebox's own keep-alive connections to cleartext HTTP/1.1 upstreams (docs/ARCHITECTURE.md
//! §1): the data path's common case, without hyper-util's pool.
//!
//! That pool cost about a tenth of a proxied request's instructions: hashing its pool key, three
//! map lookups, and a task spawned for every request to wait until the connection could be
//! pooled again. Here the idle connections live on their destination, which already is the
//! key ([`IdleConnections`]). A try takes the most recently used connection that is ready, or
//! opens one through the egress guard ([`connect`]); the response body gives it back when it
//! ends ([`Lease`]). A connection whose response was not read to its end, or whose try was
//! abandoned, is closed with it.
//!
//! A reused connection may have been closed by the upstream meanwhile. hyper then hands the
//! request back unwritten, and it goes out on another connection: nothing of it was sent.
//! At most `pool_max_idle` connections rest per destination; one idle for `pool_idle_timeout`
//! is not reused, and the agent's upkeep closes it within 5 s ([`IdleConnections::close_expired`]).
//!
//! TLS, HTTP/2 (gRPC) and protocol upgrades keep hyper-util's pooled client ([`super::client`]).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::debug;

use super::connect::{connect, ConnectError, ConnectRules};
use super::RequestBody;

type Sender = http1::SendRequest<RequestBody>;

/// The idle connections of one destination, oldest first.
#[derive(Debug, Default)]
pub struct IdleConnections {
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

impl IdleConnections {
    /// Locked for a few instructions, never across an await; a panic elsewhere while it was
    /// held cannot leave the list inconsistent.
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that is ready for a request; those idle for
    /// `timeout` as of `now` are closed first.
    fn take(&self, now: Instant, timeout: Duration) -> Option<Sender> {
        let mut idle = self.lock();
        let expired = idle.partition_point(|e| now.saturating_duration_since(e.since) >= timeout);
        idle.drain(..expired);
        let ready = idle.iter().rposition(|e| e.sender.is_ready())?;
        Some(idle.remove(ready).sender)
    }

    /// Keeps `sender` for the next request, unless its connection is closed (a response
    /// that ended with it) or `max_idle` connections rest already.
    fn give_back(&self, sender: Sender, now: Instant, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= max_idle {
            idle.retain(|e| !e.sender.is_closed());
        }
        if idle.len() < max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Closes the connections idle for `timeout` as of `now`, and forgets those the upstream
    /// closed.
    pub fn close_expired(&self, now: Instant, timeout: Duration) {
        self.lock()
            .retain(|e| !e.sender.is_closed() && now.saturating_duration_since(e.since) < timeout);
    }

    /// How many connections rest.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection lent to one response, until its body ends.
#[derive(Debug)]
pub struct Lease {
    sender: Sender,
    max_idle: usize,
}

impl Lease {
    /// The response was read to its end: the connection may serve another request.
    pub fn give_back(self, idle: &IdleConnections) {
        idle.give_back(self.sender, Instant::now(), self.max_idle);
    }
}

/// Where and how a destination's connections are opened and kept.
#[derive(Debug, Clone, Copy)]
pub struct Pool<'a> {
    pub idle: &'a IdleConnections,
    pub host: &'a str,
    pub port: u16,
    pub rules: &'a ConnectRules,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why a try on this path failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(ConnectError),
    /// hyper's error on the connection; `written`: the request may have been (partly) written.
    Http { error: hyper::Error, written: bool },
}

/// Sends `request` (absolute-form) in origin-form on a connection of `pool`; `now` is the
/// try's start.
pub async fn send(
    pool: Pool<'_>,
    mut request: Request<RequestBody>,
    now: Instant,
) -> Result<(Response<Incoming>, Lease), SendError> {
    to_origin_form(&mut request);
    loop {
        let (mut sender, reused) = match pool.idle.take(now, pool.idle_timeout) {
            Some(sender) => (sender, true),
            None => (Box::pin(open(&pool)).await?, false),
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                let lease = Lease {
                    sender,
                    max_idle: pool.max_idle,
                };
                return Ok((response, lease));
            }
            Err(mut error) => match error.take_message() {
                // Closed before the request was written: another connection gets it.
                Some(unsent) if reused => {
                    debug!(error = %error.into_error(), "kept-alive upstream connection closed; sending on another");
                    request = unsent;
                }
                unsent => {
                    let written = unsent.is_none();
                    let error = error.into_error();
                    return Err(SendError::Http { error, written });
                }
            },
        }
    }
}

/// A new connection through the egress guard, its hyper task spawned.
async fn open(pool: &Pool<'_>) -> Result<Sender, SendError> {
    let stream = connect(pool.host, pool.port, pool.rules)
        .await
        .map_err(SendError::Connect)?;
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| SendError::Http {
            error,
            written: false,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// What hyper-util's client does for HTTP/1: `Host` from the URI when the request has none,
/// and the target in origin-form (`/path?query`).
fn to_origin_form(request: &mut Request<RequestBody>) {
    if let Some(authority) = request.uri().authority() {
        if !request.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
    }
    let origin = match request.uri().path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    *request.uri_mut() = origin;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::guard::GuardRules;
    use crate::upstream::SelfAddrs;

    /// A connection the upstream closed while it rested, before fusebox's side of it noticed
    /// (its task has not run since: one thread, no await in between). hyper hands the request
    /// back unwritten, and it goes out on a new connection, once.
    #[tokio::test]
    async fn a_request_the_closed_idle_connection_could_not_take_goes_out_on_a_new_one() {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, RequestBody>(TokioIo::new(client_io))
            .await
            .unwrap();
        let closed = tokio::spawn(connection);
        tokio::task::yield_now().await;
        let idle = IdleConnections::default();
        assert!(sender.is_ready());
        idle.give_back(sender, Instant::now(), 8);
        drop(server_io);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
                head.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let rules = ConnectRules {
            guard: GuardRules {
                allow_private: true,
                allow_link_local: false,
            },
            timeout: Duration::from_secs(5),
            self_addrs: Arc::new(SelfAddrs::default()),
        };
        let pool = Pool {
            idle: &idle,
            host: "127.0.0.1",
            port,
            rules: &rules,
            idle_timeout: Duration::from_secs(90),
            max_idle: 8,
        };
        let mut request = Request::new(RequestBody::Full(Some("once".into())));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = format!("http://127.0.0.1:{port}/p").parse().unwrap();
        let (response, _lease) = send(pool, request, Instant::now()).await.unwrap();
        assert_eq!(response.status(), 200);
        let head = upstream.await.unwrap();
        assert!(head.starts_with("POST /p HTTP/1.1\r\n"), "{head}");
        let _ = closed.await.expect("the closed connection's task ended");
        assert!(idle.is_empty());
    }

    #[test]
    fn origin_form_keeps_path_and_query_and_sets_a_missing_host() {
        let mut request = Request::new(RequestBody::empty());
        *request.uri_mut() = "http://example.com:8080/a/b?c=d".parse().unwrap();
        to_origin_form(&mut request);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.headers()[header::HOST], "example.com:8080");

        let mut request = Request::new(RequestBody::empty());
        *request.uri_mut() = "http://example.com".parse().unwrap();
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("kept.example"));
        to_origin_form(&mut request);
        assert_eq!(request.uri(), "/");
        assert_eq!(request.headers()[header::HOST], "kept.example");
    }
}
