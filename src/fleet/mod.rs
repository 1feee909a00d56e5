//! Fleet-wide rate limits (docs/ARCHITECTURE.md §15): `[rate_limit] scope = "fleet"` makes a
//! destination's `rps` shared by every fusebox that points at the same Redis (`--redis`).
//!
//! - The limit is GCRA evaluated atomically in Redis by a server-side script (`gcra.lua`, the
//!   way redis-cell does it), on the server's clock, one key per policy × destination with a
//!   hash tag, so that it works on Redis Cluster too.
//! - A request does not pay a Redis round trip: tokens are leased in small batches
//!   ([`FleetLimit::batch`], a tenth of a second's worth) that expire after [`LEASE_FOR`], so that
//!   the fleet total stays within the limit (leased tokens are spent in Redis when leased; an
//!   expired lease is lost, never over-spent). One request per destination refills the lease
//!   while the others wait for that one round trip.
//! - Redis failing never fails a request: every call has a tight timeout ([`REDIS_TIMEOUT`]);
//!   on an error the destination falls back to a local limit (`fleet_fallback_rps`, default
//!   `rps / fleet_size_hint`), logs the change once, counts the error, and asks Redis again
//!   after a backoff (100 ms doubling to 5 s) instead of on every request. The connection
//!   itself reconnects with backoff (the `redis` crate's connection manager).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::pipeline::limiter::{LimitDecision, RateLimiter};
use crate::policy::{LimitMode, Policy};
use crate::telemetry::DestinationMetrics;
pub use crate::telemetry::FleetMode;

/// How long one Redis call may take before the request uses the local fallback.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// How long leased tokens stay usable.
pub const LEASE_FOR: Duration = Duration::from_millis(250);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The shared Redis of a fusebox (`--redis`): one multiplexed, self-reconnecting connection.
pub struct FleetRedis {
    connection: ConnectionManager,
    script: Script,
    /// The URL without credentials, for logs and `/upstreams`.
    shown: String,
    /// The last call succeeded: logs say so once per change.
    up: AtomicBool,
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetRedis")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl FleetRedis {
    /// Connects lazily to `url` (`redis://` or `rediss://`); fails only on a malformed URL.
    /// Must be called inside the tokio runtime.
    pub fn new(url: &str) -> Result<Arc<FleetRedis>, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("--redis {}: {e}", shown(url)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT * 4))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(RETRY_MAX);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("--redis {}: {e}", shown(url)))?;
        Ok(Arc::new(FleetRedis {
            connection,
            script: Script::new(include_str!("gcra.lua")),
            shown: shown(url),
            up: AtomicBool::new(true),
        }))
    }

    /// Takes up to `wanted` tokens of the limit at `key`: `(granted, retry_after)`.
    async fn take(
        &self,
        key: &str,
        interval_us: u64,
        capacity: u64,
        wanted: u32,
    ) -> Result<(u32, Duration), String> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(key);
        invocation.arg(interval_us).arg(capacity).arg(wanted);
        let call = invocation.invoke_async::<(u32, u64)>(&mut connection);
        let result = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok((granted, retry_ms))) => {
                Ok((granted.min(wanted), Duration::from_millis(retry_ms)))
            }
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
        };
        let up = result.is_ok();
        if self.up.swap(up, Ordering::Relaxed) != up {
            match &result {
                Ok(_) => info!(redis = %self.shown, "fleet limits: Redis answers again"),
                Err(error) => {
                    warn!(redis = %self.shown, %error, "fleet limits: Redis failed; local fallback limits apply")
                }
            }
        }
        result
    }
}

/// `url` without its password.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// One destination's fleet-wide limit; see the module docs.
pub struct FleetLimit {
    redis: Arc<FleetRedis>,
    key: String,
    interval_us: u64,
    capacity: u64,
    batch: u32,
    shadow: bool,
    lease: Mutex<Lease>,
    /// Held by the one request refilling the lease.
    refill: tokio::sync::Mutex<()>,
    fallback: Option<RateLimiter>,
    state: Mutex<FleetState>,
    metrics: Arc<DestinationMetrics>,
}

impl std::fmt::Debug for FleetLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLimit")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Lease {
    tokens: u32,
    until: Instant,
    /// Redis said the fleet has no token before this instant: refuse locally until then
    /// instead of asking again for every refused request.
    empty_until: Instant,
}

#[derive(Debug)]
struct FleetState {
    mode: FleetMode,
    /// In fallback: when to ask Redis again, and the backoff after that.
    retry_at: Instant,
    backoff: Duration,
}

