//! The admin API's JSON endpoints (docs/ARCHITECTURE.md §6, a contract), over real sockets:
//! `/upstreams` after a scripted trip, field by field; filtering by policy; forcing and resetting
//! breakers (the proxy obeys, metrics follow); `/config`; `/reload`; JSON errors, 405s with
//! `allow`; the admin token.
//!
//! Breakers here trip after two 503s in a row and stay open 30 s (`jitter = false`), so an
//! open breaker stays open for the whole test however slow the machine is.

mod support;

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{direct_client, policies_dir, FakeUpstream, TestFusebox};

// ---------------------------------------------------------------------------------------------
// Set-up.

/// A policy covering exactly `upstream`: one try per request, trips after two failures in a
/// row, stays open 30 s, nothing is slow.
fn tripping_policy(upstream: &FakeUpstream) -> String {
    format!(
        "hosts = [\"{}\"]\n\
         [timeouts]\nconnect = \"5s\"\nattempt = \"10s\"\ntotal = \"20s\"\n\
         [retry]\nattempts = 1\n\
         [breaker]\nconsecutive_failures = 2\nopen_base = \"30s\"\nslow_call_duration = \"30s\"\n",
        upstream.authority()
    )
}

async fn start(policies: &[(&str, &str)]) -> TestFusebox {
    TestFusebox::start_with(policies_dir(policies), |config| config.jitter = false).await
}

