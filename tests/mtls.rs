//! Mutual TLS to upstreams (issue 26, part 1): a policy's `client_cert` and `client_key` are
//! presented to upstreams that ask for a client certificate, when fusebox originates TLS
//! (`tls = true` for an app's plain `http://` call, an `https://` target, the upstream side of
//! an intercepted `CONNECT`).
//!
//! The upstream is a TLS `FakeUpstream` that refuses a handshake without a client certificate
//! of its client CA and says which certificate each request came with
//! (`support::mtls`). The apps are curl, Python `requests` and reqwest; `fusebox check` is the
//! built binary. Everything runs on loopback sockets.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fusebox::ca::LocalCa;
use serde_json::Value;
use support::check::check;
use support::metrics::metric;
use support::mtls::{
    mtls_server_config, mtls_server_config_h2, set_mode, unix_seconds, utc_date, write_in_place,
    ClientCa, ClientIdentity, KeyFormat, Validity, DAY,
};
use support::peers;
use support::raw::{RawConn, RawResponse};
use support::tls::TestPki;
use support::upstream::CLIENT_CN_HEADER;
use support::{curl_async, direct_client, policies_dir, FakeUpstream, FuseboxProcess, TestFusebox};

const CERT: &str = "client.pem";
const KEY: &str = "client-key.pem";
const EXPIRY_METRIC: &str = "fusebox_client_cert_expiry_seconds";

// ---------------------------------------------------------------------------------------------
// Set-up

/// A TLS upstream (the `pki` leaf for `localhost`) that requires a client certificate issued
/// under one of `client_cas`, answering 200 `mutual`.
async fn mtls_upstream(pki: &TestPki, client_cas: &[&ClientCa]) -> FakeUpstream {
    FakeUpstream::builder()
        .tls(mtls_server_config(pki, client_cas))
        .body("mutual")
        .start()
        .await
}

/// `localhost:PORT` of the upstream: the name its certificate is for.
fn localhost(upstream: &FakeUpstream) -> String {
    format!("localhost:{}", upstream.addr().port())
}

/// The identity keys of a policy, for the files [`ClientIdentity::write`] writes as
/// `CERT`/`KEY` (or `{name}.pem`/`{name}-key.pem`).
fn identity_keys(name: Option<&str>) -> String {
    match name {
        None => format!("client_cert = \"{CERT}\"\nclient_key = \"{KEY}\"\n"),
        Some(n) => format!("client_cert = \"{n}.pem\"\nclient_key = \"{n}-key.pem\"\n"),
    }
}

/// An egress policy for `host` that originates TLS to it (trusting the test CA), with the
/// client identity in `CERT`/`KEY` when `with_identity`, and `extra` TOML.
fn tls_policy(host: &str, with_identity: bool, extra: &str) -> String {
    let identity = if with_identity {
        identity_keys(None)
    } else {
        String::new()
    };
    format!("hosts = [\"{host}\"]\ntls = true\nca_file = \"test-ca.pem\"\n{identity}{extra}")
}

/// fusebox in-process on `files` (plus an empty `default.toml` and the test CA), with
/// `identity` written as `CERT`/`KEY`; no directory watch (reloads are the test's), no jitter.
async fn start(
    pki: &TestPki,
    files: &[(&str, &str)],
    identity: Option<&ClientIdentity>,
) -> TestFusebox {
    let mut all = vec![("default", "")];
    all.extend_from_slice(files);
    let dir = policies_dir(&all);
    pki.write_ca(dir.path());
    if let Some(identity) = identity {
        identity.write(dir.path(), CERT, KEY);
    }
    TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.watch = false;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Apps

/// A response as an app saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn client_cn(&self) -> Option<&str> {
        self.header(CLIENT_CN_HEADER)
    }

    fn reason(&self) -> Option<&str> {
        self.header("x-fusebox-reason")
    }

    async fn from_reqwest(response: reqwest::Response) -> Answer {
        let RawResponse {
            status,
            headers,
            body,
        } = RawResponse::from_reqwest(response).await;
        Answer {
            status,
            headers: headers.into_iter().collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// The last response of `curl -i` output (a proxy's `CONNECT` answer comes first).
fn parse_curl(out: &Output) -> Answer {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in curl's output: {text}"));
        if body.starts_with("HTTP/") {
            rest = body;
            continue;
        }
        let mut lines = head.lines();
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        return Answer {
            status,
            headers,
            body: body.to_owned(),
        };
    }
}

/// curl as a plain-HTTP app: `http://` URL through `HTTP_PROXY`-style `-x`.
async fn curl_via(proxy: &str, url: &str) -> Answer {
    parse_curl(&curl_async(&["-i", "-x", proxy, url]).await)
}

/// Python `requests` with only `HTTP_PROXY` set GETs `url` `count` times; one line per
/// answer: `"<status> <x-fusebox-reason or -> <body>"`.
async fn python_requests(proxy: &str, url: &str, count: u32) -> Vec<String> {
    let mut command = peers::hermetic(&peers::python());
    command
        .arg(peers::peer_script("https_get.py"))
        .arg(url)
        .arg(count.to_string())
        .env("HTTP_PROXY", proxy)
        .env("http_proxy", proxy);
    peers::output(command)
        .await
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Polls `condition` every 5 ms for up to 30 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Plain-HTTP apps, TLS origination with a client certificate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_apps_reach_an_mtls_upstream_with_the_policy_s_client_certificate() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let identity = client_ca.issue("payments-client");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let policy = tls_policy(&host, true, "");
    let fusebox = start(&pki, &[("svc", &policy)], Some(&identity)).await;
    let url = format!("http://{host}/orders?page=2");

    // curl, the app's plain http:// call through the proxy.
    let answer = curl_via(&fusebox.egress_url(), &url).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "mutual");
    assert_eq!(answer.client_cn(), Some("payments-client"), "{answer:?}");
    let request = upstream
        .last_request()
        .expect("the upstream got the request");
    assert_eq!(request.uri, "/orders?page=2");
    assert_eq!(request.client_cn.as_deref(), Some("payments-client"));

    // Python requests, configured by HTTP_PROXY alone.
    let lines = python_requests(&fusebox.egress_url(), &url, 2).await;
    assert_eq!(lines, ["200 - mutual", "200 - mutual"], "{lines:?}");
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        upstream.last_request().unwrap().client_cn.as_deref(),
        Some("payments-client")
    );
    fusebox.shutdown().await;
}

