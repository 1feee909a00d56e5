//! Metrics (docs/ARCHITECTURE.md §4, a contract): names, HELP texts, buckets, and the
//! per-destination handles.
//!
//! Each running agent owns its own Prometheus recorder (not the process-global one), so that
//! several agents in one test process keep separate numbers. Handles are registered once per
//! destination ([`DestinationMetrics`]) and then updated without any label lookup; the
//! `outcome × code` counters of `fusebox_requests_total` are registered on first use, since
//! most of the 55 combinations never happen.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::grpc_code::GrpcCode;
use crate::outcome::{Outcome, CODE_CLASSES};
use crate::policy::RetryOn;

const RETRY_REASONS: usize = RetryOn::ALL.len();

/// Latency buckets in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// The `destination` label value for destinations beyond `metrics_max_destinations`.
pub const OTHER_DESTINATION: &str = "_other";

pub use crate::policy::route::DEFAULT_ROUTE;

/// The result label of `fusebox_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Success,
    Failure,
    Timeout,
    ConnectFailed,
    Reset,
    /// The app went away before the try ended: no verdict on the upstream.
    Abandoned,
}

impl AttemptResult {
    const ALL: [AttemptResult; 6] = [
        AttemptResult::Success,
        AttemptResult::Failure,
        AttemptResult::Timeout,
        AttemptResult::ConnectFailed,
        AttemptResult::Reset,
        AttemptResult::Abandoned,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::Failure => "failure",
            AttemptResult::Timeout => "timeout",
            AttemptResult::ConnectFailed => "connect_failed",
            AttemptResult::Reset => "reset",
            AttemptResult::Abandoned => "abandoned",
        }
    }
}

