//! gRPC from real clients (docs/ARCHITECTURE.md §14): a grpcio client and a grpcio server, with
//! fusebox between them on a route listener speaking HTTP/2 cleartext, or intercepting the
//! client's HTTPS proxy `CONNECT`. Trailers-only statuses are retried and trip the breaker;
//! a status in a stream's trailers is judged when the stream ends.

mod support;

use fusebox::ca::LocalCa;
use support::metrics::metric;
use support::peers::{grpc_call, GrpcServer};
use support::{policies_dir, TestFusebox, TestPki};

const STREAM: &str = "/fusebox.Test/Stream";

/// fusebox with policy `svc`: a route listener to the gRPC server on `port`, plus `extra`.
async fn route_to(port: u16, extra: &str) -> (TestFusebox, String) {
    let policy = format!("listen = \"127.0.0.1:0\"\nendpoints = [\"127.0.0.1:{port}\"]\n{extra}");
    let fusebox = TestFusebox::start_with(policies_dir(&[("svc", &policy)]), |config| {
        config.jitter = false;
    })
    .await;
    let target = fusebox
        .route_url("svc")
        .trim_start_matches("http://")
        .to_owned();
    (fusebox, target)
}

fn labels<'a>(port: u16, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
    let mut labels = vec![("destination", format!("127.0.0.1:{port}"))];
    labels.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    labels
}

