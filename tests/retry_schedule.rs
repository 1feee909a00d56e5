//! The attempt loop's schedule on paused tokio time (docs/ARCHITECTURE.md §1.1): backoff,
//! `Retry-After`, attempt and total timeouts, measured on tokio's clock between the tries a
//! real upstream saw. fusebox, the upstream and the app all run in the test's runtime on
//! loopback sockets; the clock only moves when every task waits for a timer, so each gap
//! below is exact and no test waits in real time for a schedule.

mod support;

use std::time::Duration;

use support::{policies_dir, FakeUpstream, Reply, TestFusebox};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// fusebox with `default.toml` = `policy`, breaker off, no jitter.
async fn start(policy: &str) -> TestFusebox {
    let default = format!("{policy}\n[breaker]\nmode = \"off\"\n");
    TestFusebox::start_with(policies_dir(&[("default", &default)]), |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await
}

/// The gaps between the tries the upstream saw, in whole milliseconds.
fn gaps(upstream: &FakeUpstream) -> Vec<u128> {
    let arrivals = upstream.arrivals();
    arrivals
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_millis())
        .collect()
}

/// `actual` is `expected` to the timer wheel's resolution (a deadline is rounded up to the
/// next whole millisecond).
fn assert_ms(actual: &[u128], expected: &[u128], what: &str) {
    let close = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| a.abs_diff(*e) <= 1);
    assert!(close, "{what}: {actual:?} ms, expected {expected:?} ms");
}

#[tokio::test(start_paused = true)]
async fn backoff_without_jitter_doubles_between_tries() {
    let upstream = FakeUpstream::builder().status(503).start().await;
    let fusebox = start(
        "[retry]\nattempts = 4\nbackoff_base = \"100ms\"\nbackoff_max = \"300ms\"\n\
         honor_retry_after = false\n[timeouts]\ntotal = \"10s\"\n",
    )
    .await;
    let started = Instant::now();
    let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_ms(
        &gaps(&upstream),
        &[100, 200, 300],
        "base, doubled, capped at max",
    );
    assert_ms(&[started.elapsed().as_millis()], &[600], "in all");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_for_exactly() {
    let upstream = FakeUpstream::builder()
        .statuses(&[503, 200])
        .header("retry-after", "2")
        .start()
        .await;
    let fusebox = start("[timeouts]\ntotal = \"10s\"\n").await;
    let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_ms(&gaps(&upstream), &[2000], "Retry-After: 2, not the backoff");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_deadline_ends_retrying_at_once() {
    let upstream = FakeUpstream::builder()
        .status(503)
        .header("retry-after", "120")
        .start()
        .await;
    let fusebox = start("[timeouts]\ntotal = \"5s\"\n").await;
    let started = Instant::now();
    let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503, "the upstream's own answer");
    assert_eq!(upstream.hits(), 1);
    assert!(started.elapsed() < MS, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_is_retried_after_its_backoff() {
    let upstream = FakeUpstream::builder()
        .replies([
            Reply::Status(200).after(Duration::from_secs(30)),
            Reply::Status(200),
        ])
        .start()
        .await;
    let fusebox = start(
        "[timeouts]\nattempt = \"200ms\"\ntotal = \"10s\"\n\
         [retry]\non = [\"timeout\"]\nbackoff_base = \"50ms\"\n",
    )
    .await;
    let started = Instant::now();
    let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_ms(&gaps(&upstream), &[250], "attempt timeout + backoff");
    assert_ms(&[started.elapsed().as_millis()], &[250], "in all");
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_bounds_every_try_and_every_wait() {
    let upstream = FakeUpstream::builder()
        .replies([Reply::Stall])
        .start()
        .await;
    let fusebox = start(
        "[timeouts]\nattempt = \"300ms\"\ntotal = \"500ms\"\n\
         [retry]\nattempts = 5\non = [\"timeout\"]\nbackoff_base = \"50ms\"\n",
    )
    .await;
    let started = Instant::now();
    let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.headers()["x-fusebox-reason"],
        "timeout",
        "a local reply"
    );
    // Try 1: 0–300 ms; backoff 50 ms; try 2 is cut to what is left: 350–500 ms.
    assert_ms(
        &gaps(&upstream),
        &[350],
        "try 2 after try 1's timeout and backoff",
    );
    assert_ms(
        &[started.elapsed().as_millis()],
        &[500],
        "the total timeout",
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_is_never_sent_twice_whatever_the_schedule() {
    let upstream = FakeUpstream::builder()
        .replies([Reply::ResetBeforeHead, Reply::Status(200)])
        .start()
        .await;
    let fusebox = start("[retry]\nattempts = 3\non = [\"reset\", \"timeout\"]\n").await;
    let response = fusebox
        .app()
        .post(upstream.url("/"))
        .body("order=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-fusebox-reason"], "upstream-reset");
    assert_eq!(upstream.hits(), 1);
}