/// What an upstream's refusal looks like to the app: fusebox's own 502 whose reason and body
/// say what happened; the upstream never saw a request.
///
/// With TLS 1.3 the client's side of the handshake is over before the server has checked the
/// client certificate, so the refusal (`alert`, rustls's name for it) arrives on the first
/// read; fusebox tells it apart from a reset: `connect-failed`, nothing sent, and — a trust
/// problem of the policy's, like a certificate that does not verify — never retried (one
/// connection per request) and never a breaker failure.
fn assert_refused(answer: &Answer, upstream: &FakeUpstream, alert: &str, what: &str) {
    assert_eq!(answer.status, 502, "{what}: {answer:?}");
    let reason = answer
        .reason()
        .unwrap_or_else(|| panic!("{what}: not a fusebox local reply: {answer:?}"));
    assert_eq!(reason, "connect-failed", "{what}: {answer:?}");
    assert!(
        answer.body.contains(&format!("fatal alert: {alert}")),
        "{what}: the body names the upstream's TLS alert {alert}: {answer:?}"
    );
    assert!(
        answer
            .body
            .contains("check the policy's client_cert and client_key"),
        "{what}: the body says what to check: {answer:?}"
    );
    assert_eq!(upstream.hits(), 0, "{what}: the upstream saw no request");
    assert!(
        upstream.connections() >= 1,
        "{what}: fusebox did connect, and the upstream refused the handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_upstream_refuses_and_the_app_gets_a_502() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    // Trips after 2 upstream failures in a row: a refused certificate must not count.
    let policy = tls_policy(&host, false, "[breaker]\nconsecutive_failures = 2\n");
    let fusebox = start(&pki, &[("svc", &policy)], None).await;

    let answer = curl_via(&fusebox.egress_url(), &format!("http://{host}/")).await;
    assert_refused(
        &answer,
        &upstream,
        "CertificateRequired",
        "no client certificate",
    );
    assert_eq!(
        upstream.connections(),
        1,
        "not retried: it would fail the same way"
    );
    let lines = python_requests(&fusebox.egress_url(), &format!("http://{host}/"), 3).await;
    assert!(lines.iter().all(|l| l.starts_with("502 ")), "{lines:?}");
    assert_eq!(upstream.hits(), 0);
    assert_eq!(upstream.connections(), 4, "one handshake per request");
    let view = fusebox.upstreams("svc").await;
    assert_eq!(
        view[0]["state"], "closed",
        "not the upstream's failure: {view}"
    );
    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_another_ca_is_refused_likewise() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let stranger = ClientCa::new("somebody else's CA").issue("impostor");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let policy = tls_policy(&host, true, "");
    let fusebox = start(&pki, &[("svc", &policy)], Some(&stranger)).await;

    let answer = curl_via(&fusebox.egress_url(), &format!("http://{host}/")).await;
    assert_refused(
        &answer,
        &upstream,
        "UnknownCA",
        "a certificate of another CA",
    );
    fusebox.shutdown().await;
}

/// An upstream that chooses HTTP/2 is called on the pooled client (hyper's), which presents
/// the certificate too; without one the app gets a 502 (see below for which).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstream_gets_the_client_certificate_on_the_pooled_client() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let identity = client_ca.issue("h2-client");
    let upstream = FakeUpstream::builder()
        .tls(mtls_server_config_h2(&pki, &[&client_ca]))
        .body("mutual")
        .start()
        .await;
    let host = localhost(&upstream);
    let with = tls_policy(&host, true, "");
    let fusebox = start(&pki, &[("svc", &with)], Some(&identity)).await;
    let url = format!("http://{host}/h2");
    let answer = Answer::from_reqwest(fusebox.app().get(&url).send().await.unwrap()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.client_cn(), Some("h2-client"));
    let request = upstream.last_request().unwrap();
    assert_eq!(request.version, reqwest::Version::HTTP_2);
    assert_eq!(request.client_cn.as_deref(), Some("h2-client"));
    fusebox.shutdown().await;

    // Without one the app gets a 502 and the upstream no request. The refusal is named (and
    // the policy's: `connect-failed`) when hyper hands fusebox the connection's error, which h2
    // keeps as words only (`failure::refusal_in_words`, unit-tested); when the connection is
    // gone before the request is dispatched hyper says only "canceled": `upstream-reset`.
    let without = tls_policy(&host, false, "");
    let fusebox = start(&pki, &[("svc", &without)], None).await;
    let hits = upstream.hits();
    let answer = Answer::from_reqwest(fusebox.app().get(&url).send().await.unwrap()).await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(upstream.hits(), hits, "no request reached the upstream");
    match answer.reason() {
        Some("connect-failed") => {
            assert!(
                answer.body.contains("fatal alert: CertificateRequired"),
                "{answer:?}"
            );
            assert!(
                answer.body.contains("client_cert and client_key"),
                "{answer:?}"
            );
        }
        reason => assert_eq!(reason, Some("upstream-reset"), "{answer:?}"),
    }
    fusebox.shutdown().await;
}

