//! A destination is many endpoints (docs/ARCHITECTURE.md §17), end to end on real loopback
//! sockets with reqwest as the app: retries that go to endpoints not yet tried, a refused
//! connection moved to the next address within the same try, P2C over peak-EWMA keeping tries
//! away from a slow endpoint and from one that fails fast, per-endpoint ejection,
//! `503 no-endpoint` when none is left, and what `/metrics` and `/upstreams` show of it.
//!
//! Every balancing claim here is exact, not statistical: with two endpoints P2C always
//! compares both, and with three an endpoint whose estimate is the failure penalty loses every
//! comparison it is drawn into; ejection tests use round robin.

mod support;

use support::metrics::metric;
use support::{
    direct_client, refused_addr, route_policy, start_svc, FakeUpstream, Reply, TestFusebox,
};

/// `n` sequential GETs on the route listener; their statuses and `x-fusebox-reason`s.
async fn get_n(fusebox: &TestFusebox, n: usize) -> Vec<(u16, String)> {
    let client = direct_client();
    let mut seen = Vec::new();
    for i in 0..n {
        let response = client
            .get(format!("{}/r{i}", fusebox.route_url("svc")))
            .send()
            .await
            .expect("request");
        let reason = response
            .headers()
            .get("x-fusebox-reason")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        seen.push((response.status().as_u16(), reason));
    }
    seen
}

fn endpoint_metric(text: &str, name: &str, endpoint: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("upstream", "svc"), ("endpoint", endpoint)];
    labels.extend_from_slice(extra);
    metric(text, name, &labels)
}

/// The `/upstreams` entry of `endpoint` in the one destination of policy `svc`.
async fn endpoint_view(fusebox: &TestFusebox, endpoint: &str) -> serde_json::Value {
    let view = fusebox.upstreams("svc").await;
    let endpoints = view[0]["endpoints"].as_array().expect("endpoints").clone();
    endpoints
        .into_iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} not in {view}"))
}

#[tokio::test]
async fn every_retry_goes_to_an_endpoint_not_yet_tried() {
    let upstreams = [
        FakeUpstream::with_status(503).await,
        FakeUpstream::with_status(503).await,
        FakeUpstream::with_status(503).await,
    ];
    let endpoints: Vec<String> = upstreams.iter().map(FakeUpstream::authority).collect();
    let extra = "[retry]\nattempts = 3\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\n\
                 budget_min_per_second = 1000\n[breaker]\nmode = \"off\"\n\
                 [outlier]\nconsecutive_failures = 1000\n";
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let seen = get_n(&fusebox, 10).await;
    assert!(seen.iter().all(|(status, _)| *status == 503), "{seen:?}");
    for upstream in &upstreams {
        assert_eq!(
            upstream.hits(),
            10,
            "each request's three tries went to three different endpoints"
        );
    }
    let text = fusebox.metrics().await;
    for endpoint in &endpoints {
        let failures = endpoint_metric(
            &text,
            "fusebox_endpoint_requests_total",
            endpoint,
            &[("result", "failure")],
        );
        assert_eq!(failures, 10.0, "{text}");
    }
}

#[tokio::test]
async fn a_refused_connection_moves_the_same_try_to_the_next_endpoint() {
    let good = FakeUpstream::builder().body("good").start().await;
    let refused = refused_addr().await.to_string();
    // Round robin: every other request starts at the refused endpoint.
    let extra = "[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n\
                 [outlier]\nconsecutive_failures = 1000\n";
    let fusebox = start_svc(&route_policy(&[refused.clone(), good.authority()], extra)).await;
    let seen = get_n(&fusebox, 10).await;
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "one try each, moved on when its connection was refused: {seen:?}"
    );
    assert_eq!(good.hits(), 10);
    let text = fusebox.metrics().await;
    let tries = |result| {
        metric(
            &text,
            "fusebox_attempts_total",
            &[("upstream", "svc"), ("result", result)],
        )
    };
    assert_eq!(tries("success"), 10.0, "{text}");
    assert_eq!(
        tries("connect_failed"),
        0.0,
        "one try each, not a retry: {text}"
    );
    let refusals = endpoint_metric(
        &text,
        "fusebox_endpoint_requests_total",
        &refused,
        &[("result", "failure")],
    );
    // Round robin moves on in the fallback too, so the refused endpoint may start every try:
    // at least every other one did.
    assert!(refusals >= 5.0, "{text}");
}

#[tokio::test]
async fn p2c_keeps_tries_away_from_a_slow_endpoint() {
    let slow = FakeUpstream::builder()
        .replies([Reply::Status(200).after(std::time::Duration::from_millis(300))])
        .start()
        .await;
    let fast = FakeUpstream::builder().start().await;
    let fusebox = start_svc(&route_policy(&[slow.authority(), fast.authority()], "")).await;
    let seen = get_n(&fusebox, 20).await;
    assert!(seen.iter().all(|(status, _)| *status == 200), "{seen:?}");
    // Both start at `default_rtt`: the first pick may be either. After one slow answer its
    // estimate is 300 ms against the fast one's few, and P2C with two always compares both.
    assert!(slow.hits() <= 1, "slow endpoint got {} of 20", slow.hits());
    let view = endpoint_view(&fusebox, &slow.authority()).await;
    assert_eq!(view["state"], "ready", "slowness is not a failure: {view}");
}

