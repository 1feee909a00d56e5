//! Policies: the operator's `policies/*.toml`, parsed once into validated, comparable types.
//!
//! Data flows one way: TOML text → [`raw`] serde structs (every field optional, unknown keys
//! rejected, spans kept) → [`load`] (inheritance from `default.toml`, validation with
//! `file:line:col` errors) → these types → [`PolicySet`], whose [`matcher`] picks the policy
//! for a destination. Nothing here does I/O beyond reading the files, and nothing here knows
//! about sockets: the registry and the proxy consume these values.
//!
//! Every type derives `PartialEq` so that a reload can tell which policies changed.

pub mod ca;
pub mod client_cert;
pub mod intercept;
mod keys;
pub mod lint;
pub mod listeners;
pub(crate) mod load;
mod matcher;
mod raw;
pub mod route;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use crate::grpc_code::GrpcCode;

pub use client_cert::{ClientCert, ClientKey};
pub use load::{load_dir, PolicyError, PolicyErrors};
pub use matcher::Matcher;
pub use route::Route;

/// The name of the policy used for destinations that no other file matches.
pub const DEFAULT_POLICY: &str = "default";

/// One validated policy: a file of `policies/`, with every inherited field filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// The file stem; also the `upstream` metric label.
    pub name: String,
    /// Where it was loaded from (for messages).
    pub file: PathBuf,
    /// Which destinations this policy matches (never inherited).
    pub hosts: Vec<HostPattern>,
    /// Optional route listener (never inherited).
    pub listen: Option<SocketAddr>,
    /// Send traffic here instead of the requested host, round robin (never inherited).
    pub endpoints: Vec<Endpoint>,
    /// Replace the `Host` header with this value (never inherited).
    pub host_rewrite: Option<String>,
    /// Originate TLS to the upstream (never inherited).
    pub tls: bool,
    /// TLS server name to send and verify; the upstream host when unset (never inherited).
    pub sni: Option<String>,
    /// Extra trusted roots (PEM), added to the platform roots.
    pub ca_file: Option<CaFile>,
    /// The client certificate and key presented to upstreams that ask (mutual TLS); both or
    /// neither (never inherited).
    pub client_cert: Option<ClientCert>,
    pub client_key: Option<ClientKey>,
    /// `false` refuses these destinations with 403 `denied` (never inherited; default `true`).
    pub allow: bool,
    /// May it reach private and loopback addresses (RFC 1918, 127/8, ::1, fc00::/7, ...).
    pub allow_private: bool,
    /// May it reach link-local addresses (169.254/16, fe80::/10: cloud metadata).
    pub allow_link_local: bool,
    /// Terminate an app's `CONNECT` to these destinations with a certificate of the local CA
    /// and send each request inside through the pipeline (needs `--ca-dir`).
    pub intercept: bool,
    /// At most this many distinct `destination` label values per policy; the rest are `_other`.
    pub metrics_max_destinations: usize,
    /// How long an idle pooled upstream connection is kept.
    #[serde(with = "humantime_serde_compat")]
    pub pool_idle_timeout: Duration,
    /// At most this many idle pooled upstream connections per destination (0: none kept).
    pub pool_max_idle: usize,
    pub timeouts: Timeouts,
    pub retry: Retry,
    pub breaker: Breaker,
    pub rate_limit: RateLimit,
    pub concurrency: Concurrency,
    /// Hedged requests: a copy of a slow request to another endpoint.
    pub hedge: Hedge,
    /// How a destination's endpoints share its requests.
    pub balance: Balance,
    /// When an endpoint is taken out of its set for a while.
    pub outlier: Outlier,
    /// How long resolved names are kept.
    pub dns: Dns,
    /// `[[route]]`: requests matching one get its timeouts, retry and hedge (never inherited).
    pub routes: Vec<Route>,
}

/// A `hosts` entry. Names are stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HostPattern {
    /// `api.example.com:8443`, `10.0.0.7:8080`, `[::1]:8080`
    HostPort { host: String, port: u16 },
    /// `api.example.com`, `10.0.0.7`, `::1` (any port)
    Host { host: String },
    /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
    /// `suffix` is stored with its leading dot: `.example.com`.
    Wildcard { suffix: String },
}

