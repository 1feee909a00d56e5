//! The admin API (docs/ARCHITECTURE.md §6) and the metrics it exposes (docs/ARCHITECTURE.md §4, a
//! contract): health and readiness, the Prometheus text at `/metrics` with the contract's names,
//! labels and HELP lines, values that match the traffic sent, JSON errors, and the cardinality cap
//! `metrics_max_destinations`.

mod support;

use support::metrics::metric;

use support::{direct_client, FakeUpstream, TestFusebox};

/// The label names of every sample of `name`, as written (in order).
fn label_names(text: &str, name: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| {
            let inner = &l[name.len() + 1..l.rfind('}').expect("closing brace")];
            inner
                .split(',')
                .map(|pair| pair.split_once('=').expect("k=v").0.to_owned())
                .collect()
        })
        .collect()
}

/// `base` labels plus `extra` ones.
fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = base.to_vec();
    labels.extend_from_slice(extra);
    labels
}

async fn get(url: String) -> reqwest::Response {
    direct_client()
        .get(url)
        .send()
        .await
        .expect("admin request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_answer_200_while_running() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let health = get(format!("{}/healthz", fusebox.admin_url())).await;
    assert_eq!(health.status(), 200);
    let ready = get(format!("{}/readyz", fusebox.admin_url())).await;
    assert_eq!(ready.status(), 200);
    assert!(!ready.text().await.unwrap().is_empty());

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_has_build_info_and_help_lines_before_any_traffic() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let response = get(format!("{}/metrics", fusebox.admin_url())).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();

    let build_info = format!(
        "fusebox_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        text.lines().any(|l| l == build_info),
        "{build_info} in:\n{text}"
    );
    assert!(text.contains("# HELP fusebox_build_info "), "{text}");
    assert!(text.contains("# TYPE fusebox_build_info gauge"), "{text}");
    assert!(
        text.contains("# TYPE fusebox_config_generation gauge"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_values_match_the_traffic() {
    let ok = FakeUpstream::with_status(200).await;
    let failing = FakeUpstream::with_status(503).await;
    let fusebox = TestFusebox::start(&[("default", "[retry]\nattempts = 1\n")]).await;
    let app = fusebox.app();

    for i in 0..3 {
        let response = app.get(ok.url(&format!("/ok/{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let response = app.get(failing.url("/fail")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    response.bytes().await.unwrap();

    let text = fusebox.metrics().await;
    let ok_dest = ok.authority();
    let fail_dest = failing.authority();
    let ok_labels = [("upstream", "default"), ("destination", ok_dest.as_str())];
    let fail_labels = [("upstream", "default"), ("destination", fail_dest.as_str())];

    // Requests: 3 ok/2xx on one destination, 1 upstream_error/5xx on the other.
    assert_eq!(
        metric(
            &text,
            "fusebox_requests_total",
            &with(&ok_labels, &[("outcome", "ok"), ("code", "2xx")])
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "fusebox_requests_total", &ok_labels),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "fusebox_requests_total",
            &with(
                &fail_labels,
                &[("outcome", "upstream_error"), ("code", "5xx")]
            )
        ),
        1.0,
        "{text}"
    );
    for labels in label_names(&text, "fusebox_requests_total") {
        let mut sorted = labels.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            ["code", "destination", "outcome", "route", "upstream"],
            "fusebox_requests_total labels"
        );
    }

    // Attempts: one try each, a 503 counted as a failure (it is in failure_statuses).
    assert_eq!(
        metric(
            &text,
            "fusebox_attempts_total",
            &with(&ok_labels, &[("result", "success")])
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "fusebox_attempts_total",
            &with(&fail_labels, &[("result", "failure")])
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "fusebox_attempts_total", &fail_labels),
        1.0,
        "{text}"
    );

    // Latency histogram: three observations, all under the +Inf bucket.
    assert_eq!(
        metric(
            &text,
            "fusebox_request_duration_seconds_bucket",
            &with(&ok_labels, &[("le", "+Inf")])
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "fusebox_request_duration_seconds_count", &ok_labels),
        3.0,
        "{text}"
    );
    assert!(metric(&text, "fusebox_request_duration_seconds_sum", &ok_labels) > 0.0);
    assert_eq!(
        metric(&text, "fusebox_attempt_duration_seconds_count", &ok_labels),
        3.0,
        "{text}"
    );
    for labels in label_names(&text, "fusebox_request_duration_seconds_bucket") {
        assert!(
            labels.contains(&"upstream".to_owned()) && labels.contains(&"destination".to_owned()),
            "histogram labels {labels:?}"
        );
    }
    // Nothing is in flight once the responses are read.
    assert_eq!(metric(&text, "fusebox_in_flight", &ok_labels), 0.0);

    for (name, kind) in [
        ("fusebox_requests_total", "counter"),
        ("fusebox_attempts_total", "counter"),
        ("fusebox_request_duration_seconds", "histogram"),
        ("fusebox_attempt_duration_seconds", "histogram"),
        ("fusebox_in_flight", "gauge"),
        ("fusebox_build_info", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "HELP line of {name} in:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "TYPE line of {name} in:\n{text}"
        );
    }

    // A second scrape sees the same counts (scraping does not reset anything).
    let again = fusebox.metrics().await;
    assert_eq!(
        metric(
            &again,
            "fusebox_requests_total",
            &with(&ok_labels, &[("outcome", "ok")])
        ),
        3.0
    );
    assert_eq!(
        metric(&again, "fusebox_request_duration_seconds_count", &ok_labels),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404_json() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let response = get(format!("{}/no/such/endpoint", fusebox.admin_url())).await;
    assert_eq!(response.status(), 404);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: serde_json::Value = response.json_body().await;
    let error = body["error"].as_str().expect("an error string");
    assert!(!error.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_to_metrics_is_405() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let response = direct_client()
        .post(format!("{}/metrics", fusebox.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json_body().await;
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_beyond_the_cap_are_folded_into_other() {
    let upstreams = [
        FakeUpstream::with_status(200).await,
        FakeUpstream::with_status(200).await,
        FakeUpstream::with_status(200).await,
    ];
    let fusebox = TestFusebox::start(&[("default", "metrics_max_destinations = 2\n")]).await;
    let app = fusebox.app();

    for upstream in &upstreams {
        let response = app.get(upstream.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    // The folded destination still works and keeps being counted under _other.
    let response = app.get(upstreams[2].url("/again")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let text = fusebox.metrics().await;
    let requests = |destination: &str| {
        metric(
            &text,
            "fusebox_requests_total",
            &[
                ("upstream", "default"),
                ("destination", destination),
                ("outcome", "ok"),
            ],
        )
    };
    assert_eq!(requests(&upstreams[0].authority()), 1.0, "{text}");
    assert_eq!(requests(&upstreams[1].authority()), 1.0, "{text}");
    assert_eq!(requests(&upstreams[2].authority()), 0.0, "{text}");
    assert_eq!(requests("_other"), 2.0, "{text}");
    assert!(
        !text.contains(&upstreams[2].authority()),
        "the third destination never appears as a label:\n{text}"
    );
}

/// `serde_json` parsing of a reqwest body (reqwest's `json` feature is not enabled here).
trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        let bytes = self.bytes().await.expect("body");
        serde_json::from_slice(&bytes).expect("a JSON body")
    }
}
