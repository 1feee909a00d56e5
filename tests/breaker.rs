//! The circuit breaker end to end (docs/ARCHITECTURE.md §1, §3 `[breaker]`, §4, §5): real loopback
//! sockets, a scripted fake upstream, and reqwest through fusebox as the app.
//!
//! Every test writes a policy for itself and sets `[retry] attempts = 1` (unless retries are the
//! point), so each app request is exactly one upstream try and upstream hit counts are exact.
//! fusebox runs with `jitter = false`, so open periods are exactly `open_base`, `2 × open_base`…
//!
//! Timing: nothing here relies on the machine being fast, and nothing sleeps for a schedule:
//! a test that needs an open period to be over waits on state, until fusebox itself reports the
//! next probe as due (`/upstreams`, [`until_probe_due`]); where a check can only be
//! made *before* a period ends, the test either reads the remaining time fusebox reports
//! (`next probe in …`) and bounds the period from both sides with instants it measured, or uses
//! periods long enough (30 s) that a stalled machine cannot reach their end.

mod support;

use support::metrics::metric;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::{policies_dir, refused_addr, FakeUpstream, Reply, TestFusebox};

/// Safety net for anything that should happen; never reached on a healthy run.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Set-up.

/// A policy file: `top` (top-level keys such as `hosts`), generous timeouts (so a slow machine
/// never turns a call into a timeout), one try per request, `breaker` under `[breaker]`, then
/// any further `tables`.
///
/// Unless a test sets them, `slow_call_duration` is 30 s and `open_base` 30 s: no call is slow
/// by accident, and an open breaker stays open for the whole test.
fn policy(top: &str, breaker: &str, tables: &str) -> String {
    let mut breaker = breaker.to_owned();
    if !breaker.contains("slow_call_duration") {
        breaker.push_str("\nslow_call_duration = \"30s\"");
    }
    if !breaker.contains("open_base") {
        breaker.push_str("\nopen_base = \"30s\"");
    }
    let timeouts = if tables.contains("[timeouts]") {
        ""
    } else {
        "[timeouts]\nconnect = \"5s\"\nattempt = \"10s\"\ntotal = \"20s\"\n"
    };
    format!("{top}\n{timeouts}[retry]\nattempts = 1\n\n[breaker]\n{breaker}\n\n{tables}\n")
}

/// fusebox on these policies, with exact (unjittered) open periods.
async fn start(policies: &[(&str, &str)]) -> TestFusebox {
    TestFusebox::start_with(policies_dir(policies), |config| config.jitter = false).await
}

/// `hosts = ["127.0.0.1:PORT"]` for a named policy that covers exactly this upstream.
fn hosts(upstream: &FakeUpstream) -> String {
    format!("hosts = [\"{}\"]", upstream.authority())
}

// ---------------------------------------------------------------------------------------------
// Responses.

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn reason(&self) -> Option<&str> {
        self.header("x-fusebox-reason")
    }

    fn is_breaker_open(&self) -> bool {
        self.reason() == Some("breaker-open")
    }

    async fn from_reqwest(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = response.text().await.expect("response body");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// The time until the next probe, as the breaker-open body states it
    /// (`… next probe in 587ms`), truncated to whole milliseconds.
    fn next_probe_in(&self) -> Duration {
        let text = self
            .body
            .trim_end()
            .rsplit_once("next probe in ")
            .unwrap_or_else(|| panic!("the body names the next probe: {self:?}"))
            .1;
        humantime::parse_duration(text)
            .unwrap_or_else(|e| panic!("a duration in {text:?}: {e} ({self:?})"))
    }
}

/// GET `url` through fusebox.
async fn get(fusebox: &TestFusebox, url: &str) -> Answer {
    let response = fusebox
        .app()
        .get(url)
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} through fusebox: {e}"));
    Answer::from_reqwest(response).await
}

/// GET `url` through fusebox, with the instants just before sending and after the answer.
async fn timed_get(fusebox: &TestFusebox, url: &str) -> (Instant, Answer, Instant) {
    let sent = Instant::now();
    let answer = get(fusebox, url).await;
    (sent, answer, Instant::now())
}

