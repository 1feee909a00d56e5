//! Local replies (docs/ARCHITECTURE.md §5, a contract): whenever fusebox answers instead of the
//! upstream, the app gets the contract status, `x-fusebox-reason`, `x-fusebox-upstream` and a
//! one-line text body, and `/metrics` counts the request under the matching `outcome` and `code`
//! (and the upstream try, if one was made, under the matching `result`).
//!
//! Malformed requests are sent over raw sockets, and where HTTP/1.1 allows the connection to
//! survive the error, a second request on the same socket must be served.
//!
//! Policies that make upstream failures set `[retry] attempts = 1`, so that the attempt counts
//! checked here are those of a single try whatever the retry defaults are.

mod support;

use support::metrics::metric;
use support::raw::{raw_upstream, RawConn, RawResponse, ThenUpstream};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{policies_dir, refused_addr, syn_blackhole, FakeUpstream, Reply, TestFusebox};

/// Safety net for anything that should happen; never reached on a healthy run.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a TCP stream.

/// Sends one request on a fresh connection and reads the response.
async fn raw_exchange(fusebox: &TestFusebox, request: &str) -> RawResponse {
    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.send(request.as_bytes()).await;
    conn.read_response().await
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Asserts the local-reply contract: status, reason, policy, and a one-line text body that
/// starts with the reason.
fn assert_local_reply(response: &RawResponse, status: u16, reason: &str, upstream: &str) {
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(
        response.header("x-fusebox-reason"),
        Some(reason),
        "{response:?}"
    );
    assert_eq!(
        response.header("x-fusebox-upstream"),
        Some(upstream),
        "{response:?}"
    );
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{response:?}"
    );
    let body = String::from_utf8(response.body.clone()).expect("a text body");
    assert!(
        body.ends_with('\n') && body.matches('\n').count() == 1,
        "one line: {body:?}"
    );
    assert!(
        body.len() > reason.len() + 12,
        "the line says what happened: {body:?}"
    );
}

/// Asserts `fusebox_requests_total` for this policy × destination: exactly `count` requests
/// with this outcome and code, and none with any other outcome.
fn assert_requests(
    metrics: &str,
    upstream: &str,
    destination: &str,
    outcome: &str,
    code: &str,
    count: f64,
) {
    let base = [("upstream", upstream), ("destination", destination)];
    let mut labels = base.to_vec();
    labels.extend([("outcome", outcome), ("code", code)]);
    assert_eq!(
        metric(metrics, "fusebox_requests_total", &labels),
        count,
        "requests {labels:?} in:\n{metrics}"
    );
    assert_eq!(
        metric(metrics, "fusebox_requests_total", &base),
        count,
        "no other outcome for {base:?} in:\n{metrics}"
    );
}

/// Asserts `fusebox_attempts_total` for this policy × destination: `count` tries with this
/// result and no try with another (pass `None` for "no try at all").
fn assert_attempts(
    metrics: &str,
    upstream: &str,
    destination: &str,
    result: Option<&str>,
    count: f64,
) {
    let base = [("upstream", upstream), ("destination", destination)];
    let total = metric(metrics, "fusebox_attempts_total", &base);
    match result {
        Some(result) => {
            let mut labels = base.to_vec();
            labels.push(("result", result));
            assert_eq!(
                metric(metrics, "fusebox_attempts_total", &labels),
                count,
                "attempts {labels:?} in:\n{metrics}"
            );
            assert_eq!(total, count, "no other attempt result in:\n{metrics}");
        }
        None => assert_eq!(total, 0.0, "no upstream try for {base:?} in:\n{metrics}"),
    }
}

/// `[retry] attempts = 1` plus `extra`: one try per request, so attempt counts are exact.
fn single_try(extra: &str) -> String {
    format!("{extra}\n[retry]\nattempts = 1\n")
}

// ---------------------------------------------------------------------------------------------
// bad-request 400

