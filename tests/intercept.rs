//! HTTPS interception (docs/ARCHITECTURE.md §13): an app with only a proxy set and fusebox's CA
//! trusted calls `https://` URLs; with `intercept = true` each request inside its `CONNECT`
//! gets the pipeline (retries, breaker, metrics), while fusebox originates TLS to a real TLS
//! upstream whose own test CA is the policy's `ca_file`. The apps are reqwest and curl.

mod support;

use std::path::Path;

use fusebox::ca::LocalCa;
use support::metrics::metric;
use support::peers;
use support::tls::TestPki;
use support::{curl_async, policies_dir, FakeUpstream, TestFusebox};

/// fusebox with a fresh local CA and policy `api` = `intercept = true` for `localhost:{port}`
/// of `upstream`, plus `extra` policy text.
async fn start(pki: &TestPki, upstream: &FakeUpstream, extra: &str) -> (TestFusebox, String) {
    let port = upstream.addr().port();
    let policy = format!(
        "hosts = [\"localhost:{port}\"]\nintercept = true\nca_file = \"test-ca.pem\"\n{extra}"
    );
    let dir = policies_dir(&[("default", ""), ("api", &policy)]);
    pki.write_ca(dir.path());
    let ca_dir = dir.path().join("fusebox-ca");
    LocalCa::init(&ca_dir, false, std::time::SystemTime::now()).unwrap();
    let ca_pem = ca_dir.join("ca.pem").to_str().unwrap().to_owned();
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.ca_dir = Some(ca_dir);
    })
    .await;
    (fusebox, ca_pem)
}

/// A reqwest app that trusts the fusebox CA in `ca_pem` (and nothing else).
fn app(fusebox: &TestFusebox, ca_pem: &str) -> reqwest::Client {
    app_alpn(fusebox, ca_pem, &[b"http/1.1"])
}

/// The same app, offering these ALPN protocols.
fn app_alpn(fusebox: &TestFusebox, ca_pem: &str, alpn: &[&[u8]]) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    support::tls::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(Path::new(ca_pem)).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    support::app_client_with_tls(&fusebox.egress_url(), tls)
}

fn count(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(metrics, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_through_an_intercepted_connect_are_retried_per_request() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .statuses(&[503, 503, 200])
        .body("inside")
        .start()
        .await;
    let (fusebox, ca_pem) = start(&pki, &upstream, "[retry]\nattempts = 3\n").await;
    let url = format!("https://localhost:{}/pay", upstream.addr().port());
    let response = app(&fusebox, &ca_pem).get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "inside");
    assert_eq!(
        upstream.hits(),
        3,
        "two 503s retried inside the TLS session"
    );
    assert_eq!(upstream.last_request().unwrap().uri, "/pay");

    // An app that offers HTTP/2 speaks it to fusebox, inside the same pipeline.
    upstream.set_replies([support::Reply::Status(503), support::Reply::Status(200)]);
    let h2 = app_alpn(&fusebox, &ca_pem, &[b"h2"]);
    let response = h2.get(&url).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200, "retried over h2 too");
    assert_eq!(upstream.hits(), 5);

    let view = fusebox.upstreams("api").await;
    assert_eq!(view[0]["intercept"], true, "{view}");

    let metrics = fusebox.metrics().await;
    let destination = format!("localhost:{}", upstream.addr().port());
    let api = [("upstream", "api"), ("destination", destination.as_str())];
    let with = |extra: (&'static str, &'static str)| {
        let mut labels = api.to_vec();
        labels.push(extra);
        labels
    };
    assert_eq!(
        count(&metrics, "fusebox_requests_total", &with(("outcome", "ok"))),
        2.0,
        "one request counted, not one tunnel:\n{metrics}"
    );
    assert_eq!(
        count(&metrics, "fusebox_retries_total", &api),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            &metrics,
            "fusebox_intercepted_connections_total",
            &with(("result", "ok"))
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_interception_trips_the_breaker_and_reads_the_local_reply_inside_tls() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .status(503)
        .start()
        .await;
    let (fusebox, ca_pem) = start(
        &pki,
        &upstream,
        "[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 2\nopen_base = \"60s\"\n",
    )
    .await;
    let url = format!("https://localhost:{}/", upstream.addr().port());
    let proxy = fusebox.egress_url();
    let curl = |ca: Option<String>| {
        let (proxy, url) = (proxy.clone(), url.clone());
        async move {
            let mut args = vec!["-i".to_owned(), "--proxy".to_owned(), proxy];
            if let Some(ca) = ca {
                args.extend(["--cacert".to_owned(), ca]);
            }
            args.push(url);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl_async(&args).await
        }
    };
    for _ in 0..2 {
        let out = curl(Some(ca_pem.clone())).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(" 503"), "the upstream's 503: {text}");
    }
    let out = curl(Some(ca_pem.clone())).await;
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        text.contains(" 503") && text.contains("x-fusebox-reason: breaker-open"),
        "the breaker answers inside TLS: {text}"
    );
    assert_eq!(upstream.hits(), 2);

    // An app that does not trust fusebox's CA refuses its certificate; fusebox counts it.
    let out = curl(None).await;
    assert!(!out.status.success(), "untrusted CA must fail: {out:?}");
    let metrics = fusebox.metrics().await;
    assert_eq!(
        count(
            &metrics,
            "fusebox_intercepted_connections_total",
            &[("upstream", "api"), ("result", "ca_rejected")]
        ),
        1.0,
        "{metrics}"
    );
}