/// One agent's metrics.
pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub config_generation: Gauge,
    pub reloads_success: Counter,
    pub reloads_failure: Counter,
    /// Reloads that found the policies exactly as they were: nothing swapped.
    pub reloads_unchanged: Counter,
    /// Open app connections, by state: `active` (hyper serves them) or `resting` (idle, only
    /// the socket kept; docs/ARCHITECTURE.md §1).
    pub app_connections_active: Gauge,
    pub app_connections_resting: Gauge,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Telemetry {
    pub fn new() -> Arc<Telemetry> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                &LATENCY_BUCKETS,
            )
            .expect("bucket list is not empty")
            .build_recorder();
        describe(&recorder);
        let handle = recorder.handle();
        let build_info = recorder.register_gauge(
            &Key::from_parts(
                "fusebox_build_info",
                vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
            ),
            &METADATA,
        );
        build_info.set(1.0);
        let config_generation =
            recorder.register_gauge(&Key::from_name("fusebox_config_generation"), &METADATA);
        let reload = |result: &'static str| {
            recorder.register_counter(
                &Key::from_parts(
                    "fusebox_config_reloads_total",
                    vec![Label::from_static_parts("result", result)],
                ),
                &METADATA,
            )
        };
        let reloads_success = reload("success");
        let reloads_failure = reload("failure");
        let reloads_unchanged = reload("unchanged");
        reloads_success.absolute(0);
        reloads_failure.absolute(0);
        reloads_unchanged.absolute(0);
        let app_connections = |state: &'static str| {
            recorder.register_gauge(
                &Key::from_parts(
                    "fusebox_app_connections",
                    vec![Label::from_static_parts("state", state)],
                ),
                &METADATA,
            )
        };
        let app_connections_active = app_connections("active");
        let app_connections_resting = app_connections("resting");
        app_connections_active.set(0.0);
        app_connections_resting.set(0.0);
        Arc::new(Telemetry {
            recorder,
            handle,
            config_generation,
            reloads_success,
            reloads_failure,
            reloads_unchanged,
            app_connections_active,
            app_connections_resting,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// [`Telemetry::render`] without the per-destination series for which `live(upstream,
    /// destination, endpoint)` is false (`endpoint`: the series' `endpoint` label, if any).
    /// The exporter cannot unregister a series, so the series of a policy removed by a reload,
    /// of a destination dropped as quiet, or of an endpoint its name no longer resolves to, are
    /// left out here: otherwise a removed policy's `fusebox_breaker_state` would stay at 2 and
    /// keep an alert firing for something that no longer exists, and a gone pod would count as
    /// a ready endpoint.
    ///
    /// A series with an `upstream` label but no `destination` (a policy's own, such as
    /// `fusebox_client_cert_expiry_seconds`) is asked about with its metric name:
    /// `policy_live(name, upstream)`.
    pub fn render_where(
        &self,
        live: impl Fn(&str, &str, Option<&str>) -> bool,
        policy_live: impl Fn(&str, &str) -> bool,
    ) -> String {
        let text = self.render();
        let mut kept = String::with_capacity(text.len());
        for line in text.lines() {
            let upstream = label(line, "upstream");
            let gone = !line.starts_with('#')
                && match (upstream, label(line, "destination")) {
                    (Some(upstream), Some(destination)) => {
                        !live(upstream, destination, label(line, "endpoint"))
                    }
                    (Some(upstream), None) => {
                        let name = line.split(['{', ' ']).next().unwrap_or(line);
                        !policy_live(name, upstream)
                    }
                    _ => false,
                };
            if !gone {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        kept
    }

    /// Sets `fusebox_client_cert_expiry_seconds{upstream}`: when the policy's client
    /// certificate expires, as a Unix time (an alert compares it with `time()`).
    pub fn client_cert_expiry(&self, upstream: &str, not_after: std::time::SystemTime) {
        let seconds = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = Key::from_parts(
            "fusebox_client_cert_expiry_seconds",
            vec![Label::new("upstream", upstream.to_owned())],
        );
        #[allow(clippy::cast_precision_loss)]
        self.recorder
            .register_gauge(&key, &METADATA)
            .set(seconds as f64);
    }

    /// Drains histogram samples into their buckets; call it periodically so that memory stays
    /// bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Registers the handles of one `upstream` × `destination` label pair.
    pub fn destination(self: &Arc<Self>, upstream: &str, destination: &str) -> DestinationMetrics {
        let labels = [
            Label::new("upstream", upstream.to_owned()),
            Label::new("destination", destination.to_owned()),
        ];
        let base = labels.clone();
        let key = |name: &'static str, extra: &[Label]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            Key::from_parts(name, all)
        };
        let counter =
            |name, extra: &[Label]| self.recorder.register_counter(&key(name, extra), &METADATA);
        let gauge = |name| self.recorder.register_gauge(&key(name, &[]), &METADATA);
        let metrics = DestinationMetrics {
            telemetry: Arc::clone(self),
            calls: CallMetrics::new(self, &labels, DEFAULT_ROUTE),
            labels,
            retries: std::array::from_fn(|_| OnceLock::new()),
            stream_timeouts: std::array::from_fn(|_| OnceLock::new()),
            interceptions: std::array::from_fn(|_| OnceLock::new()),
            fleet: OnceLock::new(),
            retry_budget_exhausted: counter("fusebox_retry_budget_exhausted_total", &[]),
            shadow_breaker: counter(
                "fusebox_shadow_rejections_total",
                &[Label::from_static_parts("kind", "breaker")],
            ),
            shadow_rate_limit: counter(
                "fusebox_shadow_rejections_total",
                &[Label::from_static_parts("kind", "rate_limit")],
            ),
            in_flight: gauge("fusebox_in_flight"),
            tunnels_active: gauge("fusebox_tunnels_active"),
            breaker_state: gauge("fusebox_breaker_state"),
            idle_connections: OnceLock::new(),
            throttle_ratio: OnceLock::new(),
            concurrency_limit: OnceLock::new(),
            hedges: std::array::from_fn(|_| OnceLock::new()),
        };
        // The trip series exist at 0 from the destination's first request on: Prometheus'
        // `increase()` cannot see a counter's first increment if the series is born with it.
        for (from, reason) in TRIPS {
            metrics.transition_counter(from, "open", reason).absolute(0);
        }
        metrics
    }
}

/// The value of label `name` in one sample line (`metric{a="x",name="y"} 1`), as written
/// (escapes kept: upstream names are file stems and destinations `host:port`, which need none).
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = &line[line.find('{')? + 1..];
    loop {
        let (key, after) = rest.split_once("=\"")?;
        // The value ends at the first quote that is not escaped.
        let bytes = after.as_bytes();
        let mut end = 0;
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let value = after.get(..end)?;
        if key.trim_start_matches(',') == name {
            return Some(value);
        }
        rest = after.get(end + 1..)?;
        if !rest.starts_with(',') {
            return None;
        }
    }
}

/// The `kind` label of `fusebox_stream_timeouts_total`: which time limit cut a stream off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTimeout {
    /// `timeouts.idle`: a response body sent nothing for that long.
    BodyIdle,
    /// `timeouts.tunnel_idle`: a CONNECT tunnel was silent both ways for that long.
    TunnelIdle,
    /// `timeouts.tunnel_max`: a CONNECT tunnel reached its maximum lifetime.
    TunnelMax,
    /// `--header-timeout`: an app connection did not complete a request head in time
    /// (counted under `upstream="default", destination="_other"`).
    Header,
    /// `--idle-timeout`: an app took nothing of its response for that long (counted under
    /// `upstream="default", destination="_other"`).
    ResponseUnread,
}

