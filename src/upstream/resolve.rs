//! Resolving a destination's name into the addresses of its endpoint set, with how long the
//! answer may be kept (hickory-resolver: getaddrinfo has no TTLs).
//!
//! The server is `--dns-server IP:port` when given, the system's configuration
//! (`/etc/resolv.conf`, and `/etc/hosts` for names it lists) otherwise. hickory's own cache is
//! off: the endpoint set keeps the answer for its TTL, bounded by the policy's `[dns]`
//! `min_ttl` / `max_ttl`, and asks again after it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// A name's addresses and how long they may be kept (before the policy's bounds).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub addrs: Vec<IpAddr>,
    pub ttl: Duration,
}

/// The resolver of every destination name.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    /// Where it asks, for messages.
    server: String,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `server`, or the system's configured servers when `None`.
    pub fn new(server: Option<SocketAddr>) -> Result<Resolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut ns.connections {
                    connection.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![ns]);
                TokioResolver::builder_with_config(config, provider)
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        let inner = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        let server = server.map_or_else(|| "the system's resolver".to_owned(), |a| a.to_string());
        Ok(Resolver { inner, server })
    }

    /// The addresses of `host` (A and AAAA) and their TTL.
    pub async fn lookup(&self, host: &str) -> Result<Resolved, String> {
        let found = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| format!("{host}: {e} (asked {})", self.server))?;
        let ttl = found
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address (asked {})", self.server));
        }
        Ok(Resolved { addrs, ttl })
    }
}