/// `client_cert` may hold intermediates after the leaf: they are sent, so an upstream that
/// trusts only the root accepts the leaf. Without them the same leaf is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediates_in_client_cert_are_sent_with_the_leaf() {
    let pki = TestPki::new();
    let root = ClientCa::new("client root CA");
    let intermediate = root.intermediate("client issuing CA");
    let identity = intermediate.issue("chained-client");
    assert!(identity.cert_pem().matches("BEGIN CERTIFICATE").count() == 2);
    let upstream = mtls_upstream(&pki, &[&root]).await;
    let with_chain = format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\ntls = true\nca_file = \"test-ca.pem\"\n{}",
        localhost(&upstream),
        identity_keys(Some("chain"))
    );
    let leaf_only = format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\ntls = true\nca_file = \"test-ca.pem\"\n{}\n[retry]\nattempts = 1\n",
        localhost(&upstream),
        identity_keys(Some("leaf"))
    );
    let dir = policies_dir(&[
        ("default", ""),
        ("chain", &with_chain),
        ("leaf", &leaf_only),
    ]);
    pki.write_ca(dir.path());
    identity.write(dir.path(), "chain.pem", "chain-key.pem");
    identity.write(dir.path(), "leaf.pem", "leaf-key.pem");
    let leaf_pem = identity.cert_pem();
    let leaf_pem = &leaf_pem[..leaf_pem.find("-----END CERTIFICATE-----").unwrap() + 26];
    write_in_place(&dir.path().join("leaf.pem"), leaf_pem.as_bytes());
    let fusebox = TestFusebox::start_in(dir).await;

    let response = direct_client()
        .get(format!("{}/chained", fusebox.route_url("chain")))
        .send()
        .await
        .unwrap();
    let answer = Answer::from_reqwest(response).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.client_cn(), Some("chained-client"));

    let response = direct_client()
        .get(format!("{}/leaf", fusebox.route_url("leaf")))
        .send()
        .await
        .unwrap();
    let answer = Answer::from_reqwest(response).await;
    assert_eq!(
        answer.status, 502,
        "the leaf alone does not chain to the root: {answer:?}"
    );
    assert_eq!(upstream.hits(), 1);
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// https:// targets and interception

/// An intercepted `CONNECT` (curl trusting fusebox's CA) and an app's `https://` absolute-form
/// request both reach the mTLS upstream with the policy's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_https_and_https_targets_present_the_client_certificate() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let identity = client_ca.issue("intercepted-client");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let policy = format!(
        "hosts = [\"{host}\"]\nintercept = true\nca_file = \"test-ca.pem\"\n{}",
        identity_keys(None)
    );
    let dir = policies_dir(&[("default", ""), ("api", &policy)]);
    pki.write_ca(dir.path());
    identity.write(dir.path(), CERT, KEY);
    let ca_dir = dir.path().join("fusebox-ca");
    LocalCa::init(&ca_dir, false, SystemTime::now()).unwrap();
    let fusebox_ca = ca_dir.join("ca.pem").to_str().unwrap().to_owned();
    let fusebox = TestFusebox::start_with(dir, |config| {
        config.jitter = false;
        config.ca_dir = Some(ca_dir);
    })
    .await;

    let url = format!("https://{host}/inside");
    let out = curl_async(&[
        "-i",
        "--proxy",
        &fusebox.egress_url(),
        "--cacert",
        &fusebox_ca,
        &url,
    ])
    .await;
    let answer = parse_curl(&out);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "mutual");
    assert_eq!(answer.client_cn(), Some("intercepted-client"), "{answer:?}");
    let request = upstream.last_request().unwrap();
    assert_eq!(request.uri, "/inside");
    assert_eq!(request.client_cn.as_deref(), Some("intercepted-client"));

    // An https:// absolute-form request on the plain proxy connection: fusebox originates TLS.
    let mut conn = RawConn::connect(fusebox.agent().egress_addr()).await;
    conn.send(format!("GET https://{host}/absolute HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await;
    let response = conn.read_response().await;
    assert_eq!(
        response.status,
        200,
        "{response:?} {}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        response.header(CLIENT_CN_HEADER),
        Some("intercepted-client")
    );
    assert_eq!(upstream.hits(), 2);
    assert_eq!(upstream.last_request().unwrap().uri, "/absolute");
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Identity per policy

/// Two policies to the same upstream with different certificates, and one without: each
/// request goes out with its own policy's certificate (or none), however they interleave —
/// a kept-alive connection made with one identity never serves another policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_keyed_by_client_identity() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let alice = client_ca.issue("alice");
    let bob = client_ca.issue("bob");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let route = |identity: Option<&str>, extra: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\ntls = true\nca_file = \"test-ca.pem\"\n{}{extra}",
            localhost(&upstream),
            identity.map(|n| identity_keys(Some(n))).unwrap_or_default()
        )
    };
    let (a, b, none) = (
        route(Some("alice"), ""),
        route(Some("bob"), ""),
        route(None, "[retry]\nattempts = 1\n"),
    );
    let dir = policies_dir(&[("default", ""), ("a", &a), ("b", &b), ("none", &none)]);
    pki.write_ca(dir.path());
    alice.write(dir.path(), "alice.pem", "alice-key.pem");
    bob.write(dir.path(), "bob.pem", "bob-key.pem");
    let fusebox = TestFusebox::start_in(dir).await;
    let app = direct_client();

    let mut hits = 0;
    for round in 0..5 {
        for (policy, expected) in [("a", Some("alice")), ("b", Some("bob")), ("none", None)] {
            let url = format!("{}/round{round}", fusebox.route_url(policy));
            let answer = Answer::from_reqwest(app.get(&url).send().await.unwrap()).await;
            match expected {
                Some(cn) => {
                    hits += 1;
                    assert_eq!(answer.status, 200, "{policy} round {round}: {answer:?}");
                    assert_eq!(answer.client_cn(), Some(cn), "{policy} round {round}");
                }
                None => assert_eq!(
                    answer.status, 502,
                    "the policy without a certificate never borrows another's connection: \
                     round {round}: {answer:?}"
                ),
            }
            assert_eq!(upstream.hits(), hits, "{policy} round {round}");
        }
    }
    fusebox.shutdown().await;
}