/// A real app of another language, configured only by its environment.
#[derive(Clone, Copy)]
enum PeerApp {
    /// Python `requests`, trusting fusebox's CA through `REQUESTS_CA_BUNDLE`.
    PythonRequests,
    /// Node's `https`, trusting it through `NODE_EXTRA_CA_CERTS`.
    Node,
}

impl PeerApp {
    /// GETs `url` `count` times with only `HTTPS_PROXY` = fusebox and the trust variable =
    /// fusebox's CA; one line per answer: `"<status> <x-fusebox-reason or -> <body>"`.
    async fn get(self, fusebox: &TestFusebox, ca_pem: &str, url: &str, count: u32) -> Vec<String> {
        let (program, script, trust) = match self {
            PeerApp::PythonRequests => (peers::python(), "https_get.py", "REQUESTS_CA_BUNDLE"),
            PeerApp::Node => (peers::node(), "https_get.js", "NODE_EXTRA_CA_CERTS"),
        };
        let mut command = peers::hermetic(&program);
        command
            .arg(peers::peer_script(script))
            .arg(url)
            .arg(count.to_string())
            .env("HTTPS_PROXY", fusebox.egress_url())
            .env(trust, ca_pem);
        peers::output(command)
            .await
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_with_only_https_proxy_and_the_ca_bundle_gets_retries() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .statuses(&[503, 503, 200])
        .body("inside")
        .start()
        .await;
    let (fusebox, ca_pem) = start(&pki, &upstream, "[retry]\nattempts = 3\n").await;
    let url = format!("https://localhost:{}/pay", upstream.addr().port());
    let lines = PeerApp::PythonRequests
        .get(&fusebox, &ca_pem, &url, 1)
        .await;
    assert_eq!(lines, ["200 - inside"]);
    assert_eq!(
        upstream.hits(),
        3,
        "two 503s retried inside the TLS session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_only_https_proxy_and_extra_ca_certs_reads_the_breakers_reply() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .status(503)
        .start()
        .await;
    let extra = "[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 2\nopen_base = \"60s\"\n";
    let (fusebox, ca_pem) = start(&pki, &upstream, extra).await;
    let url = format!("https://localhost:{}/", upstream.addr().port());
    let lines = PeerApp::Node.get(&fusebox, &ca_pem, &url, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("503 - "),
        "the upstream's 503: {lines:?}"
    );
    assert!(lines[1].starts_with("503 - "), "{lines:?}");
    assert!(
        lines[2].starts_with("503 breaker-open fusebox: breaker-open: "),
        "the breaker's reply, read inside TLS: {lines:?}"
    );
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_a_504_timeout_inside_tls() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .replies([support::Reply::Stall])
        .start()
        .await;
    let extra = "[retry]\nattempts = 1\n[timeouts]\nattempt = \"200ms\"\n";
    let (fusebox, ca_pem) = start(&pki, &upstream, extra).await;
    let url = format!("https://localhost:{}/slow", upstream.addr().port());
    let lines = PeerApp::PythonRequests
        .get(&fusebox, &ca_pem, &url, 1)
        .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("504 timeout fusebox: timeout: no response head from localhost:"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_an_untrusted_certificate_is_a_502_the_app_reads_inside_tls() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.wrong_server_config())
        .start()
        .await;
    let (fusebox, ca_pem) = start(&pki, &upstream, "").await;
    let url = format!("https://localhost:{}/", upstream.addr().port());
    let response = app(&fusebox, &ca_pem).get(&url).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-fusebox-reason"], "tls-verify-failed");
    let text = response.text().await.unwrap();
    assert!(
        text.contains("certificate") && text.contains("ca_file"),
        "says why: {text}"
    );
    assert_eq!(upstream.hits(), 0, "no request reached the impostor");
    assert_eq!(upstream.connections(), 1, "a trust problem is not retried");
}

/// Opens an intercepted TLS session to `localhost:port` through fusebox, as an app would
/// (CONNECT, then TLS trusting fusebox's CA, offering `alpn`).
async fn intercepted_session(
    fusebox: &TestFusebox,
    ca_pem: &str,
    port: u16,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(fusebox.agent().egress_addr())
        .await
        .unwrap();
    let connect = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    tcp.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 256];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "intercepted");
    support::tls::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(Path::new(ca_pem)).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector
        .connect(name, tcp)
        .await
        .expect("TLS with fusebox's certificate")
}