/// Heads hyper cannot read (a malformed request line or field, a target too long) get
/// fusebox's own local reply instead of hyper's bare status (#22, item 10): `x-fusebox-reason`,
/// a line saying what was wrong, `connection: close` (the framing of anything after an
/// unreadable head is unknowable), and the request is counted and logged as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_request_heads_get_fusebox_s_own_reply_and_are_counted() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let long_target = format!(
        "GET http://{}/{} HTTP/1.1\r\n\r\n",
        upstream.authority(),
        "a".repeat(70_000)
    );
    let cases: [(&[u8], u16, &str); 4] = [
        (b"THIS IS NOT HTTP\r\n\r\n", 400, "could not be parsed"),
        (
            b"GET / HTTP/1.1\r\nbad field\r\n\r\n",
            400,
            "could not be parsed",
        ),
        (
            b"GET / HTTP/1.1\r\nx: \x01\r\n\r\n",
            400,
            "could not be parsed",
        ),
        (long_target.as_bytes(), 414, "target is too long"),
    ];
    for (n, (head, status, says)) in cases.into_iter().enumerate() {
        let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
        conn.send(head).await;
        let response = conn.read_response().await;
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(
            response.header("x-fusebox-reason"),
            Some("bad-request"),
            "{response:?}"
        );
        assert_eq!(response.header("x-fusebox-upstream"), Some("default"));
        assert_eq!(response.header("connection"), Some("close"));
        let body = String::from_utf8_lossy(&response.body);
        assert!(
            body.starts_with("fusebox: bad-request: ") && body.contains(says),
            "{body}"
        );
        assert!(conn.is_closed().await, "closed after an unreadable head");
        let metrics = fusebox.metrics().await;
        let expected = (n + 1) as f64;
        let counted = metric(
            &metrics,
            "fusebox_requests_total",
            &[("outcome", "bad_request")],
        );
        assert_eq!(
            counted, expected,
            "counted like every local reply:\n{metrics}"
        );
    }

    // fusebox itself is unharmed.
    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.expect_still_usable(&upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_scheme_is_a_bad_request_and_the_connection_survives() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.send(b"GET ftp://127.0.0.1/file.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let response = conn.read_response().await;
    assert_local_reply(&response, 400, "bad-request", "default");
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("scheme"), "{body:?}");
    conn.expect_still_usable(&upstream).await;

    let metrics = fusebox.metrics().await;
    assert_requests(&metrics, "default", "_other", "bad_request", "4xx", 1.0);
    assert_attempts(&metrics, "default", "_other", None, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_port_is_a_bad_request_and_the_connection_survives() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.send(b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let response = conn.read_response().await;
    assert_local_reply(&response, 400, "bad-request", "default");
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("port"), "{body:?}");
    // A refused CONNECT does not switch protocols: the connection stays HTTP.
    conn.expect_still_usable(&upstream).await;

    let metrics = fusebox.metrics().await;
    assert_requests(&metrics, "default", "_other", "bad_request", "4xx", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_form_without_host_is_a_bad_request_and_the_connection_survives() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    // hyper does not enforce RFC 9112's "Host is required in HTTP/1.1"; fusebox does, since
    // without it there is nowhere to route to.
    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.send(b"GET /x HTTP/1.1\r\nUser-Agent: raw\r\n\r\n")
        .await;
    let response = conn.read_response().await;
    assert_local_reply(&response, 400, "bad-request", "default");
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("Host"), "{body:?}");
    conn.expect_still_usable(&upstream).await;

    let metrics = fusebox.metrics().await;
    assert_requests(&metrics, "default", "_other", "bad_request", "4xx", 1.0);
}

// ---------------------------------------------------------------------------------------------
// Oversized request heads: 431

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_gets_431_and_the_connection_survives() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start_with(policies_dir(&[("default", "")]), |config| {
        config.max_header_bytes = 16 * 1024;
    })
    .await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    let request = format!(
        "GET http://{host}/big HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n",
        host = upstream.authority(),
        big = "b".repeat(20 * 1024)
    );
    conn.send(request.as_bytes()).await;
    let response = conn.read_response().await;
    assert_local_reply(&response, 431, "bad-request", "default");
    assert_eq!(upstream.hits(), 0, "an oversized request is not forwarded");
    conn.expect_still_usable(&upstream).await;

    // Just under the limit is fine.
    let request = format!(
        "GET http://{host}/fits HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n",
        host = upstream.authority(),
        big = "b".repeat(15 * 1024)
    );
    conn.send(request.as_bytes()).await;
    assert_eq!(conn.read_response().await.status, 200);

    let metrics = fusebox.metrics().await;
    assert_requests(&metrics, "default", "_other", "bad_request", "4xx", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_far_beyond_the_limit_gets_431_without_harm() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start_with(policies_dir(&[("default", "")]), |config| {
        config.max_header_bytes = 16 * 1024;
    })
    .await;

    // Beyond hyper's read buffer (twice the limit), hyper gives up on the head; the app gets
    // fusebox's own 431 (not hyper's bare one), and the connection is closed. Write from another task: the server stops
    // reading long before 200 KiB, so the write may fail, and must not block the read.
    let stream = TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let request = format!(
        "GET http://{host}/huge HTTP/1.1\r\nHost: {host}\r\nX-Huge: {huge}\r\n\r\n",
        host = upstream.authority(),
        huge = "h".repeat(200 * 1024)
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(request.as_bytes()).await;
        write
    });
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                received.extend_from_slice(&chunk[..n]);
                if received.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => panic!("no answer to a 200 KiB head"),
        }
    }
    let head = String::from_utf8_lossy(&received);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head:?}");
    assert!(
        head.contains("x-fusebox-reason: bad-request\r\n"),
        "{head:?}"
    );
    drop(writer.await);
    assert_eq!(upstream.hits(), 0);
    let metrics = fusebox.metrics().await;
    let labels = [("outcome", "bad_request"), ("code", "4xx")];
    assert_eq!(
        metric(&metrics, "fusebox_requests_total", &labels),
        1.0,
        "{metrics}"
    );

    // fusebox is still serving.
    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.expect_still_usable(&upstream).await;
}