/// `client_cert` and `client_key` are never inherited: set in `default.toml` they are the
/// default policy's identity only, and a policy of its own (which does inherit `ca_file`)
/// presents no certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_in_default_toml_is_the_default_policy_s_only() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let identity = client_ca.issue("default-client");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let port = upstream.addr().port();
    let default = format!(
        "tls = true\nca_file = \"test-ca.pem\"\n{}",
        identity_keys(None)
    );
    let svc = format!("hosts = [\"localhost:{port}\"]\ntls = true\n[retry]\nattempts = 1\n");
    let dir = policies_dir(&[("default", &default), ("svc", &svc)]);
    pki.write_ca(dir.path());
    identity.write(dir.path(), CERT, KEY);
    let fusebox = TestFusebox::start_in(dir).await;
    let app = fusebox.app();

    // 127.0.0.1:PORT matches no policy: the default one, with its identity (the test leaf is
    // for 127.0.0.1 too).
    let url = format!("http://127.0.0.1:{port}/default");
    let answer = Answer::from_reqwest(app.get(&url).send().await.unwrap()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.client_cn(), Some("default-client"));

    let url = format!("http://localhost:{port}/svc");
    let answer = Answer::from_reqwest(app.get(&url).send().await.unwrap()).await;
    assert_eq!(
        answer.status, 502,
        "svc inherits ca_file but no client identity: {answer:?}"
    );
    assert!(answer.body.contains("CertificateRequired"), "{answer:?}");
    assert_eq!(upstream.hits(), 1);
    let config: Value = serde_json::from_str(
        &direct_client()
            .get(format!("{}/config", fusebox.admin_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        config["default"]["client_cert"]
            .as_str()
            .is_some_and(|p| p.ends_with(CERT)),
        "{config:#}"
    );
    assert!(config["policies"]["svc"].is_object(), "{config:#}");
    assert_eq!(
        config["policies"]["svc"]["client_cert"],
        Value::Null,
        "{config:#}"
    );
    assert_eq!(
        config["policies"]["svc"]["client_key"],
        Value::Null,
        "{config:#}"
    );
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Rotation and reloads

/// What one request of the load loop saw.
struct Outcome {
    /// 0: sent before the files were rewritten; 1: after, before the reload returned; 2: after.
    phase: u8,
    /// The phase when its answer had arrived.
    answered_in: u8,
    status: u16,
    client_cn: Option<String>,
    detail: String,
}

/// Requests flow the whole time (4 workers, one request at a time each, the upstream answering
/// each after 10 ms, so that requests are in flight on old connections while fusebox reloads)
/// while the cert and key files are rewritten in place with a new identity and fusebox
/// reloads: not one fails, and every request sent after the reload returned went out with the
/// new certificate (connections kept alive with the old one, idle or in use at the reload, are
/// not reused for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_loses_no_request_and_switches_to_the_new_certificate() {
    const WORKERS: usize = 4;
    const AFTER_RELOAD: usize = 100;
    let started = Instant::now();
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let old = client_ca.issue_with("rotation-old", Validity::days(30), KeyFormat::Pkcs8);
    let new = client_ca.issue_with("rotation-new", Validity::days(90), KeyFormat::Pkcs8);
    let upstream = FakeUpstream::builder()
        .tls(mtls_server_config(&pki, &[&client_ca]))
        .delay(Duration::from_millis(10))
        .body("mutual")
        .start()
        .await;
    let host = localhost(&upstream);
    // One try per request: a failure cannot hide behind a retry.
    let policy = tls_policy(&host, true, "[retry]\nattempts = 1\n");
    let fusebox = Arc::new(start(&pki, &[("svc", &policy)], Some(&old)).await);
    let generation = fusebox.agent().reload().await.expect("an unchanged reload");

    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let app = fusebox.app();
        let url = format!("http://{host}/w{worker}");
        let (phase, stop, done, outcomes) = (
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&outcomes),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let sent_in = phase.load(Ordering::SeqCst);
                let outcome = match app.get(&url).send().await {
                    Ok(response) => {
                        let answer = Answer::from_reqwest(response).await;
                        Outcome {
                            phase: sent_in,
                            answered_in: phase.load(Ordering::SeqCst),
                            status: answer.status,
                            client_cn: answer.client_cn().map(str::to_owned),
                            detail: format!("{:?} {}", answer.reason(), answer.body.trim()),
                        }
                    }
                    Err(e) => Outcome {
                        phase: sent_in,
                        answered_in: phase.load(Ordering::SeqCst),
                        status: 0,
                        client_cn: None,
                        detail: format!("{e:?}"),
                    },
                };
                outcomes.lock().unwrap().push(outcome);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let count_in = |p: u8| {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.phase == p)
            .count()
    };

    wait_for("100 requests with the old identity", || count_in(0) >= 100).await;
    new.write(fusebox.dir(), CERT, KEY);
    phase.store(1, Ordering::SeqCst);
    let reloaded = fusebox
        .agent()
        .reload()
        .await
        .expect("the new identity is valid");
    phase.store(2, Ordering::SeqCst);
    assert_eq!(
        reloaded,
        generation + 1,
        "new file content is a change, though the policy file is the same"
    );
    wait_for("requests after the reload", || {
        count_in(2) >= AFTER_RELOAD && done.load(Ordering::SeqCst) >= 200
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| format!("phase {}: {} {}", o.phase, o.status, o.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}",
        failed.len(),
        outcomes.len()
    );
    for o in outcomes.iter() {
        let cn = o.client_cn.as_deref();
        match o.phase {
            0 => assert_eq!(cn, Some("rotation-old"), "sent before the rotation"),
            1 => assert!(
                matches!(cn, Some("rotation-old" | "rotation-new")),
                "during the reload: {cn:?}"
            ),
            _ => assert_eq!(cn, Some("rotation-new"), "sent after the reload returned"),
        }
    }
    let crossing = outcomes
        .iter()
        .filter(|o| o.phase == 0 && o.answered_in > 0)
        .count();
    assert!(
        crossing >= 1,
        "no request was in flight when the files were rewritten: the test lost its point"
    );
    assert_eq!(
        upstream.last_request().unwrap().client_cn.as_deref(),
        Some("rotation-new")
    );
    let metrics = fusebox.metrics().await;
    assert_eq!(
        metric(&metrics, EXPIRY_METRIC, &[("upstream", "svc")]),
        unix_seconds(new.not_after()) as f64,
        "the expiry metric follows the reload:\n{metrics}"
    );
    eprintln!(
        "rotation: {} requests ({} before the rewrite, {crossing} of them in flight across it, \
         {} during the reload, {} after) on {} upstream connections in {:?}",
        outcomes.len(),
        outcomes.iter().filter(|o| o.phase == 0).count(),
        outcomes.iter().filter(|o| o.phase == 1).count(),
        outcomes.iter().filter(|o| o.phase == 2).count(),
        upstream.connections(),
        started.elapsed()
    );
    drop(outcomes);
    Arc::try_unwrap(fusebox)
        .unwrap_or_else(|_| panic!("workers are done"))
        .shutdown()
        .await;
}

/// A rotation caught half-way (the new certificate beside the old key) is refused by a reload,
/// naming the file; the identity loaded before keeps serving; once the key is there too, the
/// next reload applies the pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_rotated_pair_is_refused_and_the_loaded_identity_keeps_serving() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let old = client_ca.issue("half-old");
    let new = client_ca.issue("half-new");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let policy = tls_policy(&host, true, "");
    let fusebox = start(&pki, &[("svc", &policy)], Some(&old)).await;
    let app = fusebox.app();
    let url = format!("http://{host}/");
    let get = || async { Answer::from_reqwest(app.get(&url).send().await.unwrap()).await };
    assert_eq!(get().await.client_cn(), Some("half-old"));

    // The same content written again (a secret sync that rewrites unchanged files) is no
    // change: the policies are compared by content, not by file time.
    let generation = fusebox.agent().reload().await.unwrap();
    old.write(fusebox.dir(), CERT, KEY);
    assert_eq!(
        fusebox.agent().reload().await.unwrap(),
        generation,
        "unchanged content, unchanged generation"
    );

    write_in_place(&fusebox.dir().join(CERT), new.cert_pem().as_bytes());
    let refused = fusebox
        .agent()
        .reload()
        .await
        .expect_err("a certificate beside another's key is refused");
    let errors = refused.errors.join("\n");
    assert!(
        errors.contains("svc.toml:5:") && errors.contains("does not match the certificate"),
        "at the client_key of svc.toml: {errors}"
    );
    // Not re-read per connection: the pair loaded before is what fusebox keeps presenting,
    // on new connections too.
    fusebox
        .agent()
        .close_idle_connections(tokio::time::Instant::now() + Duration::from_secs(3600));
    let answer = get().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.client_cn(), Some("half-old"));

    new.write(fusebox.dir(), CERT, KEY);
    fusebox.agent().reload().await.expect("the whole new pair");
    let answer = get().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.client_cn(), Some("half-new"));
    fusebox.shutdown().await;
}

