//! Routes within a policy (docs/ARCHITECTURE.md §3 `[[route]]`), end to end on real loopback
//! sockets with reqwest as the app: each match field (methods, `path_prefix`, a `path`
//! template, a header) picks the route whose timeouts, retry and hedge the request gets; a
//! route's own breaker opens without the destination's; and every request, try and latency is
//! counted under its `route` label (`_default` when no route took it), which `/upstreams`
//! and the access log show too.
//!
//! Outcomes are exact: a stalled upstream answers nothing, so only the route's timeout decides
//! whether the app sees the upstream's answer or a 504.

mod support;

use std::time::Duration;

use support::metrics::metric;
use support::process::FuseboxProcess;
use support::{app_client, policies_dir, start_svc, FakeUpstream, Reply};

/// A route-listener policy `svc` in front of `upstream`, with `extra` TOML after it; breaker
/// off unless `extra` turns it on, so that only what is tested decides.
fn svc(upstream: &FakeUpstream, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\n{extra}",
        upstream.authority()
    )
}

fn count(text: &str, name: &str, route: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("upstream", "svc"), ("route", route)];
    labels.extend_from_slice(extra);
    metric(text, name, &labels)
}

fn reason(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("x-fusebox-reason")
        .and_then(|v| v.to_str().ok())
}

const TIMEOUTS: &str = r#"
[timeouts]
attempt = "200ms"
total = "200ms"
[retry]
attempts = 1
[breaker]
mode = "off"

[[route]]
name = "reports"
methods = ["POST"]
path_prefix = "/v1/reports"
[route.timeouts]
attempt = "10s"
total = "10s"
"#;