/// An `endpoints` entry: where to send traffic. IPv6 hosts are stored without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(with = "humantime_serde_compat")]
    pub connect: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub attempt: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub total: Duration,
    /// A response body that delivers nothing for this long after its head is cut off.
    #[serde(with = "humantime_serde_compat")]
    pub idle: Duration,
    /// An opaque CONNECT tunnel in which neither side sends anything for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub tunnel_idle: Duration,
    /// An opaque CONNECT tunnel is closed after this long, however busy.
    #[serde(with = "humantime_serde_compat")]
    pub tunnel_max: Duration,
}

/// Conditions under which a failed attempt may be retried (`retry.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The TCP or TLS connection could not be established.
    ConnectFailure,
    /// The connection was reset or closed before a response head.
    Reset,
    /// The upstream answered 502, 503 or 504.
    GatewayError,
    /// The attempt timed out before a response head.
    Timeout,
    /// The upstream answered any 5xx.
    #[serde(rename = "5xx")]
    FiveXx,
    /// The upstream answered one of `retry.statuses`.
    RetriableStatus,
    /// A gRPC call's trailers-only answer had a status in `retry.grpc_codes` (not a `retry.on`
    /// name: `grpc_codes` alone turns it on).
    GrpcStatus,
}

impl RetryOn {
    pub const ALL: [RetryOn; 7] = [
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
        RetryOn::Timeout,
        RetryOn::FiveXx,
        RetryOn::RetriableStatus,
        RetryOn::GrpcStatus,
    ];

    /// The name used in policy files and in the `reason` label of `fusebox_retries_total`.
    pub fn label(self) -> &'static str {
        match self {
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Timeout => "timeout",
            RetryOn::FiveXx => "5xx",
            RetryOn::RetriableStatus => "retriable-status",
            RetryOn::GrpcStatus => "grpc-status",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    /// Total tries, the first included; 1 = no retry.
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub statuses: Vec<u16>,
    /// gRPC statuses of a trailers-only answer that are retried (any method: the server said
    /// the call was not carried out).
    pub grpc_codes: Vec<GrpcCode>,
    /// Upper-case method names, e.g. `GET`.
    pub methods: Vec<String>,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_max: Duration,
    pub budget_ratio: f64,
    pub budget_min_per_second: u32,
    pub honor_retry_after: bool,
    pub max_replay_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerMode {
    Enforce,
    Shadow,
    Off,
    /// Client-side throttling (Google SRE book, "Handling Overload"): no open state; each try
    /// is refused locally with probability max(0, (requests − k·accepts) / (requests + 1))
    /// over `throttle_window`.
    Throttle,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breaker {
    pub mode: BreakerMode,
    /// 0 = rule off.
    pub consecutive_failures: u32,
    /// In (0, 1]; trips when failures/calls >= this over `window` once `min_calls` is reached.
    pub failure_rate: f64,
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    pub min_calls: u32,
    #[serde(with = "humantime_serde_compat")]
    pub slow_call_duration: Duration,
    /// In (0, 1].
    pub slow_call_rate: f64,
    pub failure_statuses: Vec<u16>,
    /// gRPC statuses that count as a failure (trailers-only answers and trailers).
    pub grpc_failure_codes: Vec<GrpcCode>,
    #[serde(with = "humantime_serde_compat")]
    pub open_base: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub open_max: Duration,
    pub half_open_probes: u32,
    /// `mode = "throttle"`: the window requests and accepts are counted over.
    #[serde(with = "humantime_serde_compat")]
    pub throttle_window: Duration,
    /// `mode = "throttle"`: K, the accepts-to-requests multiplier (2.0: refuse locally once
    /// fewer than half the requests are accepted).
    pub throttle_k: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// 0 = no limit.
    pub rps: u32,
    pub burst: u32,
    pub mode: LimitMode,
    /// `scope = "fleet"`: shared through Redis by every fusebox of the fleet (§15).
    pub fleet: bool,
    /// The local limit while Redis fails; `None`: `rps / fleet_size_hint`.
    pub fleet_fallback_rps: Option<u32>,
    /// How many instances share a fleet limit, for the default fallback.
    pub fleet_size_hint: u32,
}

impl RateLimit {
    /// What one instance applies on its own: this limit, or for a fleet limit without Redis,
    /// its fallback.
    pub fn local(&self) -> RateLimit {
        if self.fleet {
            RateLimit {
                rps: self.fallback_rps(),
                burst: 0,
                ..*self
            }
        } else {
            *self
        }
    }

    /// The local limit a fleet-limited destination applies while Redis fails (at least 1).
    pub fn fallback_rps(&self) -> u32 {
        self.fleet_fallback_rps
            .unwrap_or(self.rps / self.fleet_size_hint.max(1))
            .max(1)
    }
}

/// `[concurrency]`: how many requests may be in flight to one destination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Concurrency {
    /// `mode = "fixed"`: the limit; 0 = no limit.
    pub max_in_flight: u32,
    pub mode: ConcurrencyMode,
    /// Adaptive modes: the bounds of the limit, and where it starts.
    pub min_limit: u32,
    pub max_limit: u32,
    pub initial_limit: u32,
    /// Adaptive modes: samples are judged per window of this length (and at least 10 tries).
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    /// `aimd`: the limit is multiplied by this on a drop (timeout, 429, 503, slow window).
    pub backoff_ratio: f64,
    /// A window's latency above this × the long-run latency is queueing.
    pub rtt_tolerance: f64,
    /// `gradient`: how much of a new estimate each window takes.
    pub smoothing: f64,
    /// `gradient`: requests allowed to queue above the estimated limit.
    pub queue_allowance: u32,
    /// The span of the long-run latency (its minimum for `aimd`, its average for `gradient`).
    #[serde(with = "humantime_serde_compat")]
    pub long_window: Duration,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            max_in_flight: 0,
            mode: ConcurrencyMode::Fixed,
            min_limit: 5,
            max_limit: 1000,
            initial_limit: 20,
            window: Duration::from_millis(100),
            backoff_ratio: 0.9,
            rtt_tolerance: 1.5,
            smoothing: 0.2,
            queue_allowance: 4,
            long_window: Duration::from_secs(60),
        }
    }
}

