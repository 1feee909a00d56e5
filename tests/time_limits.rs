//! Every connection state has a time limit (docs/ARCHITECTURE.md §1, "Time limits", #22 item
//! 4): here, a request body that the app stops sending. The body is cut off after
//! `timeouts.idle` (or the try's time, when that ends first while the upstream waits for the
//! body), the upstream connection is closed, the gate slot freed, and the app gets `408` —
//! its own failure, never the upstream's breaker's.
//!
//! Real sockets on both sides: the app writes part of a body on a raw connection and stops;
//! the upstream reads whatever comes and reports when its connection ends.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use support::metrics::metric;
use support::raw::RawConn;
use support::{policies_dir, TestFusebox};

const PATIENCE: Duration = Duration::from_secs(10);

/// An upstream on loopback that, with an `answer`, writes it after the first bytes of each
/// connection (and then counts only what comes after); without one, never answers. Each
/// connection's bytes are reported when it ends.
async fn recording_upstream(answer: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                if !answer.is_empty() {
                    let _ = stream.read(&mut buf).await;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, answer).await;
                }
                let mut total = 0;
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    total += n;
                }
                let _ = ended.send(total);
            });
        }
    });
    (addr, ends)
}

/// An upstream that reads whatever arrives and never answers.
async fn swallowing_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    recording_upstream(b"").await
}

/// fusebox with one policy for `addr`: these `[timeouts]`, one request at a time, a breaker
/// that one failure would trip, and bodies over 1 KiB streamed rather than kept for replays.
async fn start(addr: SocketAddr, timeouts: &str) -> TestFusebox {
    let policy = format!(
        "hosts = [\"{addr}\"]\n[timeouts]\n{timeouts}\n[concurrency]\nmax_in_flight = 1\n\
         [breaker]\nconsecutive_failures = 1\n[retry]\nmax_replay_bytes = 1024\n"
    );
    TestFusebox::start_with(policies_dir(&[("api", &policy)]), |config| {
        config.jitter = false;
    })
    .await
}

/// Sends a request head promising `length` bytes (chunked when `None`) and `sent` of them.
async fn stalled_upload(
    fusebox: &TestFusebox,
    addr: SocketAddr,
    length: Option<usize>,
    sent: usize,
) -> RawConn {
    let mut app = RawConn::connect(fusebox.agent().egress_addr()).await;
    let framing = match length {
        Some(length) => format!("content-length: {length}"),
        None => "transfer-encoding: chunked".to_owned(),
    };
    let head = format!("POST http://{addr}/upload HTTP/1.1\r\nhost: {addr}\r\n{framing}\r\n\r\n");
    app.send(head.as_bytes()).await;
    let data = vec![b'x'; sent];
    match length {
        Some(_) => app.send(&data).await,
        None => app.send(format!("{sent:x}\r\n").as_bytes()).await,
    }
    if length.is_none() {
        app.send(&data).await;
        app.send(b"\r\n").await;
    }
    app
}

/// What must hold after the app's stalled body: a `408` that blames the app, the breaker
/// untouched, the request counted as a `timeout` in `4xx`, and the gate slot free again.
async fn assert_the_apps_failure(fusebox: &TestFusebox, app: &mut RawConn, says: &str) {
    let response = app.read_response().await;
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(response.header("x-fusebox-reason"), Some("timeout"));
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains(says), "{body}");
    let view = fusebox.upstreams("api").await;
    assert_eq!(
        view[0]["state"], "closed",
        "not the upstream's failure: {view}"
    );
    assert_eq!(
        view[0]["recent"].as_array().map(Vec::len),
        Some(0),
        "{view}"
    );
    let metrics = fusebox.metrics().await;
    let labels = [("upstream", "api"), ("outcome", "timeout"), ("code", "4xx")];
    assert_eq!(
        metric(&metrics, "fusebox_requests_total", &labels),
        1.0,
        "{metrics}"
    );
    let in_flight = metric(&metrics, "fusebox_in_flight", &[("upstream", "api")]);
    assert_eq!(in_flight, 0.0, "the gate slot is free: {metrics}");
}

