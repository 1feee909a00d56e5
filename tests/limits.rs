//! Limits (docs/ARCHITECTURE.md §1, §3 `[rate_limit]` `[concurrency]` `[timeouts]`, §4, §5): the
//! rate limiter in enforce and shadow mode, the concurrency gate's immediate `503 overflow`, the
//! timeout on a stalled upstream, and the isolation of one destination from another's overload.
//!
//! Every policy here sets `[breaker] mode = "off"` so that a breaker trip cannot interfere, and
//! every agent runs with `jitter = false`. Timing assertions are lower bounds only, or bounds
//! generous enough that a slow machine cannot break them; where the limiter's refill could
//! change a count on a slow machine, the expected count accounts for the time that passed.

mod support;

use support::metrics::metric;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{policies_dir, FakeUpstream, Reply, TestFusebox};

/// Safety net for anything that should happen; never reached on a healthy run.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers.

const BREAKER_OFF: &str = "\n[breaker]\nmode = \"off\"\n";

/// Starts fusebox on these `(name, toml)` policies, without jitter. `default.toml` (first)
/// gets the breaker turned off, and every other policy inherits that.
async fn start(default: &str, others: &[(&str, &str)]) -> TestFusebox {
    let default = format!("{default}{BREAKER_OFF}");
    let mut files = vec![("default", default.as_str())];
    files.extend_from_slice(others);
    TestFusebox::start_with(policies_dir(&files), |config| {
        config.jitter = false;
    })
    .await
}

fn reason(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("x-fusebox-reason")
        .and_then(|v| v.to_str().ok())
}

/// Asserts that `response` is fusebox's local reply with this status and reason.
fn assert_local(response: &reqwest::Response, status: u16, reason_text: &str) {
    assert_eq!(response.status(), status, "{response:?}");
    assert_eq!(reason(response), Some(reason_text), "{response:?}");
}

/// The `q` quantile (0..=1) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Sends GETs to `url` one after another, at least `n` and for at least `span`; the sorted
/// latency of each (all must be 200).
async fn latencies(app: &reqwest::Client, url: &str, n: usize, span: Duration) -> Vec<Duration> {
    let mut all = Vec::with_capacity(n);
    let begun = Instant::now();
    while all.len() < n || begun.elapsed() < span {
        let started = Instant::now();
        let response = app.get(url).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "request {}: {response:?}",
            all.len()
        );
        response.bytes().await.unwrap();
        all.push(started.elapsed());
    }
    all.sort();
    all
}

// ---------------------------------------------------------------------------------------------
// 12. Rate limit.

