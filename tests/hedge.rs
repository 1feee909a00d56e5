//! Hedged requests (docs/ARCHITECTURE.md §18), end to end on real loopback sockets with
//! reqwest as the app: a try with no head after the hedge delay gets a copy at another
//! endpoint and the first head wins; the loser is cancelled and recorded as abandoned, never
//! as a failure; the budget caps hedges; a request that may not be sent twice is never hedged;
//! hedges and retries together stay within `retry.attempts`; the access log says which copy
//! answered.
//!
//! Every claim is exact: the slow endpoint never answers (so only a hedge can produce a 200),
//! and the budget's arithmetic holds however fast the machine is. The delay's percentile and
//! the budget's window are tested on paused time in `pipeline::hedge`.

mod support;

use std::time::Duration;

use support::metrics::metric;
use support::process::FuseboxProcess;
use support::{app_client, direct_client, policies_dir, route_policy, start_svc, FakeUpstream};

fn hedges(text: &str, result: &str) -> f64 {
    metric(
        text,
        "fusebox_hedges_total",
        &[("upstream", "svc"), ("result", result)],
    )
}

/// Hedges after 50 ms, paid from a budget as large as first tries (a budget that starts empty
/// would not pay for the first hedge until 1 / max_extra_load requests were made).
const HEDGE: &str = "[hedge]\nenabled = true\ndelay = \"50ms\"\nmax_extra_load = 1.0\n\
                     [balance]\nmode = \"round-robin\"\n[breaker]\nconsecutive_failures = 1\n\
                     [outlier]\nconsecutive_failures = 1\n";

#[tokio::test]
async fn a_try_with_no_head_is_hedged_to_another_endpoint_and_the_first_head_wins() {
    let stalled = FakeUpstream::builder().stall().start().await;
    let fast = FakeUpstream::builder().body("fast").start().await;
    let endpoints = [stalled.authority(), fast.authority()];
    let fusebox = start_svc(&route_policy(&endpoints, HEDGE)).await;
    // Round robin: one of the two requests starts at the endpoint that never answers.
    let client = direct_client();
    for i in 0..2 {
        let response = client
            .get(format!("{}/r{i}", fusebox.route_url("svc")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "only a hedge can answer this one");
        assert_eq!(response.text().await.unwrap(), "fast");
    }
    // Each request that started at the stalled endpoint was hedged to the other one.
    let started_stalled = stalled.hits() as f64;
    assert!(started_stalled >= 1.0);
    assert_eq!(fast.hits(), 2);
    let text = fusebox.metrics().await;
    assert_eq!(hedges(&text, "sent"), started_stalled, "{text}");
    assert_eq!(hedges(&text, "won"), started_stalled, "{text}");
    assert_eq!(hedges(&text, "lost"), 0.0, "{text}");
    // The cancelled copy is abandoned: not a failure of the breaker (it trips on one) nor of
    // the endpoint (ejected after one).
    let abandoned = metric(
        &text,
        "fusebox_attempts_total",
        &[("upstream", "svc"), ("result", "abandoned")],
    );
    assert_eq!(abandoned, started_stalled, "{text}");
    let view = fusebox.upstreams("svc").await;
    assert_eq!(view[0]["state"], "closed", "{view}");
    let states: Vec<&str> = view[0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "ready"], "{view}");
}