#[tokio::test]
async fn a_route_s_timeouts_replace_the_policy_s_for_the_requests_it_takes() {
    let slow = Reply::Status(200).after(Duration::from_millis(600));
    let upstream = FakeUpstream::builder()
        .route("/v1/reports/daily", [slow.clone()])
        .route("/v1/status", [slow.clone()])
        .start()
        .await;
    let fusebox = start_svc(&svc(&upstream, TIMEOUTS)).await;
    let base = fusebox.route_url("svc");
    let client = reqwest::Client::new();

    // POST /v1/reports/… takes the route: 10 s is enough for a 600 ms answer.
    let report = client
        .post(format!("{base}/v1/reports/daily"))
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200, "{report:?}");
    assert_eq!(reason(&report), None);
    // The same path with GET is not the route's (methods), nor is another path: 200 ms.
    let get = client
        .get(format!("{base}/v1/reports/daily"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (get.status().as_u16(), reason(&get)),
        (504, Some("timeout"))
    );
    let status = client
        .post(format!("{base}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (status.status().as_u16(), reason(&status)),
        (504, Some("timeout"))
    );

    let text = fusebox.metrics().await;
    let requests = "fusebox_requests_total";
    assert_eq!(
        count(&text, requests, "reports", &[("outcome", "ok")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        count(&text, requests, "_default", &[("outcome", "timeout")]),
        2.0,
        "{text}"
    );
    let attempts = "fusebox_attempts_total";
    assert_eq!(
        count(&text, attempts, "reports", &[("result", "success")]),
        1.0,
        "{text}"
    );
    assert_eq!(count(&text, attempts, "_default", &[]), 2.0, "{text}");
    let latency = "fusebox_request_duration_seconds_count";
    assert_eq!(count(&text, latency, "reports", &[]), 1.0, "{text}");
    let tries = "fusebox_attempt_duration_seconds_count";
    assert_eq!(count(&text, tries, "reports", &[]), 1.0, "{text}");
}

const RETRIES: &str = r#"
[retry]
attempts = 1
backoff_base = "1ms"
backoff_max = "1ms"
[breaker]
mode = "off"

[[route]]
name = "gold-items"
methods = ["PUT"]
path = "/v1/items/{id}"
header = { name = "x-tier", value = "gold" }
[route.retry]
attempts = 3
on = ["gateway-error"]
"#;

#[tokio::test]
async fn a_template_and_a_header_pick_the_route_whose_retry_applies() {
    let upstream = FakeUpstream::builder().statuses(&[503]).start().await;
    let fusebox = start_svc(&svc(&upstream, RETRIES)).await;
    let base = fusebox.route_url("svc");
    let client = reqwest::Client::new();
    let put = |path: &str, tier: Option<&str>| {
        let request = client.put(format!("{base}{path}")).body("{}");
        match tier {
            Some(tier) => request.header("x-tier", tier),
            None => request,
        }
    };

    // The route: PUT, /v1/items/{id}, x-tier: gold → three tries.
    let gold = put("/v1/items/42", Some("gold")).send().await.unwrap();
    assert_eq!(gold.status(), 503);
    assert_eq!(upstream.hits(), 3);
    // Not the route: another tier, no header, a deeper path, an empty segment → one try each.
    for (path, tier) in [
        ("/v1/items/42", Some("silver")),
        ("/v1/items/42", None),
        ("/v1/items/42/parts", Some("gold")),
        ("/v1/items/", Some("gold")),
    ] {
        let before = upstream.hits();
        let response = put(path, tier).send().await.unwrap();
        assert_eq!(response.status(), 503, "{path} {tier:?}");
        assert_eq!(upstream.hits(), before + 1, "{path} {tier:?} was retried");
    }

    let text = fusebox.metrics().await;
    let gold_requests = count(&text, "fusebox_requests_total", "gold-items", &[]);
    assert_eq!(gold_requests, 1.0, "{text}");
    let gold_tries = count(&text, "fusebox_attempts_total", "gold-items", &[]);
    assert_eq!(gold_tries, 3.0, "{text}");
    let others = count(&text, "fusebox_requests_total", "_default", &[]);
    assert_eq!(others, 4.0, "{text}");
}

const OWN_BREAKER: &str = r#"
[retry]
attempts = 1
[breaker]
consecutive_failures = 3
failure_statuses = [500]
open_base = "60s"

[[route]]
name = "reports"
path_prefix = "/v1/reports"
breaker = "own"
"#;

/// Three 500s from `/v1/reports`: enough to open the breaker of `OWN_BREAKER`'s route.
async fn trip_reports(client: &reqwest::Client, base: &str) {
    for _ in 0..3 {
        let failed = client
            .get(format!("{base}/v1/reports"))
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), 500);
    }
}

#[tokio::test]
async fn a_route_with_its_own_breaker_opens_it_without_the_destination_s() {
    let upstream = FakeUpstream::builder()
        .route("/v1/reports", [Reply::Status(500)])
        .route("/v1/status", [Reply::Status(200)])
        .start()
        .await;
    let fusebox = start_svc(&svc(&upstream, OWN_BREAKER)).await;
    let base = fusebox.route_url("svc");
    let client = reqwest::Client::new();

    trip_reports(&client, &base).await;
    // The route's breaker is open: its requests get a local reply and reach nobody.
    let hits = upstream.hits();
    let refused = client
        .get(format!("{base}/v1/reports"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (refused.status().as_u16(), reason(&refused)),
        (503, Some("breaker-open"))
    );
    assert_eq!(upstream.hits(), hits);
    // The rest of the destination is served: its breaker never heard of the route's failures.
    for _ in 0..5 {
        let ok = client
            .get(format!("{base}/v1/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }

    let text = fusebox.metrics().await;
    let open = count(&text, "fusebox_route_breaker_state", "reports", &[]);
    assert_eq!(open, 2.0, "{text}");
    let destination = metric(&text, "fusebox_breaker_state", &[("upstream", "svc")]);
    assert_eq!(destination, 0.0, "{text}");
    let trips = "fusebox_route_breaker_transitions_total";
    assert_eq!(
        count(&text, trips, "reports", &[("to", "open")]),
        1.0,
        "{text}"
    );
    let view = fusebox.upstreams("svc").await;
    assert_eq!(view[0]["state"], "closed", "{view}");
    let routes = view[0]["routes"].as_array().expect("routes in /upstreams");
    assert_eq!(routes[0]["name"], "reports", "{view}");
    assert_eq!(routes[0]["breaker"]["state"], "open", "{view}");
}

const HEDGED: &str = r#"
[retry]
attempts = 2
[breaker]
mode = "off"
[balance]
mode = "round-robin"

[[route]]
name = "search"
methods = ["GET"]
path_prefix = "/search"
[route.hedge]
enabled = true
delay = "50ms"
max_extra_load = 1.0
"#;

#[tokio::test]
async fn only_the_route_that_hedges_sends_hedges() {
    let stalled = FakeUpstream::builder().stall().start().await;
    let fast = FakeUpstream::builder().body("fast").start().await;
    let policy = format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\", \"{}\"]\n{HEDGED}",
        stalled.authority(),
        fast.authority()
    );
    let fusebox = start_svc(&policy).await;
    let base = fusebox.route_url("svc");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // Round robin: of two requests, one starts at the endpoint that never answers, and only
    // a hedge can answer it.
    for i in 0..2 {
        let response = client
            .get(format!("{base}/search?q={i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let hedges = |text: &str| {
        metric(
            text,
            "fusebox_hedges_total",
            &[("upstream", "svc"), ("result", "sent")],
        )
    };
    let text = fusebox.metrics().await;
    let started_stalled = stalled.hits();
    assert!(started_stalled >= 1);
    assert_eq!(hedges(&text), started_stalled as f64, "{text}");
    // Outside the route no hedge is sent: a request that meets the stalled endpoint waits
    // until the app gives up.
    let mut timed_out = 0;
    for i in 0..2 {
        let url = format!("{base}/other/{i}");
        let short = client
            .get(url)
            .timeout(Duration::from_millis(400))
            .send()
            .await;
        timed_out += u64::from(short.is_err());
    }
    assert!(
        timed_out >= 1,
        "round robin sends one of two to the stalled endpoint"
    );
    assert_eq!(stalled.hits(), started_stalled + timed_out);
    let text = fusebox.metrics().await;
    assert_eq!(hedges(&text), started_stalled as f64, "{text}");
}

#[tokio::test]
async fn the_access_log_names_the_route() {
    let upstream = FakeUpstream::builder().status(200).start().await;
    let policy = format!(
        "hosts = [\"svc.test\"]\nendpoints = [\"{}\"]\n{TIMEOUTS}",
        upstream.authority()
    );
    let dir = policies_dir(&[("svc", &policy)]);
    let mut fusebox = FuseboxProcess::spawn(dir.path(), &[], &[]).await;
    let client = app_client(&fusebox.egress_url());
    let report = client
        .post("http://svc.test/v1/reports/x")
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    let other = client.get("http://svc.test/v1/other").send().await.unwrap();
    assert_eq!(other.status(), 200);
    let (lines, logs) = fusebox.access_lines(2).await;
    assert_eq!(lines.len(), 2, "{logs}");
    assert!(lines[0].contains("path=\"/v1/reports/x\""), "{logs}");
    assert!(lines[0].ends_with(" route=\"reports\""), "{logs}");
    assert!(!lines[1].contains("route="), "{logs}");
    let _ = fusebox.try_wait();
}

/// `POST /reload` on the admin server, which must succeed.
async fn reload(fusebox: &support::TestFusebox) {
    let response = reqwest::Client::new()
        .post(format!("{}/reload", fusebox.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test]
async fn a_reload_changes_routes_and_keeps_an_unchanged_route_s_open_breaker() {
    let upstream = FakeUpstream::builder()
        .route("/v1/reports", [Reply::Status(500)])
        .route("/v1/items/1", [Reply::Status(503)])
        .start()
        .await;
    let fusebox = start_svc(&svc(&upstream, OWN_BREAKER)).await;
    let base = fusebox.route_url("svc");
    let client = reqwest::Client::new();
    trip_reports(&client, &base).await;
    let put = || client.put(format!("{base}/v1/items/1")).body("x").send();
    let before = upstream.hits();
    assert_eq!(put().await.unwrap().status(), 503);
    assert_eq!(upstream.hits(), before + 1, "no route retries PUT yet");

    // A route is added; "reports" keeps its name and settings, so its breaker stays open.
    let items = "\n[[route]]\nname = \"items\"\nmethods = [\"PUT\"]\npath = \"/v1/items/{id}\"\n\
                 [route.retry]\nattempts = 2\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\n";
    let policy = svc(&upstream, &format!("{OWN_BREAKER}{items}"));
    std::fs::write(fusebox.dir().join("svc.toml"), policy).unwrap();
    reload(&fusebox).await;
    let refused = client
        .get(format!("{base}/v1/reports"))
        .send()
        .await
        .unwrap();
    assert_eq!(reason(&refused), Some("breaker-open"));
    let before = upstream.hits();
    assert_eq!(put().await.unwrap().status(), 503);
    assert_eq!(
        upstream.hits(),
        before + 2,
        "the new route retries PUT once"
    );

    // The admin API resets the route's own breaker by name; a shared route has none.
    let admin = fusebox.admin_url();
    let command = |query: &str| {
        let url = format!("{admin}/upstreams/svc/breaker?{query}");
        reqwest::Client::new().post(url).send()
    };
    let shared = command("action=reset&route=items").await.unwrap();
    assert_eq!(shared.status(), 409);
    let unknown = command("action=reset&route=nope").await.unwrap();
    assert_eq!(unknown.status(), 404);
    let reset = command("action=reset&route=reports").await.unwrap();
    assert_eq!(reset.status(), 200);
    let view = fusebox.upstreams("svc").await;
    assert_eq!(view[0]["routes"][0]["breaker"]["state"], "closed", "{view}");
    assert_eq!(
        view[0]["routes"][1]["breaker"],
        serde_json::Value::Null,
        "{view}"
    );
    let again = client
        .get(format!("{base}/v1/reports"))
        .send()
        .await
        .unwrap();
    assert_eq!((again.status().as_u16(), reason(&again)), (500, None));
}
