//! Where a destination's endpoints come from (docs/ARCHITECTURE.md §17): its sources (the
//! requested `host:port`, or the policy's `endpoints` entries), each an IP address or a name
//! resolved with its TTL.
//!
//! A set of IP addresses is filled when the destination is made and never asked again. A name
//! is resolved by the first request (which waits; concurrent ones wait for the same answer),
//! then again in the background by the first request after its TTL, bounded by `[dns]`
//! `min_ttl` / `max_ttl`: no request waits for a refresh. A refresh that fails keeps the last
//! good set and is tried again after `min_ttl` (at least a second). Addresses are not checked
//! here: the egress guard checks every address at connect time, as it did before.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::endpoints::EndpointSet;
use crate::policy::Dns;
use crate::upstream::resolve::{Resolved, Resolver};

/// One place the endpoints come from.
#[derive(Debug, Clone)]
pub struct Source {
    pub host: Box<str>,
    pub port: u16,
    /// The URI authority of requests to its endpoints (`host:port`).
    pub authority: Option<Authority>,
    /// The host is an IP address: nothing to resolve.
    pub ip: Option<IpAddr>,
}

impl Source {
    pub fn new(host: &str, port: u16) -> Source {
        let ip = host.parse::<IpAddr>().ok().map(crate::address::canonical);
        let mut text = super::AuthorityBuf::default();
        Source {
            host: host.into(),
            port,
            authority: Authority::try_from(text.format(host, port)).ok(),
            ip,
        }
    }
}

/// How a set's sources are resolved and kept fresh; see the module docs.
#[derive(Debug)]
pub struct Resolution {
    sources: Vec<Source>,
    dns: Dns,
    resolver: Option<Arc<Resolver>>,
    epoch: Instant,
    /// When the next refresh is due (milliseconds after `epoch`; `u64::MAX`: never).
    refresh_at_ms: AtomicU64,
    refreshing: AtomicBool,
    /// The first resolution, one at a time.
    first: tokio::sync::Mutex<()>,
}

impl Resolution {
    /// Fills `set` at once when every source is an IP address.
    pub fn new(
        sources: Vec<Source>,
        dns: Dns,
        resolver: Option<Arc<Resolver>>,
        set: &EndpointSet,
        now: Instant,
    ) -> Resolution {
        let fixed = sources.iter().all(|s| s.ip.is_some());
        if fixed {
            let addrs: Vec<_> = sources
                .iter()
                .filter_map(|s| Some((SocketAddr::new(s.ip?, s.port), s.authority.clone())))
                .collect();
            set.replace(&addrs, now);
        }
        Resolution {
            sources,
            dns,
            resolver,
            epoch: now,
            refresh_at_ms: AtomicU64::new(if fixed { u64::MAX } else { 0 }),
            refreshing: AtomicBool::new(false),
            first: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes sure `set` has members (resolving its names the first time, within `limit`: what
    /// is left of the try) and starts a background refresh when one is due. `now`: the try's
    /// start.
    pub async fn ensure(
        self: &Arc<Self>,
        set: &Arc<EndpointSet>,
        now: Instant,
        limit: Duration,
    ) -> Result<(), String> {
        let refresh_at = self.refresh_at_ms.load(Ordering::Relaxed);
        if refresh_at == u64::MAX {
            // IP addresses only: filled when made, nothing to refresh.
            return Ok(());
        }
        if set.is_empty() {
            return match tokio::time::timeout(limit, self.first_resolution(set)).await {
                Ok(resolved) => resolved,
                Err(_) => Err(format!("no DNS answer within {limit:?}")),
            };
        }
        if self.ms(now) >= refresh_at && !self.refreshing.swap(true, Ordering::AcqRel) {
            let (this, set) = (Arc::clone(self), Arc::clone(set));
            tokio::spawn(async move { this.refresh(&set).await });
        }
        Ok(())
    }

    /// Resolves the names the first time; concurrent requests wait for the same answer.
    async fn first_resolution(&self, set: &EndpointSet) -> Result<(), String> {
        if self.sources.is_empty() {
            return Ok(());
        }
        let _one = self.first.lock().await;
        if set.is_empty() {
            let ttl = self.resolve_into(set).await?;
            self.schedule(ttl);
        }
        Ok(())
    }

    async fn refresh(&self, set: &EndpointSet) {
        match self.resolve_into(set).await {
            Ok(ttl) => self.schedule(ttl),
            Err(error) => {
                let again = self.dns.min_ttl.max(Duration::from_secs(1));
                warn!(%error, retry_in_ms = again.as_millis() as u64, "DNS refresh failed; keeping the last good endpoints");
                self.schedule(again);
            }
        }
        self.refreshing.store(false, Ordering::Release);
    }

    fn schedule(&self, ttl: Duration) {
        let at = self.ms(Instant::now()) + ttl.as_millis() as u64;
        self.refresh_at_ms.store(at, Ordering::Relaxed);
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Resolves every source and replaces the members; answers the bounded TTL.
    async fn resolve_into(&self, set: &EndpointSet) -> Result<Duration, String> {
        let mut addrs = Vec::new();
        let mut ttl = self.dns.max_ttl;
        for source in &self.sources {
            let resolved = match source.ip {
                Some(ip) => Resolved {
                    addrs: vec![ip],
                    ttl: self.dns.max_ttl,
                },
                None => self.lookup(&source.host).await?,
            };
            ttl = ttl.min(resolved.ttl);
            for ip in resolved.addrs {
                let addr = SocketAddr::new(crate::address::canonical(ip), source.port);
                if !addrs.iter().any(|(known, _)| *known == addr) {
                    addrs.push((addr, source.authority.clone()));
                }
            }
        }
        // One order whatever order the server answers in (many rotate them): round robin
        // and a request's tried endpoints keep their meaning across refreshes.
        addrs.sort_by_key(|(addr, _)| *addr);
        debug!(
            endpoints = addrs.len(),
            ttl_ms = ttl.as_millis() as u64,
            "resolved"
        );
        set.replace(&addrs, Instant::now());
        Ok(ttl.clamp(self.dns.min_ttl, self.dns.max_ttl))
    }

    /// hickory when fusebox runs; the system's getaddrinfo (no TTL: `min_ttl`) without one.
    async fn lookup(&self, host: &str) -> Result<Resolved, String> {
        if let Some(resolver) = &self.resolver {
            return resolver.lookup(host).await;
        }
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        Ok(Resolved {
            addrs: found.map(|a| a.ip()).collect(),
            ttl: self.dns.min_ttl,
        })
    }
}