/// With the directory watched (as `fusebox run` does), a rotation whose key file lands after
/// the certificate's reload was refused (the new certificate beside the old key) still ends
/// with the new pair applied: the key's change reloads too.
async fn watched_rotation_with_the_key_written_late(cert: &str, key: &str) {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let old = client_ca.issue("watched-old");
    let new = client_ca.issue("watched-new");
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let policy = format!(
        "hosts = [\"{host}\"]\ntls = true\nca_file = \"test-ca.pem\"\n\
         client_cert = \"{cert}\"\nclient_key = \"{key}\"\n"
    );
    let dir = policies_dir(&[("default", ""), ("svc", &policy)]);
    pki.write_ca(dir.path());
    old.write(dir.path(), cert, key);
    let fusebox = TestFusebox::start_with(dir, |config| config.jitter = false).await;
    let app = fusebox.app();
    let url = format!("http://{host}/");
    let cn = || async {
        let answer = Answer::from_reqwest(app.get(&url).send().await.unwrap()).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.client_cn().map(str::to_owned)
    };
    assert_eq!(cn().await.as_deref(), Some("watched-old"));

    let reloads = |result: &'static str| {
        let fusebox = &fusebox;
        async move {
            metric(
                &fusebox.metrics().await,
                "fusebox_config_reloads_total",
                &[("result", result)],
            )
        }
    };
    write_in_place(&fusebox.dir().join(cert), new.cert_pem().as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads("failure").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "{cert}: the watch never reloaded the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cn().await.as_deref(),
        Some("watched-old"),
        "refused: the old pair serves"
    );

    write_in_place(&fusebox.dir().join(key), new.key_pem().as_bytes());
    // The watch waits 250 ms for quiet; 5 s is twenty times that.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if cn().await.as_deref() == Some("watched-new") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key ({key}) was written 5 s ago and fusebox still presents the old \
             certificate: the change of {key} did not reload (reloads: {} applied, {} refused)",
            reloads("success").await,
            reloads("failure").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_rotation_applies_when_the_key_lands_late_pem_names() {
    watched_rotation_with_the_key_written_late("client.pem", "client-key.pem").await;
}

