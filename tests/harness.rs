//! Tests of the test harness itself: each fake-upstream behaviour, checked directly (no
//! fusebox in between) with reqwest and, where the socket-level detail matters, raw sockets.
//!
//! Only the parts of `tests/support/` that do not need the fusebox library are included, so
//! this suite stays usable while the agent is being changed.

#[allow(dead_code)]
#[path = "support/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "support/tls.rs"]
mod tls;
#[allow(dead_code)]
#[path = "support/upstream.rs"]
mod upstream;

use std::io::ErrorKind;
use std::time::Duration;

use app::{direct_client, direct_client_with_tls};
use tls::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use upstream::{download_byte, refused_addr, FakeUpstream, Reply};

/// Sends a raw HTTP/1.1 GET and reads until the server closes or resets the connection.
async fn raw_get(upstream: &FakeUpstream) -> (Vec<u8>, std::io::Result<usize>) {
    let mut stream = TcpStream::connect(upstream.addr()).await.unwrap();
    let request = format!(
        "GET /raw HTTP/1.1\r\nHost: {}\r\n\r\n",
        upstream.authority()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return (received, Ok(0)),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => return (received, Err(e)),
        }
    }
}

#[tokio::test]
async fn status_sequence_advances_and_last_repeats() {
    let upstream = FakeUpstream::builder()
        .statuses(&[503, 200])
        .header("Retry-After", "1")
        .start()
        .await;
    let client = direct_client();

    let first = client.get(upstream.url("/a?x=1")).send().await.unwrap();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "1");
    assert_eq!(
        first.text().await.unwrap(),
        "fake upstream: 503 Service Unavailable\n"
    );
    for _ in 0..2 {
        let next = client.get(upstream.url("b")).send().await.unwrap();
        assert_eq!(next.status(), 200);
    }
    assert_eq!(upstream.hits(), 3);
    assert_eq!(upstream.last_request().unwrap().uri, "/b");
}

#[tokio::test]
async fn records_the_last_request() {
    let upstream = FakeUpstream::builder().body("custom").start().await;
    let response = direct_client()
        .post(upstream.url("/upload?id=7"))
        .header("x-test", "yes")
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "custom");

    let request = upstream.last_request().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri, "/upload?id=7");
    assert_eq!(request.headers["x-test"], "yes");
    assert_eq!(request.body_len, 1000);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn routes_have_their_own_scripts_and_scripts_can_change() {
    let upstream = FakeUpstream::builder()
        .status(500)
        .route("/health", [Reply::Status(204)])
        .start()
        .await;
    let client = direct_client();
    let status = |path: &'static str| {
        let request = client.get(upstream.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };

    assert_eq!(status("/health").await, 204);
    assert_eq!(status("/other").await, 500);
    upstream.set_statuses(&[502, 200]);
    assert_eq!(status("/other").await, 502);
    assert_eq!(status("/other").await, 200);
    assert_eq!(status("/health").await, 204);
}

#[tokio::test]
async fn delay_is_respected() {
    let delay = Duration::from_millis(200);
    let upstream = FakeUpstream::builder()
        .replies([Reply::Status(200).after(delay), Reply::Status(204)])
        .start()
        .await;
    let client = direct_client();

    let started = Instant::now();
    let slow = client.get(upstream.url("/")).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    assert!(started.elapsed() >= delay, "answered before the delay");

    let started = Instant::now();
    let fast = client.get(upstream.url("/")).send().await.unwrap();
    assert_eq!(fast.status(), 204);
    assert!(
        started.elapsed() < delay,
        "the delay applies to the first reply only"
    );
}

#[tokio::test]
async fn stall_never_answers() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let result = direct_client()
        .get(upstream.url("/"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    let error = result.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn shutdown_closes_stalled_connections() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let addr = upstream.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    upstream.wait_hits(1).await;

    upstream.shutdown().await;
    let mut buf = [0; 64];
    let read = stream.read(&mut buf).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn reset_mid_body_is_a_body_error() {
    let upstream = FakeUpstream::builder().reset_mid_body().start().await;
    let response = direct_client().get(upstream.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(64 * 1024));
    let error = response.bytes().await.unwrap_err();
    assert!(error.is_body() || error.is_decode(), "{error:?}");
}

#[tokio::test]
async fn reset_mid_body_is_a_tcp_reset() {
    let upstream = FakeUpstream::builder()
        .replies([Reply::ResetMidBody {
            promised: 5000,
            sent: 100,
        }])
        .start()
        .await;
    let (received, end) = raw_get(&upstream).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-length: 5000"), "{text}");
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn close_before_head_is_a_request_error() {
    let upstream = FakeUpstream::builder().close_before_head().start().await;
    let error = direct_client()
        .get(upstream.url("/"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_request() && !error.is_timeout(), "{error:?}");
    assert_eq!(upstream.hits(), 1);

    let (received, end) = raw_get(&upstream).await;
    assert!(received.is_empty());
    assert_eq!(end.unwrap(), 0, "a FIN, not a reset");
}

#[tokio::test]
async fn reset_before_head_is_a_tcp_reset() {
    let upstream = FakeUpstream::builder().reset_before_head().start().await;
    let (received, end) = raw_get(&upstream).await;
    assert!(received.is_empty());
    assert_eq!(end.unwrap_err().kind(), ErrorKind::ConnectionReset);

    let error = direct_client()
        .get(upstream.url("/"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_request(), "{error:?}");
}

#[tokio::test]
async fn refused_addr_refuses() {
    let addr = refused_addr().await;
    let error = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn echo_returns_the_body() {
    let upstream = FakeUpstream::builder().echo().start().await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 13) as u8).collect();
    let response = direct_client()
        .put(upstream.url("/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), body);
    assert_eq!(upstream.last_request().unwrap().body_len, 1_000_000);
}

#[tokio::test]
async fn large_download_arrives_complete() {
    const LEN: u64 = 10 * 1024 * 1024;
    let upstream = FakeUpstream::builder().download(LEN).start().await;
    let mut response = direct_client()
        .get(upstream.url("/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.content_length(), Some(LEN));
    let mut offset = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        for &byte in chunk.iter() {
            assert_eq!(byte, download_byte(offset), "byte {offset}");
            offset += 1;
        }
    }
    assert_eq!(offset, LEN);
}

#[tokio::test]
async fn tls_upstream_is_trusted_only_through_the_test_ca() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .status(201)
        .tls(pki.server_config())
        .start()
        .await;

    let trusting = direct_client_with_tls(pki.client_config());
    let response = trusting.get(upstream.https_url("/s")).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(upstream.last_request().unwrap().uri, "/s");

    let other_ca = TestPki::new();
    let untrusting = direct_client_with_tls(other_ca.client_config());
    let error = untrusting
        .get(upstream.https_url("/s"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn wrong_certificate_fails_verification() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.wrong_server_config())
        .start()
        .await;
    let error = direct_client_with_tls(pki.client_config())
        .get(upstream.https_url("/"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn tls_upstream_speaks_h2_when_offered() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .echo()
        .tls(pki.server_config_h2())
        .start()
        .await;
    let mut config = pki.client_config();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let response = direct_client_with_tls(config)
        .post(upstream.https_url("/"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.text().await.unwrap(), "over h2");
}

#[tokio::test]
async fn ca_is_written_as_pem() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let path = pki.write_ca(dir.path());
    let pem = std::fs::read_to_string(path).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(pem, pki.ca_pem());
}