/// On shutdown, an idle intercepted HTTP/1.1 connection is closed gracefully at once (#22, item
/// 13): the app reads a TLS close_notify (a clean end, not a truncation), and the agent stops
/// without waiting for the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_intercepted_connection_with_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .statuses(&[200])
        .body("inside")
        .start()
        .await;
    let (fusebox, ca_pem) = start(&pki, &upstream, "").await;
    let port = upstream.addr().port();
    let mut session = intercepted_session(&fusebox, &ca_pem, port, b"http/1.1").await;
    let request = format!("GET /a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    session.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = session.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("inside"),
        "{answer}"
    );

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(fusebox.shutdown());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        session.read_to_end(&mut rest),
    )
    .await
    .expect("fusebox closes the intercepted connection");
    assert!(
        read.is_ok(),
        "a clean TLS close (close_notify), not a truncation: {read:?}"
    );
    stopping.await.unwrap();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "not held until the drain timeout: {took:?}"
    );
}

/// fusebox as a process with a local CA, intercepting `localhost:PORT` of a TLS upstream (whose
/// CA the policy trusts); the policies directory is kept alive by the caller.
async fn intercepting_process() -> (FakeUpstream, support::FuseboxProcess, tempfile::TempDir) {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .start()
        .await;
    let port = upstream.addr().port();
    let policy =
        format!("hosts = [\"localhost:{port}\"]\nintercept = true\nca_file = \"test-ca.pem\"\n");
    let dir = policies_dir(&[("api", &policy)]);
    pki.write_ca(dir.path());
    let ca_dir = dir.path().join("fusebox-ca");
    LocalCa::init(&ca_dir, false, std::time::SystemTime::now()).unwrap();
    let ca_dir = ca_dir.to_str().unwrap();
    let fusebox = support::FuseboxProcess::spawn(dir.path(), &["--ca-dir", ca_dir], &[]).await;
    (upstream, fusebox, dir)
}

/// An app that does not trust fusebox's CA (curl with only the system's roots) refuses the
/// intercepted handshake; fusebox counts it as `ca_rejected` and says what to do at WARN, once
/// a minute per destination however often the app tries (#22, item 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_refuses_fusebox_s_ca_gets_one_warning_naming_the_fix() {
    let (upstream, fusebox, _dir) = intercepting_process().await;
    let port = upstream.addr().port();
    let url = format!("https://localhost:{port}/");
    for _ in 0..3 {
        let out = curl_async(&["--proxy", &fusebox.egress_url(), &url]).await;
        assert_eq!(
            out.status.code(),
            Some(60),
            "curl refuses the certificate: {out:?}"
        );
    }
    let metrics = fusebox.metrics().await;
    let labels = [("upstream", "api"), ("result", "ca_rejected")];
    let rejected = count(&metrics, "fusebox_intercepted_connections_total", &labels);
    assert_eq!(rejected, 3.0, "{metrics}");
    // Log lines are written within 100 ms; wait for the warning, not for a fixed time.
    let (warnings, logs) = fusebox.lines_with("refused fusebox's certificate", 1).await;
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("fusebox ca show"),
        "{logs}"
    );
}

