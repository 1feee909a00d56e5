//! Overload mechanisms (docs/ARCHITECTURE.md §18) end to end on real loopback sockets with
//! reqwest as the app: an adaptive concurrency limit that backs off when the upstream says
//! "too much" and refuses beyond it with `503 overflow` naming the limit, and client-side
//! throttling that refuses locally with the SRE probability instead of opening.
//!
//! The claims are exact: the upstream answers every request the same way, so every window of
//! the limit holds a drop and every throttle decision sees an upstream that accepts nothing.
//! The limit's arithmetic and the throttle's probability are tested on paused time in
//! `pipeline::adaptive` and `pipeline::throttle`.

mod support;

use support::metrics::metric;
use support::{direct_client, start_svc, FakeUpstream, Reply, TestFusebox};

fn route(upstream: &FakeUpstream, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\n[retry]\nattempts = 1\n{extra}",
        upstream.authority()
    )
}

/// `n` sequential GETs; their statuses, `x-fusebox-reason`s and bodies.
async fn get_n(fusebox: &TestFusebox, n: usize) -> Vec<(u16, String, String)> {
    let client = direct_client();
    let mut seen = Vec::new();
    for i in 0..n {
        let response = client
            .get(format!("{}/r{i}", fusebox.route_url("svc")))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let reason = response
            .headers()
            .get("x-fusebox-reason")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        seen.push((status, reason, response.text().await.unwrap()));
    }
    seen
}

#[tokio::test]
async fn an_aimd_limit_backs_off_on_429_and_refuses_beyond_it() {
    let upstream = FakeUpstream::with_status(429).await;
    let extra = "[breaker]\nmode = \"off\"\n[concurrency]\nmode = \"aimd\"\n\
                 initial_limit = 8\nmin_limit = 2\nmax_limit = 8\nbackoff_ratio = 0.5\n\
                 window = \"1ms\"\n";
    let fusebox = start_svc(&route(&upstream, extra)).await;
    let first = get_n(&fusebox, 1).await;
    assert_eq!(first[0].0, 429);
    let view = fusebox.upstreams("svc").await;
    assert_eq!(
        view[0]["limit"], 8,
        "the initial limit, before any window closed: {view}"
    );
    // Every window of 10 tries holds a drop (a 429): 8 → 4 → 2, then the floor.
    let seen = get_n(&fusebox, 29).await;
    assert!(seen.iter().all(|(status, ..)| *status == 429), "{seen:?}");
    let view = fusebox.upstreams("svc").await;
    assert_eq!(view[0]["limit"], 2, "{view}");
    assert_eq!(view[0]["limit_mode"], "aimd", "{view}");
    let text = fusebox.metrics().await;
    let limit = metric(&text, "fusebox_concurrency_limit", &[("upstream", "svc")]);
    assert_eq!(limit, 2.0, "{text}");
    // Two requests held by an upstream that now stalls fill the limit: the third is refused
    // at once, and the reply names the limit in force.
    upstream.set_replies([Reply::Stall]);
    let url = format!("{}/held", fusebox.route_url("svc"));
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(direct_client().get(url.clone()).send()))
        .collect();
    upstream.wait_hits(32).await;
    let refused = direct_client().get(&url).send().await.expect("request");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["x-fusebox-reason"], "overflow");
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("2 requests in flight (the adaptive concurrency limit, now 2)"),
        "{body}"
    );
    for request in held {
        request.abort();
    }
}

#[tokio::test]
async fn a_fixed_limit_is_shown_and_named_in_its_refusal() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let extra = "[concurrency]\nmax_in_flight = 1\n";
    let fusebox = start_svc(&route(&upstream, extra)).await;
    let url = format!("{}/held", fusebox.route_url("svc"));
    let held = tokio::spawn(direct_client().get(url.clone()).send());
    upstream.wait_hits(1).await;
    let refused = direct_client().get(&url).send().await.expect("request");
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.unwrap();
    assert!(body.contains("(concurrency.max_in_flight 1)"), "{body}");
    let view = fusebox.upstreams("svc").await;
    assert_eq!(
        (&view[0]["limit"], &view[0]["limit_mode"]),
        (&1.into(), &"fixed".into())
    );
    let text = fusebox.metrics().await;
    assert!(
        !text.contains("fusebox_concurrency_limit"),
        "fixed limits have no gauge"
    );
    held.abort();
}