#[tokio::test]
async fn p2c_avoids_an_endpoint_that_fails_fast() {
    let failing = FakeUpstream::with_status(503).await;
    let a = FakeUpstream::builder().start().await;
    let b = FakeUpstream::builder().start().await;
    let endpoints = [failing.authority(), a.authority(), b.authority()];
    let extra = "[retry]\nattempts = 1\n[outlier]\nconsecutive_failures = 1000\n";
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let seen = get_n(&fusebox, 30).await;
    // A 503 in a millisecond counts as `failure_penalty` (5 s), not as 1 ms: from its first
    // failure on, the failing endpoint loses every comparison it is drawn into.
    assert!(
        failing.hits() <= 1,
        "failing endpoint got {}",
        failing.hits()
    );
    let ok = seen.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(ok as u64, 30 - failing.hits(), "{seen:?}");
    let view = endpoint_view(&fusebox, &failing.authority()).await;
    if failing.hits() == 1 {
        let ewma = view["ewma_us"].as_u64().unwrap();
        assert!(ewma > 4_000_000, "the penalty, decayed a little: {view}");
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_the_others_serve() {
    let bad = FakeUpstream::with_status(503).await;
    let good = [
        FakeUpstream::builder().start().await,
        FakeUpstream::builder().start().await,
    ];
    let endpoints = [bad.authority(), good[0].authority(), good[1].authority()];
    let extra = "[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n\
                 [outlier]\nconsecutive_failures = 2\nbase_ejection = \"1h\"\nmax_ejection = \"2h\"\n";
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let seen = get_n(&fusebox, 30).await;
    assert_eq!(bad.hits(), 2, "ejected after two failures in a row");
    let failed = seen.iter().filter(|(status, _)| *status == 503).count();
    assert_eq!(failed, 2, "{seen:?}");
    assert_eq!(good[0].hits() + good[1].hits(), 28);

    let text = fusebox.metrics().await;
    let state = endpoint_metric(&text, "fusebox_endpoint_state", &bad.authority(), &[]);
    assert_eq!(state, 1.0, "{text}");
    let ejections = endpoint_metric(
        &text,
        "fusebox_endpoint_ejections_total",
        &bad.authority(),
        &[("reason", "consecutive_failures")],
    );
    assert_eq!(ejections, 1.0, "{text}");
    let healthy = endpoint_metric(&text, "fusebox_endpoint_state", &good[0].authority(), &[]);
    assert_eq!(healthy, 0.0, "{text}");

    let view = endpoint_view(&fusebox, &bad.authority()).await;
    assert_eq!(view["state"], "ejected", "{view}");
    assert_eq!(view["ejections"], 1, "{view}");
    let left = view["ejected_for_ms"].as_u64().expect("time left");
    assert!(left > 3_500_000 && left <= 3_600_000, "{view}");
    let destination = &fusebox.upstreams("svc").await[0];
    assert_eq!(
        destination["state"], "closed",
        "one bad endpoint of three: {destination}"
    );
}

/// Two upstreams that always answer 503, and their authorities.
async fn two_failing() -> ([FakeUpstream; 2], [String; 2]) {
    let bad = [
        FakeUpstream::with_status(503).await,
        FakeUpstream::with_status(503).await,
    ];
    let endpoints = [bad[0].authority(), bad[1].authority()];
    (bad, endpoints)
}

#[tokio::test]
async fn with_every_endpoint_ejected_the_destination_answers_no_endpoint_and_its_breaker_trips() {
    let (bad, endpoints) = two_failing().await;
    let extra = "[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n\
                 [outlier]\nconsecutive_failures = 1\nbase_ejection = \"1h\"\n\
                 [breaker]\nconsecutive_failures = 3\nopen_base = \"1h\"\n";
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let client = direct_client();
    let url = format!("{}/x", fusebox.route_url("svc"));
    for _ in 0..2 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().get("x-fusebox-reason").is_none());
    }
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["x-fusebox-reason"], "no-endpoint");
    let body = response.text().await.unwrap();
    for endpoint in &endpoints {
        assert!(
            body.contains(&format!("{endpoint} ejected for ")),
            "the reply names each endpoint and its time left: {body}"
        );
    }
    assert_eq!(bad[0].hits() + bad[1].hits(), 2, "nothing was sent");

    // Two 503s and a no-endpoint: three failures in a row open the breaker.
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.headers()["x-fusebox-reason"], "breaker-open");
    let text = fusebox.metrics().await;
    let no_endpoint = metric(
        &text,
        "fusebox_requests_total",
        &[("upstream", "svc"), ("outcome", "no_endpoint")],
    );
    assert_eq!(no_endpoint, 1.0, "{text}");
}