/// Node.js refuses fusebox's certificate by closing the handshake without an alert, which
/// fusebox cannot tell apart from an app that died: it is counted `handshake_failed`, but the
/// fix is said at WARN all the same, once a minute per destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_app_that_closes_on_fusebox_s_certificate_gets_the_warning_too() {
    let (upstream, fusebox, _dir) = intercepting_process().await;
    let port = upstream.addr().port();
    for _ in 0..2 {
        // Node with its own roots only: it does not trust fusebox's CA.
        let mut command = peers::hermetic(&peers::node());
        command
            .arg(peers::peer_script("https_get.js"))
            .arg(format!("https://localhost:{port}/"))
            .env("HTTPS_PROXY", fusebox.egress_url());
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("certificate"),
            "{out:?}"
        );
    }
    assert_eq!(upstream.hits(), 0);
    let metrics = fusebox.metrics().await;
    let labels = [("upstream", "api"), ("result", "handshake_failed")];
    let failed = count(&metrics, "fusebox_intercepted_connections_total", &labels);
    assert_eq!(failed, 2.0, "{metrics}");
    let said = "closed the TLS handshake after fusebox's certificate";
    let (warnings, logs) = fusebox.lines_with(said, 1).await;
    assert_eq!(warnings.len(), 1, "once a minute: {logs}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("NODE_EXTRA_CA_CERTS"),
        "{logs}"
    );
}

/// Whether an app that trusts only the CA in `ca_pem` gets an answer through an intercepted
/// `CONNECT` to `url` (an error means it refused fusebox's certificate).
async fn trusted_with(fusebox: &TestFusebox, ca_pem: &str, url: &str) -> bool {
    app(fusebox, ca_pem).get(url).send().await.is_ok()
}

/// A rotated local CA (`fusebox ca init --force`) is taken by a reload, compared by content
/// (#22, item 7): `POST /reload` answers that it reloaded, and new intercepted connections
/// present the new CA's certificates; with the CA directory watched, the rotation alone does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_local_ca_is_taken_by_a_reload() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .start()
        .await;
    let (fusebox, ca_pem) = start(&pki, &upstream, "").await;
    let url = format!("https://localhost:{}/", upstream.addr().port());
    let ca_dir = Path::new(&ca_pem).parent().unwrap().to_path_buf();
    let old_pem = std::fs::read_to_string(&ca_pem).unwrap();
    let old_ca = ca_dir.with_file_name("old-ca.pem");
    std::fs::write(&old_ca, &old_pem).unwrap();
    let old_ca = old_ca.to_str().unwrap();
    assert!(trusted_with(&fusebox, old_ca, &url).await);

    LocalCa::init(&ca_dir, true, std::time::SystemTime::now()).unwrap();
    assert_ne!(
        std::fs::read_to_string(&ca_pem).unwrap(),
        old_pem,
        "a new CA"
    );
    // The watcher may already have reloaded; either way, POST /reload leaves the new CA.
    let reload = support::direct_client()
        .post(format!("{}/reload", fusebox.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    assert!(
        trusted_with(&fusebox, &ca_pem, &url).await,
        "the new CA's certificates"
    );
    assert!(
        !trusted_with(&fusebox, old_ca, &url).await,
        "not the old one's"
    );

    // Watched: a second rotation is taken without asking (waits on the change, bounded).
    LocalCa::init(&ca_dir, true, std::time::SystemTime::now()).unwrap();
    let mut taken = false;
    for _ in 0..100 {
        if trusted_with(&fusebox, &ca_pem, &url).await {
            taken = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(taken, "the watcher reloaded the rotated CA");
}

/// On shutdown, an intercepted HTTP/2 connection gets a GOAWAY and is closed gracefully at
/// once when no request is open (#22, item 13): the app's HTTP/2 connection ends cleanly, long
/// before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_on_an_intercepted_http2_connection() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .statuses(&[200])
        .start()
        .await;
    let (fusebox, ca_pem) = start(&pki, &upstream, "").await;
    let port = upstream.addr().port();
    let session = intercepted_session(&fusebox, &ca_pem, port, b"h2").await;
    assert_eq!(session.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let io = hyper_util::rt::TokioIo::new(session);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("https://localhost:{port}/a"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(fusebox.shutdown());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), connection)
        .await
        .expect("fusebox ends the HTTP/2 connection");
    assert!(
        matches!(ended, Ok(Ok(()))),
        "a graceful end (GOAWAY): {ended:?}"
    );
    stopping.await.unwrap();
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "not held until the drain timeout: {took:?}"
    );
}