/// How many of `sent` requests a limiter of capacity 2 at 2 per second can have let through
/// within `elapsed`: its capacity, plus one token per 500 ms that passed.
fn limiter_allows_at_most(elapsed: Duration) -> u64 {
    2 + u64::try_from(elapsed.as_millis() / 500).unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_rejects_beyond_capacity_with_429() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start("[rate_limit]\nrps = 2\nburst = 0", &[]).await;
    let app = fusebox.app();

    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = app.get(upstream.url("/r")).send().await.unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            assert_local(&response, 429, "rate-limited");
            let after: u64 = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("a numeric retry-after: {response:?}"));
            assert!(after >= 1, "retry-after {after}");
            assert_eq!(
                response
                    .headers()
                    .get("x-fusebox-upstream")
                    .and_then(|v| v.to_str().ok()),
                Some("default")
            );
        } else {
            assert_eq!(status, 200, "{response:?}");
            assert!(reason(&response).is_none(), "{response:?}");
        }
        response.bytes().await.unwrap();
        statuses.push(status);
    }
    let elapsed = started.elapsed();

    let passed = statuses.iter().filter(|&&s| s == 200).count() as u64;
    let limited = statuses.iter().filter(|&&s| s == 429).count() as u64;
    println!("rate limit: {statuses:?} in {elapsed:?}");
    assert_eq!(&statuses[..2], &[200, 200], "the capacity passes first");
    // Exactly 2 on any machine that sends 5 requests within 500 ms (one refill interval).
    assert!(
        passed <= limiter_allows_at_most(elapsed),
        "{passed} passed in {elapsed:?}: {statuses:?}"
    );
    assert!(limited >= 1, "{statuses:?}");
    assert_eq!(upstream.hits(), passed, "rejected requests never reach it");

    let text = fusebox.metrics().await;
    let destination = upstream.authority();
    let base = [
        ("upstream", "default"),
        ("destination", destination.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = base.to_vec();
        labels.extend_from_slice(extra);
        metric(&text, "fusebox_requests_total", &labels)
    };
    assert_eq!(
        with(&[("outcome", "rate_limited"), ("code", "4xx")]),
        limited as f64,
        "{text}"
    );
    assert_eq!(
        with(&[("outcome", "ok"), ("code", "2xx")]),
        passed as f64,
        "{text}"
    );
    assert_eq!(with(&[]), 5.0, "{text}");
    // A local rejection is not an upstream try.
    assert_eq!(
        metric(&text, "fusebox_attempts_total", &base),
        passed as f64,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_shadow_mode_counts_but_never_rejects() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start("[rate_limit]\nrps = 2\nburst = 0\nmode = \"shadow\"", &[]).await;
    let app = fusebox.app();

    let started = Instant::now();
    for _ in 0..5 {
        let response = app.get(upstream.url("/r")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{response:?}");
        assert!(reason(&response).is_none(), "{response:?}");
        response.bytes().await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(upstream.hits(), 5);

    let text = fusebox.metrics().await;
    let destination = upstream.authority();
    let shadow = metric(
        &text,
        "fusebox_shadow_rejections_total",
        &[
            ("upstream", "default"),
            ("destination", &destination),
            ("kind", "rate_limit"),
        ],
    );
    println!("rate limit shadow: {shadow} shadow rejections in {elapsed:?}");
    // Exactly 3 when the 5 requests take less than one refill interval (500 ms).
    let fewest = 5u64.saturating_sub(limiter_allows_at_most(elapsed));
    assert!(
        shadow <= 3.0 && shadow >= fewest as f64,
        "{shadow} shadow rejections in {elapsed:?}: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "fusebox_shadow_rejections_total",
            &[("destination", &destination), ("kind", "breaker")],
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "fusebox_requests_total",
            &[
                ("destination", &destination),
                ("outcome", "ok"),
                ("code", "2xx")
            ],
        ),
        5.0,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Concurrency gate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_gate_overflows_immediately() {
    // Two slow answers (slow enough that the checks in between cannot outlast them), then
    // fast ones.
    let slow = Reply::Status(200).after(Duration::from_secs(3));
    let upstream = FakeUpstream::builder()
        .replies([slow.clone(), slow, Reply::Status(200)])
        .start()
        .await;
    let fusebox = start(
        "[concurrency]\nmax_in_flight = 2\n[timeouts]\nattempt = \"10s\"\ntotal = \"20s\"",
        &[],
    )
    .await;
    let app = fusebox.app();
    let destination = upstream.authority();
    let in_flight = |text: &str| {
        metric(
            text,
            "fusebox_in_flight",
            &[("upstream", "default"), ("destination", &destination)],
        )
    };

    let pending: Vec<_> = (0..2)
        .map(|i| {
            let (app, url) = (app.clone(), upstream.url(&format!("/slow/{i}")));
            tokio::spawn(async move {
                let response = app.get(url).send().await.unwrap();
                let status = response.status();
                response.bytes().await.unwrap();
                status
            })
        })
        .collect();
    tokio::time::timeout(PATIENCE, upstream.wait_hits(2))
        .await
        .expect("both slow requests reach the upstream");

    let response = app.get(upstream.url("/third")).send().await.unwrap();
    assert_local(&response, 503, "overflow");
    response.bytes().await.unwrap();
    let text = fusebox.metrics().await;
    assert!(
        pending.iter().all(|p| !p.is_finished()),
        "the third request was refused while the first two were still pending"
    );
    assert_eq!(in_flight(&text), 2.0, "{text}");
    assert_eq!(upstream.hits(), 2, "the refused request never reached it");

    for p in pending {
        let status = tokio::time::timeout(PATIENCE, p)
            .await
            .expect("slow requests finish")
            .expect("task");
        assert_eq!(status, 200);
    }
    // The slots are freed as the responses end.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = fusebox.metrics().await;
        if in_flight(&text) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "slots freed: {text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = app.get(upstream.url("/after")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 3);

    let text = fusebox.metrics().await;
    let requests = |outcome, code| {
        metric(
            &text,
            "fusebox_requests_total",
            &[
                ("upstream", "default"),
                ("destination", &destination),
                ("outcome", outcome),
                ("code", code),
            ],
        )
    };
    assert_eq!(requests("overflow", "5xx"), 1.0, "{text}");
    assert_eq!(requests("ok", "2xx"), 3.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 14. A stalled upstream ends in 504, within the default total.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_gets_504_with_the_default_total() {
    let upstream = FakeUpstream::builder().stall().start().await;
    // Only the attempt timeout is set; `total` and `retry.on` are the defaults (5 s; no
    // retry on timeouts).
    let fusebox = start("[timeouts]\nattempt = \"300ms\"", &[]).await;

    let started = Instant::now();
    let response = fusebox
        .app()
        .get(upstream.url("/stuck"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_local(&response, 504, "timeout");
    let body = response.text().await.unwrap();
    assert!(body.starts_with("fusebox: timeout: "), "{body:?}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "not before the attempt timeout: {elapsed:?}"
    );
    assert_eq!(upstream.hits(), 1, "timeouts are not retried by default");

    let text = fusebox.metrics().await;
    let destination = upstream.authority();
    let labels = |extra: (&'static str, &'static str)| {
        [
            ("upstream", "default"),
            ("destination", destination.as_str()),
            extra,
        ]
    };
    assert_eq!(
        metric(
            &text,
            "fusebox_attempts_total",
            &labels(("result", "timeout"))
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "fusebox_requests_total",
            &labels(("outcome", "timeout"))
        ),
        1.0,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 15. Isolation: one destination's overload does not slow another down.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_destination_does_not_slow_down_another() {
    const GATE: usize = 20;
    const SAMPLES: usize = 200;
    let a = FakeUpstream::builder().stall().start().await;
    let b = FakeUpstream::with_status(200).await;
    let policy_a = format!(
        "hosts = [\"{}\"]\n[timeouts]\nattempt = \"500ms\"\n[concurrency]\nmax_in_flight = {GATE}\n",
        a.authority()
    );
    let policy_b = format!("hosts = [\"{}\"]\n", b.authority());
    let fusebox = start("", &[("a", &policy_a), ("b", &policy_b)]).await;
    let app_a = fusebox.app();
    let app_b = fusebox.app();
    let url_b = b.url("/fast");

    // Baseline, after a warm-up (connections, destination state).
    let warm_up = latencies(&app_b, &url_b, 20, Duration::ZERO).await;
    let baseline = latencies(&app_b, &url_b, SAMPLES, Duration::ZERO).await;

    // A's gate filled by stalled calls, each refilled as soon as its timeout frees the slot.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..GATE)
        .map(|i| {
            let (app, url, stop) = (
                app_a.clone(),
                a.url(&format!("/stall/{i}")),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let response = app.get(&url).send().await.unwrap();
                    let reason = reason(&response).map(str::to_owned);
                    statuses.push((response.status().as_u16(), reason));
                    response.bytes().await.unwrap();
                }
                statuses
            })
        })
        .collect();
    tokio::time::timeout(PATIENCE, a.wait_hits(GATE as u64))
        .await
        .expect("A's gate fills");

    // Beyond A's gate: refused at once, without reaching A.
    let extra_started = Instant::now();
    let mut extras = tokio::task::JoinSet::new();
    for i in 0..3 {
        let (app, url) = (app_a.clone(), a.url(&format!("/extra/{i}")));
        extras.spawn(async move {
            let response = app.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let reason = reason(&response).map(str::to_owned);
            response.bytes().await.unwrap();
            (status, reason)
        });
    }
    while let Some(extra) = extras.join_next().await {
        let (status, reason) = extra.expect("extra request");
        assert_eq!(
            (status, reason.as_deref()),
            (503, Some("overflow")),
            "A's gate is full"
        );
    }
    let extra_elapsed = extra_started.elapsed();

    // B during A's overload, for long enough that A's stalled calls time out and are replaced
    // several times meanwhile.
    let hits_before = a.hits();
    let during = latencies(&app_b, &url_b, SAMPLES, Duration::from_millis(1500)).await;
    let a_hits_during = a.hits() - hits_before;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        let statuses = tokio::time::timeout(PATIENCE, worker)
            .await
            .expect("A's callers finish")
            .expect("worker");
        for (status, reason) in statuses {
            assert_eq!(
                (status, reason.as_deref()),
                (504, Some("timeout")),
                "A's callers time out"
            );
        }
    }

    let (base_p50, base_p99) = (quantile(&baseline, 0.5), quantile(&baseline, 0.99));
    let (p50, p99) = (quantile(&during, 0.5), quantile(&during, 0.99));
    println!(
        "isolation: B baseline p50 {base_p50:?} p99 {base_p99:?} over {} requests; during A's \
         overload p50 {p50:?} p99 {p99:?} over {} requests ({a_hits_during} stalled calls \
         reached A meanwhile); 3 overflow replies from A in {extra_elapsed:?}",
        baseline.len(),
        during.len()
    );
    let bound = base_p99 * 10 + Duration::from_millis(50);
    assert!(
        p99 < bound,
        "B's p99 during A's overload {p99:?} >= {bound:?} (baseline p99 {base_p99:?})"
    );

    let text = fusebox.metrics().await;
    let b_dest = b.authority();
    let b_requests = |outcome| {
        metric(
            &text,
            "fusebox_requests_total",
            &[
                ("upstream", "b"),
                ("destination", &b_dest),
                ("outcome", outcome),
            ],
        )
    };
    let sent_to_b = (warm_up.len() + baseline.len() + during.len()) as f64;
    assert_eq!(b_requests("ok"), sent_to_b, "{text}");
    assert_eq!(
        metric(&text, "fusebox_requests_total", &[("upstream", "b")]),
        sent_to_b,
        "no B request failed: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "fusebox_requests_total",
            &[("upstream", "a"), ("outcome", "overflow")],
        ),
        3.0,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Time limits on streams: a stalled response body, idle and long-lived CONNECT tunnels.

fn stream_timeouts(metrics: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("fusebox_stream_timeouts_total{")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A response body that stalls after its head is cut off after `timeouts.idle`: the app's
/// response ends with an error instead of hanging, the gate slot is freed, and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_is_cut_off_after_the_idle_timeout() {
    // A head promising 100 bytes, five of them, then silence with the connection open.
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello".to_vec();
    let addr = support::raw::raw_upstream(head, support::raw::ThenUpstream::HoldOpen).await;
    let policy = format!(
        "hosts = [\"{addr}\"]\n[timeouts]\nidle = \"300ms\"\n[concurrency]\nmax_in_flight = 1\n"
    );
    let fusebox = TestFusebox::start(&[("default", ""), ("slow", &policy)]).await;
    let started = Instant::now();
    let response = fusebox
        .app()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(20), response.bytes()).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(body, Ok(Err(_))),
        "the body must end with an error, not hang or complete: {body:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "not before idle: {elapsed:?}"
    );
    let metrics = fusebox.metrics().await;
    assert_eq!(stream_timeouts(&metrics, "body_idle"), 1.0, "{metrics}");
    // The breaker counts it against the upstream.
    let view = fusebox.upstreams("slow").await;
    assert_eq!(view[0]["recent"][0]["kind"], "body_idle", "{view}");
    // The slot is free again: the next request is not an overflow.
    let next = fusebox
        .app()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200);
}

/// A CONNECT tunnel that is silent both ways is closed after `timeouts.tunnel_idle`, and one
/// that lives too long after `timeouts.tunnel_max`; both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_long_lived_tunnels_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::with_status(200).await;
    let host = upstream.authority();
    for (timeouts, kind) in [
        (
            "tunnel_idle = \"300ms\"\ntunnel_max = \"1h\"",
            "tunnel_idle",
        ),
        ("tunnel_idle = \"1h\"\ntunnel_max = \"500ms\"", "tunnel_max"),
    ] {
        let policy = format!("hosts = [\"{host}\"]\n[timeouts]\n{timeouts}\n");
        let fusebox = TestFusebox::start(&[("default", ""), ("tunnels", &policy)]).await;
        let mut app = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
            .await
            .unwrap();
        let connect = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        app.write_all(connect.as_bytes()).await.unwrap();
        let mut head = [0u8; 256];
        let n = app.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{kind}");
        // Silent from here on: fusebox must close the tunnel by itself.
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(20), app.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{kind}: the tunnel was not closed");
        let metrics = fusebox.metrics().await;
        assert_eq!(stream_timeouts(&metrics, kind), 1.0, "{kind}: {metrics}");
    }
}

/// `--header-timeout` counts from the first byte of a request head, and `--idle-timeout` from
/// the end of the last response: an idle keep-alive connection outlives the header timeout and
/// is closed only when idle for the idle timeout, while a head that stalls half-way is cut off
/// after the header timeout with a 408 `timeout` (and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_idle_timeouts_are_told_apart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::with_status(200).await;
    let header = Duration::from_millis(300);
    let idle = Duration::from_millis(1500);
    let fusebox = TestFusebox::start_with(policies_dir(&[("default", "")]), |config| {
        config.header_timeout = header;
        config.idle_timeout = idle;
    })
    .await;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        upstream.url("/keep"),
        upstream.authority()
    );

    // Keep-alive: a response, then silence for longer than the header timeout, then another
    // request on the same connection.
    let mut raw = support::raw::RawConn::connect(fusebox.agent().egress_addr()).await;
    raw.send(request.as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 200);
    tokio::time::sleep(header * 2).await;
    raw.send(request.as_bytes()).await;
    assert_eq!(
        raw.read_response().await.status,
        200,
        "an idle connection must outlive --header-timeout"
    );
    // Then idle for longer than the idle timeout: fusebox closes it.
    let started = Instant::now();
    assert!(raw.is_closed().await, "closed when idle");
    assert!(
        started.elapsed() >= idle - Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );

    // A head that stops half-way is cut off after the header timeout.
    let mut app = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    app.write_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), app.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a stalled head must be cut off");
    let told = String::from_utf8_lossy(&rest);
    assert!(
        told.starts_with("HTTP/1.1 408") && told.contains("x-fusebox-reason: timeout"),
        "the app is told why: {told}"
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= header - Duration::from_millis(50), "{elapsed:?}");
    assert!(
        elapsed < idle,
        "the header timeout, not the idle timeout: {elapsed:?}"
    );
    let metrics = fusebox.metrics().await;
    assert_eq!(stream_timeouts(&metrics, "header"), 1.0, "{metrics}");
}

