//! Trust, run for real: (1) how each real client trusts fusebox's local CA (`fusebox ca init`
//! writes `ca.pem`) while it sends HTTPS through fusebox with interception, and (2) which roots
//! fusebox itself trusts when it originates TLS to an upstream (`src/upstream/tls.rs`).
//!
//! (1) Each recipe test configures one client the way the README's "HTTPS and interception"
//! table says, and runs it through an in-process fusebox to a TLS upstream on loopback that
//! serves the files the client asks for (a package index, a registry document, a sparse cargo
//! index). The upstream is called by a name under `.trust.test`, which no resolver knows: the
//! policy sends that name to the loopback upstream with `endpoints`, so the client can only
//! reach it through fusebox, and Go, which never proxies `localhost` or loopback IPs, does
//! proxy it. The upstream's certificate comes from the tests' own CA, which no client trusts
//! (fusebox does: the policy's `ca_file`). Each test asserts that the upstream saw every
//! request with fusebox's `Via` and that fusebox counted the intercepted handshake and the
//! requests; and that the same client without the recipe's setting refuses fusebox's
//! certificate (fusebox counts the refusal), so a recipe that does nothing fails its test.
//!
//! Every client runs with a cleared environment (`PATH`, a `HOME` of the test's own, and what
//! the test sets), so nothing of the user's proxy, trust or tool configuration counts and no
//! file of the user's is written. Clients: curl, Python `requests` and pip (the venv of
//! `scripts/test-tools.sh`), Node and npm, cargo (the toolchain running the tests), Java
//! (`keytool`, `java Fetch.java`: a JDK) and Go (`go build`); `scripts/test-tools.sh` installs
//! what is missing.
//!
//! (2) fusebox runs as its binary with a cleared environment, so what its environment holds
//! (`SSL_CERT_FILE`) is exactly what the test gives it. "The system's roots" are made real by
//! running fusebox in a mount namespace of its own (`unshare --mount`, as root, else with
//! `--map-root-user`: needs user namespaces) whose `/etc/ssl/certs` is a directory of the
//! test's: the host's files are never touched.

mod support;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::metrics::metric;
use support::peers;
use support::tls::TestPki;
use support::{policies_dir, TestFusebox};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// The name the clients call; the policy maps it to the loopback upstream.
const HOST: &str = "registry.trust.test";

// ---------------------------------------------------------------------------------------------
// The upstream: a TLS server of fixed files

/// One request the upstream answered: its path and its `Via` header (`-` if none).
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    via: String,
}

/// A file the upstream serves: path (without query), content type, body.
type File = (String, &'static str, Vec<u8>);

/// An HTTPS server on 127.0.0.1 serving `files` (404 for any other path), recording each
/// request. Stopped when dropped.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(tls: Arc<rustls::ServerConfig>, files: Vec<File>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let files = Arc::new(files);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, files, seen) =
                    (acceptor.clone(), Arc::clone(&files), Arc::clone(&record));
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let answer = serve(&files, &seen, &req);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far (before a negative check).
    fn forget(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve<B>(files: &[File], seen: &Mutex<Vec<Seen>>, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let via = req
        .headers()
        .get("via")
        .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned());
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        via,
    });
    match files.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, body)) => Response::builder()
            .header("content-type", *content_type)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap(),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n")))
            .unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// A recipe's set-up: the upstream, fusebox intercepting it, fusebox's CA, a home for clients

/// `policies/registry.toml`: `HOST` goes to the upstream at `port`, intercepted, its
/// certificate checked for `HOST` against `ca_file` (when given) and fusebox's own roots.
fn registry_policy(host: &str, port: u16, ca_file: Option<&str>) -> String {
    let ca_file = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
    format!(
        "hosts = [\"{host}\"]\nendpoints = [\"127.0.0.1:{port}\"]\nsni = \"{host}\"\n\
         intercept = true\n{ca_file}[retry]\nattempts = 1\n"
    )
}