impl StreamTimeout {
    pub const ALL: [StreamTimeout; 5] = [
        StreamTimeout::BodyIdle,
        StreamTimeout::TunnelIdle,
        StreamTimeout::TunnelMax,
        StreamTimeout::Header,
        StreamTimeout::ResponseUnread,
    ];

    pub fn label(self) -> &'static str {
        match self {
            StreamTimeout::BodyIdle => "body_idle",
            StreamTimeout::TunnelIdle => "tunnel_idle",
            StreamTimeout::TunnelMax => "tunnel_max",
            StreamTimeout::Header => "header",
            StreamTimeout::ResponseUnread => "response_unread",
        }
    }
}

/// The `result` label of `fusebox_intercepted_connections_total`: how an intercepted
/// `CONNECT`'s TLS handshake with the app ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// The handshake succeeded: the connection's requests go through the pipeline.
    Ok,
    /// The app offered a server name (SNI) other than the `CONNECT` host.
    SniMismatch,
    /// The handshake failed (not done within `--header-timeout`, or broken off).
    HandshakeFailed,
    /// The app refused fusebox's certificate (its TLS alert says so): it does not trust the
    /// local CA.
    CaRejected,
}

impl Interception {
    pub const ALL: [Interception; 4] = [
        Interception::Ok,
        Interception::SniMismatch,
        Interception::HandshakeFailed,
        Interception::CaRejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Interception::Ok => "ok",
            Interception::SniMismatch => "sni_mismatch",
            Interception::HandshakeFailed => "handshake_failed",
            Interception::CaRejected => "ca_rejected",
        }
    }
}

/// Every way a breaker opens, as `(from, reason)` labels.
const TRIPS: [(&str, &str); 4] = [
    ("closed", "consecutive_failures"),
    ("closed", "failure_rate"),
    ("closed", "slow_call_rate"),
    ("half_open", "probe_failed"),
];

/// A fleet-limited destination's handles.
struct FleetMetrics {
    connected: Gauge,
    fallback: Gauge,
    errors: Counter,
}

/// Handles for one `upstream` × `destination`, resolved once.
pub struct DestinationMetrics {
    telemetry: Arc<Telemetry>,
    labels: [Label; 2],
    /// Requests, tries and their latencies of requests no `[[route]]` took (`route="_default"`).
    calls: CallMetrics,
    retries: [OnceLock<Counter>; RETRY_REASONS],
    stream_timeouts: [OnceLock<Counter>; StreamTimeout::ALL.len()],
    interceptions: [OnceLock<Counter>; Interception::ALL.len()],
    /// `fusebox_fleet_limiter_state` (connected, fallback) and `_errors_total`: registered for
    /// fleet-limited destinations only.
    fleet: OnceLock<FleetMetrics>,
    pub retry_budget_exhausted: Counter,
    pub shadow_breaker: Counter,
    pub shadow_rate_limit: Counter,
    pub in_flight: Gauge,
    pub tunnels_active: Gauge,
    pub breaker_state: Gauge,
    /// `fusebox_upstream_idle_connections`: registered once a destination first has one.
    idle_connections: OnceLock<Gauge>,
    /// `fusebox_throttle_ratio` (`[breaker] mode = "throttle"`), `fusebox_concurrency_limit`
    /// (adaptive `[concurrency]`) and `fusebox_hedges_total{result}` (`[hedge]`): registered by
    /// the destinations that use them only.
    throttle_ratio: OnceLock<Gauge>,
    concurrency_limit: OnceLock<Gauge>,
    hedges: [OnceLock<Counter>; HedgeResult::ALL.len()],
}