// ---------------------------------------------------------------------------------------------
// Upstream failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_connect_failed_502() {
    let fusebox = TestFusebox::start(&[("default", &single_try(""))]).await;
    let addr = refused_addr().await;

    let response = fusebox
        .app()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 502, "connect-failed", "default");

    let metrics = fusebox.metrics().await;
    let destination = addr.to_string();
    assert_requests(
        &metrics,
        "default",
        &destination,
        "connect_failed",
        "5xx",
        1.0,
    );
    assert_attempts(
        &metrics,
        "default",
        &destination,
        Some("connect_failed"),
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_timeout_504() {
    let blackhole = syn_blackhole()
        .await
        .expect("a full listen backlog drops SYNs on this kernel");
    let fusebox = TestFusebox::start(&[(
        "default",
        &single_try("[timeouts]\nconnect = \"300ms\"\nattempt = \"5s\"\ntotal = \"10s\""),
    )])
    .await;

    let started = std::time::Instant::now();
    let response = fusebox
        .app()
        .get(format!("http://{}/", blackhole.addr))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 504, "timeout", "default");
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("connect"), "a connect timeout: {body:?}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "not before the connect timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "the connect timeout, not the attempt timeout: {elapsed:?}"
    );

    let metrics = fusebox.metrics().await;
    let destination = blackhole.addr.to_string();
    assert_requests(&metrics, "default", &destination, "timeout", "5xx", 1.0);
    assert_attempts(&metrics, "default", &destination, Some("timeout"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_is_timeout_504() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let fusebox =
        TestFusebox::start(&[("default", &single_try("[timeouts]\nattempt = \"300ms\""))]).await;

    let started = std::time::Instant::now();
    let response = fusebox
        .app()
        .get(upstream.url("/slow"))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 504, "timeout", "default");
    assert!(
        elapsed >= Duration::from_millis(300),
        "not before the attempt timeout: {elapsed:?}"
    );
    assert_eq!(upstream.hits(), 1);

    let metrics = fusebox.metrics().await;
    let destination = upstream.authority();
    assert_requests(&metrics, "default", &destination, "timeout", "5xx", 1.0);
    assert_attempts(&metrics, "default", &destination, Some("timeout"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_or_resetting_before_the_head_is_upstream_reset_502() {
    for close in [true, false] {
        let builder = FakeUpstream::builder();
        let upstream = if close {
            builder.close_before_head()
        } else {
            builder.reset_before_head()
        }
        .start()
        .await;
        let fusebox = TestFusebox::start(&[("default", &single_try(""))]).await;

        let response = fusebox.app().get(upstream.url("/x")).send().await.unwrap();
        let response = RawResponse::from_reqwest(response).await;
        assert_local_reply(&response, 502, "upstream-reset", "default");
        assert_eq!(upstream.hits(), 1, "close={close}");

        let metrics = fusebox.metrics().await;
        let destination = upstream.authority();
        assert_requests(&metrics, "default", &destination, "reset", "5xx", 1.0);
        assert_attempts(&metrics, "default", &destination, Some("reset"), 1.0);
    }
}

// ---------------------------------------------------------------------------------------------
// denied 403

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_allow_false_denies_its_hosts() {
    let upstream = FakeUpstream::with_status(200).await;
    let other = FakeUpstream::with_status(200).await;
    let blocked = format!("hosts = [\"{}\"]\nallow = false\n", upstream.authority());
    let fusebox = TestFusebox::start(&[("default", ""), ("blocked", &blocked)]).await;

    let response = fusebox.app().get(upstream.url("/x")).send().await.unwrap();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 403, "denied", "blocked");

    let connect = format!(
        "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        host = upstream.authority()
    );
    let response = raw_exchange(&fusebox, &connect).await;
    assert_local_reply(&response, 403, "denied", "blocked");
    assert_eq!(upstream.connections(), 0, "denied before any connection");

    // Another destination is not affected.
    let response = fusebox.app().get(other.url("/y")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let metrics = fusebox.metrics().await;
    let destination = upstream.authority();
    assert_requests(&metrics, "blocked", &destination, "denied", "4xx", 2.0);
    assert_attempts(&metrics, "blocked", &destination, None, 0.0);
}

/// A name denied by a policy stays denied however the app spells it: upper case, or fully
/// qualified with a trailing dot (which resolves to the same address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_name_is_denied_in_every_spelling() {
    let upstream = FakeUpstream::with_status(200).await;
    let port = upstream.addr().port();
    // The policy names it fully qualified and in capitals: the same name.
    let blocked = "hosts = [\"LocalHost.\"]\nallow = false\n";
    let fusebox = TestFusebox::start(&[("default", ""), ("blocked", blocked)]).await;
    for host in ["localhost", "LocalHost", "localhost.", "LOCALHOST."] {
        let get = format!("GET http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        assert_local_reply(
            &raw_exchange(&fusebox, &get).await,
            403,
            "denied",
            "blocked",
        );
        let origin = format!("GET /x HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        assert_local_reply(
            &raw_exchange(&fusebox, &origin).await,
            403,
            "denied",
            "blocked",
        );
        let connect = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
        assert_local_reply(
            &raw_exchange(&fusebox, &connect).await,
            403,
            "denied",
            "blocked",
        );
    }
    assert_eq!(upstream.connections(), 0, "denied before any connection");
}

/// Every spelling of an IP address that resolvers accept is one address (#22, item 2): a deny
/// by IP is not walked around by writing it in decimal, short, hex, octal or IPv6 form, and a
/// policy that names its address in another spelling (hex here) still matches every one. A
/// number that is not an address is the app's mistake, not a host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_address_is_denied_in_every_spelling() {
    let upstream = FakeUpstream::with_status(200).await;
    let port = upstream.addr().port();
    let blocked = format!("hosts = [\"127.0.0.1:{port}\"]\nallow = false\n");
    let spelled = format!("hosts = [\"0x7F000001:{port}\"]\nallow = false\n");
    for (name, policy) in [("blocked", blocked), ("spelled", spelled)] {
        let fusebox = TestFusebox::start(&[("default", ""), (name, &policy)]).await;
        for host in [
            "127.0.0.1",
            "2130706433",
            "127.1",
            "127.0.1",
            "0x7f000001",
            "0X7F000001",
            "0x7f.1",
            "0177.0.0.1",
            "017700000001",
            "127.0.0.1.",
            "[::ffff:127.0.0.1]",
            "[::FFFF:7f00:1]",
            "[0:0:0:0:0:ffff:127.0.0.1]",
            "[::127.0.0.1]",
        ] {
            let get = format!("GET http://{host}:{port}/x HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
            let response = raw_exchange(&fusebox, &get).await;
            assert_eq!(response.status, 403, "{name}: {host}: {response:?}");
            assert_local_reply(&response, 403, "denied", name);
            let connect = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
            assert_local_reply(&raw_exchange(&fusebox, &connect).await, 403, "denied", name);
        }
        for host in ["127.0.0.256", "1.2.3.4.5", "0x100000000", "[fe80::1%25lo]"] {
            let get = format!("GET http://{host}:{port}/x HTTP/1.1\r\nHost: x\r\n\r\n");
            let response = raw_exchange(&fusebox, &get).await;
            assert_eq!(response.status, 400, "{host}: {response:?}");
        }
        fusebox.shutdown().await;
    }
    assert_eq!(upstream.connections(), 0, "denied before any connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_private_false_denies_loopback_destinations() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "allow_private = false\n")]).await;

    let response = fusebox.app().get(upstream.url("/x")).send().await.unwrap();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 403, "denied", "default");

    let connect = format!(
        "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        host = upstream.authority()
    );
    let response = raw_exchange(&fusebox, &connect).await;
    assert_local_reply(&response, 403, "denied", "default");

    // By name too: the check is on the address `localhost` resolves to.
    let by_name = format!("http://localhost:{}/x", upstream.addr().port());
    let response = fusebox.app().get(by_name).send().await.unwrap();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 403, "denied", "default");
    assert_eq!(upstream.connections(), 0, "denied before any connection");

    let metrics = fusebox.metrics().await;
    let destination = upstream.authority();
    assert_requests(&metrics, "default", &destination, "denied", "4xx", 2.0);
    assert_attempts(&metrics, "default", &destination, None, 0.0);
}

// ---------------------------------------------------------------------------------------------
// loop 508

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_get_508() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();

    // Through Via: learn the token from what the upstream saw, then send it back.
    app.get(upstream.url("/first")).send().await.unwrap();
    let via = upstream.last_request().unwrap().headers["via"]
        .to_str()
        .unwrap()
        .to_owned();
    let response = app
        .get(upstream.url("/again"))
        .header("via", via.as_str())
        .send()
        .await
        .unwrap();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 508, "loop", "default");
    // The same for a tunnel: CONNECT carrying our Via is refused before connecting.
    let response = raw_exchange(
        &fusebox,
        &format!(
            "CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nVia: {via}\r\n\r\n",
            host = upstream.authority()
        ),
    )
    .await;
    assert_local_reply(&response, 508, "loop", "default");
    assert_eq!(upstream.hits(), 1);
    assert_eq!(upstream.connections(), 1);

    // Through the destination address: fusebox's own egress listener, plain and CONNECT.
    let egress = fusebox.agent().egress_addr();
    let response = app.get(format!("http://{egress}/")).send().await.unwrap();
    let response = RawResponse::from_reqwest(response).await;
    assert_local_reply(&response, 508, "loop", "default");
    let response = raw_exchange(
        &fusebox,
        &format!("CONNECT {egress} HTTP/1.1\r\nHost: {egress}\r\n\r\n"),
    )
    .await;
    assert_local_reply(&response, 508, "loop", "default");
    // An origin-form request naming fusebox in Host (the app treating the proxy as a server).
    let response = raw_exchange(
        &fusebox,
        &format!("GET /status HTTP/1.1\r\nHost: {egress}\r\n\r\n"),
    )
    .await;
    assert_local_reply(&response, 508, "loop", "default");

    let metrics = fusebox.metrics().await;
    let destination = upstream.authority();
    assert_eq!(
        metric(
            &metrics,
            "fusebox_requests_total",
            &[
                ("destination", &destination),
                ("outcome", "loop"),
                ("code", "5xx")
            ]
        ),
        2.0,
        "{metrics}"
    );
    assert_requests(&metrics, "default", &egress.to_string(), "loop", "5xx", 3.0);
    assert_attempts(&metrics, "default", &egress.to_string(), None, 0.0);
}