/// A streamed body (over `max_replay_bytes`, or chunked) that stops is cut off after
/// `timeouts.idle`, although the attempt and total timeouts are far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_body_that_stalls_is_cut_off_after_the_idle_timeout() {
    for length in [Some(100_000), None] {
        let (addr, mut ends) = swallowing_upstream().await;
        let fusebox = start(addr, "idle = \"300ms\"\nattempt = \"30s\"\ntotal = \"60s\"").await;
        let started = Instant::now();
        let mut app = stalled_upload(&fusebox, addr, length, 2000).await;
        let says = "the app sent nothing of its request body for 300ms (timeouts.idle)";
        assert_the_apps_failure(&fusebox, &mut app, says).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        let upstream_read = tokio::time::timeout(PATIENCE, ends.recv()).await;
        let upstream_read = upstream_read
            .expect("the upstream connection is closed")
            .unwrap();
        assert!(
            upstream_read >= 2000,
            "the body went out as it came: {upstream_read}"
        );
        fusebox.shutdown().await;
    }
}

/// A body kept for replays (within `max_replay_bytes`) is read before any try: one that stops
/// gets its `408` after `timeouts.idle`, and nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayable_request_body_that_stalls_never_reaches_the_upstream() {
    let (addr, mut ends) = swallowing_upstream().await;
    let fusebox = start(addr, "idle = \"300ms\"\nattempt = \"30s\"\ntotal = \"60s\"").await;
    let mut app = stalled_upload(&fusebox, addr, Some(1000), 10).await;
    let says = "for 300ms (timeouts.idle) (the request was not sent upstream)";
    assert_the_apps_failure(&fusebox, &mut app, says).await;
    assert!(ends.try_recv().is_err(), "no connection to the upstream");
}

/// With a short attempt timeout, the try ends while the upstream is still waiting for the
/// body the app has not finished: the app's failure too, and not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_ends_waiting_for_the_apps_body_is_the_apps_failure() {
    let (addr, mut ends) = swallowing_upstream().await;
    let fusebox = start(addr, "attempt = \"300ms\"\ntotal = \"60s\"").await;
    let mut app = stalled_upload(&fusebox, addr, Some(100_000), 2000).await;
    let says = "had not finished sending its request body";
    assert_the_apps_failure(&fusebox, &mut app, says).await;
    tokio::time::timeout(PATIENCE, ends.recv())
        .await
        .expect("the upstream connection is closed");
    let metrics = fusebox.metrics().await;
    let retries = metric(&metrics, "fusebox_retries_total", &[("upstream", "api")]);
    assert_eq!(retries, 0.0, "{metrics}");
}

/// An upstream that answers every request with `101 Switching Protocols`.
async fn upgrading_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
    recording_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
}

/// A connection both sides upgraded (a WebSocket, say) is held to a tunnel's limits: silent
/// both ways for `timeouts.tunnel_idle`, it is closed on both sides and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_that_goes_quiet_is_closed_after_tunnel_idle() {
    let (addr, mut ends) = upgrading_upstream().await;
    let fusebox = start(addr, "tunnel_idle = \"300ms\"").await;
    let mut app = RawConn::connect(fusebox.agent().egress_addr()).await;
    let head = format!(
        "GET http://{addr}/chat HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
    );
    app.send(head.as_bytes()).await;
    let response = app.read_response().await;
    assert_eq!(response.status, 101, "{response:?}");
    app.send(b"hello").await;
    let started = Instant::now();
    assert!(app.is_closed().await, "the app's side is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let upstream_read = tokio::time::timeout(PATIENCE, ends.recv()).await;
    assert_eq!(
        upstream_read.expect("the upstream's side is closed"),
        Some(5)
    );
    let metrics = fusebox.metrics().await;
    let labels = [("upstream", "api"), ("kind", "tunnel_idle")];
    assert_eq!(
        metric(&metrics, "fusebox_stream_timeouts_total", &labels),
        1.0,
        "{metrics}"
    );
}

