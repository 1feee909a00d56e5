//! Retries (docs/ARCHITECTURE.md §1, §3 `[timeouts]` `[retry]`, §4, §5): which failures are
//! retried, which requests may be sent twice, replayable bodies, `Retry-After`, attempt and total
//! timeouts, connect failures, the retry budget against retry storms, and the metrics that count it
//! all.
//!
//! Every policy here sets `[breaker] mode = "off"` so that a breaker trip cannot interfere with
//! what is being counted, and every agent runs with `jitter = false`, so the backoff is its
//! upper bound and the schedule is known. Timing assertions are lower bounds only; anything
//! that should happen gets a generous safety net.

mod support;

use support::metrics::metric;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use support::{policies_dir, refused_addr, syn_blackhole, FakeUpstream, Reply, TestFusebox};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Starts fusebox with `default.toml` = `policy` plus the breaker turned off, without jitter.
async fn start(policy: &str) -> TestFusebox {
    let default = format!("{policy}\n[breaker]\nmode = \"off\"\n");
    TestFusebox::start_with(policies_dir(&[("default", &default)]), |config| {
        config.jitter = false;
    })
    .await
}

/// The metrics of one destination (the `default` policy, `host:port`).
struct Counts<'a> {
    text: &'a str,
    destination: &'a str,
}

impl Counts<'_> {
    fn get(&self, name: &str, extra: &[(&str, &str)]) -> f64 {
        let mut labels = vec![("upstream", "default"), ("destination", self.destination)];
        labels.extend_from_slice(extra);
        metric(self.text, name, &labels)
    }

    fn retries(&self, reason: &str) -> f64 {
        self.get("fusebox_retries_total", &[("reason", reason)])
    }

    fn all_retries(&self) -> f64 {
        self.get("fusebox_retries_total", &[])
    }

    fn attempts(&self, result: &str) -> f64 {
        self.get("fusebox_attempts_total", &[("result", result)])
    }

    fn all_attempts(&self) -> f64 {
        self.get("fusebox_attempts_total", &[])
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

    fn budget_exhausted(&self) -> f64 {
        self.get("fusebox_retry_budget_exhausted_total", &[])
    }
}

/// Asserts that `response` is fusebox's local reply with this status and reason.
fn assert_local(response: &reqwest::Response, status: u16, reason: &str) {
    assert_eq!(response.status(), status, "{response:?}");
    assert_eq!(
        response
            .headers()
            .get("x-fusebox-reason")
            .and_then(|v| v.to_str().ok()),
        Some(reason),
        "{response:?}"
    );
}

/// Asserts that `response` is the upstream's own answer with this status (not a local reply).
fn assert_upstream(response: &reqwest::Response, status: u16) {
    assert_eq!(response.status(), status, "{response:?}");
    assert!(
        response.headers().get("x-fusebox-reason").is_none(),
        "the upstream's answer, not a local reply: {response:?}"
    );
}

/// A request body reqwest sends chunked (no Content-Length).
fn chunked(bytes: Vec<u8>) -> reqwest::Body {
    reqwest::Body::wrap_stream(Full::new(Bytes::from(bytes)).into_data_stream())
}

