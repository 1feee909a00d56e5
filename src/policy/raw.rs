//! The TOML schema of a policy file (docs/ARCHITECTURE.md §3), as serde structs.
//!
//! Every field is optional (a policy sets only what it overrides) and keeps its span, so that
//! [`super::load`] can report `file:line:col` for a value it rejects. Values are read in their
//! loosest TOML type (integers as `i64`, durations and modes as strings) so that range and
//! format checks happen in `load` with messages that name the key. `deny_unknown_fields` makes
//! a misspelt key an error that lists the valid keys.

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Option<Spanned<T>>;
pub(crate) type List<T> = Option<Spanned<Vec<Spanned<T>>>>;

/// One `policies/*.toml` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    pub hosts: List<String>,
    pub listen: S<String>,
    pub endpoints: List<String>,
    pub host_rewrite: S<String>,
    pub tls: S<bool>,
    pub sni: S<String>,
    pub ca_file: S<String>,
    pub client_cert: S<String>,
    pub client_key: S<String>,
    pub allow: S<bool>,
    pub allow_private: S<bool>,
    pub allow_link_local: S<bool>,
    pub intercept: S<bool>,
    pub metrics_max_destinations: S<i64>,
    pub pool_idle_timeout: S<String>,
    pub pool_max_idle: S<i64>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub breaker: RawBreaker,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub concurrency: RawConcurrency,
    #[serde(default)]
    pub hedge: RawHedge,
    #[serde(default)]
    pub balance: RawBalance,
    #[serde(default)]
    pub outlier: RawOutlier,
    #[serde(default)]
    pub dns: RawDns,
    /// `[[route]]` tables, in file order.
    pub route: List<RawRoute>,
}

/// One `[[route]]`: a match, and the sections it overrides.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: S<String>,
    pub methods: List<String>,
    pub path_prefix: S<String>,
    pub path: S<String>,
    pub header: S<RawHeaderMatch>,
    pub breaker: S<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub hedge: RawHedge,
}

/// A route's `header = { name = "...", value = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    pub name: Spanned<String>,
    pub value: S<String>,
}

/// `[timeouts]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: S<String>,
    pub attempt: S<String>,
    pub total: S<String>,
    pub idle: S<String>,
    pub tunnel_idle: S<String>,
    pub tunnel_max: S<String>,
}

/// `[retry]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub attempts: S<i64>,
    pub on: List<String>,
    pub statuses: List<i64>,
    pub grpc_codes: List<String>,
    pub methods: List<String>,
    pub backoff_base: S<String>,
    pub backoff_max: S<String>,
    pub budget_ratio: S<f64>,
    pub budget_min_per_second: S<i64>,
    pub honor_retry_after: S<bool>,
    pub max_replay_bytes: S<i64>,
}

/// `[breaker]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub mode: S<String>,
    pub consecutive_failures: S<i64>,
    pub failure_rate: S<f64>,
    pub window: S<String>,
    pub min_calls: S<i64>,
    pub slow_call_duration: S<String>,
    pub slow_call_rate: S<f64>,
    pub failure_statuses: List<i64>,
    pub grpc_failure_codes: List<String>,
    pub open_base: S<String>,
    pub open_max: S<String>,
    pub half_open_probes: S<i64>,
    pub throttle_window: S<String>,
    pub throttle_k: S<f64>,
}

/// `[rate_limit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub rps: S<i64>,
    pub burst: S<i64>,
    pub mode: S<String>,
    pub scope: S<String>,
    pub fleet_fallback_rps: S<i64>,
    pub fleet_size_hint: S<i64>,
}

/// `[concurrency]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    pub max_in_flight: S<i64>,
    pub mode: S<String>,
    pub min_limit: S<i64>,
    pub max_limit: S<i64>,
    pub initial_limit: S<i64>,
    pub window: S<String>,
    pub backoff_ratio: S<f64>,
    pub rtt_tolerance: S<f64>,
    pub smoothing: S<f64>,
    pub queue_allowance: S<i64>,
    pub long_window: S<String>,
}

/// `[hedge]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHedge {
    pub enabled: S<bool>,
    pub delay: S<String>,
    pub min_delay: S<String>,
    pub max_extra_load: S<f64>,
    pub max_attempts: S<i64>,
}

/// `[balance]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBalance {
    pub mode: S<String>,
    pub decay: S<String>,
    pub default_rtt: S<String>,
    pub failure_penalty: S<String>,
    pub max_endpoints: S<i64>,
}

/// `[outlier]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub consecutive_failures: S<i64>,
    pub base_ejection: S<String>,
    pub max_ejection: S<String>,
    pub max_ejected_percent: S<i64>,
    pub panic: S<String>,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub min_ttl: S<String>,
    pub max_ttl: S<String>,
}