/// The admin listener bounds its connections too: one that sends nothing, or only part of a
/// request head, is closed after `--header-timeout`, as is a keep-alive connection left idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_closed_after_the_header_timeout() {
    let (addr, _ends) = swallowing_upstream().await;
    let policy = format!("hosts = [\"{addr}\"]\n");
    let fusebox = TestFusebox::start_with(policies_dir(&[("api", &policy)]), |config| {
        config.header_timeout = Duration::from_millis(300);
    })
    .await;
    let admin = fusebox.agent().admin_addr();
    let mut silent = RawConn::connect(admin).await;
    let mut partial = RawConn::connect(admin).await;
    partial
        .send(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await;
    let mut kept_alive = RawConn::connect(admin).await;
    kept_alive
        .send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await;
    assert_eq!(kept_alive.read_response().await.status, 200);
    let started = Instant::now();
    for conn in [&mut silent, &mut partial, &mut kept_alive] {
        assert!(conn.is_closed().await);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

/// An HTTP/2 app connection (here h2c on a route listener) with no request open is closed
/// after `--idle-timeout`: a GOAWAY, and the close once the app has had `--header-timeout` to
/// answer its PING (this app never answers anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_app_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let (addr, _ends) = swallowing_upstream().await;
    let policy = format!("listen = \"127.0.0.1:0\"\nendpoints = [\"{addr}\"]\n");
    let fusebox = TestFusebox::start_with(policies_dir(&[("route", &policy)]), |config| {
        config.header_timeout = Duration::from_millis(500);
        config.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let route = fusebox
        .agent()
        .route_addr("route")
        .expect("a route listener");
    let mut app = tokio::net::TcpStream::connect(route).await.unwrap();
    // The preface and an empty SETTINGS frame: a complete, valid HTTP/2 start.
    app.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, app.read_to_end(&mut seen))
        .await
        .expect("fusebox closes the connection")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // fusebox's SETTINGS came first, then a GOAWAY (frame type 7) before the close.
    assert!(seen.len() >= 9 && seen[3] == 4, "{seen:?}");
    assert!(
        seen.windows(4).any(|w| w == [0, 0, 8, 7]),
        "a GOAWAY frame (length 8, type 7): {seen:?}"
    );
}

/// A response the app takes nothing of (it never reads, so its socket stays full) holds the
/// connection no longer than `--idle-timeout`: fusebox closes the app connection, which frees
/// the gate slot and closes the upstream connection, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_app_does_not_read_is_cut_off_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, mut ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head).await;
        let endless = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n";
        let _ = stream.write_all(endless).await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        // Writes until fusebox stops reading, then waits in the write until it closes.
        while stream.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        let _ = ended.send(sent);
    });
    let policy = format!("hosts = [\"{addr}\"]\n[concurrency]\nmax_in_flight = 1\n");
    let fusebox = TestFusebox::start_with(policies_dir(&[("api", &policy)]), |config| {
        config.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let mut app = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    let request = format!("GET http://{addr}/big HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    app.write_all(request.as_bytes()).await.unwrap();
    // The app never reads. The upstream's connection ends once fusebox gives up on the app.
    let sent = tokio::time::timeout(Duration::from_secs(20), ends.recv())
        .await
        .expect("the upstream connection is closed")
        .unwrap();
    assert!(
        sent > 0,
        "the response went out until the app's socket was full"
    );
    let metrics = fusebox.metrics().await;
    let labels = [("kind", "response_unread")];
    assert_eq!(
        metric(&metrics, "fusebox_stream_timeouts_total", &labels),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "fusebox_in_flight", &[("upstream", "api")]),
        0.0,
        "{metrics}"
    );
    drop(app);
}