/// The handles of one `upstream` × `destination` × `route`: requests, tries and latencies.
pub struct CallMetrics {
    telemetry: Arc<Telemetry>,
    labels: [Label; 3],
    requests: [OnceLock<Counter>; Outcome::ALL.len() * CODE_CLASSES.len()],
    request_duration: Histogram,
    attempts: [Counter; AttemptResult::ALL.len()],
    attempt_duration: Histogram,
    /// `fusebox_requests_total` of gRPC calls, `outcome × grpc status`: allocated on the first
    /// gRPC call, since most destinations never see one.
    grpc_requests: OnceLock<Box<[OnceLock<Counter>]>>,
}

impl std::fmt::Debug for CallMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMetrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl CallMetrics {
    fn new(telemetry: &Arc<Telemetry>, base: &[Label; 2], route: &str) -> CallMetrics {
        let labels = [
            base[0].clone(),
            base[1].clone(),
            Label::new("route", route.to_owned()),
        ];
        let recorder = &telemetry.recorder;
        let key = |name: &'static str, extra: Option<Label>| {
            Key::from_parts(
                name,
                labels.iter().cloned().chain(extra).collect::<Vec<_>>(),
            )
        };
        let attempt = |result: AttemptResult| {
            let label = Label::from_static_parts("result", result.label());
            recorder.register_counter(&key("fusebox_attempts_total", Some(label)), &METADATA)
        };
        CallMetrics {
            requests: std::array::from_fn(|_| OnceLock::new()),
            request_duration: recorder
                .register_histogram(&key("fusebox_request_duration_seconds", None), &METADATA),
            attempts: AttemptResult::ALL.map(attempt),
            attempt_duration: recorder
                .register_histogram(&key("fusebox_attempt_duration_seconds", None), &METADATA),
            grpc_requests: OnceLock::new(),
            telemetry: Arc::clone(telemetry),
            labels,
        }
    }

    /// Records one finished app request.
    pub fn request(&self, outcome: Outcome, status: http::StatusCode, elapsed: Duration) {
        let code = crate::outcome::code_class_index(status);
        let index = outcome as usize * CODE_CLASSES.len() + code;
        self.requests[index]
            .get_or_init(|| {
                let mut labels = self.labels.to_vec();
                labels.push(Label::from_static_parts("outcome", outcome.label()));
                labels.push(Label::from_static_parts("code", CODE_CLASSES[code]));
                self.telemetry.recorder.register_counter(
                    &Key::from_parts("fusebox_requests_total", labels),
                    &METADATA,
                )
            })
            .increment(1);
        self.request_duration.record(elapsed.as_secs_f64());
    }

    /// Records one finished gRPC call, its `code` label the gRPC status (`grpc-unavailable`).
    pub fn request_grpc(&self, outcome: Outcome, code: GrpcCode, elapsed: Duration) {
        let counters = self.grpc_requests.get_or_init(|| {
            (0..Outcome::ALL.len() * GrpcCode::ALL.len())
                .map(|_| OnceLock::new())
                .collect()
        });
        counters[outcome as usize * GrpcCode::ALL.len() + code as usize]
            .get_or_init(|| {
                let mut labels = self.labels.to_vec();
                labels.push(Label::from_static_parts("outcome", outcome.label()));
                labels.push(Label::from_static_parts("code", code.label()));
                self.telemetry.recorder.register_counter(
                    &Key::from_parts("fusebox_requests_total", labels),
                    &METADATA,
                )
            })
            .increment(1);
        self.request_duration.record(elapsed.as_secs_f64());
    }

    /// Records one upstream try.
    pub fn attempt(&self, result: AttemptResult, elapsed: Duration) {
        self.attempts[result as usize].increment(1);
        self.attempt_duration.record(elapsed.as_secs_f64());
    }
}

