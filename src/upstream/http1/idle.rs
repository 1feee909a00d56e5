//! The kept-alive connections resting at one destination, and the rule for taking one: a
//! connection serves only a try that would have made the same connection — same address, same
//! scheme, and for TLS the same rustls configuration (roots, `ca_file`, ALPN) and server name.
//! An `https://` request never goes out on a cleartext connection, nor the reverse, nor on a
//! connection verified under other roots.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{Connection, Pool};

/// What a connection was made for, as its [`Pool`] said when it was opened.
#[derive(Debug)]
pub(super) struct MadeFor {
    host: Box<str>,
    port: u16,
    /// For TLS: the configuration it was verified under (compared by identity: a reload that
    /// changes roots makes a new one) and the name its certificate was checked for.
    tls: Option<(Arc<rustls::ClientConfig>, Box<str>)>,
}

impl MadeFor {
    pub(super) fn new(pool: &Pool<'_>) -> MadeFor {
        MadeFor {
            host: pool.host.into(),
            port: pool.port,
            tls: pool
                .tls
                .map(|tls| (Arc::clone(tls.config), tls.server_name.into())),
        }
    }

    /// Whether `pool` would make this same connection.
    pub(super) fn serves(&self, pool: &Pool<'_>) -> bool {
        let tls = match (&self.tls, pool.tls) {
            (None, None) => true,
            (Some((config, name)), Some(tls)) => {
                Arc::ptr_eq(config, tls.config) && **name == *tls.server_name
            }
            _ => false,
        };
        tls && self.port == pool.port && *self.host == *pool.host
    }
}

/// The idle connections of one destination, oldest first.
#[derive(Debug, Default)]
pub struct IdleConnections {
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    conn: Connection,
    since: Instant,
    /// Not taken from then on: the upstream said it closes idle connections (`Keep-Alive:
    /// timeout=`), and a request written as it does would be lost in the race.
    until: Option<Instant>,
}

impl Idle {
    fn usable_at(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// When a connection that the upstream keeps idle for `limit` stops being taken: a second
/// before the upstream closes it, or halfway for limits under two seconds.
fn usable_until(since: Instant, limit: Duration) -> Instant {
    let margin = Duration::from_secs(1).min(limit / 2);
    since + (limit - margin)
}

impl IdleConnections {
    /// Locked for a few instructions, never across an await; a panic elsewhere while it was
    /// held cannot leave the list inconsistent.
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that `pool` would have made and that is still open;
    /// those idle for `timeout` as of `now` are closed first.
    pub(super) fn take(
        &self,
        pool: &Pool<'_>,
        now: Instant,
        timeout: Duration,
    ) -> Option<Connection> {
        loop {
            let mut latest = {
                let mut idle = self.lock();
                let expired =
                    idle.partition_point(|e| now.saturating_duration_since(e.since) >= timeout);
                idle.drain(..expired);
                let at = idle.iter().rposition(|e| e.conn.made_for.serves(pool))?;
                let latest = idle.remove(at);
                if !latest.usable_at(now) {
                    // Past the upstream's own idle limit: closed, and the next one looked at.
                    continue;
                }
                latest
            };
            if latest.conn.still_open() {
                return Some(latest.conn);
            }
        }
    }

    /// Keeps `conn` for the next request, until `idle_limit` (the upstream's `Keep-Alive:
    /// timeout=`) comes near; with `max_idle` connections resting already, the oldest is closed.
    pub(super) fn give_back(
        &self,
        conn: Connection,
        now: Instant,
        max_idle: usize,
        idle_limit: Option<Duration>,
    ) {
        if max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= max_idle {
            idle.remove(0);
        }
        let until = idle_limit.map(|limit| usable_until(now, limit));
        idle.push(Idle {
            conn,
            since: now,
            until,
        });
    }

    /// Closes the connections idle for `timeout` as of `now`, and those the upstream closed.
    pub fn close_expired(&self, now: Instant, timeout: Duration) {
        self.lock().retain_mut(|e| {
            now.saturating_duration_since(e.since) < timeout
                && e.usable_at(now)
                && e.conn.still_open()
        });
    }

    /// How many connections rest.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
