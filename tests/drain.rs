//! Graceful shutdown (the drain): `/readyz` turns 503, the listeners stop accepting, requests
//! and CONNECT tunnels in flight may finish within the drain timeout, then fusebox stops.
//!
//! Timing: the slow upstream here is gated, not delayed: it answers when the test opens the
//! gate, so "the request is still in flight while draining" holds however slow the machine
//! is. Elapsed times are checked from below (the drain timeout was waited for); upper bounds
//! are generous and only catch a shutdown that hangs.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use support::{direct_client, policies_dir, FakeUpstream, FuseboxProcess, TestFusebox};

/// How long a bounded poll or wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// Policies whose timeouts never end a request during these tests: only the drain does.
const PATIENT_DEFAULT: &str =
    "[timeouts]\nattempt = \"60s\"\ntotal = \"60s\"\n[retry]\nattempts = 1\n";

/// Polls `check` every 20 ms until it holds; panics after [`WAIT`].
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status of `GET {admin}/readyz`, `None` if the admin server did not answer.
async fn readyz(admin_url: &str) -> Option<u16> {
    let response = direct_client()
        .get(format!("{admin_url}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// Whether connecting to `addr` is refused (nothing listens there any more).
async fn refuses(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// An HTTP/1.1 upstream that reads each request head, then answers `200 gated` only once the
/// gate is open. Each connection serves one request.
struct GatedUpstream {
    addr: SocketAddr,
    received: watch::Receiver<u64>,
    gate: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl GatedUpstream {
    async fn start() -> GatedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (received_tx, received) = watch::channel(0u64);
        let received_tx = Arc::new(received_tx);
        let gate = Arc::new(watch::channel(false).0);
        let gate_for_task = Arc::clone(&gate);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(serve_gated(
                    stream,
                    Arc::clone(&received_tx),
                    gate_for_task.subscribe(),
                ));
            }
        });
        GatedUpstream {
            addr,
            received,
            gate,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until `n` request heads have arrived.
    async fn wait_received(&mut self, n: u64) {
        tokio::time::timeout(WAIT, self.received.wait_for(|&got| got >= n))
            .await
            .unwrap_or_else(|_| panic!("the gated upstream did not receive {n} requests"))
            .expect("the upstream task runs");
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for GatedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_gated(
    mut stream: TcpStream,
    received: Arc<watch::Sender<u64>>,
    mut gate: watch::Receiver<bool>,
) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    received.send_modify(|n| *n += 1);
    if gate.wait_for(|&open| open).await.is_err() {
        return;
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ngated\n")
        .await;
    let _ = stream.shutdown().await;
}

/// Reads one HTTP/1.1 response with a `content-length` from a raw stream: head and body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a response within the wait")
            .expect("read a response");
        assert!(n > 0, "connection closed before a full head: {bytes:?}");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("numeric content-length"))
        })
        .unwrap_or(0);
    let mut body = bytes[head_end..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a body within the wait")
            .expect("read a body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), length, "no bytes beyond the body");
    (head, body)
}

// ---------------------------------------------------------------------------------------------
// 6. Slow requests in flight finish; nothing new gets in.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_slow_requests_and_refuses_new_connections() {
    let mut upstream = GatedUpstream::start().await;
    let dir = policies_dir(&[("default", PATIENT_DEFAULT)]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.drain_timeout = Duration::from_secs(60);
    })
    .await;
    let (egress, admin) = (fusebox.agent().egress_addr(), fusebox.admin_url());
    assert_eq!(readyz(&admin).await, Some(200));

    let app = fusebox.app();
    let slow: Vec<_> = (0..3)
        .map(|i| {
            let request = app.get(upstream.url(&format!("/slow/{i}")));
            tokio::spawn(async move {
                let response = request.send().await.expect("a slow request gets an answer");
                let status = response.status().as_u16();
                let reason = response.headers().get("x-fusebox-reason").cloned();
                let body = response.text().await.expect("the slow body");
                (status, reason, body)
            })
        })
        .collect();
    upstream.wait_received(3).await;

    let shutdown = tokio::spawn(fusebox.shutdown());
    wait_for("/readyz to turn 503", || {
        let admin = admin.clone();
        async move { readyz(&admin).await == Some(503) }
    })
    .await;
    wait_for("the egress listener to refuse connections", || {
        refuses(egress)
    })
    .await;
    // The gate is closed: the three requests are in flight, and the drain waits for them.
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "no slow request finished yet"
    );
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the requests in flight"
    );
    assert_eq!(
        readyz(&admin).await,
        Some(503),
        "the admin server runs while draining"
    );

    upstream.open();
    for request in slow {
        let (status, reason, body) = tokio::time::timeout(WAIT, request)
            .await
            .expect("the slow request finishes once the upstream answers")
            .expect("request task");
        assert_eq!((status, reason, body.as_str()), (200, None, "gated\n"));
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returns once the requests in flight are done")
        .expect("shutdown task");
    let admin_addr: SocketAddr = admin
        .trim_start_matches("http://")
        .parse()
        .expect("admin address");
    wait_for("the admin listener to close after the drain", || {
        refuses(admin_addr)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6b. An open CONNECT tunnel keeps working during the drain, up to the drain timeout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_an_open_tunnel_working_until_the_drain_timeout() {
    let upstream = FakeUpstream::with_status(200).await;
    let drain_timeout = Duration::from_secs(1);
    let fusebox = TestFusebox::start_with(policies_dir(&[]), |config| {
        config.jitter = false;
        config.drain_timeout = drain_timeout;
    })
    .await;
    let (egress, admin) = (fusebox.agent().egress_addr(), fusebox.admin_url());

    let mut tunnel = TcpStream::connect(egress)
        .await
        .expect("connect to the egress listener");
    let target = upstream.authority();
    tunnel
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let (head, _) = read_response(&mut tunnel).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT answered {head:?}"
    );
    let request = format!("GET /through HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tunnel
        .write_all(request.as_bytes())
        .await
        .expect("send through the tunnel");
    let (head, body) = read_response(&mut tunnel).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "through the tunnel: {head:?}"
    );
    assert_eq!(body, b"fake upstream: 200 OK\n");

    let started = Instant::now();
    let shutdown = tokio::spawn(fusebox.shutdown());
    wait_for("/readyz to turn 503", || {
        let admin = admin.clone();
        async move { readyz(&admin).await == Some(503) }
    })
    .await;
    wait_for("the egress listener to refuse connections", || {
        refuses(egress)
    })
    .await;

    // Draining: the tunnel still carries requests.
    tunnel
        .write_all(request.as_bytes())
        .await
        .expect("send through the tunnel while draining");
    let (head, body) = read_response(&mut tunnel).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "through the tunnel while draining: {head:?}"
    );
    assert_eq!(body, b"fake upstream: 200 OK\n");
    assert_eq!(upstream.hits(), 2);

    // The tunnel stays open and idle: the drain ends at its timeout, not before.
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returns after the drain timeout despite the open tunnel")
        .expect("shutdown task");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= drain_timeout,
        "shutdown returned after {elapsed:?}, before the drain timeout {drain_timeout:?}, with a tunnel open"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The drain timeout bounds the wait for a request that never ends.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown_with_a_stalled_request() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let drain_timeout = Duration::from_millis(500);
    let fusebox =
        TestFusebox::start_with(policies_dir(&[("default", PATIENT_DEFAULT)]), |config| {
            config.jitter = false;
            config.drain_timeout = drain_timeout;
        })
        .await;
    let stalled = tokio::spawn(fusebox.app().get(upstream.url("/stall")).send());
    upstream.wait_hits(1).await;

    let started = Instant::now();
    tokio::time::timeout(WAIT, fusebox.shutdown())
        .await
        .expect("shutdown returns after the drain timeout, long before the stall ends");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= drain_timeout,
        "shutdown returned after {elapsed:?}, before the drain timeout {drain_timeout:?}"
    );
    stalled.abort();
}