/// Waits on state, not on a clock: until fusebox reports (`/upstreams`, `next_probe_in_ms`)
/// that `destination`'s open period is over and its next request is a probe.
async fn until_probe_due(fusebox: &TestFusebox, policy: &str, destination: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = fusebox.upstreams(policy).await;
        let due = view.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["destination"] == destination && r["next_probe_in_ms"] == 0)
        });
        if due {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the open period never ended: {view}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The upstream's own answer, passed through unchanged.
#[track_caller]
fn assert_passed_through(answer: &Answer, status: u16) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.reason(), None, "not a local reply: {answer:?}");
    assert!(
        answer.body.starts_with("fake upstream: "),
        "the upstream's body: {answer:?}"
    );
}

/// A local reply with this status and reason, on behalf of `upstream`.
#[track_caller]
fn assert_local(answer: &Answer, status: u16, reason: &str, upstream: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.reason(), Some(reason), "{answer:?}");
    assert_eq!(
        answer.header("x-fusebox-upstream"),
        Some(upstream),
        "{answer:?}"
    );
    assert!(
        answer.body.starts_with(&format!("fusebox: {reason}: ")) && answer.body.ends_with('\n'),
        "a one-line body saying what happened: {answer:?}"
    );
}

/// The local `503 breaker-open` (docs/ARCHITECTURE.md §5): names the destination, and `retry-after`
/// is a whole number of seconds in `1..=max_secs`. Returns `retry-after`.
#[track_caller]
fn assert_breaker_open(answer: &Answer, upstream: &str, destination: &str, max_secs: u64) -> u64 {
    assert_local(answer, 503, "breaker-open", upstream);
    assert!(
        answer.body.contains(destination),
        "the body names the destination {destination}: {answer:?}"
    );
    let retry_after: u64 = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("a retry-after header: {answer:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("retry-after in seconds: {e} ({answer:?})"));
    assert!(
        (1..=max_secs).contains(&retry_after),
        "retry-after in 1..={max_secs}: {answer:?}"
    );
    retry_after
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// One policy × destination's view of `/metrics`.
struct Series<'a> {
    text: &'a str,
    upstream: &'a str,
    destination: String,
}

impl<'a> Series<'a> {
    fn new(text: &'a str, upstream: &'a str, destination: &str) -> Self {
        Series {
            text,
            upstream,
            destination: destination.to_owned(),
        }
    }

    fn get(&self, name: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels = vec![
            ("upstream", self.upstream),
            ("destination", self.destination.as_str()),
        ];
        labels.extend_from_slice(extra);
        metric(self.text, name, &labels)
    }

    #[track_caller]
    fn assert_state(&self, state: f64) {
        let labels = [
            ("upstream", self.upstream),
            ("destination", self.destination.as_str()),
        ];
        let line = self.text.lines().find(|l| {
            l.starts_with("fusebox_breaker_state{")
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        });
        assert!(
            line.is_some(),
            "a fusebox_breaker_state line for {labels:?} in:\n{}",
            self.text
        );
        assert_eq!(
            self.get("fusebox_breaker_state", &[]),
            state,
            "fusebox_breaker_state {labels:?} in:\n{}",
            self.text
        );
    }

    fn transitions(&self, from: &str, to: &str, reason: &str) -> f64 {
        self.get(
            "fusebox_breaker_transitions_total",
            &[("from", from), ("to", to), ("reason", reason)],
        )
    }

    fn all_transitions(&self) -> f64 {
        self.get("fusebox_breaker_transitions_total", &[])
    }

    #[track_caller]
    fn assert_transition(&self, from: &str, to: &str, reason: &str, count: f64) {
        assert_eq!(
            self.transitions(from, to, reason),
            count,
            "transitions {from}->{to} ({reason}) of {}/{} in:\n{}",
            self.upstream,
            self.destination,
            self.text
        );
    }

    /// Exactly these transitions and no others.
    #[track_caller]
    fn assert_only_transitions(&self, expected: &[(&str, &str, &str, f64)]) {
        for &(from, to, reason, count) in expected {
            self.assert_transition(from, to, reason, count);
        }
        let total: f64 = expected.iter().map(|t| t.3).sum();
        assert_eq!(
            self.all_transitions(),
            total,
            "no other transitions of {}/{} in:\n{}",
            self.upstream,
            self.destination,
            self.text
        );
    }

    fn requests(&self, outcome: &str, code: &str) -> f64 {
        self.get(
            "fusebox_requests_total",
            &[("outcome", outcome), ("code", code)],
        )
    }

    fn all_requests(&self) -> f64 {
        self.get("fusebox_requests_total", &[])
    }

    fn attempts(&self) -> f64 {
        self.get("fusebox_attempts_total", &[])
    }
}

// ---------------------------------------------------------------------------------------------
// 1. consecutive failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_after_consecutive_5xx_and_then_fails_fast() {
    let upstream = FakeUpstream::with_status(503).await;
    let fusebox = start(&[("default", &policy("", "consecutive_failures = 3", ""))]).await;
    let url = upstream.url("/pay");
    let destination = upstream.authority();

    for n in 1..=3 {
        let answer = get(&fusebox, &url).await;
        assert_passed_through(&answer, 503);
        assert_eq!(upstream.hits(), n);
    }

    // The fourth is answered by fusebox: the upstream is not touched.
    let answer = get(&fusebox, &url).await;
    assert_breaker_open(&answer, "default", &destination, 30);
    assert_eq!(
        upstream.hits(),
        3,
        "an open breaker does not touch the upstream"
    );

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);
    assert_eq!(m.requests("upstream_error", "5xx"), 3.0, "{text}");
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
    assert_eq!(m.all_requests(), 4.0, "{text}");
    assert_eq!(
        m.attempts(),
        3.0,
        "the rejected request made no try:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_breaks_the_run_of_failures() {
    // 503, 503, 200, 503, 503: never three in a row.
    let upstream = FakeUpstream::builder()
        .statuses(&[503, 503, 200, 503, 503, 200])
        .start()
        .await;
    let fusebox = start(&[("default", &policy("", "consecutive_failures = 3", ""))]).await;
    let url = upstream.url("/");
    for expected in [503, 503, 200, 503, 503, 200] {
        assert_passed_through(&get(&fusebox, &url).await, expected);
    }
    assert_eq!(upstream.hits(), 6);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &upstream.authority());
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);
}