/// fusebox's own listeners are a loop in every spelling of their address: IPv4-mapped and
/// IPv4-compatible IPv6, names, and the short, decimal, hex and octal IPv4 forms, as plain
/// requests and as CONNECT, egress and admin alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_listeners_are_loops_in_every_address_spelling() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    for own in [fusebox.agent().egress_addr(), fusebox.agent().admin_addr()] {
        let port = own.port();
        for host in [
            own.ip().to_string(),
            "[::ffff:127.0.0.1]".to_owned(),
            "[::ffff:7f00:1]".to_owned(),
            "[0:0:0:0:0:ffff:127.0.0.1]".to_owned(),
            "[::127.0.0.1]".to_owned(),
            // Names and the old inet_aton forms the resolver still accepts.
            "localhost".to_owned(),
            "LOCALHOST.".to_owned(),
            "127.1".to_owned(),
            "2130706433".to_owned(),
            "0x7f000001".to_owned(),
            "0177.0.0.1".to_owned(),
        ] {
            let get =
                format!("GET http://{host}:{port}/metrics HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
            let response = raw_exchange(&fusebox, &get).await;
            assert_eq!(response.status, 508, "GET via {host}:{port}: {response:?}");
            let connect = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
            let response = raw_exchange(&fusebox, &connect).await;
            assert_eq!(response.status, 508, "CONNECT {host}:{port}: {response:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// blame: an app's broken body is the app's fault

/// An app that sends a malformed chunked body gets `400 bad-request` (if its connection can
/// still carry an answer), and the upstream is not blamed: no failed attempt, no breaker
/// failure. Six such requests against `consecutive_failures = 5` leave the breaker closed for
/// every other app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_the_apps_fault_not_the_upstreams() {
    let upstream = FakeUpstream::with_status(200).await;
    let policy = format!(
        "hosts = [\"{}\"]\n[breaker]\nconsecutive_failures = 5\n[retry]\nattempts = 1\n",
        upstream.authority()
    );
    let fusebox = TestFusebox::start(&[("default", ""), ("api", &policy)]).await;
    let host = upstream.authority();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(fusebox.agent().egress_addr())
            .await
            .unwrap();
        let request = format!(
            "POST http://{host}/upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\nzz-not-a-size\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        // The app's connection may be closed or reset: only an answer, if any, is checked.
        if let Ok(Ok(_)) = read.await {
            let text = String::from_utf8_lossy(&answer);
            if !text.is_empty() {
                assert!(text.starts_with("HTTP/1.1 400"), "{text}");
                assert!(text.contains("x-fusebox-reason: bad-request"), "{text}");
            }
        }
    }
    let (status, reason) = {
        let response = fusebox
            .app()
            .get(upstream.url("/after"))
            .send()
            .await
            .unwrap();
        let reason = response
            .headers()
            .get("x-fusebox-reason")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), reason)
    };
    assert_eq!(
        (status, reason),
        (200, None),
        "the breaker must still be closed"
    );
    let metrics = fusebox.metrics().await;
    assert_eq!(
        metric(&metrics, "fusebox_breaker_state", &[("upstream", "api")]),
        0.0,
        "{metrics}"
    );
    for result in ["reset", "failure", "connect_failed", "timeout"] {
        let failed = metrics.lines().any(|l| {
            l.starts_with("fusebox_attempts_total")
                && l.contains(&format!("result=\"{result}\""))
                && !l.ends_with(" 0")
        });
        assert!(!failed, "an attempt was blamed as {result}:\n{metrics}");
    }
}