/// The `result` label of `fusebox_hedges_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeResult {
    /// A hedge was sent.
    Sent,
    /// A hedge's answer was the one the app got.
    Won,
    /// A hedge was sent and another copy's answer won.
    Lost,
    /// A hedge was due but its budget was spent: none was sent.
    Budget,
}

impl HedgeResult {
    pub const ALL: [HedgeResult; 4] = [
        HedgeResult::Sent,
        HedgeResult::Won,
        HedgeResult::Lost,
        HedgeResult::Budget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HedgeResult::Sent => "sent",
            HedgeResult::Won => "won",
            HedgeResult::Lost => "lost",
            HedgeResult::Budget => "budget",
        }
    }
}

impl std::fmt::Debug for DestinationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationMetrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl DestinationMetrics {
    /// Sets `fusebox_upstream_idle_connections` (at scrape time): the series exists from the
    /// first time the destination had an idle connection on.
    pub fn set_idle_connections(&self, count: usize) {
        if count == 0 && self.idle_connections.get().is_none() {
            return;
        }
        let name = "fusebox_upstream_idle_connections";
        #[allow(clippy::cast_precision_loss)]
        self.lazy_gauge(&self.idle_connections, name)
            .set(count as f64);
    }

    /// Sets `fusebox_throttle_ratio`: the refusal probability of a throttling breaker.
    pub fn set_throttle_ratio(&self, probability: f64) {
        self.lazy_gauge(&self.throttle_ratio, "fusebox_throttle_ratio")
            .set(probability);
    }

    /// Sets `fusebox_concurrency_limit`: an adaptive gate's limit.
    pub fn set_concurrency_limit(&self, limit: usize) {
        #[allow(clippy::cast_precision_loss)]
        self.lazy_gauge(&self.concurrency_limit, "fusebox_concurrency_limit")
            .set(limit as f64);
    }

    /// Counts one hedge event.
    pub fn hedge(&self, result: HedgeResult) {
        self.hedges[result as usize]
            .get_or_init(|| {
                let mut labels = self.labels.to_vec();
                labels.push(Label::from_static_parts("result", result.label()));
                self.telemetry
                    .recorder
                    .register_counter(&Key::from_parts("fusebox_hedges_total", labels), &METADATA)
            })
            .increment(1);
    }