impl Concurrency {
    /// Whether the limit follows measurements rather than `max_in_flight`.
    pub fn is_adaptive(&self) -> bool {
        self.mode != ConcurrencyMode::Fixed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConcurrencyMode {
    /// `max_in_flight`, as set.
    Fixed,
    /// Additive increase, multiplicative decrease on a drop or a slow window.
    Aimd,
    /// Netflix's Gradient2: the limit follows long-run ÷ recent latency, plus a queue allowance.
    Gradient,
}

impl ConcurrencyMode {
    pub fn label(self) -> &'static str {
        match self {
            ConcurrencyMode::Fixed => "fixed",
            ConcurrencyMode::Aimd => "aimd",
            ConcurrencyMode::Gradient => "gradient",
        }
    }
}

/// `[hedge]`: a second copy of a slow request, sent to another endpoint (§18).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hedge {
    pub enabled: bool,
    pub delay: HedgeDelay,
    /// The shortest delay a percentile may give.
    #[serde(with = "humantime_serde_compat")]
    pub min_delay: Duration,
    /// Hedges add at most this fraction of first tries (a budget).
    pub max_extra_load: f64,
    /// Copies of one request at most, the first included.
    pub max_attempts: u32,
}

impl Default for Hedge {
    fn default() -> Self {
        Hedge {
            enabled: false,
            delay: HedgeDelay::Percentile(95.0),
            min_delay: Duration::from_millis(5),
            max_extra_load: 0.05,
            max_attempts: 2,
        }
    }
}

/// When a hedge is sent: after a fixed time, or after a percentile of the destination's recent
/// latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    Fixed(Duration),
    /// In (0, 100), e.g. 95.0 for `"p95"`.
    Percentile(f64),
}

impl std::fmt::Display for HedgeDelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HedgeDelay::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
            HedgeDelay::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `[balance]`: how a destination's endpoints share its requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Balance {
    pub mode: BalanceMode,
    /// How fast an endpoint's latency estimate forgets.
    #[serde(with = "humantime_serde_compat")]
    pub decay: Duration,
    /// The latency estimate of an endpoint not yet measured.
    #[serde(with = "humantime_serde_compat")]
    pub default_rtt: Duration,
    /// A failed try counts as this latency.
    #[serde(with = "humantime_serde_compat")]
    pub failure_penalty: Duration,
    /// At most this many endpoints of one destination get their own `endpoint` label.
    pub max_endpoints: usize,
}