#[tokio::test]
async fn throttling_refuses_with_a_rising_probability_and_never_opens() {
    let upstream = FakeUpstream::with_status(503).await;
    let extra = "[breaker]\nmode = \"throttle\"\nconsecutive_failures = 1\n";
    let fusebox = start_svc(&route(&upstream, extra)).await;
    let seen = get_n(&fusebox, 60).await;
    let throttled: Vec<_> = seen
        .iter()
        .filter(|(_, reason, _)| reason == "breaker-open")
        .collect();
    // p = (n − 2 × 0) / (n + 1) after n requests the upstream refused: by the 60th, nearly
    // every request is refused locally (none at all would have odds below 1e-60).
    assert!(throttled.len() >= 10, "{seen:?}");
    assert_eq!(upstream.hits() as usize, 60 - throttled.len());
    let (status, _, body) = throttled[0];
    assert_eq!(*status, 503);
    assert!(body.contains("throttled, p = 0."), "{body}");
    assert!(body.contains("it accepted 0 of the last"), "{body}");
    // No open state, whatever consecutive_failures says: the breaker stays closed.
    let view = fusebox.upstreams("svc").await;
    assert_eq!(view[0]["state"], "closed", "{view}");
    assert_eq!(view[0]["mode"], "throttle", "{view}");
    assert_eq!(view[0]["throttle"]["requests"], 60, "{view}");
    assert_eq!(view[0]["throttle"]["accepts"], 0, "{view}");
    let probability = view[0]["throttle"]["probability"].as_f64().unwrap();
    assert!(probability > 0.95, "{view}");
    let text = fusebox.metrics().await;
    let ratio = metric(&text, "fusebox_throttle_ratio", &[("upstream", "svc")]);
    assert!(ratio > 0.95, "{text}");
    let transitions = metric(
        &text,
        "fusebox_breaker_transitions_total",
        &[("upstream", "svc"), ("to", "open")],
    );
    assert_eq!(transitions, 0.0, "{text}");
}

#[tokio::test]
async fn a_reload_keeps_a_learned_limit_unless_concurrency_changed() {
    let upstream = FakeUpstream::with_status(429).await;
    let concurrency = "[concurrency]\nmode = \"aimd\"\ninitial_limit = 8\nmin_limit = 2\n\
                       max_limit = 8\nbackoff_ratio = 0.5\nwindow = \"1ms\"\n";
    let policy = |extra: &str| route(&upstream, &format!("{concurrency}{extra}"));
    let fusebox = start_svc(&policy("[breaker]\nmode = \"off\"\n")).await;
    get_n(&fusebox, 30).await;
    let limit = |view: serde_json::Value| view[0]["limit"].clone();
    assert_eq!(limit(fusebox.upstreams("svc").await), 2);
    let reload = |text: String| {
        let path = fusebox.dir().join("svc.toml");
        let admin = fusebox.admin_url();
        async move {
            std::fs::write(path, text).unwrap();
            let response = direct_client()
                .post(format!("{admin}/reload"))
                .send()
                .await
                .expect("POST /reload");
            assert_eq!(response.status(), 200);
        }
    };
    // Another section changed: the limit learned is kept.
    reload(policy(
        "[breaker]\nmode = \"off\"\n[timeouts]\nattempt = \"1s\"\n",
    ))
    .await;
    assert_eq!(limit(fusebox.upstreams("svc").await), 2);
    // `[concurrency]` changed: it starts again from its initial limit.
    let changed = policy("[breaker]\nmode = \"off\"\n").replace("max_limit = 8", "max_limit = 9");
    reload(changed).await;
    assert_eq!(limit(fusebox.upstreams("svc").await), 8);
}