    fn lazy_gauge<'a>(&'a self, cell: &'a OnceLock<Gauge>, name: &'static str) -> &'a Gauge {
        cell.get_or_init(|| {
            self.telemetry
                .recorder
                .register_gauge(&Key::from_parts(name, self.labels.to_vec()), &METADATA)
        })
    }

    /// `fusebox_route_breaker_state` of a route with a breaker of its own.
    pub fn route_breaker_state(&self, route: &str) -> Gauge {
        let mut labels = self.labels.to_vec();
        labels.push(Label::new("route", route.to_owned()));
        let key = Key::from_parts("fusebox_route_breaker_state", labels);
        self.telemetry.recorder.register_gauge(&key, &METADATA)
    }

    /// Counts one state change of a route's own breaker (rare: looked up here).
    pub fn route_breaker_transition(
        &self,
        route: &str,
        (from, to, reason): (&'static str, &'static str, &'static str),
    ) {
        let mut labels = self.labels.to_vec();
        labels.push(Label::new("route", route.to_owned()));
        labels.push(Label::from_static_parts("from", from));
        labels.push(Label::from_static_parts("to", to));
        labels.push(Label::from_static_parts("reason", reason));
        let key = Key::from_parts("fusebox_route_breaker_transitions_total", labels);
        self.telemetry
            .recorder
            .register_counter(&key, &METADATA)
            .increment(1);
    }

    /// The handles of requests no route took (`route="_default"`).
    pub fn calls(&self) -> &CallMetrics {
        &self.calls
    }

    /// The handles of one route's requests (`route` = its name), registered now: called once
    /// per route and destination, at the route's first request there.
    pub fn route_calls(&self, route: &str) -> CallMetrics {
        CallMetrics::new(&self.telemetry, &self.labels, route)
    }

    /// Sets which limit a fleet-limited destination applies (1 on its state, 0 on the other).
    pub fn fleet_state(&self, mode: FleetMode) {
        let fleet = self.fleet_metrics();
        fleet
            .connected
            .set(f64::from(u8::from(mode == FleetMode::Connected)));
        fleet
            .fallback
            .set(f64::from(u8::from(mode == FleetMode::Fallback)));
    }

    /// Counts one failed Redis call of a fleet limit.
    pub fn fleet_error(&self) {
        self.fleet_metrics().errors.increment(1);
    }

    fn fleet_metrics(&self) -> &FleetMetrics {
        self.fleet.get_or_init(|| {
            let gauge = |state| {
                let mut labels = self.labels.to_vec();
                labels.push(Label::from_static_parts("state", state));
                self.telemetry.recorder.register_gauge(
                    &Key::from_parts("fusebox_fleet_limiter_state", labels),
                    &METADATA,
                )
            };
            FleetMetrics {
                connected: gauge(FleetMode::Connected.label()),
                fallback: gauge(FleetMode::Fallback.label()),
                errors: self.telemetry.recorder.register_counter(
                    &Key::from_parts("fusebox_fleet_limiter_errors_total", self.labels.to_vec()),
                    &METADATA,
                ),
            }
        })
    }

    /// Records one retry sent, by the `retry.on` condition that allowed it.
    pub fn retry(&self, reason: RetryOn) {
        let index = RetryOn::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.retries[index]
            .get_or_init(|| {
                self.register_counter("fusebox_retries_total", "reason", reason.label())
            })
            .increment(1);
    }

    /// Records one stream cut off by a time limit (registered on first use).
    pub fn stream_timeout(&self, kind: StreamTimeout) {
        self.stream_timeouts[kind as usize]
            .get_or_init(|| {
                self.register_counter("fusebox_stream_timeouts_total", "kind", kind.label())
            })
            .increment(1);
    }

    /// Counts one intercepted `CONNECT` by how its TLS handshake with the app ended.
    pub fn interception(&self, result: Interception) {
        self.interceptions[result as usize]
            .get_or_init(|| {
                self.register_counter(
                    "fusebox_intercepted_connections_total",
                    "result",
                    result.label(),
                )
            })
            .increment(1);
    }

    /// Records one breaker state change. Transitions are rare, so the handle is looked up here.
    pub fn transition(&self, from: &'static str, to: &'static str, reason: &'static str) {
        self.transition_counter(from, to, reason).increment(1);
    }

    fn transition_counter(
        &self,
        from: &'static str,
        to: &'static str,
        reason: &'static str,
    ) -> Counter {
        let mut labels = self.labels.to_vec();
        labels.push(Label::from_static_parts("from", from));
        labels.push(Label::from_static_parts("to", to));
        labels.push(Label::from_static_parts("reason", reason));
        let key = Key::from_parts("fusebox_breaker_transitions_total", labels);
        self.telemetry.recorder.register_counter(&key, &METADATA)
    }

    fn register_counter(
        &self,
        name: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Counter {
        let mut labels = self.labels.to_vec();
        labels.push(Label::from_static_parts(label, value));
        self.telemetry
            .recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Registers the handles of one endpoint of this destination (`endpoint`: `ip:port`, or
    /// `_other` beyond `[balance] max_endpoints`). The endpoints of destinations folded into
    /// `destination="_other"` are `_other` too: no label names what the cap leaves out.
    pub fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        let endpoint = if self.labels[1].value() == OTHER_DESTINATION {
            OTHER_DESTINATION
        } else {
            endpoint
        };
        let mut labels = self.labels.to_vec();
        labels.push(Label::new("endpoint", endpoint.to_owned()));
        let recorder = &self.telemetry.recorder;
        let key = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
            let mut all = labels.clone();
            all.extend(extra.map(|(k, v)| Label::from_static_parts(k, v)));
            Key::from_parts(name, all)
        };
        let requests = |result| {
            recorder.register_counter(
                &key("fusebox_endpoint_requests_total", Some(("result", result))),
                &METADATA,
            )
        };
        let ejections = |reason| {
            recorder.register_counter(
                &key("fusebox_endpoint_ejections_total", Some(("reason", reason))),
                &METADATA,
            )
        };
        EndpointMetrics {
            state: recorder.register_gauge(&key("fusebox_endpoint_state", None), &METADATA),
            cost: recorder.register_gauge(&key("fusebox_endpoint_ewma_seconds", None), &METADATA),
            success: requests("success"),
            failure: requests("failure"),
            ejected_failures: ejections("consecutive_failures"),
            ejected_probe: ejections("probe_failed"),
        }
    }
}

/// Handles for one `upstream` × `destination` × `endpoint`.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// `fusebox_endpoint_state`: 0 ready, 1 ejected, 2 probing.
    pub state: Gauge,
    /// `fusebox_endpoint_ewma_seconds`: the latency estimate the balancer compares.
    pub cost: Gauge,
    /// `fusebox_endpoint_requests_total{result}`: tries sent to it.
    pub success: Counter,
    pub failure: Counter,
    /// `fusebox_endpoint_ejections_total{reason}`.
    pub ejected_failures: Counter,
    pub ejected_probe: Counter,
}