impl Default for Balance {
    fn default() -> Self {
        Balance {
            mode: BalanceMode::P2cEwma,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(5),
            max_endpoints: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalanceMode {
    /// Power of two choices over peak-EWMA latency, failures counted as `failure_penalty`.
    P2cEwma,
    RoundRobin,
}

impl BalanceMode {
    pub fn label(self) -> &'static str {
        match self {
            BalanceMode::P2cEwma => "p2c-ewma",
            BalanceMode::RoundRobin => "round-robin",
        }
    }
}

/// `[outlier]`: per-endpoint ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outlier {
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde_compat")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_ejection: Duration,
    /// At most this share of a set's endpoints is ejected before the set panics.
    pub max_ejected_percent: u8,
    pub panic: PanicMode,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            panic: PanicMode::FailFast,
        }
    }
}

/// What a set does when more of its endpoints are ejected than `max_ejected_percent` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PanicMode {
    /// Keep the ejections: only ready endpoints are picked, and with none the destination
    /// answers `503 no-endpoint` at once.
    FailFast,
    /// Ignore the ejections: every endpoint is picked again (Envoy's panic routing), said in
    /// the logs and on `/upstreams`.
    RouteAll,
}

impl PanicMode {
    pub fn label(self) -> &'static str {
        match self {
            PanicMode::FailFast => "fail-fast",
            PanicMode::RouteAll => "route-all",
        }
    }
}

/// `[dns]`: the bounds put on the TTLs of resolved names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dns {
    #[serde(with = "humantime_serde_compat")]
    pub min_ttl: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_ttl: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// All policies of one load of `policies/`, ready to match destinations.
#[derive(Debug, Clone)]
pub struct PolicySet {
    /// The directory they were loaded from.
    pub dir: PathBuf,
    /// `default.toml` (built-in defaults when the file is absent).
    pub default: Arc<Policy>,
    /// Every other policy, ordered by name.
    pub others: Vec<Arc<Policy>>,
    matcher: Matcher,
}

impl PolicySet {
    /// The policy for a destination: exact `host:port` > exact host > longest wildcard suffix >
    /// default. `host` must be lowercase, without IPv6 brackets.
    pub fn lookup(&self, host: &str, port: u16) -> &Arc<Policy> {
        match self.matcher.lookup(host, port) {
            Some(index) => &self.others[index],
            None => &self.default,
        }
    }

    /// Like [`PolicySet::lookup`], as an index into `others` (`None`: the default policy).
    pub fn lookup_index(&self, host: &str, port: u16) -> Option<usize> {
        self.matcher.lookup(host, port)
    }

    /// Policies that have their own route listener.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.others.iter().filter(|p| p.listen.is_some())
    }

    /// Every policy, default first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Policy>> {
        std::iter::once(&self.default).chain(self.others.iter())
    }

    /// A policy by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.all().find(|p| p.name == name)
    }
}

/// Serialize durations as humantime strings (`"250ms"`) in `/config`.
/// Durations as policy files write them (`/config`): a number and the largest unit that
/// divides the duration exactly, `24h`, `90s`, `250ms`, never `1day` or `1m 30s`; each
/// reads back as the same duration.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&compact(*d))
    }

    pub(super) fn compact(d: Duration) -> String {
        const UNITS: [(u128, &str); 6] = [
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let nanos = d.as_nanos();
        if nanos == 0 {
            return "0s".to_owned();
        }
        let (size, unit) = UNITS
            .into_iter()
            .find(|(size, _)| nanos % size == 0)
            .unwrap_or((1, "ns"));
        format!("{}{unit}", nanos / size)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn durations_read_as_files_write_them_and_back() {
            let cases = [
                (Duration::from_secs(86_400), "24h"),
                (Duration::from_secs(90), "90s"),
                (Duration::from_secs(300), "5m"),
                (Duration::from_millis(250), "250ms"),
                (Duration::from_millis(1_500), "1500ms"),
                (Duration::ZERO, "0s"),
            ];
            for (duration, text) in cases {
                assert_eq!(compact(duration), text);
                assert_eq!(humantime::parse_duration(text).unwrap(), duration);
            }
        }
    }
}

/// A policy's `ca_file`: its path and the content it had when the policy was loaded. Two are
/// equal only with the same content, so a reload sees a rotated CA (same path, new
/// certificates) as a change; shown as its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
}

impl Serialize for CaFile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(serializer)
    }
}
