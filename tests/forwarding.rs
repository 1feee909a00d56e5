//! The HTTP/1.1 forward proxy on the egress listener (docs/ARCHITECTURE.md §1, §5): absolute-form
//! and origin-form routing, hop-by-hop headers (RFC 9110 §7.6.1), `Via` and loop detection, CONNECT
//! tunnels, upstream connection pooling, streaming of large bodies, and protocol upgrades.
//!
//! Everything runs on real loopback sockets: reqwest is the app, `FakeUpstream` the upstream,
//! and raw `TcpStream`s are used where the exact bytes on the wire matter.

mod support;

use support::metrics::metric;
use support::raw::RawConn;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::{app_client_with_tls, download_byte, FakeUpstream, TestFusebox, TestPki};

/// Safety net for anything that should happen; never reached on a healthy run.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a TCP stream, for requests reqwest would not send as written.

// ---------------------------------------------------------------------------------------------
// Metrics text.

/// Polls `/metrics` until `check` holds (the gauge a closing tunnel lowers is updated after the
/// app's connection is gone, on fusebox's side of the race).
async fn wait_for_metrics(fusebox: &TestFusebox, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = fusebox.metrics().await;
        if check(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Routing and the request as the upstream sees it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_get_reaches_the_upstream_with_path_and_query() {
    let upstream = FakeUpstream::builder().body("hello from b").start().await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let response = fusebox
        .app()
        .get(upstream.url("/a/b?x=1&y=two"))
        .header("x-request-id", "r-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello from b");

    let seen = upstream
        .last_request()
        .expect("the upstream got the request");
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.uri, "/a/b?x=1&y=two",
        "origin-form toward the upstream"
    );
    assert_eq!(seen.headers["host"], upstream.authority());
    assert_eq!(seen.headers["x-request-id"], "r-1");
    assert_eq!(seen.body_len, 0);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_post_forwards_method_and_body() {
    let upstream = FakeUpstream::with_status(201).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let body = "name=fusebox&kind=proxy";
    let response = fusebox
        .app()
        .post(upstream.url("/items?draft=0"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/items?draft=0");
    assert_eq!(seen.body_len, body.len() as u64);
    assert_eq!(
        seen.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(seen.headers["content-length"], body.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_wins_over_a_different_host_header() {
    // RFC 9112 §3.2.2: a proxy that receives absolute-form ignores the received Host and
    // replaces it with the host of the request target.
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    let request = format!(
        "GET http://{}/h HTTP/1.1\r\nHost: somewhere-else.example\r\n\r\n",
        upstream.authority()
    );
    conn.send(request.as_bytes()).await;
    let response = conn.read_response().await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/h");
    assert_eq!(seen.headers["host"], upstream.authority());
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_streams_through() {
    let upstream = FakeUpstream::builder().echo().start().await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    let head = format!(
        "POST http://{host}/chunked HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n",
        host = upstream.authority()
    );
    conn.send(head.as_bytes()).await;
    conn.send(b"5\r\nhello\r\n").await;
    conn.send(b"7\r\n, world\r\n0\r\n\r\n").await;
    let response = conn.read_response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"hello, world");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_len, 12);

    // The connection is still in step for the next request.
    let request = format!(
        "GET http://{host}/next HTTP/1.1\r\nHost: {host}\r\n\r\n",
        host = upstream.authority()
    );
    conn.send(request.as_bytes()).await;
    assert_eq!(conn.read_response().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_form_with_host_is_routed_to_that_host() {
    let upstream = FakeUpstream::builder().body("origin-form ok").start().await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    let request = format!(
        "GET /x?q=1 HTTP/1.1\r\nHost: {}\r\nUser-Agent: raw\r\n\r\n",
        upstream.authority()
    );
    conn.send(request.as_bytes()).await;
    let response = conn.read_response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"origin-form ok");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/x?q=1");
    assert_eq!(seen.headers["host"], upstream.authority());

    // The connection stays usable for the next origin-form request.
    conn.send(request.as_bytes()).await;
    assert_eq!(conn.read_response().await.status, 200);
    assert_eq!(upstream.hits(), 2);
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop headers and Via.

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "proxy-authorization",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_removed_end_to_end_ones_kept() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    let request = format!(
        "GET http://{host}/hop HTTP/1.1\r\n\
         Host: {host}\r\n\
         Connection: keep-alive, X-Conn-Named\r\n\
         Connection: x-also-named\r\n\
         X-Conn-Named: secret\r\n\
         X-Also-Named: secret too\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Trailer: x-checksum\r\n\
         Upgrade: h2c\r\n\
         Authorization: Bearer end-to-end\r\n\
         Cache-Control: no-cache\r\n\
         X-End-To-End: kept\r\n\
         \r\n",
        host = upstream.authority()
    );
    conn.send(request.as_bytes()).await;
    let response = conn.read_response().await;
    assert_eq!(response.status, 200, "{response:?}");

    let seen = upstream.last_request().unwrap();
    for name in HOP_BY_HOP.iter().chain(&["x-conn-named", "x-also-named"]) {
        assert!(
            !seen.headers.contains_key(*name),
            "{name} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["authorization"], "Bearer end-to-end");
    assert_eq!(seen.headers["cache-control"], "no-cache");
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.headers["host"], upstream.authority());
    let via = seen.headers["via"].to_str().unwrap();
    assert!(
        via.starts_with("1.1 fusebox-"),
        "Via toward the upstream: {via:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed_end_to_end_ones_kept() {
    let upstream = FakeUpstream::builder()
        .header("Connection", "x-resp-named")
        .header("X-Resp-Named", "secret")
        .header("Keep-Alive", "timeout=5, max=100")
        .header("Proxy-Connection", "keep-alive")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("TE", "trailers")
        .header("Trailer", "x-checksum")
        .header("Upgrade", "h2c")
        .header("Cache-Control", "max-age=60")
        .header("X-End-To-End", "kept")
        .header("Via", "1.1 upstream-gateway")
        .start()
        .await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let response = fusebox.app().get(upstream.url("/r")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    for name in HOP_BY_HOP.iter().chain(&["x-resp-named"]) {
        assert!(
            !headers.contains_key(*name),
            "{name} reached the app: {headers:?}"
        );
    }
    assert_eq!(headers["cache-control"], "max-age=60");
    assert_eq!(headers["x-end-to-end"], "kept");
    let via: Vec<&str> = headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(via.len(), 2, "Via toward the app: {via:?}");
    assert_eq!(via[0], "1.1 upstream-gateway", "the upstream's Via is kept");
    assert!(via[1].starts_with("1.1 fusebox-"), "{via:?}");
    assert_eq!(response.text().await.unwrap(), "fake upstream: 200 OK\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_with_our_own_token_is_a_loop() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();

    // A first request shows the token this fusebox adds.
    app.get(upstream.url("/first")).send().await.unwrap();
    let via = upstream.last_request().unwrap().headers["via"]
        .to_str()
        .unwrap()
        .to_owned();
    let token = via.split_whitespace().nth(1).expect("Via has a pseudonym");
    assert!(token.starts_with("fusebox-"), "{via:?}");

    // Another proxy's entry alone is fine.
    let response = app
        .get(upstream.url("/other"))
        .header("via", "1.1 fusebox-00000000-not-us")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 2);

    // Our own entry, anywhere in the list, is a loop and is not forwarded.
    let response = app
        .get(upstream.url("/again"))
        .header("via", format!("1.0 corp-proxy, 1.1 {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 508);
    assert_eq!(response.headers()["x-fusebox-reason"], "loop");
    assert_eq!(response.headers()["x-fusebox-upstream"], "default");
    assert_eq!(upstream.hits(), 2, "a looped request is not forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_fusebox_itself_is_a_loop_not_forwarded() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();

    for target in [fusebox.egress_url(), fusebox.admin_url()] {
        let response = tokio::time::timeout(PATIENCE, app.get(format!("{target}/")).send())
            .await
            .expect("fusebox answers at once instead of recursing")
            .unwrap();
        assert_eq!(response.status(), 508, "{target}");
        assert_eq!(response.headers()["x-fusebox-reason"], "loop");
        let body = response.text().await.unwrap();
        assert!(body.starts_with("fusebox: loop: "), "{body:?}");
    }

    let metrics = fusebox.metrics().await;
    let egress = fusebox.agent().egress_addr().to_string();
    assert_eq!(
        metric(
            &metrics,
            "fusebox_requests_total",
            &[
                ("destination", &egress),
                ("outcome", "loop"),
                ("code", "5xx")
            ]
        ),
        1.0,
        "{metrics}"
    );
    // Refused before any connection was opened: no attempt was made.
    assert_eq!(
        metric(
            &metrics,
            "fusebox_attempts_total",
            &[("destination", &egress)]
        ),
        0.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// CONNECT tunnels.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_carries_tls_end_to_end() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .body("secret over tls")
        .tls(pki.server_config())
        .start()
        .await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = app_client_with_tls(&fusebox.egress_url(), pki.client_config());

    let response = app
        .get(upstream.https_url("/tls?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "secret over tls");
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.uri, "/tls?x=1");
    assert!(
        !seen.headers.contains_key("via"),
        "fusebox cannot see inside the tunnel"
    );

    let destination = format!("localhost:{}", upstream.addr().port());
    let active = |text: &str| {
        metric(
            text,
            "fusebox_tunnels_active",
            &[("destination", &destination)],
        )
    };
    // The app keeps its connection (and so the tunnel) alive for reuse.
    let metrics = fusebox.metrics().await;
    assert_eq!(active(&metrics), 1.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "fusebox_requests_total",
            &[
                ("destination", &destination),
                ("outcome", "ok"),
                ("code", "2xx")
            ]
        ),
        1.0,
        "{metrics}"
    );

    drop(app);
    wait_for_metrics(&fusebox, "the tunnel gauge to return to 0", |text| {
        active(text) == 0.0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Connections and streaming.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();

    for i in 0..5 {
        let response = app
            .get(upstream.url(&format!("/n/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.hits(), 5);
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests share one pooled upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_post_is_echoed_intact() {
    let upstream = FakeUpstream::builder().echo().start().await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 253) as u8)
        .collect();
    let response = fusebox
        .app()
        .post(upstream.url("/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.bytes().await.unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed[..] == body[..], "the echoed body differs");
    assert_eq!(upstream.last_request().unwrap().body_len, body.len() as u64);
}

/// A policy that keeps request bodies of 32 MiB (so they go on fusebox's own connections, not
/// streamed), with tries long enough that only a hang could time them out.
const KEEPS_32_MIB_BODIES: &str =
    "[retry]\nmax_replay_bytes = 67108864\n[timeouts]\nattempt = \"30s\"\ntotal = \"30s\"\n";

/// An upstream may answer a request before it has read its body (a 413, a 401), say it closes
/// the connection (RFC 9112 §9.6) and read no more. fusebox forwards that answer at once rather
/// than wait to write a body nobody reads (32 MiB, more than loopback's socket buffers hold),
/// and does not reuse the connection: its request was not sent whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_whole_request_body_is_forwarded_and_its_connection_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut early, _) = listener.accept().await.unwrap();
        read_head(&mut early).await;
        early
            .write_all(b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!")
            .await
            .unwrap();
        // The next request needs a connection of its own; this one is held, unread.
        let (mut fresh, _) = listener.accept().await.unwrap();
        let get = read_request(&mut fresh).await;
        assert!(get.starts_with("GET /next HTTP/1.1\r\n"), "{get}");
        fresh
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
            .await
            .unwrap();
        let _ = done_rx.await;
        drop(early);
    });
    let policy = KEEPS_32_MIB_BODIES;
    let fusebox = TestFusebox::start(&[("default", policy)]).await;
    let app = fusebox.app();

    let body = vec![b'x'; 32 * 1024 * 1024];
    let upload = app.put(format!("http://{addr}/upload")).body(body).send();
    let response = tokio::time::timeout(PATIENCE, upload)
        .await
        .expect("the upstream's early answer is forwarded without waiting for the body")
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.text().await.unwrap(), "too big!");

    let next = app.get(format!("http://{addr}/next")).send();
    let response = tokio::time::timeout(PATIENCE, next)
        .await
        .expect("the next request goes out on a new connection")
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "fresh");
    done_tx.send(()).unwrap();
}

/// An upstream that answers as it reads (its head first, then the body echoed back while it
/// comes in) keeps the connection open: fusebox writes the whole request body (32 MiB, more than
/// loopback's socket buffers hold) while it reads the answer, and forwards all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_as_it_reads_gets_the_whole_body() {
    const LEN: usize = 32 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        read_head(&mut reader).await;
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n");
        writer.write_all(answer.as_bytes()).await.unwrap();
        let mut echoed = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while echoed < LEN {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "the body broke off after {echoed} bytes");
            writer.write_all(&buf[..n]).await.unwrap();
            echoed += n;
        }
    });
    let policy = KEEPS_32_MIB_BODIES;
    let fusebox = TestFusebox::start(&[("default", policy)]).await;

    let body: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let exchange = async {
        let response = fusebox
            .app()
            .put(format!("http://{addr}/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap()
    };
    let echoed = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the whole body went out while the answer came in");
    assert_eq!(echoed.len(), LEN);
    assert!(echoed[..] == body[..], "the echoed body differs");
}

/// An upstream that answers early with keep-alive and never reads the upload (#22, item 8):
/// once its answer outgrows what fusebox reads ahead (here 24 MiB against a 16 MiB upload),
/// the upload stops and the answer is forwarded whole — it became a 504 when the attempt
/// timeout ended the blocked write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_keep_alive_answer_that_outgrows_the_read_ahead_is_forwarded_whole() {
    const ANSWER: usize = 24 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {ANSWER}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let body: Vec<u8> = (0..ANSWER).map(|i| (i % 253) as u8).collect();
        stream.write_all(&body).await.unwrap();
        // The upload is never read; the connection stays open until the test ends.
        let _ = done_rx.await;
    });
    let policy =
        "[retry]\nmax_replay_bytes = 67108864\n[timeouts]\nattempt = \"5s\"\ntotal = \"30s\"\n";
    let fusebox = TestFusebox::start(&[("default", policy)]).await;
    let upload = vec![b'u'; 16 * 1024 * 1024];
    let exchange = async {
        let response = fusebox
            .app()
            .put(format!("http://{addr}/upload"))
            .body(upload)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        response.bytes().await.unwrap()
    };
    let answer = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the answer is forwarded without waiting for the upload");
    assert_eq!(answer.len(), ANSWER);
    assert!(
        answer
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 253) as u8),
        "intact"
    );
    done_tx.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_mebibyte_download_arrives_intact() {
    const LEN: u64 = 10 * 1024 * 1024;
    let upstream = FakeUpstream::builder().download(LEN).start().await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let response = fusebox
        .app()
        .get(upstream.url("/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, LEN);
    if let Some(offset) = (0..LEN).find(|&i| bytes[i as usize] != download_byte(i)) {
        panic!("byte {offset} of the download is wrong");
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol upgrade (Connection: upgrade) through the L7 path.

/// A one-connection upstream that answers 101 to the first request and then echoes raw bytes.
/// Returns its address and a task yielding the request head it received.
async fn upgrade_echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_request(&mut stream).await;
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n",
            )
            .await
            .unwrap();
        let (mut read, mut write) = stream.split();
        let _ = tokio::io::copy(&mut read, &mut write).await;
        head
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_switches_protocols_and_splices_bytes() {
    let (addr, upstream) = upgrade_echo_upstream().await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;

    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    let request = format!(
        "GET http://{addr}/up HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n"
    );
    conn.send(request.as_bytes()).await;
    let response = conn.read_response().await;
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(response.header("upgrade"), Some("test"));
    assert!(response
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")));

    // Now raw bytes both ways.
    for message in [&b"ping\n"[..], b"\x00\x01binary\xff"] {
        conn.send(message).await;
        let echoed = conn.take_exact(message.len()).await;
        assert_eq!(echoed, message);
    }
    conn.stream.shutdown().await.unwrap();
    let head = tokio::time::timeout(PATIENCE, upstream)
        .await
        .expect("the upstream sees the tunnel close")
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("get /up http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: test\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nvia: 1.1 fusebox-"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_follow_pool_max_idle() {
    // Default: one kept-alive upstream connection serves every request in turn.
    let upstream = FakeUpstream::with_status(200).await;
    let policy = format!("hosts = [\"{}\"]\n", upstream.authority());
    let fusebox = TestFusebox::start(&[("api", &policy)]).await;
    for _ in 0..3 {
        let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.connections(), 1, "reused from the pool");

    // pool_max_idle = 0: nothing is kept, every request opens its own connection.
    let upstream = FakeUpstream::with_status(200).await;
    let policy = format!(
        "hosts = [\"{}\"]\npool_max_idle = 0\n",
        upstream.authority()
    );
    let fusebox = TestFusebox::start(&[("api", &policy)]).await;
    for _ in 0..3 {
        let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
        response.bytes().await.unwrap();
    }
    assert_eq!(upstream.connections(), 3, "no idle connection kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_idle_for_pool_idle_timeout_are_closed() {
    let upstream = FakeUpstream::with_status(200).await;
    let policy = format!(
        "hosts = [\"{}\"]\npool_idle_timeout = \"30s\"\n",
        upstream.authority()
    );
    let fusebox = TestFusebox::start(&[("api", &policy)]).await;
    let get = || async {
        let response = fusebox.app().get(upstream.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    };
    get().await;
    let idle = |view: serde_json::Value| view[0]["idle_connections"].as_u64();
    assert_eq!(idle(fusebox.upstreams("api").await), Some(1));
    let labels = [("upstream", "api"), ("destination", &*upstream.authority())];
    let metrics = fusebox.metrics().await;
    assert_eq!(
        metric(&metrics, "fusebox_upstream_idle_connections", &labels),
        1.0
    );
    // The upkeep's clock, moved on: 29 s of rest keeps the connection, 31 s closes it.
    let now = tokio::time::Instant::now();
    fusebox
        .agent()
        .close_idle_connections(now + Duration::from_secs(29));
    get().await;
    assert_eq!(upstream.connections(), 1, "rested 29 s of 30: reused");
    fusebox
        .agent()
        .close_idle_connections(now + Duration::from_secs(31));
    assert_eq!(idle(fusebox.upstreams("api").await), Some(0));
    let labels = [("upstream", "api"), ("destination", &*upstream.authority())];
    let metrics = fusebox.metrics().await;
    assert!(metrics.contains("fusebox_upstream_idle_connections{"));
    assert_eq!(
        metric(&metrics, "fusebox_upstream_idle_connections", &labels),
        0.0
    );
    get().await;
    assert_eq!(upstream.connections(), 2, "rested 31 s of 30: closed");
}

/// Reads a request head, to its blank line, off `stream`.
async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "connection closed inside the request head");
        head.push(byte[0]);
    }
    head
}

/// Reads one request (head, and a body of `Content-Length`) off `stream`.
async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
    let mut request = read_head(stream).await;
    let head = String::from_utf8(request.clone())
        .unwrap()
        .to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    request.extend_from_slice(&body);
    String::from_utf8(request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_the_upstream_closed_is_not_used_and_a_post_goes_out_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let upstream = tokio::spawn(async move {
        // The first connection answers one request as if it stayed open, then closes.
        let (mut first, _) = listener.accept().await.unwrap();
        let get = read_request(&mut first).await;
        first
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        drop(first);
        closed_tx.send(()).unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let post = read_request(&mut second).await;
        second
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            .await
            .unwrap();
        (get, post)
    });
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();

    let response = app.get(format!("http://{addr}/a")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    closed_rx.await.unwrap();
    let response = app
        .post(format!("http://{addr}/b"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "second");

    let (get, post) = tokio::time::timeout(PATIENCE, upstream)
        .await
        .expect("the upstream saw both requests")
        .unwrap();
    assert!(get.starts_with("GET /a HTTP/1.1\r\n"), "{get}");
    assert!(post.starts_with("POST /b HTTP/1.1\r\n"), "{post}");
    assert!(post.ends_with("\r\n\r\npayload"), "{post}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_after_responses_without_a_body() {
    let upstream = FakeUpstream::with_status(204).await;
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();
    for path in ["/a", "/b"] {
        let response = app.get(upstream.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let response = app.head(upstream.url("/c")).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        upstream.connections(),
        1,
        "a response without a body gives its connection back at once"
    );
}

/// fusebox reads upstream responses itself on cleartext HTTP/1.1 (RFC 9112 framing): each way
/// a body can be delimited arrives whole, interim answers are skipped, and a body cut short
/// ends the app's response with an error rather than passing as complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_arrive_whole_however_the_upstream_frames_them() {
    use support::raw::{raw_upstream, ThenUpstream};
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "chunked, with an extension and trailers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
            "hello world",
        ),
        (
            "HTTP/1.0 without a length: until the upstream closes",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
            "until close",
        ),
        (
            "an interim 100 first",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "ok",
        ),
        (
            "chunked wins over Content-Length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "ok",
        ),
    ];
    for (case, answer, body) in cases {
        let addr = raw_upstream(answer.to_vec(), ThenUpstream::Close).await;
        let response = app.get(format!("http://{addr}/")).send().await;
        let response = response.unwrap_or_else(|e| panic!("{case}: {e:?}"));
        assert_eq!(response.status(), 200, "{case}");
        assert_eq!(response.text().await.unwrap(), body, "{case}");
    }
    // A body cut short: the upstream sends its head and a first chunk, waits until the app has
    // the head, then closes. (Chunked: a `Content-Length` body cut short would also be caught
    // by hyper's server, which counts what it forwards.)
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (head_seen_tx, head_seen_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshort\r\n")
            .await
            .unwrap();
        let _ = head_seen_rx.await;
    });
    let response = app.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    head_seen_tx.send(()).unwrap();
    assert!(
        response.bytes().await.is_err(),
        "a body cut short is not passed on as complete"
    );
}

/// An upstream that says how long it keeps idle connections (`Keep-Alive: timeout=`) is
/// believed (#22, item 9): a connection is not taken again near that limit, where a request
/// would cross the upstream's close. Here `timeout=0`: the upstream closes any connection a
/// second request arrives on, without answering, so a POST sent on the old connection would be
/// lost (a `502`, never resent); fusebox opens a new one for it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_s_keep_alive_timeout_is_honoured() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        let mut requests = Vec::new();
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().await.unwrap();
            requests.push(read_request(&mut conn).await);
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=0\r\nContent-Length: 2\r\n\r\nok",
            )
            .await
            .unwrap();
            // A second request on this connection is dropped with it, unanswered.
            tokio::spawn(async move {
                let mut rest = [0u8; 1024];
                let _ = conn.read(&mut rest).await;
            });
        }
        requests
    });
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let app = fusebox.app();
    for path in ["/a", "/b"] {
        let response = app
            .post(format!("http://{addr}{path}"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}: {response:?}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let requests = tokio::time::timeout(PATIENCE, upstream)
        .await
        .expect("two connections, one request each")
        .unwrap();
    assert!(
        requests[1].starts_with("POST /b HTTP/1.1\r\n"),
        "{requests:?}"
    );
}