// ---------------------------------------------------------------------------------------------
// 7a. What the drain timeout cut off is closed.

/// Once the drain timeout is over, `Agent::shutdown` closes what is still open (app
/// connections with a request in flight, tunnels) before it returns, so an embedded agent does
/// not keep serving them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_requests_and_tunnels_still_open() {
    let stalling = FakeUpstream::builder().stall().start().await;
    let echo = FakeUpstream::with_status(200).await;
    let fusebox =
        TestFusebox::start_with(policies_dir(&[("default", PATIENT_DEFAULT)]), |config| {
            config.jitter = false;
            config.drain_timeout = Duration::from_millis(500);
        })
        .await;
    let egress = fusebox.agent().egress_addr();
    let stalled = tokio::spawn(fusebox.app().get(stalling.url("/stall")).send());
    stalling.wait_hits(1).await;
    let mut tunnel = TcpStream::connect(egress)
        .await
        .expect("connect to the egress listener");
    let target = echo.authority();
    tunnel
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let (head, _) = read_response(&mut tunnel).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT answered {head:?}"
    );

    tokio::time::timeout(WAIT, fusebox.shutdown())
        .await
        .expect("shutdown returns after the drain timeout");

    let result = tokio::time::timeout(WAIT, stalled)
        .await
        .expect("the request cut off by the drain timeout ends")
        .expect("request task");
    assert!(
        result.is_err(),
        "the stalled request cannot have an answer: {result:?}"
    );
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, tunnel.read(&mut byte))
        .await
        .expect("the tunnel cut off by the drain timeout is closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "tunnel still open: {read:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7b. The same on the binary: SIGTERM, then the process exits at the drain timeout.

#[tokio::test]
async fn sigterm_drains_the_binary_and_exits_at_the_drain_timeout() {
    let upstream = FakeUpstream::builder().stall().start().await;
    let dir = policies_dir(&[("default", PATIENT_DEFAULT)]);
    let mut fusebox = FuseboxProcess::spawn(dir.path(), &["--drain-timeout", "500ms"], &[]).await;
    let app = support::app_client(&fusebox.egress_url());
    let stalled = tokio::spawn(app.get(upstream.url("/stall")).send());
    upstream.wait_hits(1).await;

    let started = Instant::now();
    let status = std::process::Command::new("/bin/kill")
        .args(["-TERM", &fusebox.pid().to_string()])
        .status()
        .expect("run /bin/kill");
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = fusebox.try_wait() {
            break exit;
        }
        assert!(
            started.elapsed() < WAIT,
            "fusebox still running {WAIT:?} after SIGTERM:\n{}",
            fusebox.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    assert!(
        exit.success(),
        "fusebox exited with {exit}:\n{}",
        fusebox.logs()
    );
    assert!(
        elapsed >= Duration::from_millis(500),
        "fusebox exited {elapsed:?} after SIGTERM, before its drain timeout"
    );
    // The request cut off by the drain timeout gets an error, not a hang.
    let result = tokio::time::timeout(WAIT, stalled)
        .await
        .expect("the stalled request ends with the process")
        .expect("request task");
    assert!(
        result.is_err(),
        "the stalled request cannot have an answer: {result:?}"
    );
}
