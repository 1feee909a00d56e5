//! Hot reload (docs/ARCHITECTURE.md §7): reloads under load through every trigger (file watch,
//! `POST /reload`, `SIGHUP`) and every way an operator or Kubernetes rewrites a file (in place,
//! write-then-rename, a ConfigMap's `..data` symlink swap); invalid edits refused with
//! `file:line:col` while the old policies keep serving; the state of unchanged policies kept, that
//! of changed ones carried component by component, forced breakers carried over; route listeners
//! opened, moved and closed to match the policies.
//!
//! Timing: nothing depends on how fast the machine is. Waits are bounded polls (they only
//! bound how long a broken fusebox takes to fail the test), and every file write is atomic
//! as seen by a reload that may run at any moment (rename, symlink swap, or an in-place write
//! that changes one byte of a file whose length stays the same), so a reload can never observe
//! a half-written policy and apply a change the test did not count.

mod support;

use support::metrics::metric;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{direct_client, policies_dir, FakeUpstream, FuseboxProcess, Reply, TestFusebox};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// How long a bounded poll waits for something that should happen soon (a reload after a
/// file change is debounced 250 ms; a listener closes as soon as its task runs). Only a
/// broken fusebox makes a test wait this long.
const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it holds; panics after [`WAIT`].
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
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

/// The reload metrics of the admin server at `admin_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReloadMetrics {
    generation: u64,
    successes: u64,
    failures: u64,
    unchanged: u64,
}

async fn reload_metrics(admin_url: &str) -> ReloadMetrics {
    let response = direct_client()
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "GET /metrics");
    let text = response.text().await.expect("metrics body");
    let count = |value: f64| {
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "a whole number: {value}"
        );
        // Whole, non-negative and far below 2^53: the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        value
    };
    ReloadMetrics {
        generation: count(metric(&text, "fusebox_config_generation", &[])),
        successes: count(metric(
            &text,
            "fusebox_config_reloads_total",
            &[("result", "success")],
        )),
        failures: count(metric(
            &text,
            "fusebox_config_reloads_total",
            &[("result", "failure")],
        )),
        unchanged: count(metric(
            &text,
            "fusebox_config_reloads_total",
            &[("result", "unchanged")],
        )),
    }
}

/// `POST /reload`: the status and the JSON body.
async fn post_reload(admin_url: &str) -> (StatusCode, Value) {
    let response = direct_client()
        .post(format!("{admin_url}/reload"))
        .send()
        .await
        .expect("POST /reload");
    let status = response.status();
    let body = response.text().await.expect("reload body");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("POST /reload answered {status} with non-JSON {body:?}: {e}"));
    (status, json)
}

/// `POST /reload` that must succeed; returns the generation it reports.
async fn reload_ok(admin_url: &str) -> u64 {
    let (status, json) = post_reload(admin_url).await;
    assert_eq!(status, StatusCode::OK, "POST /reload: {json}");
    json["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("POST /reload 200 without a generation: {json}"))
}

/// `POST /reload` that must be refused; returns its `errors`.
async fn reload_refused(admin_url: &str) -> Vec<String> {
    let (status, json) = post_reload(admin_url).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "POST /reload: {json}");
    let errors: Vec<String> = json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("POST /reload 400 without an `errors` array: {json}"))
        .iter()
        .map(|e| e.as_str().expect("each error is a string").to_owned())
        .collect();
    assert!(
        !errors.is_empty(),
        "POST /reload 400 with no errors: {json}"
    );
    errors
}

/// Whether one of `errors` is `.../FILE:LINE:COL: ...` for this file and line.
fn has_location(errors: &[String], file: &str, line: usize) -> bool {
    let needle = format!("{file}:{line}:");
    errors.iter().any(|error| {
        error.match_indices(&needle).any(|(at, _)| {
            let rest = &error[at + needle.len()..];
            let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !col.is_empty() && rest[col.len()..].starts_with(':')
        })
    })
}

/// `GET /upstreams/{name}`: one JSON object per destination.
async fn destinations(admin_url: &str, name: &str) -> Vec<Value> {
    let response = direct_client()
        .get(format!("{admin_url}/upstreams/{name}"))
        .send()
        .await
        .expect("GET /upstreams/{name}");
    assert_eq!(response.status(), 200, "GET /upstreams/{name}");
    let body = response.text().await.expect("upstreams body");
    let json: Value = serde_json::from_str(&body).expect("upstreams JSON");
    json.as_array().expect("a JSON array").clone()
}

/// The view of `upstream`'s destination `authority`, if it exists yet.
async fn destination(admin_url: &str, upstream: &str, authority: &str) -> Option<Value> {
    destinations(admin_url, upstream)
        .await
        .into_iter()
        .find(|d| d["destination"] == authority)
}

/// `GET /config`.
async fn get_config(admin_url: &str) -> Value {
    let response = direct_client()
        .get(format!("{admin_url}/config"))
        .send()
        .await
        .expect("GET /config");
    assert_eq!(response.status(), 200, "GET /config");
    let body = response.text().await.expect("config body");
    serde_json::from_str(&body).expect("config JSON")
}

/// `window.calls` of a destination view.
fn window_calls(view: &Value) -> u64 {
    view["window"]["calls"]
        .as_u64()
        .unwrap_or_else(|| panic!("no window.calls in {view}"))
}

/// `POST /upstreams/{name}/breaker?action=ACTION`.
async fn breaker_command(admin_url: &str, name: &str, action: &str) {
    let response = direct_client()
        .post(format!(
            "{admin_url}/upstreams/{name}/breaker?action={action}"
        ))
        .send()
        .await
        .expect("POST breaker command");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{action} on {name}: {body}");
}

/// `GET url` through fusebox: status, `x-fusebox-reason`, body.
async fn call(app: &reqwest::Client, url: &str) -> (u16, Option<String>, String) {
    let response = app.get(url).send().await.expect("app request");
    let status = response.status().as_u16();
    let reason = response
        .headers()
        .get("x-fusebox-reason")
        .map(|v| v.to_str().expect("ascii reason").to_owned());
    let body = response.text().await.expect("app response body");
    (status, reason, body)
}