/// `fusebox ca init --dir DIR` with the built binary, as an operator makes the local CA;
/// returns `DIR/ca.pem`, the file apps trust.
fn fusebox_ca_init(dir: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .env_remove("FUSEBOX_CA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "fusebox ca init: {out:?}");
    let ca_pem = dir.join("ca.pem");
    assert!(ca_pem.is_file());
    ca_pem
}

struct Recipe {
    upstream: Upstream,
    fusebox: TestFusebox,
    /// fusebox's local CA certificate: what the app is told to trust.
    ca_pem: PathBuf,
    /// The tests' CA, which signed the upstream's certificate (trusted by fusebox only).
    upstream_ca: PathBuf,
    /// The clients' `HOME` and working directory; also holds fusebox's CA.
    work: TempDir,
    /// How fusebox counts this client's refusal of its certificate (see [`Recipe::refusals`]).
    refused_as: &'static str,
}

impl Recipe {
    /// The upstream serving `files`, and fusebox intercepting `HOST` with a fresh local CA.
    async fn start(files: Vec<File>) -> Recipe {
        let pki = TestPki::with_names(&[HOST, "localhost"]);
        let upstream = Upstream::start(pki.server_config(), files).await;
        let policy = registry_policy(HOST, upstream.addr.port(), Some("test-ca.pem"));
        let dir = policies_dir(&[("default", ""), ("registry", &policy)]);
        pki.write_ca(dir.path());
        let work = tempfile::tempdir().unwrap();
        let upstream_ca = pki.write_ca(work.path());
        let ca_dir = work.path().join("fusebox-ca");
        let ca_pem = fusebox_ca_init(&ca_dir);
        let fusebox = TestFusebox::start_with(dir, |config| {
            config.jitter = false;
            config.ca_dir = Some(ca_dir);
        })
        .await;
        Recipe {
            upstream,
            fusebox,
            ca_pem,
            upstream_ca,
            work,
            refused_as: "ca_rejected",
        }
    }

    /// `https://HOST/path`.
    fn url(&self, path: &str) -> String {
        format!("https://{HOST}{path}")
    }

    /// The app's proxy: `http://127.0.0.1:PORT`.
    fn proxy(&self) -> String {
        self.fusebox.egress_url()
    }

    fn home(&self) -> &Path {
        self.work.path()
    }

    /// `program` with a cleared environment: `PATH`, `HOME` = the recipe's work directory
    /// (also the working directory), `LANG`; the test adds the recipe's settings.
    fn client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("LANG", "C.UTF-8")
            .current_dir(self.home())
            .stdin(Stdio::null());
        command
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.fusebox.metrics().await, name, labels)
    }

    /// fusebox's count of handshakes with the app that the app refused, under the `result`
    /// this client's refusal gets today: `ca_rejected` for curl, Python, pip, cargo and Go;
    /// `handshake_failed` for Node (and npm) and Java's HttpClient, which close the handshake
    /// without an alert, as an app that died would (fusebox logs the fix for that too:
    /// `tests/intercept.rs`).
    async fn refusals(&self) -> f64 {
        let labels = [("upstream", "registry"), ("result", self.refused_as)];
        self.metric("fusebox_intercepted_connections_total", &labels)
            .await
    }

    /// Everything the upstream saw came through fusebox's interception: at least `paths`, each
    /// request with fusebox's `Via`; fusebox counted intercepted handshakes with the app
    /// (`result="ok"`) and at least as many requests of the policy as the upstream saw.
    async fn assert_intercepted(&self, paths: &[&str]) {
        let seen = self.upstream.seen();
        for path in paths {
            assert!(
                seen.iter().any(|s| s.path == *path),
                "the upstream never saw {path}: {seen:?}"
            );
        }
        for request in &seen {
            assert!(
                request.via.contains("fusebox-"),
                "came without fusebox's Via: {request:?}"
            );
        }
        let handshakes = self
            .metric(
                "fusebox_intercepted_connections_total",
                &[("upstream", "registry"), ("result", "ok")],
            )
            .await;
        assert!(handshakes >= 1.0, "no intercepted handshake counted");
        let requests = self
            .metric("fusebox_requests_total", &[("upstream", "registry")])
            .await;
        assert!(
            requests >= seen.len() as f64,
            "fusebox counted {requests} requests, the upstream saw {}",
            seen.len()
        );
    }

    /// The client, run without the recipe's trust setting, failed on fusebox's certificate:
    /// its output names the certificate problem (`says`, any case), nothing reached the
    /// upstream, and fusebox counted one more refused handshake with the app
    /// (`fusebox_intercepted_connections_total{result}` above `counted_before`, see
    /// [`Recipe::refusals`]).
    /// Runs `command`, the client without the recipe's trust setting, after forgetting what
    /// the upstream saw: it must fail saying `says`, counted as a refusal, and reach nothing
    /// ([`Recipe::assert_refused`]). Answers its output, for more checks.
    async fn refuses(&self, command: Command, says: &str) -> Output {
        let rejected = self.refusals().await;
        self.upstream.forget();
        let out = run(command).await;
        self.assert_refused(&out, rejected, says).await;
        out
    }

    async fn assert_refused(&self, out: &Output, counted_before: f64, says: &str) {
        let text = output_text(out);
        assert!(
            !out.status.success(),
            "trusted fusebox without the recipe: {text}"
        );
        assert!(
            text.to_lowercase().contains(&says.to_lowercase()),
            "expected {says:?} in: {text}"
        );
        assert!(
            self.upstream.seen().is_empty(),
            "{:?}",
            self.upstream.seen()
        );
        // fusebox reads the client's alert after the client may already have exited.
        for _ in 0..100 {
            if self.refusals().await > counted_before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let counted: Vec<String> = self
            .fusebox
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("fusebox_intercepted_connections_total"))
            .map(str::to_owned)
            .collect();
        panic!(
            "fusebox did not count the refusal as {} ({counted:?}); the client said: {text}",
            self.refused_as
        );
    }
}

/// Runs `command` on the blocking pool (the in-process fusebox keeps serving).
async fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