fn count(metrics: &str, name: &str, labels: &[(&str, String)]) -> f64 {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    metric(metrics, name, &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_through_an_h2c_route_listener() {
    let server = GrpcServer::start(&["unavailable", "unavailable", "ok"], None);
    let (fusebox, target) = route_to(server.port, "[retry]\nattempts = 3\n").await;
    let lines = grpc_call(&target, &[], &[]).await;
    assert_eq!(lines, ["ok pong:ping"], "two UNAVAILABLE retried");
    assert_eq!(server.hits_at_least(3).await, 3);

    let metrics = fusebox.metrics().await;
    let port = server.port;
    assert_eq!(
        count(
            &metrics,
            "fusebox_retries_total",
            &labels(port, &[("reason", "grpc-status")])
        ),
        2.0,
        "{metrics}"
    );
    let ok = labels(port, &[("outcome", "ok"), ("code", "grpc-ok")]);
    assert_eq!(
        count(&metrics, "fusebox_requests_total", &ok),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            &metrics,
            "fusebox_attempts_total",
            &labels(port, &[("result", "failure")])
        ),
        2.0,
        "UNAVAILABLE is a failure for the breaker: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_unavailable_trips_the_breaker_and_the_client_gets_a_fast_unavailable() {
    let server = GrpcServer::start(&["unavailable"], None);
    let extra = "[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 3\nopen_base = \"60s\"\n";
    let (fusebox, target) = route_to(server.port, extra).await;
    let lines = grpc_call(&target, &["--count", "5"], &[]).await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines[..3] {
        assert_eq!(line, "unavailable scripted UNAVAILABLE", "{lines:?}");
    }
    for line in &lines[3..] {
        assert!(
            line.starts_with("unavailable fusebox: breaker-open: "),
            "the breaker answers a gRPC call in gRPC, UNAVAILABLE with its reason: {lines:?}"
        );
    }
    assert_eq!(server.hits_at_least(3).await, 3, "nothing sent while open");

    let view = fusebox.upstreams("svc").await;
    let destination = &view[0];
    assert_eq!(destination["state"], "open", "{view}");
    assert_eq!(destination["recent"][0]["kind"], "grpc_status", "{view}");
    assert_eq!(
        destination["recent"][0]["grpc_status"], "unavailable",
        "{view}"
    );

    let metrics = fusebox.metrics().await;
    let port = server.port;
    let failed = labels(
        port,
        &[("outcome", "upstream_error"), ("code", "grpc-unavailable")],
    );
    assert_eq!(
        count(&metrics, "fusebox_requests_total", &failed),
        3.0,
        "{metrics}"
    );
    let open = labels(
        port,
        &[("outcome", "breaker_open"), ("code", "grpc-unavailable")],
    );
    assert_eq!(
        count(&metrics, "fusebox_requests_total", &open),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_in_a_streams_trailers_is_judged_when_the_stream_ends() {
    let server = GrpcServer::start(&["internal"], None);
    let extra = "[retry]\nattempts = 3\n[breaker]\nconsecutive_failures = 2\nopen_base = \"60s\"\n";
    let (fusebox, target) = route_to(server.port, extra).await;
    let lines = grpc_call(&target, &["--method", STREAM, "--count", "3"], &[]).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines[..2] {
        assert!(
            line.starts_with("internal scripted INTERNAL after a message"),
            "the upstream's own status, after its message, not retried: {lines:?}"
        );
    }
    assert!(
        lines[2].starts_with("unavailable fusebox: breaker-open: "),
        "open: {lines:?}"
    );
    assert_eq!(server.hits_at_least(2).await, 2);

    let view = fusebox.upstreams("svc").await;
    assert_eq!(view[0]["state"], "open", "{view}");
    assert_eq!(view[0]["recent"][0]["grpc_status"], "internal", "{view}");
    let metrics = fusebox.metrics().await;
    let failed = labels(
        server.port,
        &[("outcome", "upstream_error"), ("code", "grpc-internal")],
    );
    assert_eq!(
        count(&metrics, "fusebox_requests_total", &failed),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_an_intercepted_https_proxy_connect_is_retried() {
    let pki = TestPki::new();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write_leaf(certs.path());
    // Then UNAVAILABLE for good: the second call fails twice and trips the breaker.
    let server = GrpcServer::start(&["unavailable", "ok", "unavailable"], Some((&cert, &key)));
    let port = server.port;
    let policy = format!(
        "hosts = [\"localhost:{port}\"]\nintercept = true\nca_file = \"test-ca.pem\"\n\
         [retry]\nattempts = 2\n[breaker]\nconsecutive_failures = 2\nopen_base = \"60s\"\n"
    );
    let dir = policies_dir(&[("default", ""), ("api", &policy)]);
    pki.write_ca(dir.path());
    let ca_dir = dir.path().join("fusebox-ca");
    LocalCa::init(&ca_dir, false, std::time::SystemTime::now()).unwrap();
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.ca_dir = Some(ca_dir.clone());
    })
    .await;
    let ca = ca_dir.join("ca.pem");
    let proxy = fusebox.egress_url();
    let lines = grpc_call(
        &format!("localhost:{port}"),
        &["--ca", ca.to_str().unwrap()],
        &[("https_proxy", &proxy)],
    )
    .await;
    assert_eq!(lines, ["ok pong:ping"], "UNAVAILABLE retried inside TLS");
    assert_eq!(server.hits_at_least(2).await, 2);
    let lines = grpc_call(
        &format!("localhost:{port}"),
        &["--ca", ca.to_str().unwrap(), "--count", "2"],
        &[("https_proxy", &proxy)],
    )
    .await;
    assert_eq!(lines[0], "unavailable scripted UNAVAILABLE", "{lines:?}");
    assert!(
        lines[1].starts_with("unavailable fusebox: breaker-open: "),
        "the breaker answers inside TLS: {lines:?}"
    );
    assert_eq!(server.hits_at_least(4).await, 4, "two tries, then none");
    let metrics = fusebox.metrics().await;
    let destination = format!("localhost:{port}");
    let labels = |extra: (&'static str, &'static str)| {
        vec![
            ("destination", destination.clone()),
            (extra.0, extra.1.to_owned()),
        ]
    };
    assert_eq!(
        count(
            &metrics,
            "fusebox_retries_total",
            &labels(("reason", "grpc-status"))
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            &metrics,
            "fusebox_intercepted_connections_total",
            &labels(("result", "ok"))
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_grpc_timeout_caps_the_deadline_and_the_reply_says_so_in_grpc() {
    // The app here is reqwest speaking HTTP/2 with prior knowledge and sending a gRPC call by
    // hand, with a `grpc-timeout` but no deadline of its own, so that only fusebox can end it.
    let server = GrpcServer::start(&["stall"], None);
    let (fusebox, target) = route_to(server.port, "[timeouts]\ntotal = \"30s\"\n").await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // One length-prefixed message: not compressed, 4 bytes, "ping".
    let message = [&[0u8, 0, 0, 0, 4][..], b"ping"].concat();
    let response = client
        .post(format!("http://{target}/fusebox.Test/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(message)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200, "a gRPC answer: {response:?}");
    let headers = response.headers();
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(
        headers["grpc-status"], "4",
        "DEADLINE_EXCEEDED: {headers:?}"
    );
    // fusebox sends the upstream what is left of the app's deadline (#22, item 13), so the
    // upstream's own deadline ends at the same moment as fusebox's: whichever answers first,
    // the app gets DEADLINE_EXCEEDED at its deadline, and fusebox's answer says why.
    if let Some(reason) = headers.get("x-fusebox-reason") {
        assert_eq!(reason, "timeout");
        let message = headers["grpc-message"].to_str().unwrap();
        assert!(
            message.contains("within the app's grpc-timeout of 300ms"),
            "{message}"
        );
    }
    assert_eq!(server.hits_at_least(1).await, 1);
    let metrics = fusebox.metrics().await;
    let deadline = labels(server.port, &[("code", "grpc-deadline-exceeded")]);
    assert_eq!(
        count(&metrics, "fusebox_requests_total", &deadline),
        1.0,
        "{metrics}"
    );
}

/// A retry tells the upstream what is left of the app's deadline (#22, item 13): the second
/// try, a second of backoff after the first, arrives with about a second less in its
/// `grpc-timeout` (it carried the app's original value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_carries_what_is_left_of_the_apps_grpc_timeout() {
    let server = GrpcServer::start(&["unavailable", "ok"], None);
    let retry = "[retry]\nattempts = 2\nbackoff_base = \"1s\"\nbackoff_max = \"1s\"\n[timeouts]\ntotal = \"30s\"\n";
    let (_fusebox, target) = route_to(server.port, retry).await;
    let lines = grpc_call(&target, &["--timeout", "20"], &[]).await;
    assert_eq!(lines, ["ok pong:ping"]);
    assert_eq!(server.hits_at_least(2).await, 2);
    let left: Vec<f64> = server
        .hits()
        .iter()
        .map(|hit| hit.rsplit(' ').next().unwrap().parse().expect("a deadline"))
        .collect();
    assert!(left[0] > 15.0 && left[0] <= 20.0, "{left:?}");
    assert!(
        left[1] <= left[0] - 0.8,
        "the retry's deadline is what is left: {left:?}"
    );
}

/// A half-open probe that is a long gRPC stream is judged at its head (#22, item 11): a stream
/// that started is a healthy upstream, so the breaker closes then, not when the stream ends —
/// other calls get through while it runs, and it is never counted as a lost probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_as_a_half_open_probe_closes_the_breaker_at_its_head() {
    let server = GrpcServer::start(&["unavailable", "unavailable", "long", "ok"], None);
    let breaker = "[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 2\nopen_base = \"1ms\"\nopen_max = \"2s\"\n";
    let (fusebox, target) = route_to(server.port, breaker).await;
    for _ in 0..2 {
        let lines = grpc_call(&target, &[], &[]).await;
        assert!(lines[0].starts_with("unavailable"), "{lines:?}");
    }
    // Open, and after 1 ms half-open: the stream is its probe.
    let stream = {
        let target = target.clone();
        tokio::spawn(async move {
            let method = ["--method", "/fusebox.Test/Stream"];
            grpc_call(&target, &method, &[]).await
        })
    };
    assert_eq!(server.hits_at_least(3).await, 3);
    // Waits on state: closed once the stream's head went to the app (the stream runs 3 s).
    let mut state = String::new();
    for _ in 0..40 {
        let view = fusebox.upstreams("svc").await;
        state = view[0]["state"].as_str().unwrap_or_default().to_owned();
        if state == "closed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let view = fusebox.upstreams("svc").await;
    assert_eq!(
        state, "closed",
        "closed at the probe's head, while it streams: {view}"
    );
    let lines = grpc_call(&target, &[], &[]).await;
    assert_eq!(lines, ["ok pong:ping"], "a call meanwhile gets through");
    assert_eq!(stream.await.unwrap(), ["ok 2 message(s)"]);
    let metrics = fusebox.metrics().await;
    let closed = labels(server.port, &[("from", "half_open"), ("to", "closed")]);
    assert_eq!(
        count(&metrics, "fusebox_breaker_transitions_total", &closed),
        1.0,
        "{metrics}"
    );
    let reopened = labels(server.port, &[("from", "half_open"), ("to", "open")]);
    assert_eq!(
        count(&metrics, "fusebox_breaker_transitions_total", &reopened),
        0.0,
        "{metrics}"
    );
}

/// `fusebox_hedges_total` of the destination on `port`: hedges sent, and won.
fn sent_and_won(metrics: &str, port: u16) -> (f64, f64) {
    let hedges = |result| {
        count(
            metrics,
            "fusebox_hedges_total",
            &labels(port, &[("result", result)]),
        )
    };
    (hedges("sent"), hedges("won"))
}

/// Hedging for an idempotent gRPC service (`POST` listed in `retry.methods`), §18.
const HEDGE_GRPC: &str = "[retry]\nattempts = 2\nmethods = [\"POST\"]\n\
                          [hedge]\nenabled = true\nmax_extra_load = 1.0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_grpc_call_is_hedged_with_its_recorded_body() {
    // The first call never answers; the hedge, a copy of the recorded body, answers at once.
    let server = GrpcServer::start(&["stall", "ok"], None);
    let extra = format!("{HEDGE_GRPC}delay = \"100ms\"\n");
    let (fusebox, target) = route_to(server.port, &extra).await;
    let lines = grpc_call(&target, &[], &[]).await;
    assert_eq!(
        lines,
        ["ok pong:ping"],
        "the hedge carried the same request body"
    );
    assert_eq!(server.hits_at_least(2).await, 2);
    let metrics = fusebox.metrics().await;
    let port = server.port;
    assert_eq!(sent_and_won(&metrics, port), (1.0, 1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_grpc_status_sends_the_next_hedge_at_once() {
    // gRFC A6: UNAVAILABLE from one copy sends the next at once, long before the hedge delay
    // and with no retry backoff.
    let server = GrpcServer::start(&["unavailable", "ok"], None);
    let extra = "[retry]\nattempts = 2\nmethods = [\"POST\"]\n\
                 backoff_base = \"30s\"\nbackoff_max = \"30s\"\n\
                 [timeouts]\ntotal = \"20s\"\n\
                 [hedge]\nenabled = true\nmax_extra_load = 1.0\ndelay = \"30s\"\n";
    let (fusebox, target) = route_to(server.port, extra).await;
    let started = std::time::Instant::now();
    let lines = grpc_call(&target, &[], &[]).await;
    assert_eq!(lines, ["ok pong:ping"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "neither the 30 s delay nor a 30 s backoff was waited for"
    );
    let metrics = fusebox.metrics().await;
    let port = server.port;
    assert_eq!(sent_and_won(&metrics, port), (1.0, 1.0), "{metrics}");
    let retries = count(
        &metrics,
        "fusebox_retries_total",
        &labels(port, &[("reason", "grpc-status")]),
    );
    assert_eq!(retries, 0.0, "a hedge, not a retry: {metrics}");
}