// ---------------------------------------------------------------------------------------------
// 1. The default policy retries gateway errors of idempotent requests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_503_then_200_succeeds_in_two_attempts() {
    let upstream = FakeUpstream::builder().statuses(&[503, 200]).start().await;
    let fusebox = start("").await;

    let response = fusebox.app().get(upstream.url("/a")).send().await.unwrap();
    assert_upstream(&response, 200);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 2);

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.retries("gateway-error"), 1.0, "{text}");
    assert_eq!(m.all_retries(), 1.0, "{text}");
    assert_eq!(m.attempts("failure"), 1.0, "{text}");
    assert_eq!(m.attempts("success"), 1.0, "{text}");
    assert_eq!(m.all_attempts(), 2.0, "{text}");
    assert_eq!(m.requests("ok", "2xx"), 1.0, "{text}");
    assert_eq!(m.all_requests(), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 2. A non-idempotent request is never sent twice.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_503_is_not_retried() {
    let upstream = FakeUpstream::builder().statuses(&[503, 200]).start().await;
    let fusebox = start("").await;

    let response = fusebox
        .app()
        .post(upstream.url("/order"))
        .body("item=1")
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 503);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 1, "a POST is sent once");

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.all_retries(), 0.0, "{text}");
    assert_eq!(m.attempts("failure"), 1.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reset_or_closed_before_the_head_is_not_retried() {
    for reply in [Reply::ResetBeforeHead, Reply::CloseBeforeHead] {
        let upstream = FakeUpstream::builder()
            .replies([reply.clone(), Reply::Status(200)])
            .start()
            .await;
        let fusebox =
            start("[retry]\non = [\"connect-failure\", \"reset\", \"gateway-error\"]").await;

        let response = fusebox
            .app()
            .post(upstream.url("/order"))
            .body("item=1")
            .send()
            .await
            .unwrap();
        assert_local(&response, 502, "upstream-reset");
        response.bytes().await.unwrap();
        assert_eq!(upstream.hits(), 1, "{reply:?}: a POST is sent once");

        let text = fusebox.metrics().await;
        let m = Counts {
            text: &text,
            destination: &upstream.authority(),
        };
        assert_eq!(m.all_retries(), 0.0, "{reply:?}: {text}");
        assert_eq!(m.attempts("reset"), 1.0, "{reply:?}: {text}");
        assert_eq!(m.requests("reset", "5xx"), 1.0, "{reply:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reset_before_the_head_is_retried() {
    // The contrast to the POST above: the same failure, an idempotent method.
    let upstream = FakeUpstream::builder()
        .replies([Reply::ResetBeforeHead, Reply::Status(200)])
        .start()
        .await;
    let fusebox = start("").await;

    let response = fusebox.app().get(upstream.url("/x")).send().await.unwrap();
    assert_upstream(&response, 200);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 2);

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.retries("reset"), 1.0, "{text}");
    assert_eq!(m.attempts("reset"), 1.0, "{text}");
    assert_eq!(m.attempts("success"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 3. An Idempotency-Key makes any method retriable, body and all.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_idempotency_key_is_retried_with_its_body() {
    let upstream = FakeUpstream::builder().statuses(&[503, 200]).start().await;
    let fusebox = start("").await;
    let body = vec![b'p'; 3000];

    let response = fusebox
        .app()
        .post(upstream.url("/charge"))
        .header("idempotency-key", "charge-42")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 200);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 2);

    let last = upstream.last_request().expect("a request");
    assert_eq!(last.method, "POST");
    assert_eq!(
        last.body_len,
        body.len() as u64,
        "the retry carries the body"
    );
    assert_eq!(
        last.headers.get("idempotency-key").map(|v| v.as_bytes()),
        Some(&b"charge-42"[..])
    );
    assert_eq!(
        last.headers.get("content-length").map(|v| v.as_bytes()),
        Some(body.len().to_string().as_bytes())
    );

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.retries("gateway-error"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 4. Retry-After.

// On paused tokio time: the schedule is exact, and no real time passes.
#[tokio::test(start_paused = true)]
async fn retry_after_is_honored() {
    let upstream = FakeUpstream::builder()
        .statuses(&[503, 200])
        .header("retry-after", "1")
        .start()
        .await;
    // The backoff alone would wait 25 ms.
    let fusebox = start("").await;

    let started = tokio::time::Instant::now();
    let response = fusebox.app().get(upstream.url("/a")).send().await.unwrap();
    let elapsed = started.elapsed();
    assert_upstream(&response, 200);
    assert_eq!(upstream.hits(), 2);
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed <= Duration::from_millis(1002),
        "the retry waited for Retry-After: 1, and no longer: {elapsed:?}"
    );
}

// On paused tokio time: the schedule is exact, and no real time passes.
#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_total_timeout_ends_retrying() {
    let upstream = FakeUpstream::builder()
        .statuses(&[503, 200])
        .header("retry-after", "30")
        .start()
        .await;
    let fusebox = start("[timeouts]\ntotal = \"2s\"").await;

    let response = fusebox.app().get(upstream.url("/a")).send().await.unwrap();
    // Waiting would have ended in a total timeout (504); giving up passes on the upstream's 503.
    assert_upstream(&response, 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30"),
        "the upstream's answer passes through unchanged"
    );
    assert_eq!(upstream.hits(), 1);

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.all_retries(), 0.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 1.0, "{text}");
}

/// An upstream cannot crash a request task with an absurd `Retry-After`: the delay is compared
/// with what is left of the deadline, never added to an instant (which overflowed and panicked).
// On paused tokio time: the schedule is exact, and no real time passes.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_ends_retrying_without_a_panic() {
    for absurd in [
        "99999999999999999999",
        "18446744073709551615",
        "9223372036854775807",
    ] {
        let upstream = FakeUpstream::builder()
            .statuses(&[503, 200])
            .header("retry-after", absurd)
            .start()
            .await;
        let fusebox = start("[timeouts]\ntotal = \"2s\"").await;
        let response = fusebox.app().get(upstream.url("/a")).send().await.unwrap();
        assert_upstream(&response, 503);
        assert_eq!(upstream.hits(), 1, "retry-after: {absurd}");
        // The connection and fusebox are still fine.
        let again = fusebox.app().get(upstream.url("/b")).send().await.unwrap();
        assert_eq!(again.status(), 200, "retry-after: {absurd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_ignored_when_not_honored() {
    let upstream = FakeUpstream::builder()
        .statuses(&[503, 200])
        .header("retry-after", "30")
        .start()
        .await;
    let fusebox = start(
        "[timeouts]\ntotal = \"2s\"\n[retry]\nhonor_retry_after = false\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"",
    )
    .await;

    // Honoring it would end retrying (30 s > total); ignoring it, the backoff applies.
    let response = fusebox.app().get(upstream.url("/a")).send().await.unwrap();
    assert_upstream(&response, 200);
    assert_eq!(upstream.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. Only replayable bodies are retried.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_replay_bytes_is_not_retried() {
    let upstream = FakeUpstream::builder().statuses(&[503, 200]).start().await;
    let fusebox = start("[retry]\nmax_replay_bytes = 1024").await;
    let body = vec![b'u'; 4096];

    let response = fusebox
        .app()
        .put(upstream.url("/big"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 503);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 1, "a streamed body is sent once");
    let last = upstream.last_request().expect("a request");
    assert_eq!(
        last.body_len,
        body.len() as u64,
        "the body was streamed whole"
    );

    // At the limit it is kept, and retried.
    let small = FakeUpstream::builder().statuses(&[503, 200]).start().await;
    let response = fusebox
        .app()
        .put(small.url("/small"))
        .body(vec![b's'; 1024])
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 200);
    assert_eq!(small.hits(), 2);
    assert_eq!(small.last_request().expect("a request").body_len, 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_replayed_when_it_went_through_whole_within_max_replay_bytes() {
    let upstream = FakeUpstream::builder().statuses(&[503, 200]).start().await;
    let fusebox = start("[retry]\nmax_replay_bytes = 1000").await;

    // Of unknown length: recorded while the first try streams it, then sent again.
    let response = fusebox
        .app()
        .put(upstream.url("/chunked"))
        .body(chunked(vec![b'c'; 100]))
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 200);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 2, "the recorded body is sent again");
    assert_eq!(upstream.last_request().expect("a request").body_len, 100);

    // Over the limit: sent once, as it streams.
    upstream.set_replies([Reply::Status(503), Reply::Status(200)]);
    let response = fusebox
        .app()
        .put(upstream.url("/chunked"))
        .body(chunked(vec![b'c'; 1001]))
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 503);
    response.bytes().await.unwrap();
    assert_eq!(
        upstream.hits(),
        3,
        "a body over max_replay_bytes is sent once"
    );
    let last = upstream.last_request().expect("a request");
    assert!(
        last.headers.get("content-length").is_none(),
        "sent chunked: {last:?}"
    );
    assert_eq!(last.body_len, 1001);
}

// ---------------------------------------------------------------------------------------------
// 6. `attempts` caps the tries.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_attempts() {
    let upstream = FakeUpstream::with_status(503).await;
    let fusebox = start("[retry]\nattempts = 3").await;

    let response = fusebox
        .app()
        .get(upstream.url("/down"))
        .send()
        .await
        .unwrap();
    assert_upstream(&response, 503);
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 3);

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.retries("gateway-error"), 2.0, "{text}");
    assert_eq!(m.attempts("failure"), 3.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 7, 8. Timeouts.

// On paused tokio time: the schedule is exact, and no real time passes.
#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_retried_when_on_includes_timeout() {
    let upstream = FakeUpstream::builder()
        .replies([Reply::Stall, Reply::Status(200)])
        .start()
        .await;
    let fusebox = start(
        "[timeouts]\nattempt = \"200ms\"\ntotal = \"5s\"\n[retry]\non = [\"connect-failure\", \"reset\", \"gateway-error\", \"timeout\"]",
    )
    .await;

    let started = tokio::time::Instant::now();
    let response = fusebox
        .app()
        .get(upstream.url("/slow"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_upstream(&response, 200);
    assert_eq!(upstream.hits(), 2);
    assert!(
        elapsed >= Duration::from_millis(200),
        "the first try ran into its timeout: {elapsed:?}"
    );

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.retries("timeout"), 1.0, "{text}");
    assert_eq!(m.attempts("timeout"), 1.0, "{text}");
    assert_eq!(m.attempts("success"), 1.0, "{text}");
    assert_eq!(m.requests("ok", "2xx"), 1.0, "{text}");
}

// On paused tokio time: the schedule is exact, and no real time passes.
#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_not_retried_without_timeout_in_on() {
    let upstream = FakeUpstream::builder()
        .replies([Reply::Stall, Reply::Status(200)])
        .start()
        .await;
    let fusebox = start(
        "[timeouts]\nattempt = \"200ms\"\ntotal = \"5s\"\n[retry]\non = [\"connect-failure\", \"reset\", \"gateway-error\"]",
    )
    .await;

    let response = fusebox
        .app()
        .get(upstream.url("/slow"))
        .send()
        .await
        .unwrap();
    assert_local(&response, 504, "timeout");
    response.bytes().await.unwrap();
    assert_eq!(upstream.hits(), 1);

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.all_retries(), 0.0, "{text}");
    assert_eq!(m.attempts("timeout"), 1.0, "{text}");
    assert_eq!(m.requests("timeout", "5xx"), 1.0, "{text}");
}