impl FleetLimit {
    /// The fleet limit of `policy` at `authority`, or `None` when the policy has no fleet
    /// limit (`scope = "local"` or `rps = 0`).
    pub fn new(
        redis: &Arc<FleetRedis>,
        policy: &Policy,
        authority: &str,
        metrics: Arc<DestinationMetrics>,
    ) -> Option<FleetLimit> {
        let limit = &policy.rate_limit;
        if !limit.fleet || limit.rps == 0 {
            return None;
        }
        let fallback = RateLimiter::new(&limit.local());
        metrics.fleet_state(FleetMode::Connected);
        Some(FleetLimit {
            redis: Arc::clone(redis),
            // Shadow mode counts against a key of its own (same hash tag, same slot): it never
            // spends the tokens that enforcing instances share.
            key: format!(
                "fusebox:{{{}/{}}}:gcra{}",
                policy.name,
                authority,
                if limit.mode == LimitMode::Shadow {
                    ":shadow"
                } else {
                    ""
                }
            ),
            interval_us: (1_000_000 / u64::from(limit.rps)).max(1),
            capacity: u64::from(limit.rps) + u64::from(limit.burst),
            batch: Self::batch(limit.rps),
            shadow: limit.mode == LimitMode::Shadow,
            lease: Mutex::new(Lease {
                tokens: 0,
                until: Instant::now(),
                empty_until: Instant::now(),
            }),
            refill: tokio::sync::Mutex::new(()),
            fallback,
            state: Mutex::new(FleetState {
                mode: FleetMode::Connected,
                retry_at: Instant::now(),
                backoff: RETRY_MIN,
            }),
            metrics,
        })
    }

    /// Tokens leased at once: a tenth of a second's worth, at least 1, at most 1,000.
    pub fn batch(rps: u32) -> u32 {
        (rps / 10).clamp(1, 1000)
    }

    /// The limit applied now.
    pub fn mode(&self) -> FleetMode {
        lock(&self.state).mode
    }

    /// Asks for one token: from the lease, else from Redis (one request per destination at a
    /// time), else, while Redis fails, from the local fallback.
    pub async fn acquire(&self) -> LimitDecision {
        if let Some(decision) = self.decide_locally() {
            return decision;
        }
        if self.backing_off() {
            return self.check_fallback();
        }
        let _refilling = self.refill.lock().await;
        if let Some(decision) = self.decide_locally() {
            return decision;
        }
        if self.backing_off() {
            return self.check_fallback();
        }
        let taken = self
            .redis
            .take(&self.key, self.interval_us, self.capacity, self.batch)
            .await;
        match taken {
            Ok((granted, retry_after)) => {
                self.set_mode(FleetMode::Connected);
                let now = Instant::now();
                let mut lease = lock(&self.lease);
                if granted == 0 {
                    lease.empty_until = now + retry_after;
                    drop(lease);
                    return self.rejected(retry_after);
                }
                lease.tokens = granted - 1;
                lease.until = now + LEASE_FOR;
                LimitDecision::Allowed
            }
            Err(_) => {
                self.metrics.fleet_error();
                self.set_mode(FleetMode::Fallback);
                self.check_fallback()
            }
        }
    }

    /// A leased token, or a refusal while Redis said the fleet is empty; `None`: ask Redis.
    fn decide_locally(&self) -> Option<LimitDecision> {
        let now = Instant::now();
        let mut lease = lock(&self.lease);
        if lease.tokens > 0 && now < lease.until {
            lease.tokens -= 1;
            return Some(LimitDecision::Allowed);
        }
        let empty_for = lease.empty_until.checked_duration_since(now)?;
        drop(lease);
        (!empty_for.is_zero()).then(|| self.rejected(empty_for))
    }

    /// In fallback and not yet time to ask Redis again.
    fn backing_off(&self) -> bool {
        let state = lock(&self.state);
        state.mode == FleetMode::Fallback && Instant::now() < state.retry_at
    }

    fn set_mode(&self, mode: FleetMode) {
        let mut state = lock(&self.state);
        match mode {
            FleetMode::Connected => state.backoff = RETRY_MIN,
            FleetMode::Fallback => {
                state.retry_at = Instant::now() + state.backoff;
                state.backoff = (state.backoff * 2).min(RETRY_MAX);
            }
        }
        if state.mode != mode {
            state.mode = mode;
            self.metrics.fleet_state(mode);
        }
    }

    fn check_fallback(&self) -> LimitDecision {
        self.fallback
            .as_ref()
            .map_or(LimitDecision::Allowed, RateLimiter::check)
    }

    fn rejected(&self, retry_after: Duration) -> LimitDecision {
        if self.shadow {
            LimitDecision::ShadowRejected
        } else {
            LimitDecision::Rejected {
                retry_after: retry_after.max(Duration::from_millis(1)),
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            shown("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(shown("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_lease_is_a_tenth_of_a_second() {
        assert_eq!(FleetLimit::batch(1), 1);
        assert_eq!(FleetLimit::batch(50), 5);
        assert_eq!(FleetLimit::batch(1_000_000), 1000);
    }
}