fn describe(recorder: &PrometheusRecorder) {
    let counters: [(&'static str, &'static str); 14] = [
        ("fusebox_hedges_total", "Hedged requests ([hedge]), by result: sent, won (the hedge's answer went to the app), lost (another copy's did), budget (due, but max_extra_load was spent)."),
        ("fusebox_endpoint_requests_total", "Upstream tries sent to one endpoint of a destination, by result (success, failure: the endpoint's fault)."),
        ("fusebox_endpoint_ejections_total", "Endpoints taken out of their set, by reason (consecutive_failures, probe_failed)."),
        ("fusebox_fleet_limiter_errors_total", "Redis calls of a fleet-wide rate limit that failed or timed out (each one made the destination use its local fallback)."),
        ("fusebox_breaker_transitions_total", "Circuit breaker state changes; a trip is to=\"open\". Shows every trip even when the state gauge was sampled closed."),
        ("fusebox_route_breaker_transitions_total", "State changes of a route's own circuit breaker ([[route]] breaker = \"own\"); a trip is to=\"open\"."),
        ("fusebox_requests_total", "App requests handled, by outcome and the status class sent to the app."),
        ("fusebox_attempts_total", "Upstream tries (first tries and retries), by result."),
        ("fusebox_retries_total", "Retries sent, by the condition that allowed them."),
        ("fusebox_retry_budget_exhausted_total", "Retries refused because the retry budget was spent."),
        ("fusebox_shadow_rejections_total", "Requests that shadow mode would have rejected, by kind (breaker, rate_limit)."),
        ("fusebox_config_reloads_total", "Policy reload attempts, by result (success, failure, unchanged)."),
        ("fusebox_stream_timeouts_total", "Response bodies, app connections and CONNECT tunnels cut off by a time limit, by kind (body_idle, tunnel_idle, tunnel_max, header, response_unread)."),
        ("fusebox_intercepted_connections_total", "CONNECTs whose TLS fusebox terminated (intercept = true), by how the handshake with the app ended (ok, sni_mismatch, handshake_failed, ca_rejected)."),
    ];
    for (name, help) in counters {
        recorder.describe_counter(name.into(), None, SharedString::const_str(help));
    }
    let gauges: [(&'static str, &'static str); 14] = [
        (
            "fusebox_client_cert_expiry_seconds",
            "When the policy's client certificate (client_cert, mutual TLS) expires, as a Unix time in seconds.",
        ),
        (
            "fusebox_throttle_ratio",
            "Client-side throttling ([breaker] mode = \"throttle\"): the probability that a try is refused locally now.",
        ),
        (
            "fusebox_concurrency_limit",
            "The adaptive concurrency limit of a destination ([concurrency] mode = \"aimd\" or \"gradient\").",
        ),
        (
            "fusebox_endpoint_state",
            "State of one endpoint of a destination: 0 ready, 1 ejected, 2 probing.",
        ),
        (
            "fusebox_endpoint_ewma_seconds",
            "The endpoint's peak-EWMA latency estimate (failures count as balance.failure_penalty), in seconds.",
        ),
        (
            "fusebox_upstream_idle_connections",
            "Kept-alive cleartext HTTP/1.1 upstream connections resting at the destination, as of the scrape.",
        ),
        (
            "fusebox_app_connections",
            "Open app connections, by state: active, or resting (idle, buffers freed, only the socket kept).",
        ),
        (
            "fusebox_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        ),
        (
            "fusebox_route_breaker_state",
            "State of a route's own circuit breaker ([[route]] breaker = \"own\"): 0 closed, 1 half-open, 2 open.",
        ),
        ("fusebox_in_flight", "App requests in progress."),
        ("fusebox_tunnels_active", "Open CONNECT tunnels."),
        (
            "fusebox_fleet_limiter_state",
            "Which limit a fleet-limited destination applies: 1 on state=\"connected\" (the fleet's, in Redis) or on state=\"fallback\" (local, while Redis fails).",
        ),
        (
            "fusebox_config_generation",
            "Generation of the applied policies; increases on every applied reload.",
        ),
        ("fusebox_build_info", "Build information; always 1."),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(name.into(), None, SharedString::const_str(help));
    }
    let histograms: [(&'static str, &'static str); 2] = [
        (
            "fusebox_request_duration_seconds",
            "App-observed latency through fusebox, until the response head, in seconds.",
        ),
        (
            "fusebox_attempt_duration_seconds",
            "Latency of one upstream try, until the response head, in seconds.",
        ),
    ];
    for (name, help) in histograms {
        recorder.describe_histogram(
            name.into(),
            Some(Unit::Seconds),
            SharedString::const_str(help),
        );
    }
}

/// Which limit a fleet-limited destination applies now (`crate::fleet`), as its gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMode {
    /// The fleet's, through Redis.
    Connected,
    /// The local fallback: Redis failed.
    Fallback,
}