/// `tls.crt` / `tls.key`: the names of a Kubernetes TLS secret, and what most tools write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_rotation_applies_when_the_key_lands_late_crt_and_key_names() {
    watched_rotation_with_the_key_written_late("tls.crt", "tls.key").await;
}

// ---------------------------------------------------------------------------------------------
// Metric

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_metric_is_the_certificate_s_not_after() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let identity = client_ca.issue_with("metered", Validity::days(45), KeyFormat::Pkcs8);
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let svc = tls_policy(&host, true, "");
    let plain = "hosts = [\"plain.test\"]\n";
    let fusebox = start(&pki, &[("svc", &svc), ("plain", plain)], Some(&identity)).await;

    let metrics = fusebox.metrics().await;
    let value = metric(&metrics, EXPIRY_METRIC, &[("upstream", "svc")]);
    let expected = unix_seconds(identity.not_after()) as f64;
    assert!(
        (value - expected).abs() <= 1.0,
        "{EXPIRY_METRIC}{{upstream=\"svc\"}} = {value}, the certificate's notAfter is \
         {expected}:\n{metrics}"
    );
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(EXPIRY_METRIC))
        .collect();
    assert_eq!(
        series.len(),
        1,
        "one series, for the one policy with a client certificate: {series:?}"
    );
    assert!(
        metrics.contains(&format!("# TYPE {EXPIRY_METRIC} gauge")),
        "{metrics}"
    );

    // Set at reload too.
    let renewed = client_ca.issue_with("metered", Validity::days(400), KeyFormat::Pkcs8);
    renewed.write(fusebox.dir(), CERT, KEY);
    fusebox.agent().reload().await.unwrap();
    let metrics = fusebox.metrics().await;
    let value = metric(&metrics, EXPIRY_METRIC, &[("upstream", "svc")]);
    let expected = unix_seconds(renewed.not_after()) as f64;
    assert!(
        (value - expected).abs() <= 1.0,
        "{value} != {expected}:\n{metrics}"
    );

    // A policy that no longer has a client certificate has no expiry series.
    std::fs::write(fusebox.dir().join("svc.toml"), tls_policy(&host, false, "")).unwrap();
    fusebox.agent().reload().await.unwrap();
    let metrics = fusebox.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with(&format!("{EXPIRY_METRIC}{{"))),
        "{metrics}"
    );
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Secrecy

/// Fails if any trace of `identity`'s key is in `text`.
fn assert_no_key(text: &str, identity: &ClientIdentity, where_: &str) {
    for snippet in identity.key_fingerprints() {
        assert!(
            !text.contains(&snippet),
            "{where_} shows part of the private key of {}: {snippet:?}",
            identity.cn
        );
    }
    assert!(
        !text.contains("PRIVATE KEY-----"),
        "{where_} shows a PEM private key"
    );
}