// ---------------------------------------------------------------------------------------------
// 2. failure rate over the window, once min_calls is reached

const RATE_RULE: &str =
    "consecutive_failures = 0\nfailure_rate = 0.5\nmin_calls = 10\nwindow = \"10s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_on_failure_rate_once_min_calls_is_reached() {
    // 200, 500, 200, 500, …: half of the calls fail from the second call on.
    let statuses: Vec<u16> = (0..20)
        .map(|i| if i % 2 == 0 { 200 } else { 500 })
        .collect();
    let upstream = FakeUpstream::builder()
        .replies(statuses.iter().map(|&s| Reply::Status(s)))
        .start()
        .await;
    let fusebox = start(&[("default", &policy("", RATE_RULE, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    // Nine calls: a 4/9 failure rate, and fewer than min_calls anyway.
    for &expected in &statuses[..9] {
        assert_passed_through(&get(&fusebox, &url).await, expected);
    }
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);

    // The tenth (a 500) reaches both min_calls and 5/10 = failure_rate: it is passed on, and
    // the breaker opens behind it.
    assert_passed_through(&get(&fusebox, &url).await, 500);
    assert_eq!(upstream.hits(), 10);
    let answer = get(&fusebox, &url).await;
    assert_breaker_open(&answer, "default", &destination, 30);
    assert_eq!(upstream.hits(), 10);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "failure_rate", 1.0)]);
    assert_eq!(m.requests("ok", "2xx"), 5.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 5.0, "{text}");
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_calls_than_min_calls_never_trip_even_when_all_fail() {
    let upstream = FakeUpstream::with_status(500).await;
    let fusebox = start(&[("default", &policy("", RATE_RULE, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    for n in 1..=9 {
        assert_passed_through(&get(&fusebox, &url).await, 500);
        assert_eq!(upstream.hits(), n);
    }
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);
    assert_eq!(m.requests("upstream_error", "5xx"), 9.0, "{text}");

    // The boundary: the tenth failure reaches min_calls and trips.
    assert_passed_through(&get(&fusebox, &url).await, 500);
    assert_breaker_open(&get(&fusebox, &url).await, "default", &destination, 30);
    assert_eq!(upstream.hits(), 10);
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_only_transitions(&[("closed", "open", "failure_rate", 1.0)]);
}

// ---------------------------------------------------------------------------------------------
// 3. slow calls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_on_slow_calls_even_when_every_status_is_200() {
    let upstream = FakeUpstream::builder()
        .status(200)
        .delay(Duration::from_millis(150))
        .start()
        .await;
    let breaker = "consecutive_failures = 0\nslow_call_duration = \"100ms\"\nslow_call_rate = 1.0\nmin_calls = 3";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    for n in 1..=3 {
        let (sent, answer, received) = timed_get(&fusebox, &url).await;
        assert_passed_through(&answer, 200);
        assert!(received - sent >= Duration::from_millis(150));
        assert_eq!(upstream.hits(), n);
    }
    let answer = get(&fusebox, &url).await;
    assert_breaker_open(&answer, "default", &destination, 30);
    assert_eq!(upstream.hits(), 3);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "slow_call_rate", 1.0)]);
    assert_eq!(m.requests("ok", "2xx"), 3.0, "{text}");
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 4. half-open recovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_probe_closes_the_breaker() {
    let upstream = FakeUpstream::with_status(503).await;
    let breaker = "consecutive_failures = 2\nopen_base = \"300ms\"\nopen_max = \"10s\"";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    assert_passed_through(&get(&fusebox, &url).await, 503);
    let answer = get(&fusebox, &url).await;
    assert_passed_through(&answer, 503);
    // The gauge moves only on transitions, so it shows the trip however long this takes.
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);

    // Wait out the 300 ms open period: until fusebox says a probe may go.
    until_probe_due(&fusebox, "default", &destination).await;
    upstream.set_statuses(&[200]);
    let answer = get(&fusebox, &url).await;
    assert_passed_through(&answer, 200);
    assert_eq!(upstream.hits(), 3, "the probe reached the upstream");

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_only_transitions(&[
        ("closed", "open", "consecutive_failures", 1.0),
        ("open", "half_open", "open_elapsed", 1.0),
        ("half_open", "closed", "probe_succeeded", 1.0),
    ]);

    // Closed again: traffic flows, with a fresh run of failures.
    assert_passed_through(&get(&fusebox, &url).await, 200);
    upstream.set_statuses(&[503]);
    assert_passed_through(&get(&fusebox, &url).await, 503);
    assert_passed_through(&get(&fusebox, &url).await, 503);
    assert_eq!(upstream.hits(), 6);
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_transition("closed", "open", "consecutive_failures", 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_one_probe_and_rejects_the_rest_meanwhile() {
    let upstream = FakeUpstream::with_status(503).await;
    let breaker = "consecutive_failures = 2\nopen_base = \"300ms\"\nopen_max = \"10s\"";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    assert_passed_through(&get(&fusebox, &url).await, 503);
    let answer = get(&fusebox, &url).await;
    assert_passed_through(&answer, 503);
    until_probe_due(&fusebox, "default", &destination).await;

    // The probe takes 3 s to answer; meanwhile other requests fail fast.
    upstream.set_replies([
        Reply::Status(200).after(Duration::from_secs(3)),
        Reply::Status(200),
    ]);
    let probe = {
        let app = fusebox.app();
        let url = url.clone();
        tokio::spawn(async move { app.get(url).timeout(PATIENCE).send().await })
    };
    tokio::time::timeout(PATIENCE, upstream.wait_hits(3))
        .await
        .expect("the probe reaches the upstream");
    let answer = get(&fusebox, &url).await;
    assert_eq!(
        assert_breaker_open(&answer, "default", &destination, 1),
        1,
        "a probe is in flight: retry soon ({answer:?})"
    );
    assert_eq!(upstream.hits(), 3, "only the probe reached the upstream");

    let probe = probe.await.expect("probe task").expect("probe answer");
    assert_eq!(probe.status(), 200);
    assert_passed_through(&get(&fusebox, &url).await, 200);
    assert_eq!(upstream.hits(), 4);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_only_transitions(&[
        ("closed", "open", "consecutive_failures", 1.0),
        ("open", "half_open", "open_elapsed", 1.0),
        ("half_open", "closed", "probe_succeeded", 1.0),
    ]);
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_pass_the_breaker_and_fail_fast_once_it_opens() {
    // Three tries allowed on 503; the second failure trips the breaker, so the third try is
    // refused without reaching the upstream, and the app gets the upstream's last answer (the
    // real 503) rather than a local one. The next request is refused locally.
    let upstream = FakeUpstream::with_status(503).await;
    let text = policy("", "consecutive_failures = 2", "").replace(
        "attempts = 1",
        "attempts = 3\non = [\"gateway-error\"]\nbackoff_base = \"1ms\"\nbackoff_max = \"5ms\"",
    );
    let fusebox = start(&[("default", &text)]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    let answer = get(&fusebox, &url).await;
    assert_passed_through(&answer, 503);
    assert_eq!(upstream.hits(), 2, "the retry after the trip was not sent");
    let answer = get(&fusebox, &url).await;
    assert_breaker_open(&answer, "default", &destination, 30);
    assert_eq!(upstream.hits(), 2);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);
    assert_eq!(m.attempts(), 2.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 1.0, "{text}");
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
    assert_eq!(m.all_requests(), 2.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 5. re-trip with a doubled open period

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_reopens_for_twice_as_long() {
    let upstream = FakeUpstream::with_status(503).await;
    let breaker = "consecutive_failures = 2\nopen_base = \"300ms\"\nopen_max = \"10s\"";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();
    let base = Duration::from_millis(300);
    let doubled = Duration::from_millis(600);

    assert_passed_through(&get(&fusebox, &url).await, 503);
    let answer = get(&fusebox, &url).await;
    assert_passed_through(&answer, 503);

    // First open period (300 ms) over: the probe goes to the upstream, fails, and re-trips.
    until_probe_due(&fusebox, "default", &destination).await;
    let (probe_sent, answer, retripped_before) = timed_get(&fusebox, &url).await;
    assert_passed_through(&answer, 503);
    assert_eq!(upstream.hits(), 3, "the probe reached the upstream");
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[
        ("closed", "open", "consecutive_failures", 1.0),
        ("open", "half_open", "open_elapsed", 1.0),
        ("half_open", "open", "probe_failed", 1.0),
    ]);

    // The re-trip happened at some instant `r` in [probe_sent, retripped_before]. A rejection
    // decided at `a` >= sent reports `next = r + period - a`, so
    // period >= (sent - retripped_before) + next, whatever the machine's speed.
    let (sent, answer, received) = timed_get(&fusebox, &url).await;
    if !answer.is_breaker_open() {
        // Only possible if this machine stalled for the whole doubled period.
        assert!(
            received - probe_sent >= doubled,
            "admitted {:?} after the failed probe was sent: the period was not doubled ({answer:?})",
            received - probe_sent
        );
        eprintln!("machine too slow to observe the doubled period; skipping the rest");
        return;
    }
    assert_eq!(
        assert_breaker_open(&answer, "default", &destination, 1),
        1,
        "retry-after rounds up"
    );
    let period_at_least = sent.saturating_duration_since(retripped_before) + answer.next_probe_in();
    assert!(
        period_at_least > base,
        "the second open period is longer than open_base: >= {period_at_least:?} ({answer:?})"
    );
    assert!(
        period_at_least <= doubled,
        "the second open period is at most 2 × open_base: >= {period_at_least:?} ({answer:?})"
    );
    assert_eq!(upstream.hits(), 3);

    // The doubled period is over when fusebox says so; the next probe goes through (and
    // succeeds).
    until_probe_due(&fusebox, "default", &destination).await;
    upstream.set_statuses(&[200]);
    assert_passed_through(&get(&fusebox, &url).await, 200);
    assert_eq!(upstream.hits(), 4, "the second probe reached the upstream");

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_only_transitions(&[
        ("closed", "open", "consecutive_failures", 1.0),
        ("open", "half_open", "open_elapsed", 2.0),
        ("half_open", "open", "probe_failed", 1.0),
        ("half_open", "closed", "probe_succeeded", 1.0),
    ]);
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 6. shadow mode, 7. mode off

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_trips_and_counts_but_never_rejects() {
    let upstream = FakeUpstream::with_status(503).await;
    let breaker = "mode = \"shadow\"\nconsecutive_failures = 3";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    for n in 1..=8 {
        assert_passed_through(&get(&fusebox, &url).await, 503);
        assert_eq!(upstream.hits(), n, "shadow mode lets every request through");
    }

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);
    // Requests 4..=8 arrived while the breaker was open (for 30 s).
    assert_eq!(
        m.get("fusebox_shadow_rejections_total", &[("kind", "breaker")]),
        5.0,
        "{text}"
    );
    assert_eq!(m.requests("breaker_open", "5xx"), 0.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 8.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_off_never_trips() {
    let upstream = FakeUpstream::with_status(503).await;
    let breaker = "mode = \"off\"\nconsecutive_failures = 1\nfailure_rate = 0.1\nmin_calls = 1";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    for n in 1..=10 {
        assert_passed_through(&get(&fusebox, &url).await, 503);
        assert_eq!(upstream.hits(), n);
    }
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);
    assert_eq!(
        m.get("fusebox_shadow_rejections_total", &[("kind", "breaker")]),
        0.0,
        "{text}"
    );
    assert_eq!(m.requests("upstream_error", "5xx"), 10.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 8. local rejections are not failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_and_rate_limit_rejections_do_not_trip_the_breaker() {
    // `gated`: one request at a time. The first request downloads a body far larger than the
    // socket buffers and the app does not read it, so it holds the only slot, for as long as
    // the test wants, without any timing.
    let gated_upstream = FakeUpstream::builder()
        .route("/hold", [Reply::Download(256 * 1024 * 1024)])
        .status(200)
        .start()
        .await;
    let limited_upstream = FakeUpstream::with_status(200).await;
    let gated = policy(
        &hosts(&gated_upstream),
        "consecutive_failures = 2",
        "[concurrency]\nmax_in_flight = 1\n",
    );
    let limited = policy(
        &hosts(&limited_upstream),
        "consecutive_failures = 2",
        "[rate_limit]\nrps = 1\nburst = 0\n",
    );
    let fusebox = start(&[("default", ""), ("gated", &gated), ("limited", &limited)]).await;

    // Overflow.
    let holder = fusebox
        .app()
        .get(gated_upstream.url("/hold"))
        .send()
        .await
        .expect("the held download starts");
    assert_eq!(holder.status(), 200);
    for _ in 0..6 {
        let answer = get(&fusebox, &gated_upstream.url("/")).await;
        assert_local(&answer, 503, "overflow", "gated");
    }
    assert_eq!(gated_upstream.hits(), 1);
    drop(holder);

    // Rate limited: rps = 1 and no burst, so after the first request a token frees once a
    // second; at least `consecutive_failures` requests in a row must be refused for the check
    // to mean anything.
    let url = limited_upstream.url("/");
    assert_passed_through(&get(&fusebox, &url).await, 200);
    let mut limited_count = 0;
    for _ in 0..8 {
        let answer = get(&fusebox, &url).await;
        if answer.status == 200 {
            assert_passed_through(&answer, 200);
        } else {
            assert_local(&answer, 429, "rate-limited", "limited");
            limited_count += 1;
        }
    }
    assert!(
        limited_count >= 2,
        "only {limited_count} requests were rate limited"
    );

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "gated", &gated_upstream.authority());
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);
    assert_eq!(m.requests("overflow", "5xx"), 6.0, "{text}");
    let m = Series::new(&text, "limited", &limited_upstream.authority());
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);
    assert_eq!(
        m.requests("rate_limited", "4xx"),
        f64::from(limited_count),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_rejections_do_not_count_as_failures() {
    // While open, local breaker-open replies are not recorded: when the probe succeeds the
    // breaker closes, and it then needs a full new run of failures to trip again.
    let upstream = FakeUpstream::with_status(503).await;
    let breaker = "consecutive_failures = 2\nopen_base = \"1s\"\nopen_max = \"10s\"";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    assert_passed_through(&get(&fusebox, &url).await, 503);
    let (_, answer, tripped_before) = timed_get(&fusebox, &url).await;
    assert_passed_through(&answer, 503);
    // Local rejections for the first 300 ms of the 1 s open period (at least one).
    let mut rejected = 0;
    loop {
        let answer = get(&fusebox, &url).await;
        assert_breaker_open(&answer, "default", &destination, 1);
        rejected += 1;
        if Instant::now() >= tripped_before + Duration::from_millis(300) {
            break;
        }
    }
    assert_eq!(upstream.hits(), 2);
    until_probe_due(&fusebox, "default", &destination).await;
    upstream.set_statuses(&[200, 503]);
    assert_passed_through(&get(&fusebox, &url).await, 200);
    // One failure after closing is not a trip, however many local rejections came before.
    assert_passed_through(&get(&fusebox, &url).await, 503);
    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(0.0);
    m.assert_transition("half_open", "closed", "probe_succeeded", 1.0);
    m.assert_transition("closed", "open", "consecutive_failures", 1.0);
    assert_eq!(
        m.requests("breaker_open", "5xx"),
        f64::from(rejected),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. CONNECT

/// `CONNECT target` on a fresh connection to fusebox: the status, headers and body of the answer.
async fn raw_connect(fusebox: &TestFusebox, target: &str) -> Answer {
    let mut stream = TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .expect("connect to fusebox");
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("fusebox answers the CONNECT in time")
            .expect("read");
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("numeric content-length"));
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the body in time")
            .expect("read");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_of_tunnels_trip_the_breaker() {
    let addr = refused_addr().await;
    let destination = addr.to_string();
    let refused = policy(
        &format!("hosts = [\"{destination}\"]"),
        "consecutive_failures = 2",
        "",
    );
    let fusebox = start(&[("default", ""), ("refused", &refused)]).await;

    for _ in 0..2 {
        let answer = raw_connect(&fusebox, &destination).await;
        assert_local(&answer, 502, "connect-failed", "refused");
    }
    let answer = raw_connect(&fusebox, &destination).await;
    assert_breaker_open(&answer, "refused", &destination, 30);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "refused", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);
    assert_eq!(m.requests("connect_failed", "5xx"), 2.0, "{text}");
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
    assert_eq!(
        m.get("fusebox_attempts_total", &[("result", "connect_failed")]),
        2.0,
        "{text}"
    );
    assert_eq!(m.attempts(), 2.0, "no try while open:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// 10. timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_timeouts_trip_the_breaker() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let fusebox = start(&[(
        "default",
        &policy(
            "",
            "consecutive_failures = 2",
            "[timeouts]\nattempt = \"200ms\"\ntotal = \"20s\"\n",
        ),
    )])
    .await;
    let url = upstream.url("/");
    let destination = upstream.authority();

    for n in 1..=2 {
        let (sent, answer, received) = timed_get(&fusebox, &url).await;
        assert_local(&answer, 504, "timeout", "default");
        assert!(
            received - sent >= Duration::from_millis(200),
            "not before the attempt timeout"
        );
        assert_eq!(upstream.hits(), n);
    }
    let answer = get(&fusebox, &url).await;
    assert_breaker_open(&answer, "default", &destination, 30);
    assert_eq!(upstream.hits(), 2);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &destination);
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);
    assert_eq!(m.requests("timeout", "5xx"), 2.0, "{text}");
    assert_eq!(m.requests("breaker_open", "5xx"), 1.0, "{text}");
    assert_eq!(
        m.get("fusebox_attempts_total", &[("result", "timeout")]),
        2.0,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. failure_statuses

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failure_statuses_count() {
    let answers_500 = FakeUpstream::with_status(500).await;
    let answers_503 = FakeUpstream::with_status(503).await;
    let breaker = "consecutive_failures = 2\nfailure_statuses = [503]";
    let fusebox = start(&[("default", &policy("", breaker, ""))]).await;

    for n in 1..=6 {
        assert_passed_through(&get(&fusebox, &answers_500.url("/")).await, 500);
        assert_eq!(answers_500.hits(), n);
    }
    // The same policy does trip on a listed status.
    for _ in 0..2 {
        assert_passed_through(&get(&fusebox, &answers_503.url("/")).await, 503);
    }
    let answer = get(&fusebox, &answers_503.url("/")).await;
    assert_breaker_open(&answer, "default", &answers_503.authority(), 30);
    assert_eq!(answers_503.hits(), 2);

    let text = fusebox.metrics().await;
    let m = Series::new(&text, "default", &answers_500.authority());
    m.assert_state(0.0);
    m.assert_only_transitions(&[]);
    assert_eq!(
        m.get("fusebox_attempts_total", &[("result", "success")]),
        6.0,
        "a 500 outside failure_statuses is a success for the breaker:\n{text}"
    );
    let m = Series::new(&text, "default", &answers_503.authority());
    m.assert_state(2.0);
    m.assert_only_transitions(&[("closed", "open", "consecutive_failures", 1.0)]);
}