/// Sends `method path` to the admin listener; returns status, headers and the body as JSON
/// (`Value::Null` when it is not JSON).
async fn admin(
    fusebox: &TestFusebox,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = direct_client().request(method, format!("{}{path}", fusebox.admin_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("admin body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, headers, json)
}

async fn get(fusebox: &TestFusebox, path: &str) -> (StatusCode, Value) {
    let (status, _, json) = admin(fusebox, Method::GET, path, None).await;
    (status, json)
}

async fn post(fusebox: &TestFusebox, path: &str) -> (StatusCode, Value) {
    let (status, _, json) = admin(fusebox, Method::POST, path, None).await;
    (status, json)
}

/// `GET url` through fusebox; returns the status and `x-fusebox-reason`.
async fn call(fusebox: &TestFusebox, url: &str) -> (u16, Option<String>) {
    let response = fusebox.app().get(url).send().await.expect("app request");
    let reason = response
        .headers()
        .get("x-fusebox-reason")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), reason)
}

/// The JSON error message of an error response, asserting the shape `{"error": "..."}`.
fn error_message(json: &Value) -> &str {
    json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected {{\"error\": ...}}, got {json}"))
}

fn array(json: &Value) -> &Vec<Value> {
    json.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {json}"))
}

fn rfc3339(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 string, got {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

/// `value` lies within the last `within` of now.
fn recent(at: SystemTime, within: Duration) -> bool {
    let now = SystemTime::now();
    at <= now + Duration::from_secs(1) && now.duration_since(at).unwrap_or_default() <= within
}

/// One sample of `fusebox_breaker_state` for a destination.
fn breaker_gauge(metrics: &str, upstream: &str, destination: &str) -> Option<f64> {
    let labels = format!("upstream=\"{upstream}\"");
    let dest = format!("destination=\"{destination}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("fusebox_breaker_state{"))
        .find(|l| l.contains(&labels) && l.contains(&dest))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().expect("numeric sample"))
}

// ---------------------------------------------------------------------------------------------
// GET /upstreams

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_explains_a_trip_field_by_field() {
    let upstream = FakeUpstream::with_status(503).await;
    let fusebox = start(&[("default", ""), ("pay", &tripping_policy(&upstream))]).await;

    let (status, json) = get(&fusebox, "/upstreams").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, Value::Array(Vec::new()), "no traffic yet");

    let before = SystemTime::now() - Duration::from_millis(5);
    for _ in 0..2 {
        assert_eq!(call(&fusebox, &upstream.url("/")).await, (503, None));
    }
    let (status, reason) = call(&fusebox, &upstream.url("/")).await;
    assert_eq!((status, reason.as_deref()), (503, Some("breaker-open")));
    assert_eq!(upstream.hits(), 2);

    let (status, headers, json) = admin(&fusebox, Method::GET, "/upstreams", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let rows = array(&json);
    assert_eq!(rows.len(), 1, "{json:#}");
    let row = &rows[0];
    assert_eq!(row["upstream"], "pay");
    assert_eq!(row["destination"], upstream.authority().as_str());
    assert_eq!(row["state"], "open");
    let since = rfc3339(&row["since"]);
    assert!(
        since >= before && recent(since, Duration::from_secs(60)),
        "{row:#}"
    );
    assert_eq!(row["reason"], "consecutive_failures");
    assert_eq!(
        row["window"],
        serde_json::json!({"calls": 2, "failures": 2, "slow": 0, "seconds": 10})
    );
    let next_probe = row["next_probe_in_ms"].as_u64().expect("next_probe_in_ms");
    assert!(next_probe > 0 && next_probe <= 30_000, "{next_probe}");
    let failures = array(&row["recent"]);
    assert_eq!(failures.len(), 2, "{row:#}");
    for failure in failures {
        assert_eq!(failure["kind"], "status");
        assert_eq!(failure["status"], 503);
        let at = rfc3339(&failure["time"]);
        assert!(
            at >= before && at <= since + Duration::from_millis(1),
            "{row:#}"
        );
    }
    assert_eq!(row["in_flight"], 0);
    assert!(row["forced"].is_null(), "{row:#}");
    assert_eq!(row["trips"], 1);
    assert_eq!(row["mode"], "enforce");

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_filters_by_policy_and_sorts() {
    let failing = FakeUpstream::with_status(503).await;
    let healthy = FakeUpstream::with_status(200).await;
    let other = FakeUpstream::with_status(200).await;
    let fusebox = start(&[
        ("default", ""),
        ("pay", &tripping_policy(&failing)),
        ("idle", "hosts = [\"idle.invalid\"]"),
    ])
    .await;
    // `healthy` and `other` fall to the default policy.
    for url in [
        healthy.url("/"),
        other.url("/"),
        failing.url("/"),
        failing.url("/"),
    ] {
        call(&fusebox, &url).await;
    }

    let (_, all) = get(&fusebox, "/upstreams").await;
    let keys: Vec<(String, String)> = array(&all)
        .iter()
        .map(|r| {
            (
                r["upstream"].as_str().unwrap().to_owned(),
                r["destination"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "sorted by upstream, then destination");
    assert_eq!(keys.len(), 3, "{all:#}");

    let (status, pay) = get(&fusebox, "/upstreams/pay").await;
    assert_eq!(status, StatusCode::OK);
    let pay = array(&pay);
    assert_eq!(pay.len(), 1);
    assert_eq!(pay[0]["destination"], failing.authority().as_str());
    assert_eq!(pay[0]["state"], "open");

    let (status, default) = get(&fusebox, "/upstreams/default").await;
    assert_eq!(status, StatusCode::OK);
    let default = array(&default);
    assert_eq!(default.len(), 2);
    assert!(default
        .iter()
        .all(|r| r["upstream"] == "default" && r["state"] == "closed"));
    assert!(default
        .iter()
        .all(|r| r["window"]["calls"] == 1 && r["reason"].is_null()));
    assert!(default.iter().all(|r| r["next_probe_in_ms"].is_null()));

    let (status, idle) = get(&fusebox, "/upstreams/idle").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        idle,
        Value::Array(Vec::new()),
        "a known policy without traffic"
    );

    let (status, unknown) = get(&fusebox, "/upstreams/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_message(&unknown).contains("nope"), "{unknown}");

    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// POST /upstreams/{upstream}/breaker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_open_fails_fast_and_reset_restores() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start(&[("default", ""), ("pay", &tripping_policy(&upstream))]).await;
    let authority = upstream.authority();
    assert_eq!(call(&fusebox, &upstream.url("/")).await, (200, None));
    assert_eq!(upstream.hits(), 1);

    let (status, json) = post(&fusebox, "/upstreams/pay/breaker?action=force-open").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let rows = array(&json);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["destination"], authority.as_str());
    assert_eq!(rows[0]["state"], "open");
    assert_eq!(rows[0]["forced"], "open");
    assert_eq!(rows[0]["reason"], "forced");
    assert!(
        rows[0]["next_probe_in_ms"].is_null(),
        "no probe while forced"
    );

    for _ in 0..3 {
        let (status, reason) = call(&fusebox, &upstream.url("/")).await;
        assert_eq!((status, reason.as_deref()), (503, Some("breaker-open")));
    }
    assert_eq!(
        upstream.hits(),
        1,
        "a forced-open breaker lets nothing through"
    );
    let (_, listed) = get(&fusebox, "/upstreams/pay").await;
    assert_eq!(listed[0]["forced"], "open");
    let metrics = fusebox.metrics().await;
    assert_eq!(breaker_gauge(&metrics, "pay", &authority), Some(2.0));

    let (status, json) = post(&fusebox, "/upstreams/pay/breaker?action=reset").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json[0]["state"], "closed");
    assert!(json[0]["forced"].is_null());
    assert_eq!(json[0]["reason"], "reset");
    assert_eq!(call(&fusebox, &upstream.url("/")).await, (200, None));
    assert_eq!(
        upstream.hits(),
        2,
        "after a reset requests reach the upstream again"
    );
    let metrics = fusebox.metrics().await;
    assert_eq!(breaker_gauge(&metrics, "pay", &authority), Some(0.0));

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_closed_keeps_sending_to_a_failing_upstream() {
    let upstream = FakeUpstream::with_status(503).await;
    let fusebox = start(&[("default", ""), ("pay", &tripping_policy(&upstream))]).await;
    for _ in 0..2 {
        call(&fusebox, &upstream.url("/")).await;
    }
    let (_, json) = get(&fusebox, "/upstreams/pay").await;
    assert_eq!(json[0]["state"], "open");

    let (status, json) = post(&fusebox, "/upstreams/pay/breaker?action=force-closed").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json[0]["state"], "closed");
    assert_eq!(json[0]["forced"], "closed");
    for _ in 0..4 {
        assert_eq!(call(&fusebox, &upstream.url("/")).await, (503, None));
    }
    assert_eq!(upstream.hits(), 6, "a forced-closed breaker never trips");
    let (_, json) = get(&fusebox, "/upstreams/pay").await;
    assert_eq!(json[0]["state"], "closed");
    assert_eq!(json[0]["forced"], "closed");
    assert_eq!(json[0]["window"]["failures"], 4, "calls are still counted");

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_open_a_destination_before_any_traffic() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start(&[("default", ""), ("pay", &tripping_policy(&upstream))]).await;
    let authority = upstream.authority();

    // Without a destination there is nothing to force yet.
    let (status, json) = post(&fusebox, "/upstreams/pay/breaker?action=force-open").await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert!(error_message(&json).contains("destination="), "{json}");
    // Reset of nothing is fine.
    let (status, json) = post(&fusebox, "/upstreams/pay/breaker?action=reset").await;
    assert_eq!((status, json), (StatusCode::OK, Value::Array(Vec::new())));

    let (status, json) = post(
        &fusebox,
        &format!("/upstreams/pay/breaker?action=force-open&destination={authority}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let rows = array(&json);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["destination"], authority.as_str());
    assert_eq!(rows[0]["forced"], "open");

    let (status, reason) = call(&fusebox, &upstream.url("/")).await;
    assert_eq!((status, reason.as_deref()), (503, Some("breaker-open")));
    // A forced breaker never probes: no `retry-after`, and the body says who opened it.
    let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after"), None);
    let body = response.text().await.unwrap();
    assert!(body.contains("forced open by an operator"), "{body}");
    assert!(!body.contains("next probe"), "{body}");
    assert_eq!(upstream.hits(), 0);
    let metrics = fusebox.metrics().await;
    assert_eq!(breaker_gauge(&metrics, "pay", &authority), Some(2.0));

    // A destination whose traffic goes through another policy is not this policy's.
    let (status, json) = post(
        &fusebox,
        "/upstreams/pay/breaker?action=force-open&destination=example.com:80",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    assert!(error_message(&json).contains("default"), "{json}");
    // The default policy takes everything else, brackets and all.
    let (status, json) = post(
        &fusebox,
        "/upstreams/default/breaker?action=force-open&destination=%5B::1%5D:9",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json[0]["destination"], "[::1]:9");
    // Only the named destination changed.
    let (_, json) = get(&fusebox, "/upstreams").await;
    assert_eq!(array(&json).len(), 2, "{json:#}");

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_command_errors() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start(&[("default", ""), ("pay", &tripping_policy(&upstream))]).await;
    call(&fusebox, &upstream.url("/")).await;

    for (query, expected) in [
        ("", StatusCode::BAD_REQUEST),
        ("?action=explode", StatusCode::BAD_REQUEST),
        ("?action=force-open&destinaton=a:1", StatusCode::BAD_REQUEST),
        (
            "?action=force-open&destination=no-port",
            StatusCode::BAD_REQUEST,
        ),
        ("?action=reset&action=reset", StatusCode::BAD_REQUEST),
    ] {
        let (status, json) = post(&fusebox, &format!("/upstreams/pay/breaker{query}")).await;
        assert_eq!(status, expected, "{query}: {json}");
        assert!(!error_message(&json).is_empty());
    }
    let (status, json) = post(&fusebox, "/upstreams/nope/breaker?action=reset").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
    error_message(&json);
    // Nothing was changed by the refused commands.
    let (_, json) = get(&fusebox, "/upstreams/pay").await;
    assert!(json[0]["forced"].is_null());

    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Methods and paths.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_get_405_with_allow_and_unknown_paths_404() {
    let fusebox = start(&[("default", ""), ("pay", "hosts = [\"pay.invalid\"]")]).await;

    for (method, path, allow) in [
        (Method::POST, "/upstreams", "GET, HEAD"),
        (Method::DELETE, "/upstreams/pay", "GET, HEAD"),
        (Method::GET, "/upstreams/pay/breaker", "POST"),
        (Method::GET, "/reload", "POST"),
        (Method::PUT, "/config", "GET, HEAD"),
        (Method::POST, "/metrics", "GET, HEAD"),
        (Method::POST, "/healthz", "GET, HEAD"),
    ] {
        let (status, headers, json) = admin(&fusebox, method.clone(), path, None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(headers["allow"], allow, "{method} {path}");
        assert!(error_message(&json).contains(method.as_str()), "{json}");
    }
    for path in [
        "/nope",
        "/live.jsx",
        "/upstreams/pay/nope",
        "/upstreams/pay/breaker/x",
    ] {
        let (status, json) = get(&fusebox, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        error_message(&json);
    }
    let (status, headers, _) = admin(&fusebox, Method::HEAD, "/upstreams", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");

    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// GET /config, POST /reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_effective_policies_with_defaults_filled_in() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start(&[
        ("default", "[timeouts]\nconnect = \"750ms\"\n"),
        ("pay", &tripping_policy(&upstream)),
    ])
    .await;

    let (status, json) = get(&fusebox, "/config").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        json["generation"].as_u64().expect("generation") >= 1,
        "{json:#}"
    );
    assert!(json["dir"].is_string());

    let default = &json["default"];
    assert_eq!(default["name"], "default");
    assert_eq!(default["timeouts"]["connect"], "750ms");
    assert_eq!(default["breaker"]["consecutive_failures"], 5);
    assert_eq!(default["breaker"]["mode"], "enforce");
    assert_eq!(default["breaker"]["window"], "10s");
    assert_eq!(default["retry"]["attempts"], 3);
    assert_eq!(default["rate_limit"]["rps"], 0);
    assert_eq!(default["concurrency"]["max_in_flight"], 0);

    let pay = &json["policies"]["pay"];
    assert_eq!(pay["name"], "pay");
    assert_eq!(pay["retry"]["attempts"], 1);
    assert_eq!(pay["breaker"]["consecutive_failures"], 2);
    assert_eq!(pay["breaker"]["open_base"], "30s");
    assert_eq!(pay["timeouts"]["attempt"], "10s");
    // Inherited from default.toml / the built-in defaults.
    assert_eq!(pay["breaker"]["window"], "10s");
    assert_eq!(
        pay["breaker"]["failure_statuses"],
        serde_json::json!([500, 502, 503, 504])
    );
    assert!(pay["hosts"].is_array());
    assert!(json["policies"].get("default").is_none());

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_answers_with_a_generation_or_the_errors() {
    let fusebox = start(&[("default", "")]).await;

    let (status, json) = post(&fusebox, "/reload").await;
    match status {
        StatusCode::OK => {
            assert!(json["generation"].as_u64().is_some(), "{json}");
        }
        StatusCode::BAD_REQUEST => {
            let errors = array(&json["errors"]);
            assert!(
                !errors.is_empty() && errors.iter().all(Value::is_string),
                "{json}"
            );
        }
        other => panic!("POST /reload answered {other}: {json}"),
    }

    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Auth.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required_for_post_even_on_loopback() {
    let upstream = FakeUpstream::with_status(200).await;
    let dir = policies_dir(&[("default", ""), ("pay", &tripping_policy(&upstream))]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.admin_token = Some("s3cret-token".to_owned());
    })
    .await;
    let authority = upstream.authority();
    let path = format!("/upstreams/pay/breaker?action=force-open&destination={authority}");

    let (status, headers, json) = admin(&fusebox, Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert!(
        error_message(&json).contains("FUSEBOX_ADMIN_TOKEN"),
        "{json}"
    );
    let (status, _, _) = admin(&fusebox, Method::POST, &path, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = admin(&fusebox, Method::POST, "/reload", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was forced by the refused requests.
    assert_eq!(call(&fusebox, &upstream.url("/")).await, (200, None));

    let (status, _, json) = admin(&fusebox, Method::POST, &path, Some("s3cret-token")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json[0]["forced"], "open");

    // Reads stay open.
    let (status, json) = get(&fusebox, "/upstreams").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json[0]["forced"], "open");
    let (status, _) = get(&fusebox, "/config").await;
    assert_eq!(status, StatusCode::OK);

    fusebox.shutdown().await;
}

/// A web page cannot drive the loopback admin through a browser: a POST whose `Origin` is not
/// the admin's own (or whose `Sec-Fetch-Site` says cross-site) is refused before anything is
/// done, token or not; the same POST from a tool (no `Origin`) goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_browser_posts_are_refused() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = start(&[("default", ""), ("pay", &tripping_policy(&upstream))]).await;
    let path = format!(
        "{}/upstreams/pay/breaker?action=force-open&destination={}",
        fusebox.admin_url(),
        upstream.authority()
    );
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let response = direct_client()
            .post(&path)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let json: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(error_message(&json).contains("cross-site"), "{json}");
    }
    assert_eq!(call(&fusebox, &upstream.url("/")).await, (200, None));

    let same_origin = direct_client()
        .post(&path)
        .header("origin", fusebox.admin_url())
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), StatusCode::OK);
    assert_eq!(call(&fusebox, &upstream.url("/")).await.0, 503);
    fusebox.shutdown().await;
}

/// DNS rebinding (#22, item 3): a page on a name its attacker controls, re-pointed at the
/// admin's address, makes the browser send that name as `Host` (and as `Origin`). The admin
/// serves only loopback names, IP addresses and the names given with `--admin-host`: anything
/// else is a 421, for every method, before anything is read or done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused_with_421_whatever_the_method() {
    let upstream = FakeUpstream::with_status(200).await;
    let dir = policies_dir(&[("default", ""), ("pay", &tripping_policy(&upstream))]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.admin_hosts = vec!["fusebox-admin.test".to_owned()];
    })
    .await;
    let port = fusebox.agent().admin_addr().port();
    let force_open = format!(
        "/upstreams/pay/breaker?action=force-open&destination={}",
        upstream.authority()
    );
    let send = |method: Method, path: &str, host: &str| {
        direct_client()
            .request(method, format!("{}{path}", fusebox.admin_url()))
            .header("host", format!("{host}:{port}"))
            .header("origin", format!("http://{host}:{port}"))
            .send()
    };
    for (method, path) in [
        (Method::POST, force_open.as_str()),
        (Method::POST, "/reload"),
        (Method::GET, "/config"),
        (Method::GET, "/upstreams"),
        (Method::GET, "/metrics"),
    ] {
        for host in ["evil.test", "localhost.evil.test"] {
            let response = send(method.clone(), path, host).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "{method} {path} {host}"
            );
        }
    }
    assert_eq!(
        call(&fusebox, &upstream.url("/")).await,
        (200, None),
        "nothing was forced"
    );
    for host in [
        "localhost",
        "127.0.0.1",
        "fusebox-admin.test",
        "FUSEBOX-ADMIN.test.",
    ] {
        let response = send(Method::GET, "/config", host).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{host}");
    }
    let response = send(Method::POST, &force_open, "fusebox-admin.test")
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "its own name, same origin"
    );
    assert_eq!(call(&fusebox, &upstream.url("/")).await.0, 503);
    fusebox.shutdown().await;
}
