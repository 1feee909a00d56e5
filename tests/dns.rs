//! Endpoint sets from DNS (docs/ARCHITECTURE.md §17), against a real DNS server on loopback
//! (dnsmasq, `support::dns`) whose records the tests change while fusebox runs: every address
//! of a name is an endpoint, a changed answer is followed, a failing DNS server leaves the last
//! good endpoints serving, the egress guard still checks every address, and a refused address
//! moves the try to the next address of the name.
//!
//! The records have a TTL of 0 and `[dns] min_ttl = "0s"`: every request after the first
//! starts a refresh in the background, so following a change takes requests, not waiting for a
//! timer. Upstreams listen on 127.0.0.2 and up, on one port.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::dns::DnsServer;
use support::metrics::metric;
use support::{app_client, policies_dir, FakeUpstream, TestFusebox};

const NAME: &str = "svc.fusebox.test";

/// Fake upstreams on 127.0.0.{2, 3, ...}, all on the first one's port.
async fn upstreams_on(hosts: &[u8]) -> Vec<FakeUpstream> {
    let first = FakeUpstream::builder()
        .bind(SocketAddr::from(([127, 0, 0, hosts[0]], 0)))
        .body(format!("127.0.0.{}", hosts[0]))
        .start()
        .await;
    let port = first.addr().port();
    let mut all = vec![first];
    for &host in &hosts[1..] {
        let next = FakeUpstream::builder()
            .bind(SocketAddr::from(([127, 0, 0, host], port)))
            .body(format!("127.0.0.{host}"))
            .start()
            .await;
        all.push(next);
    }
    all
}

async fn start(dns: &DnsServer, sections: &str) -> TestFusebox {
    start_with(dns, "", sections).await
}

/// `top`: keys before any section; `sections`: more TOML after fusebox's test sections.
async fn start_with(dns: &DnsServer, top: &str, sections: &str) -> TestFusebox {
    let policy = format!("{top}[dns]\nmin_ttl = \"0s\"\n[breaker]\nmode = \"off\"\n{sections}");
    let server = dns.addr;
    TestFusebox::start_with(policies_dir(&[("default", &policy)]), move |config| {
        config.jitter = false;
        config.dns_server = Some(server);
    })
    .await
}

