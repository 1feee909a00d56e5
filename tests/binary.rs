//! The built `fusebox` binary as users run it: curl through it, `fusebox check`, `fusebox run`
//! configured by flags or by environment variables only, proxy variables in its own
//! environment, JSON logs, graceful stop on SIGTERM/SIGINT, invalid policies at startup, and
//! memory use while 100 MiB flow through it in each direction.
//!
//! Every child process is one this file started, and it is stopped by its own PID.
//! Everything listens on 127.0.0.1; no traffic leaves the loopback interface.

mod support;

use std::convert::Infallible;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use support::process::PROXY_VARS;
use support::{
    app_client, app_client_with_tls, curl_async, direct_client, download_byte, install_crypto,
    policies_dir, refused_addr, FakeUpstream, FuseboxProcess, TestPki,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const BIN: &str = env!("CARGO_BIN_EXE_fusebox");
/// Generous bound for anything that should happen "soon" (a process start or exit).
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Helpers

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// `fusebox` with an environment free of proxy and `FUSEBOX_*` variables.
fn fusebox_command() -> Command {
    let mut command = Command::new(BIN);
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("FUSEBOX_") {
            command.env_remove(var);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// A child that is killed (by its own PID, `Child::kill`) if the test ends early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a command that ran to its end left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end (at most [`PATIENCE`]) with stdout and stderr captured in files.
fn run_to_exit(mut command: Command) -> Finished {
    let dir = tempfile::tempdir().expect("create output dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    command
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"));
    let mut child = KillOnDrop(command.spawn().expect("spawn fusebox"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{command:?} did not exit within {PATIENCE:?}"
        );
        std::thread::sleep(POLL);
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// A policies directory holding one invalid file, `bad.toml`, whose line 2 has an unknown key.
fn bad_policies() -> (tempfile::TempDir, PathBuf) {
    let dir = policies_dir(&[("bad", "hosts = [\"a.test\"]\nbogus_key = 1\n")]);
    let file = dir.path().join("bad.toml");
    (dir, file)
}

/// Asserts that `stderr` has a `FILE:LINE:COL: message` line for `file`, line 2, naming
/// `bogus_key`.
#[track_caller]
fn assert_bad_key_reported(stderr: &str, file: &Path) {
    let prefix = format!("{}:", file.display());
    let line = stderr
        .lines()
        .find_map(|l| l.find(&prefix).map(|at| &l[at + prefix.len()..]))
        .unwrap_or_else(|| panic!("no `{prefix}LINE:COL: ` error in stderr:\n{stderr}"));
    let mut parts = line.splitn(3, ':');
    let (row, col, message) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let row: u32 = row.and_then(|r| r.parse().ok()).unwrap_or_else(|| {
        panic!("no line number after `{prefix}`:\n{stderr}");
    });
    let col: u32 = col.and_then(|c| c.parse().ok()).unwrap_or_else(|| {
        panic!("no column number after `{prefix}{row}:`:\n{stderr}");
    });
    assert_eq!(
        (row, col),
        (2, 1),
        "the unknown key starts at 2:1:\n{stderr}"
    );
    assert!(
        message.starts_with(' '),
        "`file:line:col: message`:\n{stderr}"
    );
    assert!(
        message.contains("bogus_key"),
        "the message names the key:\n{stderr}"
    );
}

/// Two distinct free loopback ports (bound at once, then released just before the child binds).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    let b = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

/// Sends `signal` (e.g. `TERM`) to one process, by PID.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("/bin/kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run /bin/kill");
    assert!(status.success(), "/bin/kill -{signal} {pid} failed");
}

fn stdout_text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The header block and body of `curl -i` output.
fn split_curl_response(text: &str) -> (&str, &str) {
    text.split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in curl output:\n{text}"))
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

/// An upstream that accepts one request, reports its arrival, and answers only when released:
/// a request is in flight exactly as long as the test wants, whatever the machine's speed.
struct GatedUpstream {
    addr: SocketAddr,
    arrived: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

impl GatedUpstream {
    async fn start() -> GatedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (arrived_tx, arrived) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read request");
                assert!(n > 0, "connection closed before a request head");
                head.extend_from_slice(&buf[..n]);
            }
            let _ = arrived_tx.send(());
            let _ = release_rx.await;
            let response =
                "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nfinally, ok";
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
        GatedUpstream {
            addr,
            arrived: Some(arrived),
            release: Some(release),
        }
    }

    async fn wait_arrived(&mut self) {
        let arrived = self.arrived.take().expect("wait once");
        tokio::time::timeout(PATIENCE, arrived)
            .await
            .expect("the request reaches the upstream in time")
            .expect("the upstream task is alive");
    }

    fn release(&mut self) {
        let _ = self.release.take().expect("release once").send(());
    }
}

/// A request body of `len` bytes of the download pattern, generated chunk by chunk (nothing
/// is kept), with an exact length.
struct GeneratedBody {
    remaining: u64,
    chunk: Bytes,
}

impl GeneratedBody {
    fn new(len: u64) -> GeneratedBody {
        // A whole number of pattern periods, so that every chunk starts at offset 0.
        let chunk: Vec<u8> = (0..251 * 256).map(download_byte).collect();
        GeneratedBody {
            remaining: len,
            chunk: Bytes::from(chunk),
        }
    }
}

impl http_body::Body for GeneratedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= len;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// An app client through `proxy` with a timeout long enough for 100 MiB on a slow machine.
fn bulk_client(proxy: &str) -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy).expect("proxy URL"))
        .timeout(Duration::from_secs(600))
        .retry(reqwest::retry::never())
        .build()
        .expect("build client")
}

/// Uploads `len` generated bytes through `client` to `upstream` (which counts them).
async fn upload(client: &reqwest::Client, upstream: &FakeUpstream, len: u64) {
    let response = client
        .post(upstream.url("/upload"))
        .body(reqwest::Body::wrap(GeneratedBody::new(len)))
        .send()
        .await
        .expect("upload through fusebox");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("upload response body");
    let request = upstream
        .last_request()
        .expect("the upstream saw the upload");
    assert_eq!(request.uri, "/upload");
    assert_eq!(
        request.body_len, len,
        "every uploaded byte reached the upstream"
    );
}

/// Downloads from `upstream` (a `.download(len)` one) through `client`, checking every byte.
async fn download(client: &reqwest::Client, upstream: &FakeUpstream, len: u64) {
    let mut response = client
        .get(upstream.url("/download"))
        .send()
        .await
        .expect("download through fusebox");
    assert_eq!(response.status(), 200);
    let mut received: u64 = 0;
    while let Some(chunk) = response.chunk().await.expect("download chunk") {
        let mut expected = download_byte(received);
        for (i, &byte) in chunk.iter().enumerate() {
            assert_eq!(
                byte,
                expected,
                "download byte {} differs",
                received + i as u64
            );
            expected = if expected == 250 { 0 } else { expected + 1 };
        }
        received += chunk.len() as u64;
    }
    assert_eq!(received, len, "every downloaded byte reached the app");
}

// ---------------------------------------------------------------------------------------------
// curl through the binary

#[tokio::test]
async fn curl_through_the_binary() {
    let upstream = FakeUpstream::builder()
        .body("hello from upstream\n")
        .start()
        .await;
    let dir = policies_dir(&[]);
    let fusebox = FuseboxProcess::spawn(dir.path(), &[], &[]).await;
    let proxy = fusebox.egress_url();

    let output = curl_async(&["-i", "-x", &proxy, &upstream.url("/path?x=1")]).await;
    assert!(output.status.success(), "{output:?}");
    let text = stdout_text(&output);
    let (head, body) = split_curl_response(&text);
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(body, "hello from upstream\n");
    assert_eq!(upstream.hits(), 1);
    assert_eq!(upstream.last_request().unwrap().uri, "/path?x=1");

    let refused = refused_addr().await;
    let output = curl_async(&["-i", "-x", &proxy, &format!("http://{refused}/")]).await;
    assert!(output.status.success(), "{output:?}");
    let text = stdout_text(&output);
    let (head, body) = split_curl_response(&text);
    assert!(head.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        has_header(head, "x-fusebox-reason", "connect-failed"),
        "{text}"
    );
    assert!(has_header(head, "x-fusebox-upstream", "default"), "{text}");
    assert!(body.contains("connect-failed"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// fusebox check

#[test]
fn check_accepts_the_repository_policies() {
    let mut command = fusebox_command();
    command.arg("check").arg("--policies").arg(repo_policies());
    let done = run_to_exit(command);
    assert!(
        done.status.success(),
        "{:?}\n{}{}",
        done.status,
        done.stdout,
        done.stderr
    );
    assert!(done.stdout.contains("payments"), "{}", done.stdout);
    assert!(!done.stdout.contains("listen"), "{}", done.stdout);
}

#[test]
fn check_reports_a_bad_file_with_file_line_col() {
    let (dir, file) = bad_policies();
    let mut command = fusebox_command();
    command.arg("check").arg("--policies").arg(dir.path());
    let done = run_to_exit(command);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert_bad_key_reported(&done.stderr, &file);
}

#[test]
fn check_reads_fusebox_policies_from_the_environment() {
    // A working directory without ./policies: only the variable can point at the files.
    let cwd = tempfile::tempdir().unwrap();

    let mut good = fusebox_command();
    good.arg("check")
        .current_dir(cwd.path())
        .env("FUSEBOX_POLICIES", repo_policies());
    let done = run_to_exit(good);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stdout.contains("payments"), "{}", done.stdout);

    let (dir, file) = bad_policies();
    let mut bad = fusebox_command();
    bad.arg("check")
        .current_dir(cwd.path())
        .env("FUSEBOX_POLICIES", dir.path());
    let done = run_to_exit(bad);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert_bad_key_reported(&done.stderr, &file);
}

// ---------------------------------------------------------------------------------------------
// fusebox run: configuration

#[test]
fn run_refuses_invalid_policies_at_startup() {
    let (dir, file) = bad_policies();
    let mut command = fusebox_command();
    command.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--policies",
    ]);
    command.arg(dir.path());
    let done = run_to_exit(command);
    assert!(
        !done.status.success(),
        "fusebox must not start on invalid policies: {:?}",
        done.status
    );
    assert_bad_key_reported(&done.stderr, &file);
}

/// A zero `--header-timeout` or `--idle-timeout` (or its variable) would close every app
/// connection at once: a usage error.
#[test]
fn zero_connection_timeouts_are_usage_errors() {
    for (flag, env) in [
        ("--header-timeout", "FUSEBOX_HEADER_TIMEOUT"),
        ("--idle-timeout", "FUSEBOX_IDLE_TIMEOUT"),
    ] {
        let mut command = fusebox_command();
        command.args(["run", flag, "0s"]);
        let done = run_to_exit(command);
        assert_eq!(done.status.code(), Some(64), "{flag}: {}", done.stderr);
        assert!(done.stderr.contains("greater than 0"), "{}", done.stderr);
        let mut command = fusebox_command();
        command.arg("run").env(env, "0ms");
        assert_eq!(run_to_exit(command).status.code(), Some(64), "{env}");
    }
}

/// `run` refuses a route listener on its own egress or admin address with `file:line:col`,
/// before serving anything (the same error as `fusebox check`).
#[test]
fn run_refuses_a_route_listener_on_its_own_admin_address() {
    // The admin port is picked free, then let go for fusebox to bind: another test may take
    // it in between, so a start that finds it in use is tried again on another.
    let (dir, done) = (0..5)
        .map(|_| {
            let admin = StdTcpListener::bind("127.0.0.1:0").unwrap();
            let admin_addr = admin.local_addr().unwrap();
            drop(admin);
            let route =
                format!("# route\nlisten = \"{admin_addr}\"\nendpoints = [\"u.test:80\"]\n");
            let dir = policies_dir(&[("route", &route)]);
            let mut command = fusebox_command();
            command
                .args(["run", "--listen", "127.0.0.1:0", "--admin"])
                .arg(admin_addr.to_string())
                .arg("--policies")
                .arg(dir.path());
            (dir, run_to_exit(command))
        })
        .find(|(_, done)| !done.stderr.contains("Address already in use"))
        .expect("a free admin port in 5 tries");
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    let at = format!("{}:2:10: ", dir.path().join("route.toml").display());
    assert!(done.stderr.contains(&at), "{}", done.stderr);
    assert!(
        done.stderr.contains("admin server (--admin)"),
        "{}",
        done.stderr
    );
}

/// `--admin-token-file` / `FUSEBOX_ADMIN_TOKEN_FILE` (a Docker or Kubernetes secret): the
/// token, trailing newline trimmed, is required by admin POSTs; an empty file stops the start.
#[tokio::test]
async fn admin_token_file_is_required_by_admin_posts() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-from-file\n").unwrap();
    let dir = policies_dir(&[]);
    let token_path = token_file.to_string_lossy().into_owned();
    let fusebox = FuseboxProcess::spawn(
        dir.path(),
        &[],
        &[("FUSEBOX_ADMIN_TOKEN_FILE", &token_path)],
    )
    .await;
    let reload = |token: Option<&str>| {
        let mut request = direct_client().post(format!("{}/reload", fusebox.admin_url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(reload(None).await.unwrap().status(), 401);
    assert_eq!(reload(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(
        reload(Some("s3cret-from-file")).await.unwrap().status(),
        200
    );
    drop(fusebox);

    std::fs::write(&token_file, " \n").unwrap();
    let mut command = fusebox_command();
    command
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--policies")
        .arg(dir.path())
        .arg("--admin-token-file")
        .arg(&token_file);
    let done = run_to_exit(command);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(done.stderr.contains("is empty"), "{}", done.stderr);
}

#[tokio::test]
async fn run_configured_by_environment_variables_only() {
    let upstream = FakeUpstream::builder().body("env ok").start().await;
    let dir = policies_dir(&[]);
    let cwd = tempfile::tempdir().unwrap();
    let log_path = cwd.path().join("fusebox.log");
    let (listen, admin) = free_ports();
    let mut command = fusebox_command();
    command
        .arg("run")
        .current_dir(cwd.path())
        .env("FUSEBOX_LISTEN", listen.to_string())
        .env("FUSEBOX_ADMIN", admin.to_string())
        .env("FUSEBOX_POLICIES", dir.path())
        .env("FUSEBOX_WORKERS", "1")
        .env("FUSEBOX_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(File::create(&log_path).unwrap())
        .stderr(File::create(&log_path).unwrap());
    let mut child = KillOnDrop(command.spawn().expect("spawn fusebox"));
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let client = direct_client();
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("fusebox exited with {status}:\n{}", logs());
        }
        let ready = client
            .get(format!("http://{admin}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "not ready on FUSEBOX_ADMIN={admin}:\n{}",
            logs()
        );
        tokio::time::sleep(POLL).await;
    }

    let response = app_client(&format!("http://{listen}"))
        .get(upstream.url("/env"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "env ok");
    assert_eq!(upstream.hits(), 1);

    // Log lines reach the file in batches: wait for the request's access line.
    let started = Instant::now();
    while !logs().contains("fusebox::access") && started.elapsed() < PATIENCE {
        tokio::time::sleep(POLL).await;
    }
    child.0.kill().expect("kill fusebox by its PID");
    child.0.wait().unwrap();
    let logs = logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains("fusebox::access")),
        "an access line was logged:\n{logs}"
    );
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "FUSEBOX_LOG_FORMAT=json gives JSON lines:\n{logs}"
    );
}

#[tokio::test]
async fn proxy_variables_in_fuseboxs_environment_are_ignored() {
    let refused = refused_addr().await;
    let trap = format!("http://{refused}");
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|var| (var, trap.as_str()))
    .collect();
    let pki = TestPki::new();
    let plain = FakeUpstream::builder().body("plain").start().await;
    let tls = FakeUpstream::builder()
        .tls(pki.server_config())
        .body("tunnelled")
        .start()
        .await;
    let dir = policies_dir(&[]);
    let fusebox = FuseboxProcess::spawn(dir.path(), &[], &env).await;

    // Absolute-form (pooled client) ...
    let response = app_client(&fusebox.egress_url())
        .get(plain.url("/direct"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "plain");
    assert_eq!(plain.hits(), 1);

    // ... and a CONNECT tunnel both connect straight to the upstream.
    let response = app_client_with_tls(&fusebox.egress_url(), pki.client_config())
        .get(tls.https_url("/tunnel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "tunnelled");
    assert_eq!(tls.hits(), 1);
}

#[tokio::test]
async fn workers_and_json_log_format_flags_are_accepted() {
    let upstream = FakeUpstream::builder().start().await;
    let dir = policies_dir(&[]);
    let fusebox = FuseboxProcess::spawn(
        dir.path(),
        &["--workers", "1", "--log-format", "json"],
        &[("RUST_LOG", "info")],
    )
    .await;
    let response = app_client(&fusebox.egress_url())
        .get(upstream.url("/path?secret=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Log lines reach stderr in batches (every 100 ms): wait for the access line.
    let started = Instant::now();
    let logs = loop {
        let logs = fusebox.logs();
        if logs.contains("fusebox::access") || started.elapsed() > PATIENCE {
            break logs;
        }
        tokio::time::sleep(POLL).await;
    };
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "fusebox logs at least its start");
    let mut parsed = Vec::new();
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        parsed.push(value);
    }
    assert!(
        lines.iter().any(|l| l.contains("ready")),
        "a start line says fusebox is ready:\n{logs}"
    );
    // One structured access line for the request, without the query string.
    let access: Vec<_> = parsed
        .iter()
        .filter(|v| v["target"] == "fusebox::access")
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    let fields = &access[0]["fields"];
    assert_eq!(fields["upstream"], "default", "{logs}");
    assert_eq!(
        fields["destination"],
        upstream.authority().as_str(),
        "{logs}"
    );
    assert_eq!(fields["method"], "GET", "{logs}");
    assert_eq!(fields["path"], "/path", "{logs}");
    assert_eq!(fields["status"], 200, "{logs}");
    assert_eq!(fields["outcome"], "ok", "{logs}");
    assert_eq!(fields["attempts"], 1, "{logs}");
    assert!(fields["duration_ms"].as_f64().is_some(), "{logs}");
    assert!(fields.get("reason").is_none(), "{logs}");
    // A fixed precision: at most three decimals as written, never `38.990868999999996`.
    let line = lines
        .iter()
        .find(|l| l.contains("fusebox::access"))
        .expect("the access line");
    let written = line
        .split("\"duration_ms\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .unwrap_or_else(|| panic!("no duration_ms in {line}"));
    let decimals = written.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3, "duration_ms written as {written}: {line}");
}

// ---------------------------------------------------------------------------------------------
// Graceful stop

async fn graceful_stop(signal: &str) {
    let mut upstream = GatedUpstream::start().await;
    let dir = policies_dir(&[]);
    // The drain timeout is longer than the test waits for the exit: only finishing the
    // in-flight request, not the timeout, may end the process.
    let mut fusebox = FuseboxProcess::spawn(dir.path(), &["--drain-timeout", "300s"], &[]).await;
    let egress = fusebox.egress_addr();

    // An idle keep-alive connection from another app must not hold the drain up.
    let other = FakeUpstream::builder().start().await;
    let idle_app = app_client(&fusebox.egress_url());
    let response = idle_app.get(other.url("/warm")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let app = app_client(&fusebox.egress_url());
    let url = format!("http://{}/slow", upstream.addr);
    let in_flight = tokio::spawn(async move {
        let response = app.get(url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        Ok::<_, reqwest::Error>((status, body))
    });
    upstream.wait_arrived().await;

    send_signal(fusebox.pid(), signal);

    // New connections are refused while the in-flight request is still being drained.
    let started = Instant::now();
    loop {
        match TcpStream::connect(egress).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // The listener closed while this handshake sat in its queue: try again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(stream) => drop(stream),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the egress listener still accepts after SIG{signal}:\n{}",
            fusebox.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        fusebox.try_wait().is_none(),
        "fusebox exited with a request in flight:\n{}",
        fusebox.logs()
    );

    upstream.release();
    let (status, body) = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the in-flight request completes")
        .expect("request task")
        .expect("the in-flight request succeeds");
    assert_eq!(status, 200);
    assert_eq!(body, "finally, ok");

    let started = Instant::now();
    let status = loop {
        if let Some(status) = fusebox.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "fusebox did not exit after SIG{signal}:\n{}",
            fusebox.logs()
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(
        status.success(),
        "exit status after SIG{signal}: {status}\n{}",
        fusebox.logs()
    );
    drop(idle_app);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    graceful_stop("TERM").await;
}

#[tokio::test]
async fn sigint_drains_in_flight_requests_and_exits_0() {
    graceful_stop("INT").await;
}

// ---------------------------------------------------------------------------------------------
// Memory

const BULK: u64 = 100 << 20;
const WARM_UP: u64 = 1 << 20;
const RSS_BUDGET_KIB: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_each_way_with_bounded_memory() {
    let sink = FakeUpstream::builder().start().await;
    let source = FakeUpstream::builder().download(BULK).start().await;
    let small_source = FakeUpstream::builder().download(WARM_UP).start().await;
    // The upload's response head comes once the whole body is read: give it time.
    let dir = policies_dir(&[(
        "default",
        "[timeouts]\nconnect = \"10s\"\nattempt = \"600s\"\ntotal = \"600s\"\n",
    )]);
    let fusebox = FuseboxProcess::spawn(dir.path(), &[], &[]).await;
    let client = bulk_client(&fusebox.egress_url());
    let (start_rss, start_peak) = (fusebox.current_rss_kib(), fusebox.peak_rss_kib());

    upload(&client, &sink, WARM_UP).await;
    download(&client, &small_source, WARM_UP).await;
    let base = fusebox.current_rss_kib();
    let base_peak = fusebox.peak_rss_kib();

    let started = Instant::now();
    upload(&client, &sink, BULK).await;
    let upload_time = started.elapsed();
    let after_upload = fusebox.peak_rss_kib();

    let started = Instant::now();
    download(&client, &source, BULK).await;
    let download_time = started.elapsed();
    let peak = fusebox.peak_rss_kib();
    let current = fusebox.current_rss_kib();

    let mib = |d: Duration| BULK as f64 / (1 << 20) as f64 / d.as_secs_f64();
    eprintln!(
        "fusebox RSS (KiB): at start {start_rss} (peak {start_peak}); after warm-up {base} \
         (peak {base_peak}); peak after 100 MiB upload {after_upload}; peak after 100 MiB \
         download {peak}; current {current}; growth of peak over warm-up RSS {} KiB \
         (budget {RSS_BUDGET_KIB})",
        peak.saturating_sub(base)
    );
    eprintln!(
        "throughput (debug build): upload {:.0} MiB/s ({upload_time:?}), download {:.0} MiB/s \
         ({download_time:?})",
        mib(upload_time),
        mib(download_time)
    );
    assert!(
        peak.saturating_sub(base) < RSS_BUDGET_KIB,
        "peak RSS {peak} KiB grew by more than {RSS_BUDGET_KIB} KiB over {base} KiB"
    );
}