// ---------------------------------------------------------------------------------------------
// a half-open probe abandoned by the app

/// The `/upstreams` view of `destination` under policy `name`.
async fn breaker_view(fusebox: &TestFusebox, name: &str, destination: &str) -> serde_json::Value {
    let views = fusebox.upstreams(name).await;
    views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["destination"] == destination)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Polls `check` on the destination's view every 20 ms, for at most 10 s.
async fn wait_view(
    fusebox: &TestFusebox,
    destination: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..500 {
        let view = breaker_view(fusebox, "hole", destination).await;
        if check(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A CONNECT that is the half-open probe and is abandoned by the app while fusebox connects
/// must not leave the breaker half-open with its only probe slot taken (every other call then
/// got `breaker-open` until the `open_max` lease ran out): the dropped permit hands it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_tunnel_probe_does_not_wedge_the_breaker() {
    let blackhole = syn_blackhole()
        .await
        .expect("a full listen backlog drops SYNs on this kernel");
    let destination = blackhole.addr.to_string();
    let policy = format!(
        "hosts = [\"{destination}\"]\n[timeouts]\nconnect = \"300ms\"\nattempt = \"30s\"\n\
         total = \"60s\"\n[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 1\n\
         open_base = \"100ms\"\nopen_max = \"60s\"\n"
    );
    let fusebox = TestFusebox::start_with(
        policies_dir(&[("default", ""), ("hole", &policy)]),
        |config| config.jitter = false,
    )
    .await;
    let connect = format!("CONNECT {destination} HTTP/1.1\r\nHost: {destination}\r\n\r\n");

    // One connect timeout trips the breaker.
    let response = raw_exchange(&fusebox, &connect).await;
    assert_eq!(response.status, 504);
    wait_view(&fusebox, &destination, "the breaker to open", |v| {
        v["state"] == "open"
    })
    .await;
    // Once the open period is over, the next CONNECT is the probe; the app gives up on it
    // while fusebox is still connecting (the connect timeout is 300 ms).
    wait_view(&fusebox, &destination, "the next probe to be due", |v| {
        v["next_probe_in_ms"] == 0
    })
    .await;
    let mut app = RawConn::connect(fusebox.agent().egress_addr()).await;
    app.send(connect.as_bytes()).await;
    wait_view(&fusebox, &destination, "the probe to be admitted", |v| {
        v["state"] == "half-open"
    })
    .await;
    drop(app);

    // The abandoned try is recorded as such: no verdict on the upstream, and its probe slot
    // goes back to the breaker, so the next CONNECT is the probe (it times out: 504), not
    // turned away as `breaker-open` until the `open_max` lease runs out.
    wait_abandoned(&fusebox, "hole").await;
    let view = breaker_view(&fusebox, "hole", &destination).await;
    assert_eq!(
        (&view["state"], &view["in_flight"]),
        (&serde_json::json!("half-open"), &serde_json::json!(0)),
        "{view}"
    );
    let response = raw_exchange(&fusebox, &connect).await;
    assert_eq!(
        response.status, 504,
        "the next call is the probe: {response:?}"
    );
    let view = breaker_view(&fusebox, "hole", &destination).await;
    assert_eq!(view["reason"], "probe_failed", "{view}");
}

/// Waits until policy `upstream` has counted exactly one abandoned try.
async fn wait_abandoned(fusebox: &TestFusebox, upstream: &str) {
    let labels = [("upstream", upstream), ("result", "abandoned")];
    wait_metric(fusebox, "an abandoned try to be counted", |metrics| {
        metric(metrics, "fusebox_attempts_total", &labels) == 1.0
    })
    .await;
}

/// Polls `/metrics` every 20 ms until `check` holds, for at most 10 s.
async fn wait_metric(fusebox: &TestFusebox, what: &str, check: impl Fn(&str) -> bool) {
    for _ in 0..500 {
        if check(&fusebox.metrics().await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}:\n{}", fusebox.metrics().await);
}

/// A forwarded try the app walks away from (it hangs up while the upstream is still thinking)
/// is neither a success nor the upstream's failure: `result="abandoned"`, nothing in the
/// breaker's window, and the gate slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_the_app_abandons_is_counted_as_abandoned_not_as_a_failure() {
    let upstream = FakeUpstream::builder()
        .replies([Reply::Stall, Reply::Status(200)])
        .start()
        .await;
    let host = upstream.authority();
    let policy =
        format!("hosts = [\"{host}\"]\n[concurrency]\nmax_in_flight = 1\n[retry]\nattempts = 1\n");
    let fusebox = TestFusebox::start(&[("default", ""), ("api", &policy)]).await;
    let mut app = RawConn::connect(fusebox.agent().egress_addr()).await;
    let get = format!("GET http://{host}/slow HTTP/1.1\r\nHost: {host}\r\n\r\n");
    app.send(get.as_bytes()).await;
    upstream.wait_hits(1).await;
    drop(app);
    wait_abandoned(&fusebox, "api").await;
    let view = breaker_view(&fusebox, "api", &host).await;
    assert_eq!(view["window"]["calls"], 0, "nothing recorded: {view}");
    let next = fusebox
        .app()
        .get(upstream.url("/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(next.status(), 200, "the gate slot was given back");
}

// ---------------------------------------------------------------------------------------------
// bad-response 502

/// A response head fusebox cannot read (malformed, or larger than it buffers) is the
/// upstream's fault but not a reset: `502 bad-response`, a failed attempt, outcome
/// `bad_response`, and a breaker failure of kind `bad_response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_response_head_is_bad_response() {
    let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let heads = [
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        b"NOT-HTTP\r\n\r\n".to_vec(),
        // Which body is it? Ambiguous framing could smuggle a second response.
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc".to_vec(),
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n".to_vec(),
        huge,
    ];
    let fusebox = TestFusebox::start(&[("default", &single_try(""))]).await;
    for head in heads {
        let addr = raw_upstream(head, ThenUpstream::Close).await;
        let response = fusebox
            .app()
            .get(format!("http://{addr}/x"))
            .send()
            .await
            .unwrap();
        let response = RawResponse::from_reqwest(response).await;
        assert_local_reply(&response, 502, "bad-response", "default");
        let metrics = fusebox.metrics().await;
        let destination = addr.to_string();
        assert_requests(
            &metrics,
            "default",
            &destination,
            "bad_response",
            "5xx",
            1.0,
        );
        assert_attempts(&metrics, "default", &destination, Some("failure"), 1.0);
        let view = fusebox.upstreams("default").await;
        let kinds: Vec<_> = view[0]["recent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|failure| failure["kind"].clone())
            .collect();
        assert!(kinds.contains(&"bad_response".into()), "{view}");
    }
}

/// This host's address on a non-loopback interface, if it has one: the source address the
/// kernel picks for a route out (a UDP `connect` sends nothing).
fn a_non_loopback_address_of_this_host() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Listeners on `0.0.0.0` are reached through every address of the host, not only loopback:
/// the admin API and a tunnel to fusebox itself through the host's interface address are loops
/// (before, the admin answered `/metrics` and CONNECT opened a tunnel to the egress port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_on_all_addresses_are_loops_through_the_hosts_own_address() {
    let Some(ip) = a_non_loopback_address_of_this_host() else {
        // A host with loopback only has no such address to walk around the guard with.
        eprintln!("SKIPPED: this host has no non-loopback interface address");
        return;
    };
    let fusebox = TestFusebox::start_with(
        policies_dir(&[("default", "allow_private = true\n")]),
        |config| {
            config.listen = "0.0.0.0:0".parse().unwrap();
            config.admin = "0.0.0.0:0".parse().unwrap();
        },
    )
    .await;
    let host = std::net::SocketAddr::new(ip, fusebox.agent().admin_addr().port());
    let get = format!("GET http://{host}/metrics HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let response = raw_exchange(&fusebox, &get).await;
    assert_eq!(response.status, 508, "GET admin via {host}: {response:?}");
    let egress = std::net::SocketAddr::new(ip, fusebox.agent().egress_addr().port());
    let connect = format!("CONNECT {egress} HTTP/1.1\r\nHost: {egress}\r\n\r\n");
    let response = raw_exchange(&fusebox, &connect).await;
    assert_eq!(response.status, 508, "CONNECT {egress}: {response:?}");
}