/// GETs `http://NAME:port/` through fusebox; the status and body.
async fn get(fusebox: &TestFusebox, port: u16) -> (u16, String) {
    let response = app_client(&fusebox.egress_url())
        .get(format!("http://{NAME}:{port}/"))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// `fusebox_endpoint_requests_total` of endpoint `ip:port` with `result`.
fn endpoint_tries(text: &str, ip: &str, port: u16, result: &str) -> f64 {
    let endpoint = format!("{ip}:{port}");
    metric(
        text,
        "fusebox_endpoint_requests_total",
        &[("endpoint", &endpoint), ("result", result)],
    )
}

/// Sends requests until `done` holds of the bodies seen (at most 100, a few ms apart: the
/// background refresh of the previous request must land first).
async fn get_until(fusebox: &TestFusebox, port: u16, done: impl Fn(&str) -> bool) -> usize {
    for sent in 1..=100 {
        let (status, body) = get(fusebox, port).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the change was not followed within 100 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_of_a_name_is_an_endpoint_and_a_changed_answer_is_followed() {
    let ups = upstreams_on(&[2, 3, 4]).await;
    let port = ups[0].addr().port();
    let dns = DnsServer::start(&[(NAME, &["127.0.0.2", "127.0.0.3"])], 0);
    let fusebox = start(&dns, "[balance]\nmode = \"round-robin\"\n").await;
    for _ in 0..10 {
        assert_eq!(get(&fusebox, port).await.0, 200);
    }
    let view = fusebox.upstreams("default").await;
    assert_eq!(
        (ups[0].hits(), ups[1].hits()),
        (5, 5),
        "shared between both A records: {view}"
    );
    let view = fusebox.upstreams("default").await;
    let endpoints = view[0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{view}");
    assert_eq!(view[0]["destination"], format!("{NAME}:{port}"));

    dns.set(&[(NAME, &["127.0.0.4"])]);
    get_until(&fusebox, port, |body| body == "127.0.0.4").await;
    let (before_2, before_3) = (ups[0].hits(), ups[1].hits());
    for _ in 0..10 {
        assert_eq!(get(&fusebox, port).await.1, "127.0.0.4");
    }
    assert_eq!(
        (ups[0].hits(), ups[1].hits()),
        (before_2, before_3),
        "removed endpoints get nothing"
    );
    let text = fusebox.metrics().await;
    let served = endpoint_tries(&text, "127.0.0.4", port, "success");
    assert!(served >= 10.0, "{text}");
    assert!(
        !text.contains(&format!("endpoint=\"127.0.0.2:{port}\"")),
        "a removed endpoint's series leave /metrics (a gone pod is not a ready one): {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dns_server_leaves_the_last_good_endpoints_serving() {
    let ups = upstreams_on(&[2, 3]).await;
    let port = ups[0].addr().port();
    let mut dns = DnsServer::start(&[(NAME, &["127.0.0.2", "127.0.0.3"])], 0);
    let fusebox = start(&dns, "").await;
    assert_eq!(get(&fusebox, port).await.0, 200);
    dns.stop();
    for _ in 0..10 {
        let (status, body) = get(&fusebox, port).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(ups[0].hits() + ups[1].hits(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_connect_failed_naming_it() {
    let dns = DnsServer::start(&[(NAME, &["127.0.0.2"])], 0);
    let fusebox = start(&dns, "[retry]\nattempts = 1\n").await;
    let response = app_client(&fusebox.egress_url())
        .get("http://nowhere.fusebox.test:8080/")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-fusebox-reason"], "connect-failed");
    let body = response.text().await.unwrap();
    assert!(
        body.contains("cannot resolve nowhere.fusebox.test:8080"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolved_address_still_passes_the_egress_guard() {
    let ups = upstreams_on(&[2]).await;
    let port = ups[0].addr().port();
    let dns = DnsServer::start(&[(NAME, &["127.0.0.2"])], 0);
    let fusebox = start_with(&dns, "allow_private = false\n", "").await;
    let (status, body) = get(&fusebox, port).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("127.0.0.2"), "{body}");
    assert_eq!(ups[0].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_address_moves_the_try_to_the_next_address_of_the_name() {
    let ups = upstreams_on(&[2]).await;
    let port = ups[0].addr().port();
    // Nothing listens on 127.0.0.9 at that port: its connections are refused.
    let dns = DnsServer::start(&[(NAME, &["127.0.0.9", "127.0.0.2"])], 0);
    let fusebox = start(
        &dns,
        "[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n[outlier]\nconsecutive_failures = 1000\n",
    )
    .await;
    for _ in 0..6 {
        let (status, body) = get(&fusebox, port).await;
        assert_eq!((status, body.as_str()), (200, "127.0.0.2"));
    }
    let text = fusebox.metrics().await;
    let refused = endpoint_tries(&text, "127.0.0.9", port, "failure");
    assert!(refused >= 3.0, "{text}");
    let retried = metric(
        &text,
        "fusebox_attempts_total",
        &[("result", "connect_failed")],
    );
    assert_eq!(retried, 0.0, "the same try moved on: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_moved_to_the_next_address_unread() {
    use http_body_util::{BodyExt, Full};
    let echo = FakeUpstream::builder()
        .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
        .echo()
        .start()
        .await;
    let port = echo.addr().port();
    let dns = DnsServer::start(&[(NAME, &["127.0.0.9", "127.0.0.2"])], 0);
    // Round robin over [127.0.0.2, 127.0.0.9]: every other try starts at the refusing one.
    let fusebox = start(
        &dns,
        "[retry]\nattempts = 1\n[balance]\nmode = \"round-robin\"\n[outlier]\nconsecutive_failures = 1000\n",
    )
    .await;
    let client = app_client(&fusebox.egress_url());
    for i in 0..4 {
        let payload = format!("chunked body {i}").repeat(100);
        // No length: the body streams through hyper's pooled client on its first try.
        let body = reqwest::Body::wrap_stream(
            Full::new(bytes::Bytes::from(payload.clone())).into_data_stream(),
        );
        let response = client
            .post(format!("http://{NAME}:{port}/up"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), payload, "request {i}");
    }
    let text = fusebox.metrics().await;
    let refused = endpoint_tries(&text, "127.0.0.9", port, "failure");
    assert!(refused >= 2.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_server_that_never_answers_is_bounded_by_the_try() {
    // A "server" that takes every query, over UDP and TCP, and answers none.
    // The same port for both: a UDP port whose TCP twin is taken is tried again.
    let (_udp, _tcp, addr) = (0..100)
        .find_map(|_| {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            let addr = udp.local_addr().ok()?;
            let tcp = std::net::TcpListener::bind(addr).ok()?;
            Some((udp, tcp, addr))
        })
        .expect("a port free for both UDP and TCP");
    let policy = "[retry]\nattempts = 1\n[timeouts]\nattempt = \"300ms\"\n";
    let fusebox = TestFusebox::start_with(policies_dir(&[("default", policy)]), move |config| {
        config.dns_server = Some(addr);
    })
    .await;
    let started = std::time::Instant::now();
    let response = app_client(&fusebox.egress_url())
        .get(format!("http://{NAME}:8080/"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(body.contains("no DNS answer within 300ms"), "{body}");
    assert!(
        took < Duration::from_secs(2),
        "bounded by the try, not the resolver: {took:?}"
    );
}