/// `N` distinct loopback ports nobody listens on right now (bound to port 0 together, then
/// released).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// Whether connecting to `addr` is refused (nothing listens there).
async fn refuses(addr: SocketAddr) -> bool {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

/// Replaces `path` atomically: writes a temporary file beside `tmp_dir`'s name, renames it.
fn write_renamed(path: &Path, tmp: &Path, contents: &str) {
    std::fs::write(tmp, contents).expect("write temporary policy file");
    std::fs::rename(tmp, path).expect("rename over the policy file");
}

async fn start(policies: &[(&str, &str)]) -> TestFusebox {
    TestFusebox::start_with(policies_dir(policies), |config| config.jitter = false).await
}

// ---------------------------------------------------------------------------------------------
// 1. Reload under load.

/// How a broken `b.toml` is broken; each changes one byte of the valid text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breakage {
    /// `consecutive_failures : 5`: not TOML.
    BadToml,
    /// `windoq = "10m"`: an unknown key.
    UnknownKey,
    /// `attempt = "2x"`: not a duration.
    BadDuration,
}

impl Breakage {
    /// The line of `b.toml` (see [`render_b`]) the error must point at.
    fn line(self) -> usize {
        match self {
            Breakage::BadDuration => 3,
            Breakage::UnknownKey => 8,
            Breakage::BadToml => 9,
        }
    }
}

/// The settings the test changes in `b.toml`: single digits, so that every variant of the
/// file has the same length and two neighbours differ in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BSettings {
    /// `timeouts.attempt`, seconds (2..=9).
    attempt: u8,
    /// `breaker.consecutive_failures` (3..=9).
    failures: u8,
}

fn render_b(port: u16, settings: BSettings, breakage: Option<Breakage>) -> String {
    assert!((2..=9).contains(&settings.attempt) && (3..=9).contains(&settings.failures));
    let unit = if breakage == Some(Breakage::BadDuration) {
        'x'
    } else {
        's'
    };
    let window = if breakage == Some(Breakage::UnknownKey) {
        "windoq"
    } else {
        "window"
    };
    let assign = if breakage == Some(Breakage::BadToml) {
        ':'
    } else {
        '='
    };
    format!(
        "hosts = [\"127.0.0.1:{port}\"]\n\
         [timeouts]\n\
         attempt = \"{attempt}{unit}\"\n\
         total = \"30s\"\n\
         [retry]\n\
         attempts = 1\n\
         [breaker]\n\
         {window} = \"10m\"\n\
         consecutive_failures {assign} {failures}\n",
        attempt = settings.attempt,
        failures = settings.failures,
    )
}

/// How `b.toml` is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    /// Overwritten in place: same length, one byte changed (never truncated).
    InPlace,
    /// Written to the hidden `.b.toml.tmp` in the directory, renamed over `b.toml`.
    TempInDir,
    /// Written to a file outside the directory (same file system), renamed over `b.toml`.
    TempOutside,
    /// Kubernetes ConfigMap: `b.toml -> ..data/b.toml`, `..data -> ..TIMESTAMP`; a new
    /// timestamped directory, a `..data_tmp` symlink to it renamed over `..data`.
    SymlinkSwap,
}

/// Rewrites `b.toml` in a policies directory, by the requested [`Method`].
struct BWriter {
    dir: PathBuf,
    outside: tempfile::TempDir,
    /// What `b.toml` holds now.
    current: String,
    /// `b.toml` is a symlink through `..data`.
    linked: bool,
    /// The timestamped directory `..data` points to.
    data_dir: Option<PathBuf>,
    serial: u32,
    used: BTreeMap<Method, u32>,
}

impl BWriter {
    fn new(dir: &Path, current: String) -> BWriter {
        let parent = dir.parent().expect("the policies dir has a parent");
        BWriter {
            dir: dir.to_owned(),
            // Beside the policies directory, so that a rename from it stays on one file system.
            outside: tempfile::tempdir_in(parent).expect("create a directory outside"),
            current,
            linked: false,
            data_dir: None,
            serial: 0,
            used: BTreeMap::new(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("b.toml")
    }

    /// Writes `contents` by `method` (an in-place write that would change more than one
    /// byte is done by rename instead); returns the method used.
    fn write(&mut self, contents: &str, method: Method) -> Method {
        assert_eq!(
            method == Method::SymlinkSwap,
            self.linked,
            "symlink swaps exactly while b.toml is linked through ..data"
        );
        let one_byte = contents.len() == self.current.len()
            && contents
                .bytes()
                .zip(self.current.bytes())
                .filter(|(a, b)| a != b)
                .count()
                <= 1;
        let method = if method == Method::InPlace && !one_byte {
            Method::TempInDir
        } else {
            method
        };
        match method {
            Method::InPlace => {
                // No truncation: the file never looks empty or short to a concurrent reload.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.path())
                    .expect("open b.toml for writing");
                file.write_all(contents.as_bytes()).expect("write b.toml");
            }
            Method::TempInDir => {
                write_renamed(&self.path(), &self.dir.join(".b.toml.tmp"), contents)
            }
            Method::TempOutside => {
                write_renamed(
                    &self.path(),
                    &self.outside.path().join("b.toml.new"),
                    contents,
                );
            }
            Method::SymlinkSwap => self.swap_data(contents),
        }
        *self.used.entry(method).or_default() += 1;
        self.current = contents.to_owned();
        method
    }

    /// A fresh `..TIMESTAMP` directory holding `b.toml`, made the target of `..data`
    /// atomically; the previous one is removed, as the kubelet does.
    fn swap_data(&mut self, contents: &str) {
        self.serial += 1;
        let data_dir = self
            .dir
            .join(format!("..2025_01_01_00_00_{:02}.000000001", self.serial));
        std::fs::create_dir(&data_dir).expect("create timestamped dir");
        std::fs::write(data_dir.join("b.toml"), contents).expect("write b.toml in it");
        let tmp_link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(data_dir.file_name().expect("name"), &tmp_link)
            .expect("create ..data_tmp");
        std::fs::rename(&tmp_link, self.dir.join("..data")).expect("rename ..data_tmp over ..data");
        if let Some(old) = self.data_dir.replace(data_dir) {
            std::fs::remove_dir_all(old).expect("remove the previous timestamped dir");
        }
    }

    /// Turns `b.toml` into the ConfigMap layout (same contents: a no-op for fusebox).
    fn link(&mut self) {
        assert!(!self.linked);
        let contents = self.current.clone();
        self.linked = true;
        self.swap_data(&contents);
        let tmp_link = self.dir.join(".b.toml.link");
        std::os::unix::fs::symlink("..data/b.toml", &tmp_link).expect("create b.toml link");
        std::fs::rename(&tmp_link, self.path()).expect("rename the link over b.toml");
    }

    /// Replaces the `b.toml` symlink with a regular file holding `contents`.
    fn unlink(&mut self, contents: &str) {
        assert!(self.linked);
        self.linked = false;
        self.write(contents, Method::TempOutside);
    }
}

/// What one of the 50 rewrites does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A valid change to different settings: the generation goes up by one.
    Change,
    /// The active settings again (after an invalid write, or unchanged): no new generation.
    Same,
    /// A broken file: refused, the old policies keep serving.
    Break(Breakage),
}

/// How a rewrite is reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// Only by the file watcher: wait for the metrics to show the result.
    Watch,
    /// `POST /reload` right after the write (the watcher may beat it: same result).
    Post,
}

