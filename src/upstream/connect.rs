//! Opening TCP connections to upstreams, through the egress guard.
//!
//! The host is resolved here, every resolved address is checked against the policy's
//! [`GuardRules`], and fusebox connects to an address it checked: a DNS answer that changes
//! between the check and the connect (rebinding) cannot slip a private address past the guard.
//! A destination that is one of fusebox's own listeners is refused as a loop.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::address::canonical;
use crate::guard::{self, Denied, GuardRules};

/// Why a connection to an upstream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Denied(Denied),
    #[error("{0} is fusebox's own listener")]
    Loop(SocketAddr),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("connect to {host}:{port} timed out after {after:?}")]
    Timeout {
        host: String,
        port: u16,
        after: Duration,
    },
    #[error("connect to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("request has no upstream host")]
    MissingHost,
}

/// The addresses fusebox itself listens on, to refuse requests that would loop back into it.
#[derive(Debug, Default)]
pub struct SelfAddrs(ArcSwap<Vec<SocketAddr>>);

impl SelfAddrs {
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        self.0.store(Arc::new(addrs));
    }

    /// Whether a connection to `addr` would reach one of fusebox's listeners. A listener on an
    /// unspecified address (`0.0.0.0`, `[::]`) is reached through every address of this host:
    /// loopback, unspecified, and any local interface's address (`10.0.0.5`).
    /// Addresses are compared in their canonical form, so that no spelling of an own address
    /// (IPv4-mapped `::ffff:127.0.0.1`, IPv4-compatible `::127.0.0.1`) gets past.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.0.load().iter().any(|own| {
            let own_ip = canonical(own.ip());
            own.port() == addr.port()
                && (own_ip == ip || (own_ip.is_unspecified() && is_this_host(ip)))
        })
    }
}

/// Whether `ip` is an address of this host. Asked of the kernel at the time of the call (a
/// socket can be bound only to a local address), so addresses added after start are known too;
/// only asked for a connection to one of fusebox's own ports.
fn is_this_host(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// What a policy says about opening connections.
#[derive(Debug, Clone)]
pub struct ConnectRules {
    pub guard: GuardRules,
    pub timeout: Duration,
    pub self_addrs: Arc<SelfAddrs>,
}

/// Resolves `host`, checks every address, and connects to the first allowed one that answers,
/// all within `rules.timeout`.
pub async fn connect(
    host: &str,
    port: u16,
    rules: &ConnectRules,
) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| ConnectError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
        if resolved.is_empty() {
            return Err(ConnectError::NoAddress {
                host: host.to_owned(),
            });
        }
        let allowed = guard::filter_allowed(rules.guard, resolved).map_err(ConnectError::Denied)?;
        if let Some(own) = allowed
            .iter()
            .find(|addr| rules.self_addrs.contains(**addr))
        {
            return Err(ConnectError::Loop(*own));
        }
        let mut last_error = None;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small request/response exchanges must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(source) => last_error = Some(ConnectError::Io { addr, source }),
            }
        }
        Err(last_error.unwrap_or_else(|| ConnectError::NoAddress {
            host: host.to_owned(),
        }))
    };
    match tokio::time::timeout(rules.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            host: host.to_owned(),
            port,
            after: rules.timeout,
        }),
    }
}

/// The connector for the pooled hyper client: [`connect`] as a `tower::Service<Uri>`.
#[derive(Debug, Clone)]
pub struct Connector {
    rules: Arc<ConnectRules>,
    pinned: Option<Arc<(String, u16)>>,
}

impl Connector {
    /// Connects to the host and port of each request's URI.
    pub fn new(rules: ConnectRules) -> Connector {
        Connector {
            rules: Arc::new(rules),
            pinned: None,
        }
    }

    /// Connects to `host:port` whatever the request's URI says. A policy's `endpoints` use this,
    /// so that the URI (HTTP/2 `:authority`, TLS SNI) can carry the logical host name
    /// (`host_rewrite`) while the connection goes to the endpoint.
    pub fn pinned(rules: ConnectRules, host: &str, port: u16) -> Connector {
        Connector {
            rules: Arc::new(rules),
            pinned: Some(Arc::from((host.to_owned(), port))),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let rules = Arc::clone(&self.rules);
        if let Some(pinned) = &self.pinned {
            let pinned = Arc::clone(pinned);
            return Box::pin(async move {
                connect(&pinned.0, pinned.1, &rules).await.map(TokioIo::new)
            });
        }
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::MissingHost)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            connect(host, port, &rules).await.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_addrs_match_exact_and_unspecified_listeners() {
        let own = SelfAddrs::default();
        own.set(vec![
            "127.0.0.1:15001".parse().unwrap(),
            "0.0.0.0:10000".parse().unwrap(),
        ]);
        assert!(own.contains("127.0.0.1:15001".parse().unwrap()));
        assert!(!own.contains("127.0.0.2:15001".parse().unwrap()));
        assert!(!own.contains("127.0.0.1:15002".parse().unwrap()));
        assert!(own.contains("127.0.0.5:10000".parse().unwrap()));
        assert!(own.contains("[::1]:10000".parse().unwrap()));
        assert!(!own.contains("10.1.2.3:10000".parse().unwrap()));
    }
}