#[tokio::test]
async fn route_all_keeps_routing_when_more_would_be_ejected_than_allowed() {
    let (bad, endpoints) = two_failing().await;
    let extra = "[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n\
                 [outlier]\nconsecutive_failures = 1\nbase_ejection = \"1h\"\n\
                 panic = \"route-all\"\n[breaker]\nmode = \"off\"\n";
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let seen = get_n(&fusebox, 6).await;
    assert!(
        seen.iter()
            .all(|(status, reason)| *status == 503 && reason.is_empty()),
        "every request reached an upstream: {seen:?}"
    );
    assert_eq!(bad[0].hits() + bad[1].hits(), 6);
}

/// `POST /reload` on the admin listener, which must succeed.
async fn reload(fusebox: &TestFusebox) {
    let response = direct_client()
        .post(format!("{}/reload", fusebox.admin_url()))
        .send()
        .await
        .expect("POST /reload");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test]
async fn a_reload_keeps_the_endpoint_set_unless_its_settings_change() {
    let bad = FakeUpstream::with_status(503).await;
    let good = FakeUpstream::builder().start().await;
    let endpoints = [bad.authority(), good.authority()];
    let outlier = "[outlier]\nconsecutive_failures = 1\nbase_ejection = \"1h\"\n";
    let policy = |extra: &str| {
        route_policy(
            &endpoints,
            &format!("[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n{outlier}{extra}"),
        )
    };
    let fusebox = start_svc(&policy("")).await;
    get_n(&fusebox, 2).await;
    assert_eq!(
        endpoint_view(&fusebox, &bad.authority()).await["state"],
        "ejected"
    );

    // A change elsewhere in the policy (the breaker) keeps the set: still ejected.
    let path = fusebox.dir().join("svc.toml");
    std::fs::write(&path, policy("[breaker]\nconsecutive_failures = 9\n")).unwrap();
    reload(&fusebox).await;
    assert_eq!(
        endpoint_view(&fusebox, &bad.authority()).await["state"],
        "ejected"
    );
    get_n(&fusebox, 4).await;
    assert_eq!(bad.hits(), 1, "the ejection outlived the reload");

    // A changed [outlier] starts a new set: every endpoint ready again.
    std::fs::write(
        &path,
        policy("").replace("consecutive_failures = 1", "consecutive_failures = 2"),
    )
    .unwrap();
    reload(&fusebox).await;
    get_n(&fusebox, 1).await;
    assert_eq!(
        endpoint_view(&fusebox, &bad.authority()).await["state"],
        "ready"
    );
}

#[tokio::test]
async fn a_connection_that_hangs_is_raced_by_another_endpoint_after_250_ms() {
    let blackhole = support::syn_blackhole()
        .await
        .expect("a full listen backlog drops SYNs on this kernel");
    let good = FakeUpstream::builder().body("good").start().await;
    // Round robin from the hanging endpoint; a connect timeout far above the race's 250 ms.
    let extra = "[retry]\nattempts = 1\n[timeouts]\nconnect = \"5s\"\n\
                 [balance]\nmode = \"round-robin\"\n[outlier]\nconsecutive_failures = 1000\n";
    let endpoints = [blackhole.addr.to_string(), good.authority()];
    let fusebox = start_svc(&route_policy(&endpoints, extra)).await;
    let client = direct_client();
    for i in 0..4 {
        let started = std::time::Instant::now();
        let response = client
            .get(format!("{}/r{i}", fusebox.route_url("svc")))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), 200, "request {i}");
        assert!(
            took < std::time::Duration::from_secs(2),
            "request {i} took {took:?}: the second endpoint raced the hanging one"
        );
    }
    let text = fusebox.metrics().await;
    let tries = metric(
        &text,
        "fusebox_attempts_total",
        &[("upstream", "svc"), ("result", "success")],
    );
    assert_eq!(tries, 4.0, "one try each: {text}");
}

/// `CONNECT authority` on the egress listener, then a GET through the tunnel; the GET's body.
async fn through_tunnel(fusebox: &TestFusebox, authority: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let egress = fusebox.agent().egress_addr();
    let mut stream = tokio::net::TcpStream::connect(egress).await.unwrap();
    let connect = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(connect.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let get = "GET / HTTP/1.1\r\nHost: svc.fusebox.test\r\nConnection: close\r\n\r\n";
    stream.write_all(get.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_connect_tunnel_to_a_policy_with_endpoints_counts_under_its_one_destination() {
    let a = FakeUpstream::builder().body("a").start().await;
    let b = FakeUpstream::builder().body("b").start().await;
    let policy = format!(
        "hosts = [\"svc.fusebox.test:443\"]\nendpoints = [\"{}\", \"{}\"]\n",
        a.authority(),
        b.authority()
    );
    let fusebox = TestFusebox::start(&[("svc", &policy)]).await;
    let mut bodies = vec![
        through_tunnel(&fusebox, "svc.fusebox.test:443").await,
        through_tunnel(&fusebox, "svc.fusebox.test:443").await,
    ];
    bodies.sort();
    assert_eq!(bodies, ["a", "b"], "round robin over the entries");
    let view = fusebox.upstreams("svc").await;
    let destinations: Vec<&str> = view
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["destination"].as_str().unwrap())
        .collect();
    assert_eq!(destinations, [a.authority().as_str()], "{view}");
}