/// How many times the test rewrites `b.toml`.
const REWRITES: usize = 50;
/// The rewrites done while `b.toml` is a ConfigMap-style symlink (the last one turns it back
/// into a regular file).
const LINKED: std::ops::Range<usize> = 30..40;

/// Traffic the app tasks sent, per destination.
#[derive(Default)]
struct Traffic {
    started: AtomicU64,
    done: AtomicU64,
}

/// The acceptance test of hot reload: 50 rewrites of `b.toml` (a third of them invalid, some
/// identical to what is active) under continuous traffic to A (`a.toml`, never changed) and B.
/// No request fails; the generation goes up exactly once per valid distinct change; every
/// refused reload is counted; A keeps its breaker (its window counts every A request), B's
/// starts over on each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_drops_nothing_and_keeps_unchanged_state() {
    let upstream_a = FakeUpstream::with_status(200).await;
    let upstream_b = FakeUpstream::with_status(200).await;
    let a_policy = format!(
        "hosts = [\"{}\"]\n[retry]\nattempts = 1\n[breaker]\nwindow = \"10m\"\n",
        upstream_a.authority()
    );
    let b_port = upstream_b.addr().port();
    let mut active = BSettings {
        attempt: 2,
        failures: 5,
    };
    let fusebox = start(&[("a", &a_policy), ("b", &render_b(b_port, active, None))]).await;
    let admin = fusebox.admin_url();
    let a_authority = upstream_a.authority();
    let b_authority = upstream_b.authority();

    // The app: three tasks at once, each a loop of back-to-back requests alternating A and B.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic_a = Arc::new(Traffic::default());
    let traffic_b = Arc::new(Traffic::default());
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for task in 0..3 {
        let app = fusebox.app();
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        let targets = [
            (upstream_a.url("/a"), Arc::clone(&traffic_a)),
            (upstream_b.url("/b"), Arc::clone(&traffic_b)),
        ];
        clients.push(tokio::spawn(async move {
            let mut n = task;
            while !stop.load(Ordering::SeqCst) {
                let (url, traffic) = &targets[n % 2];
                n += 1;
                traffic.started.fetch_add(1, Ordering::SeqCst);
                let result = app.get(url).send().await;
                let outcome = match result {
                    Ok(response) => {
                        let status = response.status();
                        let reason = response.headers().get("x-fusebox-reason").cloned();
                        match response.text().await {
                            Ok(body)
                                if status == 200
                                    && reason.is_none()
                                    && body.starts_with("fake upstream: 200") =>
                            {
                                None
                            }
                            Ok(body) => Some(format!("{url}: {status} {reason:?} {body:?}")),
                            Err(e) => Some(format!("{url}: {status}, body failed: {e}")),
                        }
                    }
                    Err(e) => Some(format!("{url}: {e}")),
                };
                traffic.done.fetch_add(1, Ordering::SeqCst);
                if let Some(failure) = outcome {
                    failures.lock().expect("lock").push(failure);
                }
            }
        }));
    }
    wait_for("traffic to both destinations", || {
        let (a, b) = (Arc::clone(&traffic_a), Arc::clone(&traffic_b));
        async move { a.done.load(Ordering::SeqCst) >= 20 && b.done.load(Ordering::SeqCst) >= 20 }
    })
    .await;

    let first = reload_metrics(&admin).await;
    let a_first = destination(&admin, "a", &a_authority)
        .await
        .expect("A has a destination");
    let mut a_calls = window_calls(&a_first);

    let mut writer = BWriter::new(fusebox.dir(), render_b(b_port, active, None));
    let mut generation = first.generation;
    let (mut changes, mut posted_breaks, mut watched_breaks) = (0u32, 0u32, 0u32);
    let mut b_done_before_last_change = 0;
    for i in 0..REWRITES {
        let step = if i % 3 == 1 {
            Step::Break(
                [
                    Breakage::BadToml,
                    Breakage::UnknownKey,
                    Breakage::BadDuration,
                ][(i / 3) % 3],
            )
        } else if i % 8 == 6 {
            Step::Same
        } else {
            Step::Change
        };
        let settings = match step {
            Step::Change if changes % 2 == 0 => BSettings {
                attempt: if active.attempt == 9 {
                    2
                } else {
                    active.attempt + 1
                },
                ..active
            },
            Step::Change => BSettings {
                failures: if active.failures == 9 {
                    3
                } else {
                    active.failures + 1
                },
                ..active
            },
            Step::Same | Step::Break(_) => active,
        };
        let breakage = match step {
            Step::Break(breakage) => Some(breakage),
            _ => None,
        };
        let contents = render_b(b_port, settings, breakage);
        let trigger = match step {
            Step::Change if changes % 2 == 1 => Trigger::Watch,
            Step::Break(_) if i % 9 == 7 => Trigger::Watch,
            _ => Trigger::Post,
        };

        if i == LINKED.start {
            // Into the ConfigMap layout: the same contents, so nothing to apply.
            writer.link();
            assert_eq!(
                reload_ok(&admin).await,
                generation,
                "linking b.toml changed nothing"
            );
        }
        let before = reload_metrics(&admin).await;
        let b_done_before = traffic_b.done.load(Ordering::SeqCst);
        let b_calls_before = destination(&admin, "b", &b_authority)
            .await
            .map_or(0, |view| window_calls(&view));
        let breaker_changed = settings.failures != active.failures;
        let method = if i == LINKED.end {
            writer.unlink(&contents);
            Method::TempOutside
        } else if LINKED.contains(&i) {
            writer.write(&contents, Method::SymlinkSwap)
        } else {
            let method = [
                Method::InPlace,
                Method::TempInDir,
                Method::InPlace,
                Method::TempOutside,
            ][i % 4];
            writer.write(&contents, method)
        };
        let context = format!("rewrite {i}: {step:?} by {method:?}, reloaded by {trigger:?}");

        match (step, trigger) {
            (Step::Change, trigger) => {
                changes += 1;
                generation += 1;
                active = settings;
                if breaker_changed {
                    b_done_before_last_change = b_done_before;
                }
                if trigger == Trigger::Post {
                    assert_eq!(reload_ok(&admin).await, generation, "{context}");
                } else {
                    let admin = admin.as_str();
                    wait_for(
                        &format!("generation {generation} after {context}"),
                        || async move { reload_metrics(admin).await.generation >= generation },
                    )
                    .await;
                }
                assert_eq!(
                    reload_metrics(&admin).await.generation,
                    generation,
                    "{context}"
                );
                let b_calls = destination(&admin, "b", &b_authority)
                    .await
                    .map_or(0, |view| window_calls(&view));
                if breaker_changed {
                    // B's `[breaker]` changed: its breaker started over after the swap, so it
                    // counts no request that had completed before the rewrite.
                    let b_started = traffic_b.started.load(Ordering::SeqCst);
                    assert!(
                        b_calls <= b_started - b_done_before,
                        "{context}: B's window holds {b_calls} calls, but only {} requests \
                         were sent after {b_done_before} completed before the change: not reset",
                        b_started - b_done_before
                    );
                } else {
                    // Only `[timeouts]` changed: the breaker is carried over, window and all
                    // (10 minutes: nothing expires during the test).
                    assert!(
                        b_calls >= b_calls_before,
                        "{context}: B's window fell from {b_calls_before} to {b_calls} calls: \
                         the unchanged breaker was reset"
                    );
                }
            }
            (Step::Same, _) => {
                assert_eq!(
                    reload_ok(&admin).await,
                    generation,
                    "{context}: identical policies are no new generation"
                );
            }
            (Step::Break(breakage), Trigger::Post) => {
                posted_breaks += 1;
                let errors = reload_refused(&admin).await;
                assert!(
                    has_location(&errors, "b.toml", breakage.line()),
                    "{context}: expected an error at b.toml:{}:COL, got {errors:#?}",
                    breakage.line()
                );
                let after = reload_metrics(&admin).await;
                assert!(
                    after.failures > before.failures,
                    "{context}: failure not counted"
                );
                assert_eq!(after.generation, generation, "{context}");
            }
            (Step::Break(_), Trigger::Watch) => {
                watched_breaks += 1;
                let admin = admin.as_str();
                wait_for(
                    &format!("a counted failure after {context}"),
                    || async move { reload_metrics(admin).await.failures > before.failures },
                )
                .await;
                assert_eq!(
                    reload_metrics(admin).await.generation,
                    generation,
                    "{context}"
                );
            }
        }

        // A's policy never changed: its destination, and so its breaker window, is the one
        // from before the first rewrite, which has counted every A request completed so far.
        // (`since` is not compared: it is rendered from two clock readings, to the ms.)
        let a_done_now = traffic_a.done.load(Ordering::SeqCst);
        let a_view = destination(&admin, "a", &a_authority)
            .await
            .unwrap_or_else(|| panic!("{context}: A's destination is gone"));
        assert_eq!(a_view["state"], "closed", "{context}");
        let calls = window_calls(&a_view);
        assert!(
            calls >= a_calls && calls >= a_done_now,
            "{context}: A's window went from {a_calls} to {calls} calls, with {a_done_now} \
             A requests done: its breaker was replaced"
        );
        a_calls = calls;
    }
    assert!(!writer.linked);

    // A few more requests after the last rewrite, then the app stops.
    let a_done = traffic_a.done.load(Ordering::SeqCst);
    let b_done = traffic_b.done.load(Ordering::SeqCst);
    wait_for("traffic after the last rewrite", || {
        let (a, b) = (Arc::clone(&traffic_a), Arc::clone(&traffic_b));
        async move {
            a.done.load(Ordering::SeqCst) >= a_done + 10
                && b.done.load(Ordering::SeqCst) >= b_done + 10
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("app task");
    }

    let failed = failures.lock().expect("lock").clone();
    let (total_a, total_b) = (
        traffic_a.done.load(Ordering::SeqCst),
        traffic_b.done.load(Ordering::SeqCst),
    );
    assert!(
        failed.is_empty(),
        "{} of {} app requests failed during reloads:\n{}",
        failed.len(),
        total_a + total_b,
        failed.join("\n")
    );
    assert_eq!(upstream_a.hits(), total_a, "every A request reached A once");
    assert_eq!(upstream_b.hits(), total_b, "every B request reached B once");

    // The generation went up exactly once per valid distinct change.
    let last = reload_metrics(&admin).await;
    assert!(
        changes >= 25,
        "the plan has {changes} valid distinct changes"
    );
    assert_eq!(last.generation, first.generation + u64::from(changes));
    assert!(last.successes >= first.successes + u64::from(changes));
    assert!(
        last.failures >= first.failures + u64::from(posted_breaks),
        "{posted_breaks} invalid rewrites were refused by POST /reload, yet the failure \
         counter went from {} to {}",
        first.failures,
        last.failures
    );
    assert!(last.failures >= first.failures + u64::from(posted_breaks + watched_breaks));
    assert!(
        posted_breaks >= 10 && watched_breaks >= 2,
        "{posted_breaks} {watched_breaks}"
    );

    // A kept one breaker all along: it counted every A request. B's was replaced on each
    // change of its `[breaker]`: it counts at most what was sent after the last one.
    let a_view = destination(&admin, "a", &a_authority).await.expect("A");
    assert_eq!(
        window_calls(&a_view),
        total_a,
        "A's window counts every A request"
    );
    let b_view = destination(&admin, "b", &b_authority).await.expect("B");
    let b_calls = window_calls(&b_view);
    assert!(b_done_before_last_change > 0);
    assert!(
        b_calls <= total_b - b_done_before_last_change,
        "B's window holds {b_calls} calls of {total_b}; {b_done_before_last_change} were done \
         before B's breaker last changed"
    );

    // Every way of writing was used.
    for method in [
        Method::InPlace,
        Method::TempInDir,
        Method::TempOutside,
        Method::SymlinkSwap,
    ] {
        assert!(
            writer.used.get(&method).copied().unwrap_or(0) >= 2,
            "{method:?} used {:?}",
            writer.used
        );
    }
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. A forced breaker survives a reload of its changed policy.

#[tokio::test]
async fn forced_open_breaker_survives_a_reload_of_its_changed_policy() {
    let upstream_a = FakeUpstream::with_status(200).await;
    let upstream_b = FakeUpstream::with_status(200).await;
    let a_policy = format!("hosts = [\"{}\"]\n", upstream_a.authority());
    let b_policy = |attempt: &str| {
        format!(
            "hosts = [\"{}\"]\n[timeouts]\nattempt = \"{attempt}\"\n[breaker]\nopen_base = \"30s\"\n",
            upstream_b.authority()
        )
    };
    let fusebox = start(&[("a", &a_policy), ("b", &b_policy("2s"))]).await;
    let (admin, app) = (fusebox.admin_url(), fusebox.app());
    let (url_a, url_b) = (upstream_a.url("/"), upstream_b.url("/"));

    assert_eq!(call(&app, &url_b).await.0, 200);
    breaker_command(&admin, "b", "force-open").await;
    let (status, reason, _) = call(&app, &url_b).await;
    assert_eq!((status, reason.as_deref()), (503, Some("breaker-open")));

    std::fs::write(fusebox.dir().join("b.toml"), b_policy("3s")).expect("rewrite b.toml");
    assert_eq!(reload_ok(&admin).await, 2);
    // The new policy is in effect...
    let config = get_config(&admin).await;
    assert_eq!(config["generation"], 2);
    assert_eq!(
        config["policies"]["b"]["timeouts"]["attempt"], "3s",
        "b's new attempt timeout is in effect"
    );
    // ...and the operator's force-open with it.
    let view = destination(&admin, "b", &upstream_b.authority())
        .await
        .expect("B's destination carried over");
    assert_eq!(view["forced"], "open", "{view}");
    assert_eq!(view["state"], "open", "{view}");
    let hits = upstream_b.hits();
    let (status, reason, _) = call(&app, &url_b).await;
    assert_eq!((status, reason.as_deref()), (503, Some("breaker-open")));
    assert_eq!(upstream_b.hits(), hits, "nothing reaches a forced-open B");
    assert_eq!(call(&app, &url_a).await.0, 200, "A is not affected");

    // Still forced after a second reload, then reset lets traffic through.
    std::fs::write(fusebox.dir().join("b.toml"), b_policy("4s")).expect("rewrite b.toml");
    assert_eq!(reload_ok(&admin).await, 3);
    assert_eq!(call(&app, &url_b).await.0, 503);
    breaker_command(&admin, "b", "reset").await;
    let (status, reason, _) = call(&app, &url_b).await;
    assert_eq!((status, reason), (200, None));
    let view = destination(&admin, "b", &upstream_b.authority())
        .await
        .expect("B");
    assert_eq!(view["forced"], Value::Null, "{view}");
    assert_eq!(view["state"], "closed", "{view}");
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Route listeners follow the policies.

#[tokio::test]
async fn route_listeners_open_move_and_close_with_the_policies() {
    let upstream = FakeUpstream::builder()
        .status(200)
        .route("/slow", [Reply::Status(200).after(Duration::from_secs(1))])
        .start()
        .await;
    let route_policy = |port: u16| {
        format!(
            "listen = \"127.0.0.1:{port}\"\nendpoints = [\"{}\"]\n",
            upstream.authority()
        )
    };
    let [port1, port2, port3] = free_ports();
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let fusebox = start(&[("r", &route_policy(port1))]).await;
    let admin = fusebox.admin_url();
    let direct = direct_client();
    assert_eq!(fusebox.agent().route_addr("r"), Some(addr(port1)));
    let ok = direct
        .get(format!("http://{}/ok", addr(port1)))
        .send()
        .await
        .expect("GET via port 1");
    assert_eq!(ok.status(), 200);

    // A slow request is under way on port 1 while the route moves to port 2.
    let hits = upstream.hits();
    let slow = tokio::spawn(
        direct_client()
            .get(format!("http://{}/slow", addr(port1)))
            .send(),
    );
    upstream.wait_hits(hits + 1).await;
    std::fs::write(fusebox.dir().join("r.toml"), route_policy(port2)).expect("rewrite r.toml");
    assert_eq!(reload_ok(&admin).await, 2);
    assert_eq!(fusebox.agent().route_addr("r"), Some(addr(port2)));
    let moved = direct
        .get(format!("http://{}/ok", addr(port2)))
        .send()
        .await
        .expect("GET via port 2");
    assert_eq!(moved.status(), 200);
    wait_for("port 1 to close", || refuses(addr(port1))).await;
    let slow = slow
        .await
        .expect("slow task")
        .expect("the slow request completes");
    assert_eq!(
        slow.status(),
        200,
        "a request in flight on a closed listener completes"
    );
    assert!(slow.headers().get("x-fusebox-reason").is_none());

    // Removing the policy closes its listener.
    std::fs::remove_file(fusebox.dir().join("r.toml")).expect("remove r.toml");
    assert_eq!(reload_ok(&admin).await, 3);
    assert_eq!(fusebox.agent().route_addr("r"), None);
    wait_for("port 2 to close", || refuses(addr(port2))).await;

    // A new route policy opens its listener.
    std::fs::write(fusebox.dir().join("s.toml"), route_policy(port3)).expect("write s.toml");
    assert_eq!(reload_ok(&admin).await, 4);
    assert_eq!(fusebox.agent().route_addr("s"), Some(addr(port3)));
    let opened = direct
        .get(format!("http://{}/ok", addr(port3)))
        .send()
        .await
        .expect("GET via port 3");
    assert_eq!(opened.status(), 200);
    assert!(refuses(addr(port1)).await && refuses(addr(port2)).await);
    fusebox.shutdown().await;
}

/// Renaming a route policy's file (a ConfigMap reorganised, a policy renamed) keeps its
/// `listen` address: the new policy must take the port over from the old one.
#[tokio::test]
async fn route_listener_port_follows_a_renamed_policy() {
    let upstream = FakeUpstream::with_status(200).await;
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let policy = format!(
        "listen = \"{addr}\"\nendpoints = [\"{}\"]\n",
        upstream.authority()
    );
    let fusebox = start(&[("r", &policy)]).await;
    let admin = fusebox.admin_url();
    assert_eq!(fusebox.agent().route_addr("r"), Some(addr));

    write_renamed(
        &fusebox.dir().join("s.toml"),
        &fusebox.dir().join(".s.toml.tmp"),
        &policy,
    );
    std::fs::remove_file(fusebox.dir().join("r.toml")).expect("remove r.toml");
    assert_eq!(reload_ok(&admin).await, 2);
    assert_eq!(fusebox.agent().route_addr("r"), None);
    assert_eq!(fusebox.agent().route_addr("s"), Some(addr));
    let response = direct_client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("GET via the renamed policy's port");
    assert_eq!(response.status(), 200);
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 4. An invalid edit keeps the old policies.

#[tokio::test]
async fn invalid_reload_keeps_the_old_policies_in_effect() {
    let upstream_a = FakeUpstream::with_status(200).await;
    let upstream_b = FakeUpstream::builder()
        .status(200)
        .route("/hold", [Reply::Stall])
        .start()
        .await;
    let a_policy = format!("hosts = [\"{}\"]\n", upstream_a.authority());
    // B admits one request at a time; the held one occupies that slot for the whole test.
    let b_policy = format!(
        "hosts = [\"{}\"]\n[timeouts]\nattempt = \"60s\"\ntotal = \"60s\"\n\
         [concurrency]\nmax_in_flight = 1\n",
        upstream_b.authority()
    );
    // Only this test's `POST /reload` may reload: no watcher, and no SIGHUP from the test below.
    let _signals = SIGNALS.lock().await;
    let dir = policies_dir(&[("a", &a_policy), ("b", &b_policy)]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await;
    let (admin, app) = (fusebox.admin_url(), fusebox.app());
    let held = tokio::spawn(app.get(upstream_b.url("/hold")).send());
    upstream_b.wait_hits(1).await;
    let overflow = |(status, reason, _): (u16, Option<String>, String)| {
        status == 503 && reason.as_deref() == Some("overflow")
    };
    assert!(
        overflow(call(&app, &upstream_b.url("/")).await),
        "B's limit holds"
    );
    let before = reload_metrics(&admin).await;

    // The edit lifts the limit but has an unknown key on line 5.
    let broken = format!(
        "hosts = [\"{}\"]\n[timeouts]\nattempt = \"60s\"\ntotal = \"60s\"\nretries = 3\n\
         [concurrency]\nmax_in_flight = 0\n",
        upstream_b.authority()
    );
    std::fs::write(fusebox.dir().join("b.toml"), &broken).expect("break b.toml");
    let errors = reload_refused(&admin).await;
    assert!(
        has_location(&errors, "b.toml", 5),
        "expected b.toml:5:COL, got {errors:#?}"
    );
    let after = reload_metrics(&admin).await;
    assert_eq!(after.failures, before.failures + 1, "one failure counted");
    assert_eq!(after.generation, before.generation, "nothing applied");
    assert_eq!(after.successes, before.successes);

    // The old policies keep serving: A works, B's limit is still in effect.
    assert_eq!(call(&app, &upstream_a.url("/")).await.0, 200);
    assert!(
        overflow(call(&app, &upstream_b.url("/")).await),
        "B's old limit is kept"
    );
    let config = get_config(&admin).await;
    assert_eq!(config["policies"]["b"]["concurrency"]["max_in_flight"], 1);
    assert!(!held.is_finished(), "the held request is still in flight");
    held.abort();
    // No graceful shutdown: it would wait for the stalled request (the drain timeout).
    drop(fusebox);
}

/// A reload carries a destination's state component by component: editing `[rate_limit]`
/// keeps an open breaker open (the next request must not hit the failing upstream), and the
/// concurrency gate keeps counting the requests in flight under a new limit; editing
/// `[breaker]` starts the breaker afresh.
#[tokio::test]
async fn a_reload_keeps_each_component_whose_settings_did_not_change() {
    let failing = FakeUpstream::with_status(503).await;
    let held = FakeUpstream::builder()
        .status(200)
        .route("/hold", [Reply::Stall])
        .start()
        .await;
    let policy = |extra: &str| {
        format!(
            "hosts = [\"{}\"]\n[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 1\n\
             open_base = \"60s\"\n{extra}",
            failing.authority()
        )
    };
    let gated = |max: u32| {
        format!(
            "hosts = [\"{}\"]\n[timeouts]\nattempt = \"60s\"\ntotal = \"60s\"\n\
             [concurrency]\nmax_in_flight = {max}\n",
            held.authority()
        )
    };
    let _signals = SIGNALS.lock().await;
    let dir = policies_dir(&[("a", &policy("")), ("g", &gated(1))]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await;
    let (admin, app) = (fusebox.admin_url(), fusebox.app());

    assert_eq!(call(&app, &failing.url("/")).await.0, 503);
    let open = call(&app, &failing.url("/")).await;
    assert_eq!(open.1.as_deref(), Some("breaker-open"), "{open:?}");
    let hold = tokio::spawn(app.get(held.url("/hold")).send());
    held.wait_hits(1).await;
    assert_eq!(
        call(&app, &held.url("/")).await.1.as_deref(),
        Some("overflow")
    );

    // Only the rate limit and the gate's limit change.
    std::fs::write(
        fusebox.dir().join("a.toml"),
        policy("[rate_limit]\nrps = 1000\n"),
    )
    .unwrap();
    std::fs::write(fusebox.dir().join("g.toml"), gated(2)).unwrap();
    reload_ok(&admin).await;
    let still_open = call(&app, &failing.url("/")).await;
    assert_eq!(
        still_open.1.as_deref(),
        Some("breaker-open"),
        "the breaker stayed open: {still_open:?}"
    );
    assert_eq!(
        failing.hits(),
        1,
        "the failing upstream was not called again"
    );
    // The held request still counts: one more fits under the new limit of 2, not two more.
    let second = tokio::spawn(app.get(held.url("/hold")).send());
    held.wait_hits(2).await;
    assert_eq!(
        call(&app, &held.url("/")).await.1.as_deref(),
        Some("overflow")
    );

    // A changed `[breaker]` starts afresh: the next request reaches the upstream.
    std::fs::write(
        fusebox.dir().join("a.toml"),
        policy("[rate_limit]\nrps = 1000\n")
            .replace("consecutive_failures = 1", "consecutive_failures = 2"),
    )
    .unwrap();
    reload_ok(&admin).await;
    assert_eq!(call(&app, &failing.url("/")).await.0, 503);
    assert_eq!(
        failing.hits(),
        2,
        "a fresh breaker lets the request through"
    );
    hold.abort();
    second.abort();
    drop(fusebox);
}

/// Deleting a policy takes its series out of `/metrics`: an open breaker of a policy that no
/// longer exists must not keep `fusebox_breaker_state` at 2 (and its alert firing) forever.
#[tokio::test]
async fn a_removed_policy_leaves_metrics() {
    let failing = FakeUpstream::with_status(503).await;
    let ok = FakeUpstream::with_status(200).await;
    let b = format!(
        "hosts = [\"{}\"]\n[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = 1\n",
        failing.authority()
    );
    let a = format!("hosts = [\"{}\"]\n", ok.authority());
    let _signals = SIGNALS.lock().await;
    let dir = policies_dir(&[("a", &a), ("b", &b)]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await;
    let app = fusebox.app();
    assert_eq!(call(&app, &ok.url("/")).await.0, 200);
    assert_eq!(call(&app, &failing.url("/")).await.0, 503);
    let before = fusebox.metrics().await;
    let state = |text: &str, upstream: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("fusebox_breaker_state{")
                    && l.contains(&format!("upstream=\"{upstream}\""))
            })
            .map(str::to_owned)
    };
    assert!(
        state(&before, "b").is_some_and(|l| l.ends_with(" 2")),
        "{before}"
    );

    std::fs::remove_file(fusebox.dir().join("b.toml")).unwrap();
    reload_ok(&fusebox.admin_url()).await;
    let after = fusebox.metrics().await;
    assert!(!after.contains("upstream=\"b\""), "{after}");
    assert!(
        state(&after, "a").is_some_and(|l| l.ends_with(" 0")),
        "{after}"
    );
    assert!(after.contains("fusebox_config_generation 2"), "{after}");
    drop(fusebox);
}

/// A reload that finds every file as it was applies nothing, and says so: its own `result`.
/// One that would put a route listener on fusebox's own egress address is refused at the
/// `listen` value, like `fusebox check` refuses it, and nothing is applied.
#[tokio::test]
async fn unchanged_and_colliding_reloads_apply_nothing() {
    let upstream = FakeUpstream::with_status(200).await;
    let a_policy = format!("hosts = [\"{}\"]\n", upstream.authority());
    let _signals = SIGNALS.lock().await;
    let dir = policies_dir(&[("a", &a_policy)]);
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await;
    let admin = fusebox.admin_url();
    let before = reload_metrics(&admin).await;
    assert_eq!(reload_ok(&admin).await, before.generation);
    let after = reload_metrics(&admin).await;
    assert_eq!(
        after,
        ReloadMetrics {
            unchanged: before.unchanged + 1,
            ..before
        },
        "an unchanged reload is counted as unchanged and nothing else"
    );

    let route = format!(
        "# route\nlisten = \"{}\"\nendpoints = [\"{}\"]\n",
        fusebox.agent().egress_addr(),
        upstream.authority()
    );
    std::fs::write(fusebox.dir().join("r.toml"), route).expect("write r.toml");
    let errors = reload_refused(&admin).await;
    assert!(has_location(&errors, "r.toml", 2), "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("egress listener (--listen)")),
        "{errors:#?}"
    );
    let refused = reload_metrics(&admin).await;
    assert_eq!(refused.failures, after.failures + 1);
    assert_eq!(refused.generation, before.generation, "nothing applied");
    assert_eq!(call(&fusebox.app(), &upstream.url("/")).await.0, 200);
}

// ---------------------------------------------------------------------------------------------
// 5. SIGHUP.

/// Held by the test that sends SIGHUP to this test process (every in-process agent reloads on
/// it) and by the test that counts reload failures exactly.
static SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn sighup_reloads_an_agent_that_does_not_watch() {
    let _signals = SIGNALS.lock().await;
    // Whatever fusebox does, SIGHUP must not end the test process.
    let _keep_alive = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("install a SIGHUP handler");
    let fusebox =
        TestFusebox::start_with(policies_dir(&[("b", "hosts = [\"b.test\"]\n")]), |config| {
            config.jitter = false;
            config.watch = false;
        })
        .await;
    let admin = fusebox.admin_url();
    let generation = reload_metrics(&admin).await.generation;
    // Without a watcher, only SIGHUP (or POST /reload) can make fusebox see this edit.
    std::fs::write(
        fusebox.dir().join("b.toml"),
        "hosts = [\"b.test\"]\n[timeouts]\nattempt = \"3s\"\n",
    )
    .expect("edit b.toml");
    let status = std::process::Command::new("/bin/kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run /bin/kill");
    assert!(status.success());
    {
        let admin = admin.as_str();
        wait_for("a new generation after SIGHUP", || async move {
            reload_metrics(admin).await.generation > generation
        })
        .await;
    }
    assert_eq!(reload_metrics(&admin).await.generation, generation + 1);
    assert_eq!(
        get_config(&admin).await["policies"]["b"]["timeouts"]["attempt"],
        "3s"
    );
    fusebox.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_binary_and_keeps_it_running() {
    // b.toml links to a file outside the policies directory: editing that file makes no event
    // in the watched directory, so only SIGHUP can make fusebox see the edit.
    let dir = policies_dir(&[("default", "")]);
    let outside = tempfile::tempdir().expect("create outside dir");
    let target = outside.path().join("b.toml");
    std::fs::write(
        &target,
        "hosts = [\"b.test\"]\n[timeouts]\nattempt = \"2s\"\n",
    )
    .expect("write b");
    std::os::unix::fs::symlink(&target, dir.path().join("b.toml")).expect("link b.toml");
    let mut fusebox = FuseboxProcess::spawn(dir.path(), &[], &[]).await;
    let admin = fusebox.admin_url();
    let hangup = |pid: u32| {
        let status = std::process::Command::new("/bin/kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run /bin/kill");
        assert!(status.success(), "kill -HUP {pid}");
    };
    assert_eq!(reload_metrics(&admin).await.generation, 1);

    // Nothing changed: the process survives (SIGHUP's default action would end it).
    hangup(fusebox.pid());
    // A valid edit, then SIGHUP: a new generation.
    std::fs::write(
        &target,
        "hosts = [\"b.test\"]\n[timeouts]\nattempt = \"3s\"\n",
    )
    .expect("edit b");
    hangup(fusebox.pid());
    {
        let admin = admin.as_str();
        wait_for("generation 2 after SIGHUP", || async move {
            reload_metrics(admin).await.generation >= 2
        })
        .await;
    }
    let metrics = reload_metrics(&admin).await;
    assert_eq!(metrics.generation, 2, "{metrics:?}");
    assert!(metrics.successes >= 1, "{metrics:?}");

    // An invalid edit, then SIGHUP: refused and counted, the process keeps running.
    std::fs::write(
        &target,
        "hosts = [\"b.test\"]\n[timeouts]\nattempt = \"3 parsecs\"\n",
    )
    .expect("break b");
    hangup(fusebox.pid());
    {
        let admin = admin.as_str();
        wait_for("a counted failure after SIGHUP", || async move {
            reload_metrics(admin).await.failures > metrics.failures
        })
        .await;
    }
    assert_eq!(reload_metrics(&admin).await.generation, 2);
    assert!(
        fusebox.try_wait().is_none(),
        "fusebox is still running:\n{}",
        fusebox.logs()
    );
    let health = direct_client()
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    // Logs go through a non-blocking writer: they may reach the file a little later.
    {
        let fusebox = &fusebox;
        wait_for(
            "the refused reload's error, with its location, in the log",
            || async move {
                let logs = fusebox.logs();
                logs.contains("SIGHUP") && logs.contains("b.toml:3:")
            },
        )
        .await;
    }
}

/// A rotated CA is a change (#22, item 7): the policy's `ca_file` is rewritten in place with
/// another CA's certificate and a reload applies it — it answered "unchanged" and kept the old
/// roots (502 until a restart), since it compared the path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_rewritten_in_place_is_reloaded() {
    use support::TestPki;
    let (old_ca, new_ca) = (TestPki::new(), TestPki::new());
    let upstream = FakeUpstream::builder()
        .tls(new_ca.server_config())
        .body("verified")
        .start()
        .await;
    let host = format!("localhost:{}", upstream.addr().port());
    let policy = format!("hosts = [\"{host}\"]\ntls = true\nca_file = \"test-ca.pem\"\n");
    let dir = policies_dir(&[("default", ""), ("secure", &policy)]);
    old_ca.write_ca(dir.path());
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await;
    let app = fusebox.app();
    let url = format!("http://{host}/");
    assert_eq!(
        call(&app, &url).await.0,
        502,
        "the upstream's CA is not trusted yet"
    );
    new_ca.write_ca(fusebox.dir());
    let before = reload_metrics(&fusebox.admin_url()).await;
    reload_ok(&fusebox.admin_url()).await;
    let after = reload_metrics(&fusebox.admin_url()).await;
    assert_eq!(
        after.successes,
        before.successes + 1,
        "applied, not unchanged"
    );
    assert_eq!(after.generation, before.generation + 1);
    let (status, _, body) = call(&app, &url).await;
    assert_eq!((status, body.as_str()), (200, "verified"));
    fusebox.shutdown().await;
}