// On paused tokio time: the schedule is exact, and no real time passes.
#[tokio::test(start_paused = true)]
async fn total_timeout_bounds_all_attempts() {
    let upstream = FakeUpstream::builder().stall().start().await;
    // A tiny backoff, so that the tries fill the whole total rather than giving up early
    // because the next backoff would cross the deadline.
    let fusebox = start(
        "[timeouts]\nattempt = \"300ms\"\ntotal = \"700ms\"\n[retry]\nattempts = 5\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\non = [\"connect-failure\", \"reset\", \"gateway-error\", \"timeout\"]",
    )
    .await;

    let started = tokio::time::Instant::now();
    let response = fusebox
        .app()
        .get(upstream.url("/stuck"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_local(&response, 504, "timeout");
    response.bytes().await.unwrap();
    // The last try is cut to what is left of the total: the request ends at the deadline
    // (at worst one backoff of 1 ms before it).
    assert!(
        elapsed >= Duration::from_millis(699) && elapsed <= Duration::from_millis(701),
        "at the total timeout: {elapsed:?}"
    );
    let hits = upstream.hits();
    assert!(hits >= 2, "two whole attempts fit in the total: {hits}");

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert!(m.attempts("timeout") >= 2.0, "{text}");
    assert_eq!(m.attempts("timeout"), m.all_attempts(), "{text}");
    assert_eq!(m.retries("timeout"), m.all_attempts() - 1.0, "{text}");
    assert_eq!(m.requests("timeout", "5xx"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 9. Connect failures: the request never left, so any method may be sent again.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_for_any_method() {
    let fusebox = start("[retry]\nattempts = 3").await;
    let get_addr = refused_addr().await;
    let post_addr = refused_addr().await;

    let response = fusebox
        .app()
        .get(format!("http://{get_addr}/"))
        .send()
        .await
        .unwrap();
    assert_local(&response, 502, "connect-failed");
    response.bytes().await.unwrap();

    let response = fusebox
        .app()
        .post(format!("http://{post_addr}/order"))
        .body("item=1")
        .send()
        .await
        .unwrap();
    assert_local(&response, 502, "connect-failed");
    response.bytes().await.unwrap();

    let text = fusebox.metrics().await;
    for addr in [get_addr, post_addr] {
        let destination = addr.to_string();
        let m = Counts {
            text: &text,
            destination: &destination,
        };
        assert_eq!(m.attempts("connect_failed"), 3.0, "{destination}: {text}");
        assert_eq!(m.all_attempts(), 3.0, "{destination}: {text}");
        assert_eq!(m.retries("connect-failure"), 2.0, "{destination}: {text}");
        assert_eq!(
            m.requests("connect_failed", "5xx"),
            1.0,
            "{destination}: {text}"
        );
    }
}

/// A connect that times out sent nothing either: it is retried like a refused connect (the
/// `connect-failure` condition, any method), although its local reply and attempt result
/// still say `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeouts_are_retried_like_connect_failures() {
    let blackhole = syn_blackhole()
        .await
        .expect("a full listen backlog drops SYNs on this kernel");
    let fusebox = start(
        "[timeouts]\nconnect = \"200ms\"\nattempt = \"5s\"\ntotal = \"20s\"\n[retry]\nattempts = 3",
    )
    .await;
    let response = fusebox
        .app()
        .post(format!("http://{}/order", blackhole.addr))
        .body("item=1")
        .send()
        .await
        .unwrap();
    assert_local(&response, 504, "timeout");
    response.bytes().await.unwrap();

    let text = fusebox.metrics().await;
    let destination = blackhole.addr.to_string();
    let m = Counts {
        text: &text,
        destination: &destination,
    };
    assert_eq!(m.attempts("timeout"), 3.0, "{text}");
    assert_eq!(m.retries("connect-failure"), 2.0, "{text}");
    assert_eq!(m.all_retries(), 2.0, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 10. The retry budget stops a retry storm.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_a_retry_storm() {
    const REQUESTS: u64 = 100;
    const WORKERS: u64 = 4;
    let upstream = FakeUpstream::with_status(503).await;
    let fusebox = start(
        "[retry]\nattempts = 3\nbudget_ratio = 0.2\nbudget_min_per_second = 2\nbackoff_base = \"1ms\"\nbackoff_max = \"2ms\"",
    )
    .await;

    let app = fusebox.app();
    let url = upstream.url("/down");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (app, url, next) = (app.clone(), url.clone(), Arc::clone(&next));
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                let response = app.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 503, "{response:?}");
                response.bytes().await.unwrap();
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("worker");
    }
    let elapsed = started.elapsed();

    let hits = upstream.hits();
    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    let retries = m.all_retries();
    let exhausted = m.budget_exhausted();
    // 20% of the first tries, plus 2 per second of each second touched, plus one token of
    // overdraft per concurrent worker (the budget's documented race) and the window edge.
    let seconds = elapsed.as_secs() + 1;
    let bound = REQUESTS + REQUESTS / 5 + 2 * (seconds + 1) + WORKERS + 2;
    println!(
        "retry storm: {REQUESTS} requests in {elapsed:?}: upstream saw {hits} attempts \
         ({retries} retries, {exhausted} refused by the budget); bound {bound}; \
         without a budget: {}",
        REQUESTS * 3
    );
    assert!(hits >= REQUESTS, "every request tried once: {hits}");
    assert!(
        hits <= bound,
        "the budget caps retries: {hits} attempts > {bound}"
    );
    assert!(exhausted > 0.0, "the budget refused retries: {text}");
    assert_eq!(m.all_attempts(), hits as f64, "{text}");
    assert_eq!(retries, (hits - REQUESTS) as f64, "{text}");
    assert_eq!(
        m.requests("upstream_error", "5xx"),
        REQUESTS as f64,
        "{text}"
    );
    // Every request that had a retry refused counted once.
    assert!(exhausted <= REQUESTS as f64, "{text}");
}

// ---------------------------------------------------------------------------------------------
// 11. /metrics tells the story of a scripted scenario.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_a_scripted_scenario() {
    let upstream = FakeUpstream::builder()
        // 503, retried: ok.
        .route("/a", [Reply::Status(503), Reply::Status(200)])
        // 500 is not a gateway error: passed on after one try.
        .route("/b", [Reply::Status(500)])
        // A reset, retried: ok. (On a new connection: one reset on a kept-alive connection
        // before any answer is a stale connection, sent again as the same try.)
        .route("/c", [Reply::ResetBeforeHead, Reply::Status(200)])
        // A 404 is an answer, not a failure.
        .route("/d", [Reply::Status(404)])
        // Always 502: three tries, then passed on.
        .route("/e", [Reply::Status(502)])
        .start()
        .await;
    let fusebox = start("pool_max_idle = 0\n[retry]\nattempts = 3").await;
    let app = fusebox.app();

    let expected = [
        ("/a", 200),
        ("/b", 500),
        ("/c", 200),
        ("/d", 404),
        ("/e", 502),
    ];
    for (path, status) in expected {
        let response = app.get(upstream.url(path)).send().await.unwrap();
        assert_upstream(&response, status);
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.hits(), 2 + 1 + 2 + 1 + 3);

    let text = fusebox.metrics().await;
    let m = Counts {
        text: &text,
        destination: &upstream.authority(),
    };
    assert_eq!(m.retries("gateway-error"), 1.0 + 2.0, "{text}");
    assert_eq!(m.retries("reset"), 1.0, "{text}");
    assert_eq!(m.all_retries(), 4.0, "{text}");

    assert_eq!(m.attempts("success"), 3.0, "/a, /c, /d: {text}");
    assert_eq!(m.attempts("failure"), 1.0 + 1.0 + 3.0, "/a, /b, /e: {text}");
    assert_eq!(m.attempts("reset"), 1.0, "/c: {text}");
    assert_eq!(m.all_attempts(), 9.0, "{text}");

    assert_eq!(m.requests("ok", "2xx"), 2.0, "{text}");
    assert_eq!(m.requests("ok", "4xx"), 1.0, "{text}");
    assert_eq!(m.requests("upstream_error", "5xx"), 2.0, "{text}");
    assert_eq!(m.all_requests(), 5.0, "{text}");
    assert_eq!(m.budget_exhausted(), 0.0, "{text}");

    // A scrape is a snapshot, not a reset: a second one reads the same.
    let again = fusebox.metrics().await;
    let m2 = Counts {
        text: &again,
        destination: &upstream.authority(),
    };
    assert_eq!(m2.all_attempts(), 9.0);
    assert_eq!(m2.all_requests(), 5.0);
}