#[tokio::test]
async fn the_budget_caps_hedges_at_max_extra_load() {
    // Every request takes 30 ms and every one is due a hedge after 5 ms.
    let slow = FakeUpstream::builder()
        .delay(Duration::from_millis(30))
        .start()
        .await;
    let extra = "[hedge]\nenabled = true\ndelay = \"5ms\"\nmax_extra_load = 0.1\n";
    let fusebox = start_svc(&route_policy(&[slow.authority()], extra)).await;
    let client = direct_client();
    for i in 0..40 {
        let response = client
            .get(format!("{}/r{i}", fusebox.route_url("svc")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    let text = fusebox.metrics().await;
    let sent = hedges(&text, "sent");
    // 40 first tries × 0.1 = 4 hedges at most, within the budget's 10 s window; the first
    // is affordable after 10 requests.
    assert!((1.0..=4.0).contains(&sent), "{text}");
    assert!(hedges(&text, "budget") >= 30.0, "{text}");
    // With one endpoint, a hedge takes another connection to it.
    assert!(slow.hits() <= 44, "{}", slow.hits());
    assert_eq!(slow.hits(), 40 + sent as u64);
}

#[tokio::test]
async fn a_request_that_may_not_be_sent_twice_is_never_hedged() {
    let stalled = FakeUpstream::builder().stall().start().await;
    let fast = FakeUpstream::builder().body("fast").start().await;
    let extra = "[hedge]\nenabled = true\ndelay = \"50ms\"\nmax_extra_load = 1.0\n\
                 [balance]\nmode = \"round-robin\"\n[breaker]\nmode = \"off\"\n\
                 [outlier]\nconsecutive_failures = 100\n[timeouts]\nattempt = \"300ms\"\n";
    let fusebox = start_svc(&route_policy(
        &[stalled.authority(), fast.authority()],
        extra,
    ))
    .await;
    let client = direct_client();
    let mut statuses = Vec::new();
    for i in 0..2 {
        let response = client
            .post(format!("{}/p{i}", fusebox.route_url("svc")))
            .body("pay")
            .send()
            .await
            .expect("request");
        statuses.push(response.status().as_u16());
    }
    statuses.sort_unstable();
    // The POST that went to the stalled endpoint waited out its attempt: 504, sent once.
    assert_eq!(statuses, [200, 504]);
    assert_eq!(stalled.hits() + fast.hits(), 2);
    assert_eq!(hedges(&fusebox.metrics().await, "sent"), 0.0);
    // With an Idempotency-Key it may be sent twice, so it is hedged.
    let before = (stalled.hits(), fast.hits());
    for i in 0..2 {
        let response = client
            .post(format!("{}/k{i}", fusebox.route_url("svc")))
            .header("idempotency-key", format!("k{i}"))
            .body("pay")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    assert!(
        stalled.hits() > before.0,
        "one started at the stalled endpoint"
    );
    assert_eq!(fast.hits() - before.1, 2, "and was hedged to the other one");
    let text = fusebox.metrics().await;
    let sent = hedges(&text, "sent");
    assert_eq!(sent, (stalled.hits() - before.0) as f64, "{text}");
}

#[tokio::test]
async fn hedges_and_retries_together_stay_within_retry_attempts() {
    let a = FakeUpstream::builder().stall().start().await;
    let b = FakeUpstream::builder().stall().start().await;
    let c = FakeUpstream::builder().stall().start().await;
    let extra =
        "[hedge]\nenabled = true\ndelay = \"20ms\"\nmax_attempts = 3\nmax_extra_load = 1.0\n\
                 [retry]\nattempts = 2\non = [\"timeout\"]\n\
                 [timeouts]\nattempt = \"200ms\"\ntotal = \"1s\"\n";
    let endpoints = [a.authority(), b.authority(), c.authority()];
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let response = direct_client()
        .get(format!("{}/x", fusebox.route_url("svc")))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 504);
    assert_eq!(
        a.hits() + b.hits() + c.hits(),
        2,
        "one first try and one hedge"
    );
    let text = fusebox.metrics().await;
    assert_eq!(hedges(&text, "sent"), 1.0, "{text}");
    assert_eq!(hedges(&text, "lost"), 1.0, "{text}");
}

#[tokio::test]
async fn the_access_log_says_which_copy_answered() {
    let stalled = FakeUpstream::builder().stall().start().await;
    let fast = FakeUpstream::builder().body("fast").start().await;
    let policy = format!(
        "hosts = [\"svc.test\"]\nendpoints = [\"{}\", \"{}\"]\n{HEDGE}",
        stalled.authority(),
        fast.authority()
    );
    let dir = policies_dir(&[("svc", &policy)]);
    let mut fusebox = FuseboxProcess::spawn(dir.path(), &[], &[]).await;
    let client = app_client(&fusebox.egress_url());
    for i in 0..2 {
        let response = client
            .get(format!("http://svc.test/a{i}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }
    let (lines, logs) = fusebox.access_lines(2).await;
    assert_eq!(lines.len(), 2, "{logs}");
    // A request that started at the stalled endpoint was answered by its second copy; one
    // that started at the other endpoint was not hedged, and its line has no `copy`.
    let hedged = lines.iter().filter(|l| l.contains(" copy=2")).count();
    let plain = lines.iter().filter(|l| !l.contains("copy=")).count();
    assert_eq!(hedged as u64, stalled.hits(), "{logs}");
    assert_eq!(plain as u64, 2 - stalled.hits(), "{logs}");
    let _ = fusebox.try_wait();
}