impl FleetMode {
    pub fn label(self) -> &'static str {
        match self {
            FleetMode::Connected => "connected",
            FleetMode::Fallback => "fallback",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_from_sample_lines() {
        let line = r#"fusebox_requests_total{upstream="pay",destination="[::1]:80",outcome="ok",code="2xx"} 3"#;
        assert_eq!(label(line, "upstream"), Some("pay"));
        assert_eq!(label(line, "destination"), Some("[::1]:80"));
        assert_eq!(label(line, "code"), Some("2xx"));
        assert_eq!(label(line, "missing"), None);
        let escaped = r#"m{upstream="a\"b,c",destination="d:1"} 1"#;
        assert_eq!(label(escaped, "upstream"), Some(r#"a\"b,c"#));
        assert_eq!(label(escaped, "destination"), Some("d:1"));
        assert_eq!(label("fusebox_config_generation 3", "upstream"), None);
    }

    #[test]
    fn series_of_what_is_gone_are_left_out() {
        let telemetry = Telemetry::new();
        let kept = telemetry.destination("kept", "a:1");
        let gone = telemetry.destination("gone", "b:1");
        kept.breaker_state.set(2.0);
        gone.breaker_state.set(2.0);
        telemetry.client_cert_expiry("kept", std::time::UNIX_EPOCH);
        telemetry.client_cert_expiry("gone", std::time::UNIX_EPOCH);
        let text = telemetry.render_where(
            |upstream, _, _| upstream == "kept",
            |name, upstream| name == "fusebox_client_cert_expiry_seconds" && upstream == "kept",
        );
        assert!(text.contains(r#"fusebox_client_cert_expiry_seconds{upstream="kept"} 0"#));
        assert!(text.contains(r#"fusebox_breaker_state{upstream="kept",destination="a:1"} 2"#));
        assert!(!text.contains(r#"upstream="gone""#), "{text}");
        assert!(text.contains("fusebox_config_generation"), "{text}");
        assert!(
            text.contains("# TYPE fusebox_breaker_state gauge"),
            "{text}"
        );
    }
}