/// Runs `command`, which must succeed; its stdout.
async fn run_ok(command: Command) -> String {
    let out = run(command).await;
    assert!(out.status.success(), "failed: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The one-file answer most recipes fetch.
fn hello() -> Vec<File> {
    vec![(
        "/hello".to_owned(),
        "text/plain",
        b"hello through fusebox\n".to_vec(),
    )]
}

// ---------------------------------------------------------------------------------------------
// curl

/// `curl -D - https://HOST/hello` (with the response head, not the CONNECT's) with
/// `HTTPS_PROXY`; the recipe's trust setting is added after.
fn curl(recipe: &Recipe) -> Command {
    let mut command = recipe.client("/usr/bin/curl");
    command
        .args(["-sS", "--max-time", "30", "--suppress-connect-headers"])
        .args(["-D", "-"])
        .arg(recipe.url("/hello"))
        .env("HTTPS_PROXY", recipe.proxy());
    command
}

/// A curl recipe (`trust` adds it to a curl command, given fusebox's `ca.pem`): with it, the
/// answer comes through fusebox (curl speaks HTTP/2 inside the tunnel); without it, exit 60.
async fn curl_recipe(trust: fn(&mut Command, &Path)) {
    let recipe = Recipe::start(hello()).await;
    let mut command = curl(&recipe);
    trust(&mut command, &recipe.ca_pem);
    let answer = run_ok(command).await.to_lowercase();
    assert!(answer.starts_with("http/2 200"), "{answer}");
    assert!(answer.contains("via: 1.1 fusebox-"), "{answer}");
    assert!(answer.ends_with("hello through fusebox\n"), "{answer}");
    recipe.assert_intercepted(&["/hello"]).await;

    // Without it, curl trusts the system's bundle.
    let out = recipe
        .refuses(curl(&recipe), "SSL certificate problem")
        .await;
    assert_eq!(out.status.code(), Some(60), "{}", output_text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_trusts_fusebox_with_cacert() {
    curl_recipe(|command, ca| {
        command.arg("--cacert").arg(ca);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_trusts_fusebox_with_curl_ca_bundle() {
    curl_recipe(|command, ca| {
        command.env("CURL_CA_BUNDLE", ca);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_trusts_fusebox_with_ssl_cert_file() {
    curl_recipe(|command, ca| {
        command.env("SSL_CERT_FILE", ca);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Python requests and pip

/// `tests/peers/https_get.py URL 1` with `HTTPS_PROXY` (one line: status, reason, body).
fn python_requests(recipe: &Recipe) -> Command {
    let mut command = recipe.client(peers::python());
    command
        .arg(peers::peer_script("https_get.py"))
        .arg(recipe.url("/hello"))
        .arg("1")
        .env("HTTPS_PROXY", recipe.proxy());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_trusts_fusebox_with_requests_ca_bundle() {
    let recipe = Recipe::start(hello()).await;
    let mut command = python_requests(&recipe);
    command.env("REQUESTS_CA_BUNDLE", &recipe.ca_pem);
    assert_eq!(run_ok(command).await, "200 - hello through fusebox\n");
    recipe.assert_intercepted(&["/hello"]).await;

    // Without it, requests trusts certifi's bundle only.
    recipe
        .refuses(python_requests(&recipe), "CERTIFICATE_VERIFY_FAILED")
        .await;
}

/// The package index: PEP 503's `/simple/demo/` linking the wheel `make_wheel.py` builds.
async fn package_index() -> Vec<File> {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(peers::python());
    command
        .arg(peers::peer_script("make_wheel.py"))
        .arg(dir.path());
    let out = run_ok(command).await;
    let (name, sha256) = out.trim().split_once(' ').unwrap();
    let wheel = std::fs::read(dir.path().join(name)).unwrap();
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n<a href=\"/files/{name}#sha256={sha256}\">{name}</a>\n\
         </body></html>\n"
    );
    vec![
        ("/simple/demo/".to_owned(), "text/html", html.into_bytes()),
        (format!("/files/{name}"), "application/octet-stream", wheel),
    ]
}

/// `python -m pip download --no-deps demo` from `https://HOST/simple/` into `HOME/dl`, with
/// `HTTPS_PROXY` = fusebox and no configuration file, cache or retries of pip's.
fn pip_download(recipe: &Recipe) -> Command {
    let mut command = recipe.client(peers::python());
    command
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
        .args([
            "--disable-pip-version-check",
            "--retries",
            "0",
            "--timeout",
            "20",
        ])
        .arg("--index-url")
        .arg(recipe.url("/simple/"))
        .arg("--dest")
        .arg(recipe.home().join("dl"))
        .arg("demo")
        .env("HTTPS_PROXY", recipe.proxy())
        .env("PIP_CONFIG_FILE", "/dev/null");
    command
}

fn downloaded_wheel(recipe: &Recipe) -> bool {
    recipe.home().join("dl/demo-1.0-py3-none-any.whl").is_file()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_trusts_fusebox_with_pip_cert() {
    let recipe = Recipe::start(package_index().await).await;
    let mut command = pip_download(&recipe);
    command.env("PIP_CERT", &recipe.ca_pem);
    run_ok(command).await;
    assert!(downloaded_wheel(&recipe));
    recipe
        .assert_intercepted(&["/simple/demo/", "/files/demo-1.0-py3-none-any.whl"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_trusts_fusebox_with_cert_option() {
    let recipe = Recipe::start(package_index().await).await;
    let mut command = pip_download(&recipe);
    command.arg("--cert").arg(&recipe.ca_pem);
    run_ok(command).await;
    assert!(downloaded_wheel(&recipe));
    recipe
        .assert_intercepted(&["/simple/demo/", "/files/demo-1.0-py3-none-any.whl"])
        .await;

    // Without it, pip trusts its own certifi bundle only.
    recipe
        .refuses(pip_download(&recipe), "CERTIFICATE_VERIFY_FAILED")
        .await;
}

/// pip hands its `--cert` / `PIP_CERT` to its requests session as `session.verify`, but
/// requests' per-request environment lookup (`REQUESTS_CA_BUNDLE`, then `CURL_CA_BUNDLE`)
/// overrides a session's `verify`: with both set, `REQUESTS_CA_BUNDLE` wins. (Run with the
/// venv's pip; a trust failure reads "No matching distribution found".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_honours_requests_ca_bundle_over_pip_cert_and_cert_option() {
    let recipe = Recipe::start(package_index().await).await;
    let (fusebox_ca, other_ca) = (&recipe.ca_pem, &recipe.upstream_ca);

    let mut command = pip_download(&recipe);
    command
        .env("PIP_CERT", fusebox_ca)
        .env("REQUESTS_CA_BUNDLE", other_ca);
    let out = run(command).await;
    assert!(!out.status.success(), "PIP_CERT won: {}", output_text(&out));
    assert!(
        output_text(&out).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        output_text(&out)
    );

    let mut command = pip_download(&recipe);
    command.arg("--cert").arg(fusebox_ca);
    command.env("REQUESTS_CA_BUNDLE", other_ca);
    let out = run(command).await;
    assert!(!out.status.success(), "--cert won: {}", output_text(&out));
    assert!(
        output_text(&out).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        output_text(&out)
    );
    assert!(!downloaded_wheel(&recipe));

    let mut command = pip_download(&recipe);
    command
        .env("PIP_CERT", other_ca)
        .env("REQUESTS_CA_BUNDLE", fusebox_ca);
    run_ok(command).await;
    assert!(downloaded_wheel(&recipe), "REQUESTS_CA_BUNDLE won");
    recipe
        .assert_intercepted(&["/simple/demo/", "/files/demo-1.0-py3-none-any.whl"])
        .await;
}

// ---------------------------------------------------------------------------------------------
// Node and npm

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_trusts_fusebox_with_node_extra_ca_certs() {
    let mut recipe = Recipe::start(hello()).await;
    recipe.refused_as = "handshake_failed";
    // tests/peers/https_get.js: Node's https through a CONNECT agent of its own, to HTTPS_PROXY.
    let node = |extra_ca: Option<&Path>| {
        let mut command = recipe.client(peers::node());
        command
            .arg(peers::peer_script("https_get.js"))
            .arg(recipe.url("/hello"))
            .arg("1")
            .env("HTTPS_PROXY", recipe.proxy());
        if let Some(ca) = extra_ca {
            command.env("NODE_EXTRA_CA_CERTS", ca);
        }
        command
    };
    assert_eq!(
        run_ok(node(Some(&recipe.ca_pem))).await,
        "200 - hello through fusebox\n"
    );
    recipe.assert_intercepted(&["/hello"]).await;

    recipe
        .refuses(node(None), "self-signed certificate in certificate chain")
        .await;
}

/// Node's own `https.get` and `fetch` do not read `HTTPS_PROXY`: both resolve the name
/// themselves, and nothing reaches fusebox. An app on Node needs a proxy agent that sends
/// `CONNECT` (`https_get.js` makes one). (Newer Node releases have an opt-in,
/// `NODE_USE_ENV_PROXY=1`; it is not set, and not tested, here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_https_and_fetch_ignore_https_proxy() {
    let recipe = Recipe::start(hello()).await;
    let node = peers::node();
    let version = run_ok({
        let mut command = recipe.client(&node);
        command.arg("--version");
        command
    })
    .await;
    let mut command = recipe.client(&node);
    command
        .arg(peers::peer_script("node_env_proxy.js"))
        .arg(recipe.url("/hello"))
        .env("HTTPS_PROXY", recipe.proxy())
        .env("https_proxy", recipe.proxy())
        .env("NODE_EXTRA_CA_CERTS", &recipe.ca_pem);
    let lines = run_ok(command).await;
    assert_eq!(
        lines, "https.get ENOTFOUND\nfetch ENOTFOUND\n",
        "Node {version}"
    );
    assert!(recipe.upstream.seen().is_empty());
    let connects = recipe
        .metric("fusebox_intercepted_connections_total", &[])
        .await;
    assert_eq!(connects, 0.0, "nothing reached fusebox");
}

/// The registry document `npm view demo` reads (`GET /demo`).
fn npm_registry() -> Vec<File> {
    let packument = format!(
        r#"{{"name":"demo","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"demo","version":"1.0.0","dist":{{"tarball":"https://{HOST}/demo/-/demo-1.0.0.tgz","shasum":"0000000000000000000000000000000000000000"}}}}}}}}"#
    );
    vec![(
        "/demo".to_owned(),
        "application/json",
        packument.into_bytes(),
    )]
}

/// `npm view demo version --registry https://HOST/`, with no update check, no retries, a
/// fresh cache `HOME/CACHE` (a cached answer would need no request), and no global npmrc (a
/// machine's `PREFIX/etc/npmrc` may set `cafile`); the user npmrc is `HOME/.npmrc`. `env` says
/// how npm finds the proxy and the CA.
fn npm_view(recipe: &Recipe, cache: &str, env: &[(&str, &std::ffi::OsStr)]) -> Command {
    let mut command = recipe.client(which("npm"));
    command
        .args(["view", "demo", "version", "--registry"])
        .arg(recipe.url("/"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fetch_retries", "0")
        .env("npm_config_cache", recipe.home().join(cache))
        .env(
            "npm_config_globalconfig",
            recipe.home().join("no-global-npmrc"),
        );
    command.envs(env.iter().copied());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_trusts_fusebox_with_cafile() {
    let mut recipe = Recipe::start(npm_registry()).await;
    recipe.refused_as = "handshake_failed";
    let proxy = OsString::from(recipe.proxy());
    let env = [
        ("npm_config_https_proxy", proxy.as_os_str()),
        ("npm_config_cafile", recipe.ca_pem.as_os_str()),
    ];
    assert_eq!(run_ok(npm_view(&recipe, "c1", &env)).await, "1.0.0\n");
    recipe.assert_intercepted(&["/demo"]).await;

    recipe
        .refuses(
            npm_view(&recipe, "c2", &env[..1]),
            "SELF_SIGNED_CERT_IN_CHAIN",
        )
        .await;
}

/// `NODE_EXTRA_CA_CERTS` adds to Node's roots, which npm uses only while no npmrc sets `ca` or
/// `cafile`: one that does (some machines' global npmrc names the system bundle) replaces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_trusts_fusebox_with_node_extra_ca_certs_and_https_proxy() {
    let mut recipe = Recipe::start(npm_registry()).await;
    recipe.refused_as = "handshake_failed";
    let proxy = OsString::from(recipe.proxy());
    let env = [
        ("HTTPS_PROXY", proxy.as_os_str()),
        ("NODE_EXTRA_CA_CERTS", recipe.ca_pem.as_os_str()),
    ];
    assert_eq!(run_ok(npm_view(&recipe, "c1", &env)).await, "1.0.0\n");
    recipe.assert_intercepted(&["/demo"]).await;

    recipe
        .refuses(
            npm_view(&recipe, "c2", &env[..1]),
            "SELF_SIGNED_CERT_IN_CHAIN",
        )
        .await;

    // A cafile in the user's npmrc (here: a CA that is not fusebox's) overrides it.
    let rejected = recipe.refusals().await;
    let npmrc = format!("cafile={}\n", recipe.upstream_ca.display());
    std::fs::write(recipe.home().join(".npmrc"), npmrc).unwrap();
    let out = run(npm_view(&recipe, "c3", &env)).await;
    recipe
        .assert_refused(&out, rejected, "SELF_SIGNED_CERT_IN_CHAIN")
        .await;
}

/// `name` from PATH, or a failure that says how to install it.
fn which(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not on PATH: run `bash scripts/test-tools.sh` (bash .ci/run does)")
    })
}

// ---------------------------------------------------------------------------------------------
// cargo

/// A sparse registry at `https://HOST/index/` holding the crate `demo` 1.0.0.
fn cargo_registry() -> Vec<File> {
    let config = format!(r#"{{"dl":"https://{HOST}/api/v1/crates","api":"https://{HOST}"}}"#);
    let cksum = "0".repeat(64);
    let entry = format!(
        r#"{{"name":"demo","vers":"1.0.0","deps":[],"cksum":"{cksum}","features":{{}},"yanked":false}}"#
    ) + "\n";
    vec![
        (
            "/index/config.json".to_owned(),
            "application/json",
            config.into_bytes(),
        ),
        (
            "/index/de/mo/demo".to_owned(),
            "text/plain",
            entry.into_bytes(),
        ),
    ]
}

/// `cargo generate-lockfile` (the toolchain's own cargo) in a fresh project depending on
/// `demo` from the registry `trust` (`CARGO_REGISTRIES_TRUST_INDEX`), with a fresh
/// `CARGO_HOME` and no retries; `env` says how cargo finds the proxy and the CA.
fn cargo_generate_lockfile(
    recipe: &Recipe,
    name: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Command {
    let project = recipe.home().join(name);
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\ndemo = { version = \"1\", registry = \"trust\" }\n",
    )
    .unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    let cargo = Path::new(env!("CARGO"));
    let mut command = recipe.client(cargo);
    command
        .arg("generate-lockfile")
        .current_dir(&project)
        .env("CARGO_HOME", project.join("cargo-home"))
        .env("RUSTC", cargo.with_file_name("rustc"))
        .env(
            "CARGO_REGISTRIES_TRUST_INDEX",
            format!("sparse+https://{HOST}/index/"),
        )
        .env("CARGO_NET_RETRY", "0")
        .env("CARGO_TERM_COLOR", "never");
    command.envs(env.iter().copied());
    command
}

fn locked_demo(recipe: &Recipe, name: &str) -> bool {
    let lock =
        std::fs::read_to_string(recipe.home().join(name).join("Cargo.lock")).unwrap_or_default();
    lock.contains("name = \"demo\"\nversion = \"1.0.0\"\nsource = \"sparse+https://registry.trust.test/index/\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_trusts_fusebox_with_cargo_http_cainfo() {
    let recipe = Recipe::start(cargo_registry()).await;
    let proxy = OsString::from(recipe.proxy());
    let ca = recipe.ca_pem.as_os_str();

    // The proxy from cargo's own setting.
    let env = [
        ("CARGO_HTTP_PROXY", proxy.as_os_str()),
        ("CARGO_HTTP_CAINFO", ca),
    ];
    run_ok(cargo_generate_lockfile(&recipe, "a", &env)).await;
    assert!(locked_demo(&recipe, "a"));
    recipe
        .assert_intercepted(&["/index/config.json", "/index/de/mo/demo"])
        .await;

    // The proxy from HTTPS_PROXY.
    recipe.upstream.forget();
    let env = [
        ("HTTPS_PROXY", proxy.as_os_str()),
        ("CARGO_HTTP_CAINFO", ca),
    ];
    run_ok(cargo_generate_lockfile(&recipe, "b", &env)).await;
    assert!(locked_demo(&recipe, "b"));
    recipe
        .assert_intercepted(&["/index/config.json", "/index/de/mo/demo"])
        .await;

    // Without CARGO_HTTP_CAINFO, cargo trusts the system's roots only.
    recipe
        .refuses(
            cargo_generate_lockfile(&recipe, "c", &env[..1]),
            "self-signed certificate in certificate chain",
        )
        .await;
}

// ---------------------------------------------------------------------------------------------
// Java

/// `keytool -importcert` of fusebox's CA into a new PKCS12 truststore `HOME/fusebox-trust.p12`.
async fn java_truststore(recipe: &Recipe) -> PathBuf {
    let store = recipe.home().join("fusebox-trust.p12");
    let mut command = recipe.client(which("keytool"));
    command
        .args(["-importcert", "-noprompt", "-alias", "fusebox", "-file"])
        .arg(&recipe.ca_pem)
        .arg("-keystore")
        .arg(&store)
        .args(["-storetype", "PKCS12", "-storepass", "changeit"]);
    run_ok(command).await;
    store
}

/// `java [-D...] Fetch.java https://HOST/hello` with the proxy as system properties.
fn java_fetch(recipe: &Recipe, truststore: Option<&Path>) -> Command {
    let port = recipe.fusebox.agent().egress_addr().port();
    let mut command = recipe.client(which("java"));
    command
        .arg("-Dhttps.proxyHost=127.0.0.1")
        .arg(format!("-Dhttps.proxyPort={port}"));
    if let Some(store) = truststore {
        command
            .arg(format!("-Djavax.net.ssl.trustStore={}", store.display()))
            .arg("-Djavax.net.ssl.trustStorePassword=changeit")
            .arg("-Djavax.net.ssl.trustStoreType=PKCS12");
    }
    command
        .arg(peers::peer_script("Fetch.java"))
        .arg(recipe.url("/hello"));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_trusts_fusebox_with_a_pkcs12_truststore() {
    let mut recipe = Recipe::start(hello()).await;
    recipe.refused_as = "handshake_failed";
    let store = java_truststore(&recipe).await;
    let line = run_ok(java_fetch(&recipe, Some(&store))).await;
    assert!(
        line.starts_with("200 1.1 fusebox-") && line.ends_with(" hello through fusebox\n"),
        "{line}"
    );
    recipe.assert_intercepted(&["/hello"]).await;

    // Without it, the JDK's cacerts.
    recipe
        .refuses(java_fetch(&recipe, None), "PKIX path building failed")
        .await;
}

// ---------------------------------------------------------------------------------------------
// Go

/// `go build tests/peers/fetch.go` into `HOME/fetch` (build cache under target/go-cache, no
/// module downloads, no toolchain switch).
async fn go_fetch_binary(recipe: &Recipe) -> PathBuf {
    let binary = recipe.home().join("fetch");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/go-cache");
    let mut command = recipe.client(which("go"));
    command
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(peers::peer_script("fetch.go"))
        .env("GOCACHE", cache)
        .env("GOPATH", recipe.home().join("go"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off");
    run_ok(command).await;
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_trusts_fusebox_with_ssl_cert_file() {
    let recipe = Recipe::start(hello()).await;
    let binary = go_fetch_binary(&recipe).await;
    let fetch = |url: String, ca: &Path| {
        let mut command = recipe.client(&binary);
        command
            .arg(url)
            .env("HTTPS_PROXY", recipe.proxy())
            .env("SSL_CERT_FILE", ca);
        command
    };
    let line = run_ok(fetch(recipe.url("/hello"), &recipe.ca_pem)).await;
    assert!(
        line.starts_with("200 1.1 fusebox-") && line.ends_with(" hello through fusebox\n"),
        "{line}"
    );
    recipe.assert_intercepted(&["/hello"]).await;

    // Without it, the system's roots.
    let mut command = fetch(recipe.url("/hello"), &recipe.ca_pem);
    command.env_remove("SSL_CERT_FILE");
    recipe
        .refuses(command, "certificate signed by unknown authority")
        .await;

    // Go never sends localhost (or a loopback IP) to the proxy: this request goes straight to
    // the upstream (whose certificate also names localhost), without fusebox.
    let port = recipe.upstream.addr.port();
    let line = run_ok(fetch(
        format!("https://localhost:{port}/hello"),
        &recipe.upstream_ca,
    ))
    .await;
    assert_eq!(line, "200 - hello through fusebox\n");
    let seen = recipe.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].via, "-", "went direct, not through fusebox");
}

// ---------------------------------------------------------------------------------------------
// fusebox's own upstream trust (src/upstream/tls.rs): the platform's roots, loaded once per
// process by rustls-native-certs (which reads only `SSL_CERT_FILE` / `SSL_CERT_DIR` when either
// is set), webpki's bundled roots if that finds none, plus the policy's `ca_file`.

/// The fusebox binary as a child process with a cleared environment: `PATH` and `env` only.
/// With `system_certs`, it runs in a mount namespace of its own whose `/etc/ssl/certs` is that
/// directory (the host's stays as it is). Killed, by its PID, when dropped.
struct FuseboxChild {
    child: Child,
    egress: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _log_dir: TempDir,
}

impl FuseboxChild {
    async fn spawn(
        policies: &Path,
        ca_dir: &Path,
        env: &[(&str, &Path)],
        system_certs: Option<&Path>,
    ) -> FuseboxChild {
        for _ in 0..5 {
            let mut child = Self::start(policies, ca_dir, env, system_certs);
            match child.wait_ready().await {
                Ok(()) => return child,
                Err(logs) if logs.contains("Address already in use") => continue,
                Err(logs) => panic!("fusebox exited before it was ready:\n{logs}"),
            }
        }
        panic!("fusebox found no free ports in 5 tries");
    }

    fn start(
        policies: &Path,
        ca_dir: &Path,
        env: &[(&str, &Path)],
        system_certs: Option<&Path>,
    ) -> FuseboxChild {
        let (egress, admin) = {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let b = TcpListener::bind("127.0.0.1:0").unwrap();
            (a.local_addr().unwrap(), b.local_addr().unwrap())
        };
        let mut args: Vec<OsString> = vec![env!("CARGO_BIN_EXE_fusebox").into(), "run".into()];
        args.extend(["--policies".into(), policies.into()]);
        args.extend(["--listen".into(), egress.to_string().into()]);
        args.extend(["--admin".into(), admin.to_string().into()]);
        args.extend(["--ca-dir".into(), ca_dir.into()]);
        let mut command = match system_certs {
            None => Command::new(&args[0]),
            Some(certs) => {
                // unshare(1) without --fork execs sh, which mounts and execs fusebox: one PID.
                use std::os::unix::fs::MetadataExt;
                let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
                let mut command = Command::new("unshare");
                if !root {
                    command.arg("--map-root-user");
                }
                command
                    .args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$1\" /etc/ssl/certs && shift && exec \"$@\"")
                    .arg("sh")
                    .arg(certs)
                    .arg(&args[0]);
                command
            }
        };
        command.args(&args[1..]);
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("fusebox.log");
        let file = std::fs::File::create(&log).unwrap();
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = command.spawn().expect("spawn fusebox");
        FuseboxChild {
            child,
            egress,
            admin,
            log,
            _log_dir: log_dir,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until its admin listener answers `GET /readyz` with 200 (so the
    /// ports are fusebox's, not another process's); `Err(logs)` if the child exited.
    async fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("{status}: {}", self.logs()));
            }
            if ready(self.admin).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fusebox not ready after 10 s:\n{}", self.logs());
    }

    fn proxy(&self) -> String {
        format!("http://{}", self.egress)
    }
}

/// Whether `GET /readyz` on `admin` answers 200.
async fn ready(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut head));
    matches!(read.await, Ok(Ok(_))) && head == *b"HTTP/1.1 200"
}

impl Drop for FuseboxChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an app got: curl's `-D -` head and the body, through `proxy` (HTTPS_PROXY), trusting
/// fusebox's CA through `SSL_CERT_FILE` (the app's own environment).
async fn app_get(proxy: &str, fusebox_ca: &Path, url: &str) -> String {
    let mut command = Command::new("/usr/bin/curl");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HTTPS_PROXY", proxy)
        .env("SSL_CERT_FILE", fusebox_ca)
        .args([
            "-sS",
            "--max-time",
            "30",
            "--suppress-connect-headers",
            "-D",
            "-",
            url,
        ]);
    run_ok(command).await.to_lowercase()
}

fn assert_came_through(answer: &str) {
    assert!(answer.starts_with("http/2 200"), "{answer}");
    assert!(answer.contains("via: 1.1 fusebox-"), "{answer}");
    assert!(answer.ends_with("hello through fusebox\n"), "{answer}");
}

/// fusebox's local reply for an upstream certificate it does not trust.
fn assert_tls_verify_failed(answer: &str) {
    assert!(answer.starts_with("http/2 502"), "{answer}");
    assert!(
        answer.contains("x-fusebox-reason: tls-verify-failed"),
        "{answer}"
    );
    assert!(
        answer.contains(" did not verify: ") && answer.contains("ca_file"),
        "the body says why and names the fix: {answer}"
    );
}

/// A TLS upstream serving `/hello` for these names, signed by a fresh test CA, and that CA's
/// PEM file in `dir` (named `NAME.pem`).
async fn signed_upstream(names: &[&str], dir: &Path, name: &str) -> (Upstream, PathBuf) {
    let pki = TestPki::with_names(names);
    let upstream = Upstream::start(pki.server_config(), hello()).await;
    let ca = dir.join(format!("{name}.pem"));
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    (upstream, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fusebox_trusts_the_roots_in_ssl_cert_file_of_its_own_environment() {
    let work = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = signed_upstream(&[HOST], work.path(), "upstream-ca").await;
    let policy = registry_policy(HOST, upstream.addr.port(), None);
    let policies = policies_dir(&[("default", ""), ("registry", &policy)]);
    let ca_dir = work.path().join("fusebox-ca");
    let fusebox_ca = fusebox_ca_init(&ca_dir);
    let url = format!("https://{HOST}/hello");

    let env = [("SSL_CERT_FILE", upstream_ca.as_path())];
    let fusebox = FuseboxChild::spawn(policies.path(), &ca_dir, &env, None).await;
    assert_came_through(&app_get(&fusebox.proxy(), &fusebox_ca, &url).await);
    assert_eq!(upstream.seen().len(), 1);
    drop(fusebox);

    // The same fusebox without it: the system's roots, which do not hold the test CA.
    let fusebox = FuseboxChild::spawn(policies.path(), &ca_dir, &[], None).await;
    assert_tls_verify_failed(&app_get(&fusebox.proxy(), &fusebox_ca, &url).await);
    assert_eq!(
        upstream.seen().len(),
        1,
        "nothing more reached the upstream"
    );
}

/// The pitfall: `SSL_CERT_FILE=ca.pem` exported where fusebox runs too (meant for the app)
/// replaces fusebox's system roots with fusebox's own CA, and every upstream whose CA is in the
/// system store fails verification. The fixes: set it in the app's environment only, or give
/// the policy a `ca_file`. "The system store" here is a mount namespace's `/etc/ssl/certs`
/// whose `ca-certificates.crt` holds the upstream's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_exported_for_the_app_replaces_fusebox_s_system_roots() {
    let work = tempfile::tempdir().unwrap();
    let (upstream, upstream_ca) = signed_upstream(&[HOST], work.path(), "upstream-ca").await;
    let system_certs = work.path().join("etc-ssl-certs");
    std::fs::create_dir(&system_certs).unwrap();
    std::fs::copy(&upstream_ca, system_certs.join("ca-certificates.crt")).unwrap();
    let port = upstream.addr.port();
    let policies = policies_dir(&[
        ("default", ""),
        ("registry", &registry_policy(HOST, port, None)),
    ]);
    let ca_dir = work.path().join("fusebox-ca");
    let fusebox_ca = fusebox_ca_init(&ca_dir);
    let url = format!("https://{HOST}/hello");

    // SSL_CERT_FILE in the app's environment only: fusebox verifies with the system store.
    let system = Some(system_certs.as_path());
    let fusebox = FuseboxChild::spawn(policies.path(), &ca_dir, &[], system).await;
    assert_came_through(&app_get(&fusebox.proxy(), &fusebox_ca, &url).await);
    drop(fusebox);

    // Exported for fusebox too: its roots are now fusebox's CA alone.
    let env = [("SSL_CERT_FILE", fusebox_ca.as_path())];
    let fusebox = FuseboxChild::spawn(policies.path(), &ca_dir, &env, system).await;
    let answer = app_get(&fusebox.proxy(), &fusebox_ca, &url).await;
    assert_tls_verify_failed(&answer);
    assert!(answer.contains("did not verify: unknownissuer"), "{answer}");
    assert_eq!(upstream.seen().len(), 1, "the impostor check stopped it");
    drop(fusebox);

    // Still exported, but the policy names the upstream's CA in ca_file.
    let with_ca_file = registry_policy(HOST, port, Some("upstream-ca.pem"));
    let policies = policies_dir(&[("default", ""), ("registry", &with_ca_file)]);
    std::fs::copy(&upstream_ca, policies.path().join("upstream-ca.pem")).unwrap();
    let fusebox = FuseboxChild::spawn(policies.path(), &ca_dir, &env, system).await;
    assert_came_through(&app_get(&fusebox.proxy(), &fusebox_ca, &url).await);
    assert_eq!(upstream.seen().len(), 2);
}

/// A policy's `ca_file` adds to fusebox's roots (here those of `SSL_CERT_FILE`), for that
/// policy only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_ca_file_adds_roots_for_that_policy_only() {
    let work = tempfile::tempdir().unwrap();
    let (one, base_ca) = signed_upstream(&["one.trust.test"], work.path(), "base-ca").await;
    let names = ["two.trust.test", "three.trust.test"];
    let (other, other_ca) = signed_upstream(&names, work.path(), "other-ca").await;
    let policies = policies_dir(&[
        ("default", ""),
        (
            "one",
            &registry_policy("one.trust.test", one.addr.port(), Some("other-ca.pem")),
        ),
        (
            "two",
            &registry_policy("two.trust.test", other.addr.port(), Some("other-ca.pem")),
        ),
        (
            "three",
            &registry_policy("three.trust.test", other.addr.port(), None),
        ),
    ]);
    std::fs::copy(&other_ca, policies.path().join("other-ca.pem")).unwrap();
    let ca_dir = work.path().join("fusebox-ca");
    let fusebox_ca = fusebox_ca_init(&ca_dir);
    let env = [("SSL_CERT_FILE", base_ca.as_path())];
    let fusebox = FuseboxChild::spawn(policies.path(), &ca_dir, &env, None).await;
    let get = |host: &str| {
        let url = format!("https://{host}/hello");
        let proxy = fusebox.proxy();
        let ca = fusebox_ca.clone();
        async move { app_get(&proxy, &ca, &url).await }
    };

    // ca_file added other-ca; base-ca is still trusted.
    assert_came_through(&get("one.trust.test").await);
    assert_came_through(&get("two.trust.test").await);
    // Without ca_file, other-ca is unknown.
    assert_tls_verify_failed(&get("three.trust.test").await);
    assert_eq!((one.seen().len(), other.seen().len()), (1, 1));
}