async fn admin_get(admin: &str, path: &str) -> String {
    let response = direct_client()
        .get(format!("{admin}{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.unwrap()
}

/// The key's content is nowhere: not in `/config` (which shows both paths), `/upstreams`,
/// `/metrics`, nor in the log at the most verbose level, through a request, an applied reload
/// and a refused one; nor in `fusebox check`'s output about a bad pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_key_is_never_shown() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let first = client_ca.issue("secret-one");
    let second = client_ca.issue_with("secret-two", Validity::days(30), KeyFormat::EcSec1);
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let host = localhost(&upstream);
    let policy = tls_policy(&host, true, "");
    let dir = policies_dir(&[("default", ""), ("svc", &policy)]);
    pki.write_ca(dir.path());
    first.write(dir.path(), CERT, KEY);
    let fusebox = FuseboxProcess::spawn(dir.path(), &[], &[("RUST_LOG", "trace")]).await;
    let admin = fusebox.admin_url();
    let app = support::app_client(&fusebox.egress_url());
    let url = format!("http://{host}/");
    let answer = Answer::from_reqwest(app.get(&url).send().await.unwrap()).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    let config: Value = serde_json::from_str(&admin_get(&admin, "/config").await).unwrap();
    let svc = &config["policies"]["svc"];
    assert!(
        svc["client_cert"]
            .as_str()
            .is_some_and(|p| p.ends_with(CERT)),
        "/config shows the certificate's path: {svc:#}"
    );
    assert!(
        svc["client_key"].as_str().is_some_and(|p| p.ends_with(KEY)),
        "/config shows the key's path: {svc:#}"
    );
    let mut shown = config.to_string();
    shown.push_str(&admin_get(&admin, "/upstreams").await);
    shown.push_str(&admin_get(&admin, "/metrics").await);
    assert_no_key(&shown, &first, "the admin API");

    // An applied reload (the second identity), a request, then a refused one (a key of
    // neither certificate): its errors are logged.
    second.write(dir.path(), CERT, KEY);
    let reload = direct_client()
        .post(format!("{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "{}", reload.text().await.unwrap());
    let answer = Answer::from_reqwest(app.get(&url).send().await.unwrap()).await;
    assert_eq!(answer.client_cn(), Some("secret-two"), "{answer:?}");
    let stray = client_ca.issue("stray");
    write_in_place(&dir.path().join(KEY), stray.key_pem().as_bytes());
    let reload = direct_client()
        .post(format!("{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 400);
    let refusal = reload.text().await.unwrap();
    assert!(refusal.contains("does not match"), "{refusal}");
    assert_no_key(&refusal, &stray, "POST /reload's refusal");
    let config = admin_get(&admin, "/config").await;
    for identity in [&first, &second, &stray] {
        assert_no_key(&config, identity, "/config");
    }

    // Log lines are written within 100 ms: wait for the refusal's, not for a fixed time.
    let mut logs = String::new();
    for _ in 0..200 {
        logs = fusebox.logs();
        if logs.contains("does not match") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        logs.contains("does not match"),
        "the refusal is logged:\n{logs}"
    );
    for identity in [&first, &second, &stray] {
        assert_no_key(&logs, identity, "the log");
    }

    let done = check(dir.path(), &["--format", "json"]);
    assert_eq!(done.code, Some(1), "{}", done.stdout);
    assert_no_key(
        &format!("{}{}", done.stdout, done.stderr),
        &stray,
        "fusebox check",
    );
}

// ---------------------------------------------------------------------------------------------
// fusebox check: load errors and lints

fn check_json(dir: &Path, strict: bool) -> (Option<i32>, Value) {
    let args: &[&str] = if strict {
        &["--format", "json", "--strict"]
    } else {
        &["--format", "json"]
    };
    let done = check(dir, args);
    let doc = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", done.stdout, done.stderr));
    (done.code, doc)
}

/// `api.toml`: `client_cert` on line 3 (value at column 15), `client_key` on line 4 (value at
/// column 14).
const API: &str = "hosts = [\"api.test\"]\ntls = true\nclient_cert = \"client.pem\"\nclient_key = \"client-key.pem\"\n";
const CERT_AT: (u64, u64) = (3, 15);
const KEY_AT: (u64, u64) = (4, 14);

/// A policies directory with `api.toml` = `policy` and these extra files.
fn check_dir(policy: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = policies_dir(&[("api", policy)]);
    for (name, bytes) in files {
        write_in_place(&dir.path().join(name), bytes);
        if name.ends_with("-key.pem") {
            set_mode(&dir.path().join(name), 0o600);
        }
    }
    dir
}

fn assert_one_error(dir: &Path, at: (u64, u64), says: &[&str], case: &str) {
    let (code, doc) = check_json(dir, false);
    assert_eq!(code, Some(1), "{case}: {doc:#}");
    let errors = doc["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{case}: {doc:#}");
    let e = &errors[0];
    assert_eq!(
        e["file"],
        dir.join("api.toml").display().to_string(),
        "{case}: {doc:#}"
    );
    assert_eq!(
        (e["line"].as_u64(), e["col"].as_u64()),
        (Some(at.0), Some(at.1)),
        "{case}: {doc:#}"
    );
    let message = e["message"].as_str().unwrap();
    for s in says {
        assert!(message.contains(s), "{case}: {s:?} not in {message:?}");
    }
    // The text format says the same at the same place.
    let text = check(dir, &[]);
    assert_eq!(text.code, Some(1));
    assert!(
        text.stderr
            .contains(&format!("api.toml:{}:{}: ", at.0, at.1)),
        "{case}: {}",
        text.stderr
    );
}

#[test]
fn check_refuses_unusable_pairs_at_the_key_with_the_file_and_why() {
    let ca = ClientCa::new("fusebox test client CA");
    let good = ca.issue("good");
    let other = ca.issue("other");
    let expired = ca.issue_with("expired", Validity::expired_yesterday(), KeyFormat::Pkcs8);
    let cert = good.cert_pem();
    let key = good.key_pem().as_bytes();

    // (case, api.toml, files beside it, where the error is, what its message says)
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a [u8])>,
        (u64, u64),
        Vec<String>,
    );
    let cases: Vec<Case> = vec![
        (
            "missing certificate file",
            API.into(),
            vec![(KEY, key)],
            CERT_AT,
            vec![
                "`client_cert`".into(),
                "cannot read".into(),
                "client.pem".into(),
            ],
        ),
        (
            "missing key file",
            API.into(),
            vec![(CERT, cert.as_bytes())],
            KEY_AT,
            vec![
                "`client_key`".into(),
                "cannot read".into(),
                "client-key.pem".into(),
            ],
        ),
        (
            "no certificate in the file",
            API.into(),
            vec![(CERT, &b"not a certificate\n"[..]), (KEY, key)],
            CERT_AT,
            vec!["holds no PEM certificate".into(), "client.pem".into()],
        ),
        (
            "no key in the file",
            API.into(),
            vec![(CERT, cert.as_bytes()), (KEY, cert.as_bytes())],
            KEY_AT,
            vec!["holds no private key".into(), "client-key.pem".into()],
        ),
        (
            "a key of another certificate",
            API.into(),
            vec![(CERT, cert.as_bytes()), (KEY, other.key_pem().as_bytes())],
            KEY_AT,
            vec![
                "does not match the certificate".into(),
                "client-key.pem".into(),
            ],
        ),
        (
            "an expired certificate",
            API.into(),
            vec![
                (CERT, expired.cert_pem().into_bytes().leak()),
                (KEY, expired.key_pem().as_bytes()),
            ],
            CERT_AT,
            vec![
                format!("expired on {}", utc_date(expired.not_after())),
                "client.pem".into(),
            ],
        ),
        (
            "client_cert alone",
            "hosts = [\"api.test\"]\ntls = true\nclient_cert = \"client.pem\"\n".into(),
            vec![(CERT, cert.as_bytes()), (KEY, key)],
            CERT_AT,
            vec!["`client_key`".into()],
        ),
        (
            "client_key alone",
            "hosts = [\"api.test\"]\ntls = true\nclient_key = \"client-key.pem\"\n".into(),
            vec![(CERT, cert.as_bytes()), (KEY, key)],
            (3, 14),
            vec!["`client_cert`".into()],
        ),
    ];
    for (case, policy, files, at, says) in cases {
        let dir = check_dir(&policy, &files);
        let says: Vec<&str> = says.iter().map(String::as_str).collect();
        assert_one_error(dir.path(), at, &says, case);
    }
}

/// `fusebox run` refuses to start on an unusable pair (exit 1, the error on stderr).
#[test]
fn run_refuses_to_start_with_an_expired_certificate() {
    let ca = ClientCa::new("fusebox test client CA");
    let expired = ca.issue_with("expired", Validity::expired_yesterday(), KeyFormat::Pkcs8);
    let dir = check_dir(API, &[]);
    expired.write(dir.path(), CERT, KEY);
    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["run", "--policies"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("FUSEBOX_CA_DIR")
        .env_remove("FUSEBOX_REDIS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fusebox run started with an expired client certificate:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("api.toml:3:15") && stderr.contains("expired on"),
        "{stderr}"
    );
}

/// The warnings of `check`: a certificate that expires within 14 days, a key file others can
/// read. Exit 0, or 2 with `--strict`.
#[test]
fn check_warns_of_an_expiring_certificate_and_a_readable_key() {
    let ca = ClientCa::new("fusebox test client CA");
    let warnings_of = |identity: &ClientIdentity, key_mode: u32| {
        let dir = check_dir(API, &[]);
        identity.write(dir.path(), CERT, KEY);
        set_mode(&dir.path().join(KEY), key_mode);
        let (code, doc) = check_json(dir.path(), false);
        assert_eq!(code, Some(0), "{doc:#}");
        let warnings = doc["warnings"].as_array().unwrap().clone();
        let (strict, strict_doc) = check_json(dir.path(), true);
        let expected_strict = if warnings.is_empty() { 0 } else { 2 };
        assert_eq!(strict, Some(expected_strict), "--strict: {strict_doc:#}");
        let file = dir.path().join("api.toml").display().to_string();
        warnings
            .iter()
            .map(|w| {
                assert_eq!(w["file"], file.as_str(), "{w:#}");
                (
                    w["code"].as_str().unwrap().to_owned(),
                    (w["line"].as_u64().unwrap(), w["col"].as_u64().unwrap()),
                    w["message"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };

    let in_3_days = ca.issue_with("soon", Validity::days(3), KeyFormat::Pkcs8);
    let w = warnings_of(&in_3_days, 0o600);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "client-cert-expiring", "{w:?}");
    assert_eq!(w[0].1, CERT_AT, "{w:?}");
    assert!(w[0].2.contains("client.pem"), "names the file: {w:?}");

    let in_13_days = ca.issue_with("soon", Validity::days(13), KeyFormat::Pkcs8);
    let w = warnings_of(&in_13_days, 0o600);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "client-cert-expiring", "within 14 days: {w:?}");

    let in_15_days = ca.issue_with("later", Validity::days(15), KeyFormat::Pkcs8);
    assert!(
        warnings_of(&in_15_days, 0o600).is_empty(),
        "not within 14 days"
    );

    let fine = ca.issue("fine");
    for mode in [0o644, 0o640, 0o604] {
        let w = warnings_of(&fine, mode);
        assert_eq!(w.len(), 1, "mode {mode:o}: {w:?}");
        assert_eq!(w[0].0, "client-key-readable", "mode {mode:o}: {w:?}");
        assert_eq!(w[0].1, KEY_AT, "mode {mode:o}: {w:?}");
        assert!(w[0].2.contains("client-key.pem"), "names the file: {w:?}");
    }
    for mode in [0o600, 0o400] {
        assert!(warnings_of(&fine, mode).is_empty(), "mode {mode:o}");
    }

    let both = warnings_of(&in_3_days, 0o644);
    let codes: Vec<&str> = both.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(
        codes,
        ["client-cert-expiring", "client-key-readable"],
        "{both:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Key formats

/// A PKCS#8 ECDSA key, an RSA key in PKCS#1 and an EC key in SEC1 each load (`check --strict`
/// is clean) and work end to end, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs8_rsa_pkcs1_and_ec_sec1_keys_load_and_work() {
    let pki = TestPki::new();
    let client_ca = ClientCa::new("fusebox test client CA");
    let formats = [
        ("pkcs8", KeyFormat::Pkcs8),
        ("rsa", KeyFormat::RsaPkcs1),
        ("sec1", KeyFormat::EcSec1),
    ];
    let identities: Vec<(&str, ClientIdentity)> = formats
        .iter()
        .map(|&(name, format)| {
            let identity =
                client_ca.issue_with(&format!("{name}-client"), Validity::days(30), format);
            assert!(identity.key_pem().starts_with(format.pem_label()));
            (name, identity)
        })
        .collect();
    let upstream = mtls_upstream(&pki, &[&client_ca]).await;
    let mut files = vec![("default".to_owned(), String::new())];
    for (name, _) in &identities {
        files.push((
            (*name).to_owned(),
            format!(
                "listen = \"127.0.0.1:0\"\nendpoints = [\"{}\"]\ntls = true\nca_file = \"test-ca.pem\"\n{}",
                localhost(&upstream),
                identity_keys(Some(name))
            ),
        ));
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let dir = policies_dir(&files);
    pki.write_ca(dir.path());
    for (name, identity) in &identities {
        identity.write(
            dir.path(),
            &format!("{name}.pem"),
            &format!("{name}-key.pem"),
        );
    }

    let (code, doc) = check_json(dir.path(), true);
    assert_eq!(code, Some(0), "every format loads, no warning: {doc:#}");

    let fusebox = TestFusebox::start_in(dir).await;
    for (name, identity) in &identities {
        let url = format!("{}/{name}", fusebox.route_url(name));
        let answer = Answer::from_reqwest(direct_client().get(&url).send().await.unwrap()).await;
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        assert_eq!(answer.client_cn(), Some(identity.cn.as_str()), "{name}");
    }
    assert_eq!(upstream.hits(), 3);
    fusebox.shutdown().await;
}

#[test]
fn validity_helpers_are_whole_seconds() {
    // The metric test compares with ±1 s: the helpers must give exactly what the certificate
    // says (X.509 has no fractions of a second).
    let v = Validity::days(2);
    assert_eq!(
        v.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
        0
    );
    assert!(v.not_after > SystemTime::now() + DAY);
    assert!(Validity::expired_yesterday().not_after < SystemTime::now());
}