/// A CONNECT tunnel is not an HTTP connection any more: an app that stays quiet inside it for
/// longer than `--header-timeout` and `--idle-timeout` keeps its tunnel (only the tunnel's own
/// limits apply), and can still talk to the upstream through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_outlives_the_app_connection_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::with_status(200).await;
    let host = upstream.authority();
    let fusebox = TestFusebox::start_with(policies_dir(&[("default", "")]), |config| {
        config.header_timeout = Duration::from_millis(200);
        config.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut app = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    let connect = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    app.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 256];
    let n = app.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Half a request, then silence past both limits, then the rest.
    app.write_all(b"GET /inside HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.write_all(format!("Host: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), app.read_to_end(&mut answer))
        .await
        .expect("the upstream answers through the tunnel")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// An idle HTTP/1.1 connection rests (hyper's state is let go, the socket kept) and wakes on
/// the app's next bytes. Resting after every response here (`rest_after` zero): keep-alive
/// requests, a pipelined head that arrived half before the rest and half after (the half hyper
/// had read is handed back, not lost), a POST body, the header timeout on a head after a rest,
/// and a CONNECT all work as on a connection that never rests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_connection_loses_nothing_and_keeps_its_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::builder().echo().start().await;
    let header = Duration::from_millis(300);
    let fusebox = TestFusebox::start_with(policies_dir(&[("default", "")]), |config| {
        config.rest_after = Duration::ZERO;
        config.header_timeout = header;
    })
    .await;
    let host = upstream.authority();
    let get = |path: &str| format!("GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n");

    let mut raw = support::raw::RawConn::connect(fusebox.agent().egress_addr()).await;
    for path in ["/one", "/two", "/three"] {
        raw.send(get(path).as_bytes()).await;
        assert_eq!(raw.read_response().await.status, 200, "{path}");
    }
    // Operators see it rest: `fusebox_app_connections` moves it from active to resting.
    let gauge = |text: &str, state: &str| {
        let series = format!("fusebox_app_connections{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.parse::<f64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fusebox.metrics().await;
        if (gauge(&text, "active"), gauge(&text, "resting")) == (Some(0.0), Some(1.0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never counted as resting:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One request and the first half of the next in one write; the rest of it after the
    // first answer, when the connection has rested with the half in hyper's buffer.
    let pipelined = format!(
        "{}GET http://{host}/second-half HTTP/1.1\r\nHo",
        get("/first")
    );
    raw.send(pipelined.as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 200);
    raw.send(format!("st: {host}\r\n\r\n").as_bytes()).await;
    let second = raw.read_response().await;
    assert_eq!(second.status, 200, "{second:?}");
    let post = format!(
        "POST http://{host}/post HTTP/1.1\r\nHost: {host}\r\ncontent-length: 5\r\n\r\nhello"
    );
    raw.send(post.as_bytes()).await;
    let echoed = raw.read_response().await;
    assert_eq!(
        (echoed.status, echoed.body.as_slice()),
        (200, &b"hello"[..])
    );
    assert_eq!(upstream.hits(), 6);

    // A head that stalls half-way after a rest still runs into the header timeout.
    raw.send(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHo").await;
    let started = Instant::now();
    let told = raw.read_response().await;
    assert_eq!(told.status, 408, "{told:?}");
    assert!(started.elapsed() >= header - Duration::from_millis(50));

    // A CONNECT after rests becomes a tunnel.
    let mut app = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    app.write_all(get("/before-connect").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = app.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    let connect = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    app.write_all(connect.as_bytes()).await.unwrap();
    let n = app.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    let inside = format!("GET /inside HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    app.write_all(inside.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), app.read_to_end(&mut answer))
        .await
        .expect("the upstream answers through the tunnel")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    drop(app);

    // A resting connection does not hold up shutdown: it is closed at once, well within the
    // drain timeout (10 s).
    let mut resting = support::raw::RawConn::connect(fusebox.agent().egress_addr()).await;
    resting.send(get("/last").as_bytes()).await;
    assert_eq!(resting.read_response().await.status, 200);
    let started = Instant::now();
    fusebox.shutdown().await;
    assert!(resting.is_closed().await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Waits (at most 20 s, a safety net far beyond the limits under test) for fusebox to close
/// `app`'s connection; how long it took.
async fn closed_within(app: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), app.read_to_end(&mut rest))
        .await
        .expect("fusebox closes the connection (it held it)")
        .ok();
    started.elapsed()
}

/// An intercepted `CONNECT` (#22, item 4) whose app never starts its TLS handshake is held no
/// longer than `--header-timeout`, not for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepted_connect_without_a_handshake_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = FakeUpstream::with_status(200).await;
    let port = upstream.addr().port();
    let policy = format!("hosts = [\"localhost:{port}\"]\nintercept = true\n");
    let dir = policies_dir(&[("default", ""), ("api", &policy)]);
    let ca_dir = dir.path().join("fusebox-ca");
    fusebox::ca::LocalCa::init(&ca_dir, false, std::time::SystemTime::now()).unwrap();
    let idle = Duration::from_secs(60);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.ca_dir = Some(ca_dir);
        config.header_timeout = Duration::from_millis(300);
        config.idle_timeout = idle;
    })
    .await;
    let mut app = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    let connect = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    app.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 256];
    let n = app.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "intercepted");
    let took = closed_within(&mut app).await;
    assert!(took < idle, "{took:?}");
    let metrics = fusebox.metrics().await;
    let failed = support::metrics::metric(
        &metrics,
        "fusebox_intercepted_connections_total",
        &[("result", "handshake_failed")],
    );
    assert_eq!(failed, 1.0, "{metrics}");
}

/// A route-listener connection that opens with part of the HTTP/2 preface and stops is held
/// no longer than `--header-timeout` (#22, item 4), and counted as a header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_h2_preface_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let upstream = FakeUpstream::with_status(200).await;
    let policy = format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\n",
        upstream.authority()
    );
    let idle = Duration::from_secs(60);
    let fusebox = TestFusebox::start_with(
        policies_dir(&[("default", ""), ("route", &policy)]),
        |config| {
            config.header_timeout = Duration::from_millis(300);
            config.idle_timeout = idle;
        },
    )
    .await;
    let route = fusebox
        .agent()
        .route_addr("route")
        .expect("a route listener");
    let mut app = tokio::net::TcpStream::connect(route).await.unwrap();
    app.write_all(b"PRI").await.unwrap();
    let took = closed_within(&mut app).await;
    assert!(took < idle, "{took:?}");
    let metrics = fusebox.metrics().await;
    assert_eq!(stream_timeouts(&metrics, "header"), 1.0, "{metrics}");
}

/// The breaker is asked before the rate limiter (#22, item 6): requests the breaker refuses
/// spend no token, so every one is a `503 breaker-open` (not a `429` once the tokens they took
/// ran out), and the limit is whole when the breaker lets requests through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_the_breaker_refuses_spends_no_rate_limit_token() {
    let upstream = FakeUpstream::with_status(200).await;
    let destination = upstream.authority();
    let policy = format!("hosts = [\"{destination}\"]\n[rate_limit]\nrps = 1\n");
    let fusebox = TestFusebox::start_with(policies_dir(&[("api", &policy)]), |config| {
        config.jitter = false;
    })
    .await;
    let command = |action: &str| {
        let url = format!(
            "{}/upstreams/api/breaker?action={action}&destination={destination}",
            fusebox.admin_url()
        );
        async move {
            support::direct_client()
                .post(url)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(command("force-open").await, 200);
    let app = fusebox.app();
    for _ in 0..5 {
        let response = app.get(upstream.url("/")).send().await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "the breaker answers, not the limiter"
        );
    }
    assert_eq!(command("reset").await, 200);
    assert_eq!(
        app.get(upstream.url("/")).send().await.unwrap().status(),
        200
    );
}
