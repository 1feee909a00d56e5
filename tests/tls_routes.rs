//! Route listeners (Envoy's listener → cluster model), TLS origination (route and egress
//! listener), certificate verification, ALPN h2 and the egress address guard, end to end on
//! real loopback sockets with reqwest as the app.
//!
//! Every upstream here is a `FakeUpstream` on 127.0.0.1; no test sends traffic to any
//! non-loopback address.

mod support;

use std::time::Duration;

use http::Version;
use support::{direct_client, policies_dir, FakeUpstream, TestFusebox, TestPki};

/// A policy file's contents for a route listener on an ephemeral port.
fn route_policy(endpoints: &[String], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [{}]\n{extra}",
        endpoints.join(", ")
    )
}

/// `localhost:PORT` of an upstream: the DNS name the test leaf certificate is issued for.
fn localhost_authority(upstream: &FakeUpstream) -> String {
    format!("localhost:{}", upstream.addr().port())
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("response has no {name} header: {response:?}"))
        .to_str()
        .expect("header is text")
}

fn recorded_host(upstream: &FakeUpstream) -> String {
    let request = upstream.last_request().expect("the upstream saw a request");
    request
        .headers
        .get("host")
        .expect("the request has a Host header")
        .to_str()
        .expect("Host is text")
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Route listeners

#[tokio::test]
async fn route_listener_round_robins_between_endpoints() {
    let a = FakeUpstream::builder().body("from a").start().await;
    let b = FakeUpstream::builder().body("from b").start().await;
    // p2c-ewma is the default for several endpoints; round robin is asked for.
    let balance = "[balance]\nmode = \"round-robin\"\n";
    let policy = route_policy(&[a.authority(), b.authority()], balance);
    let fusebox = TestFusebox::start(&[("svc", &policy)]).await;
    let client = direct_client();

    let mut bodies = Vec::new();
    for i in 0..6 {
        let response = client
            .get(format!("{}/item/{i}", fusebox.route_url("svc")))
            .send()
            .await
            .expect("request to the route listener");
        assert_eq!(response.status(), 200);
        bodies.push(response.text().await.expect("body"));
    }
    for pair in bodies.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "consecutive requests must alternate: {bodies:?}"
        );
    }
    assert_eq!((a.hits(), b.hits()), (3, 3), "{bodies:?}");
    // The path and query arrive unchanged.
    let last = b.last_request().or_else(|| a.last_request()).unwrap();
    assert!(last.uri.path().starts_with("/item/"), "{:?}", last.uri);
    fusebox.shutdown().await;
}

#[tokio::test]
async fn route_listener_keeps_the_apps_host_without_host_rewrite() {
    let upstream = FakeUpstream::builder().start().await;
    let policy = route_policy(&[upstream.authority()], "");
    let fusebox = TestFusebox::start(&[("svc", &policy)]).await;
    let route = fusebox.route_url("svc");

    let response = direct_client()
        .get(format!("{route}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let app_host = route.trim_start_matches("http://");
    assert_eq!(recorded_host(&upstream), app_host);
    assert_eq!(upstream.last_request().unwrap().uri, "/x");
    fusebox.shutdown().await;
}

#[tokio::test]
async fn route_listener_rewrites_host() {
    let upstream = FakeUpstream::builder().start().await;
    let policy = route_policy(&[upstream.authority()], "host_rewrite = \"api.internal\"\n");
    let fusebox = TestFusebox::start(&[("svc", &policy)]).await;

    let response = direct_client()
        .get(format!("{}/v1/things?id=7", fusebox.route_url("svc")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(recorded_host(&upstream), "api.internal");
    assert_eq!(upstream.last_request().unwrap().uri, "/v1/things?id=7");
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// TLS origination on a route listener

#[tokio::test]
async fn route_listener_originates_tls_to_a_localhost_endpoint() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .body("secret hello")
        .start()
        .await;
    // ca_file relative to the policies directory (policies/default.toml says so).
    let policy = route_policy(
        &[localhost_authority(&upstream)],
        "tls = true\nca_file = \"test-ca.pem\"\n",
    );
    let dir = policies_dir(&[("secure", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;

    let response = direct_client()
        .get(format!("{}/over-tls", fusebox.route_url("secure")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "secret hello");
    assert_eq!(upstream.hits(), 1);
    let request = upstream.last_request().unwrap();
    assert_eq!(request.uri, "/over-tls");
    assert_eq!(request.version, Version::HTTP_11);
    fusebox.shutdown().await;
}

#[tokio::test]
async fn route_listener_originates_tls_to_an_ip_endpoint_with_sni() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .start()
        .await;
    // The endpoint is an IP; the name sent and verified is `sni`.
    let with_sni = route_policy(
        &[upstream.authority()],
        "tls = true\nsni = \"localhost\"\nca_file = \"test-ca.pem\"\n",
    );
    // Without `sni`, the IP itself is verified (the leaf has a 127.0.0.1 IP SAN).
    let without_sni = route_policy(
        &[upstream.authority()],
        "tls = true\nca_file = \"test-ca.pem\"\n",
    );
    let dir = policies_dir(&[("with-sni", &with_sni), ("ip-san", &without_sni)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;
    let client = direct_client();

    for (n, policy) in ["with-sni", "ip-san"].into_iter().enumerate() {
        let response = client
            .get(format!("{}/{policy}", fusebox.route_url(policy)))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "policy {policy}: {body}");
        assert_eq!(upstream.hits(), n as u64 + 1);
        assert_eq!(
            upstream.last_request().unwrap().uri.path(),
            format!("/{policy}")
        );
    }
    fusebox.shutdown().await;
}

/// The repository's `examples/envoy/envoy.toml` (listen → endpoint:443, tls, host_rewrite,
/// sni), with its upstream's names pointed at the local TLS upstream.
#[tokio::test]
async fn envoy_example_policy_works_end_to_end() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .body("envoy-shaped hello")
        .start()
        .await;
    let example_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/envoy.toml");
    let example = std::fs::read_to_string(&example_path).expect("read envoy.toml");
    let placeholder = "www.envoyproxy.io";
    assert!(example.contains(&format!("endpoints = [\"{placeholder}:443\"]")));
    assert!(example.contains("listen = \"127.0.0.1:10000\""));
    let policy = format!(
        "ca_file = \"test-ca.pem\"\n{}",
        example
            .replace("listen = \"127.0.0.1:10000\"", "listen = \"127.0.0.1:0\"")
            .replace(
                &format!("\"{placeholder}:443\""),
                &format!("\"{}\"", upstream.authority())
            )
            .replace(placeholder, "localhost")
    );
    assert!(policy.contains("tls = true") && policy.contains("sni = \"localhost\""));
    assert!(policy.contains("host_rewrite = \"localhost\""));
    let dir = policies_dir(&[("envoy", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;

    let response = direct_client()
        .get(format!("{}/docs?page=1", fusebox.route_url("envoy")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "envoy-shaped hello");
    assert_eq!(upstream.hits(), 1);
    assert_eq!(recorded_host(&upstream), "localhost");
    assert_eq!(upstream.last_request().unwrap().uri, "/docs?page=1");
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// TLS origination on the egress listener

/// fusebox with one policy, `secure`, that originates TLS to `upstream` (as `localhost`,
/// trusting `pki`'s CA); and the upstream's `localhost:PORT`.
async fn egress_tls_fusebox(pki: &TestPki, upstream: &FakeUpstream) -> (TestFusebox, String) {
    let host = localhost_authority(upstream);
    let policy = format!("hosts = [\"{host}\"]\ntls = true\nca_file = \"test-ca.pem\"\n");
    let dir = policies_dir(&[("secure", &policy)]);
    pki.write_ca(dir.path());
    (TestFusebox::start_in(dir).await, host)
}

#[tokio::test]
async fn egress_listener_originates_tls_for_a_localhost_policy() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .body("tls via egress")
        .start()
        .await;
    let (fusebox, host) = egress_tls_fusebox(&pki, &upstream).await;

    // The app speaks plain http:// to the upstream's explicit port, through HTTP_PROXY.
    let response = fusebox
        .app()
        .get(format!("http://{host}/plain?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "tls via egress");
    // The TLS upstream on PORT (not 443) got it: the explicit port is kept.
    assert_eq!(upstream.hits(), 1);
    let request = upstream.last_request().unwrap();
    assert_eq!(request.uri, "/plain?q=1");
    assert_eq!(recorded_host(&upstream), host);
    fusebox.shutdown().await;
}

/// An HTTP/1.1 TLS upstream is reached on fusebox's own connections: kept alive across
/// requests (the session tickets a TLS 1.3 server sends after the handshake do not make a
/// resting connection look used), with a body large enough to be written while the answer
/// is read.
#[tokio::test]
async fn tls_upstream_connections_are_kept_alive_across_requests_and_bodies() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .echo()
        .start()
        .await;
    let (fusebox, host) = egress_tls_fusebox(&pki, &upstream).await;
    let app = fusebox.app();

    // Over 16 KiB (written apart from the head), within `max_replay_bytes` (kept, so not
    // streamed on the pooled client).
    let large: Vec<u8> = (0..40 * 1024u32).map(|i| (i % 251) as u8).collect();
    for body in [b"small".to_vec(), large, Vec::new()] {
        let response = app
            .post(format!("http://{host}/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.unwrap() == body, "echoed intact");
    }
    assert_eq!(upstream.hits(), 3);
    assert_eq!(upstream.last_request().unwrap().version, Version::HTTP_11);
    assert_eq!(upstream.connections(), 1, "one TLS connection, kept alive");
    fusebox.shutdown().await;
}

#[tokio::test]
async fn egress_listener_originates_tls_for_an_ip_policy() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .start()
        .await;
    let policy = format!(
        "hosts = [\"{}\"]\ntls = true\nsni = \"localhost\"\nca_file = \"test-ca.pem\"\n",
        upstream.authority()
    );
    let dir = policies_dir(&[("secure", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;

    let response = fusebox.app().get(upstream.url("/ip")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 1);
    assert_eq!(upstream.last_request().unwrap().uri, "/ip");
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Certificate verification is never skipped

async fn assert_tls_refused(response: reqwest::Response, upstream: &FakeUpstream) {
    assert_eq!(response.status(), 502, "{response:?}");
    assert_eq!(header(&response, "x-fusebox-reason"), "tls-verify-failed");
    let body = response.text().await.unwrap();
    assert!(
        body.contains("certificate") && body.contains("ca_file"),
        "the body says that the certificate did not verify, and what to do: {body:?}"
    );
    eprintln!("local reply: {}", body.trim_end());
    // fusebox reached the upstream once (a trust problem is not retried) and never sent it a
    // request.
    assert_eq!(upstream.connections(), 1);
    assert_eq!(upstream.hits(), 0);
}

/// A certificate that does not verify is the policy's trust problem (#22, item 10), not a sick
/// upstream: never retried, never a breaker failure — however many requests fail, each gets
/// its own `tls-verify-failed` reply (not `breaker-open`), after one connection each.
#[tokio::test]
async fn a_certificate_that_does_not_verify_is_not_retried_and_never_trips_the_breaker() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.wrong_server_config())
        .start()
        .await;
    let host = localhost_authority(&upstream);
    let policy = format!(
        "hosts = [\"{host}\"]\ntls = true\nca_file = \"test-ca.pem\"\n[breaker]\nconsecutive_failures = 2\n"
    );
    let dir = policies_dir(&[("secure", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;
    for n in 1..=5 {
        let response = fusebox
            .app()
            .get(format!("http://{host}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&response, "x-fusebox-reason"),
            "tls-verify-failed",
            "request {n}"
        );
        assert_eq!(
            upstream.connections(),
            n,
            "one connection per request: no retry"
        );
    }
    let metrics = fusebox.metrics().await;
    let series = format!("fusebox_breaker_state{{upstream=\"secure\",destination=\"{host}\"}} 0");
    assert!(metrics.contains(&series), "{metrics}");
    fusebox.shutdown().await;
}

#[tokio::test]
async fn wrong_certificate_is_refused_on_a_route_listener() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.wrong_server_config())
        .start()
        .await;
    let policy = route_policy(
        &[localhost_authority(&upstream)],
        "tls = true\nca_file = \"test-ca.pem\"\n",
    );
    let dir = policies_dir(&[("secure", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;

    let response = direct_client()
        .get(format!("{}/", fusebox.route_url("secure")))
        .send()
        .await
        .unwrap();
    assert_tls_refused(response, &upstream).await;
    fusebox.shutdown().await;
}

#[tokio::test]
async fn wrong_certificate_is_refused_on_the_egress_listener() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.wrong_server_config())
        .start()
        .await;
    let (fusebox, host) = egress_tls_fusebox(&pki, &upstream).await;

    let response = fusebox
        .app()
        .get(format!("http://{host}/"))
        .send()
        .await
        .unwrap();
    assert_tls_refused(response, &upstream).await;
    fusebox.shutdown().await;
}

#[tokio::test]
async fn good_certificate_without_ca_file_is_refused() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .start()
        .await;
    // Only the system (or webpki) roots: the test CA is an unknown issuer.
    let policy = route_policy(&[localhost_authority(&upstream)], "tls = true\n");
    let fusebox = TestFusebox::start(&[("secure", &policy)]).await;

    let response = direct_client()
        .get(format!("{}/", fusebox.route_url("secure")))
        .send()
        .await
        .unwrap();
    assert_tls_refused(response, &upstream).await;
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// ALPN

#[tokio::test]
async fn alpn_negotiates_h2_upstream_while_the_app_gets_http11() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config_h2())
        .body("over h2")
        .start()
        .await;
    let route = route_policy(
        &[localhost_authority(&upstream)],
        "tls = true\nca_file = \"test-ca.pem\"\n",
    );
    let egress = format!(
        "hosts = [\"{}\"]\ntls = true\nca_file = \"test-ca.pem\"\n",
        localhost_authority(&upstream)
    );
    let dir = policies_dir(&[("route-h2", &route), ("egress-h2", &egress)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;

    let via_route = direct_client()
        .get(format!("{}/route", fusebox.route_url("route-h2")))
        .send()
        .await
        .unwrap();
    assert_eq!(via_route.status(), 200);
    assert_eq!(via_route.version(), Version::HTTP_11);
    assert_eq!(via_route.text().await.unwrap(), "over h2");
    let request = upstream.last_request().unwrap();
    assert_eq!(request.version, Version::HTTP_2);
    assert_eq!(request.uri.path(), "/route");

    let via_egress = fusebox
        .app()
        .get(format!("http://{}/egress", localhost_authority(&upstream)))
        .send()
        .await
        .unwrap();
    assert_eq!(via_egress.status(), 200);
    assert_eq!(via_egress.version(), Version::HTTP_11);
    // `Via` names the protocol each message was received with (RFC 9110 §7.6.3): the
    // response came over HTTP/2, the app's request over HTTP/1.1.
    let via = via_egress.headers()["via"].to_str().unwrap().to_owned();
    assert!(via.starts_with("2 fusebox-"), "Via toward the app: {via:?}");
    assert_eq!(via_egress.text().await.unwrap(), "over h2");
    let request = upstream.last_request().unwrap();
    assert_eq!(request.version, Version::HTTP_2);
    assert_eq!(request.uri.path(), "/egress");
    let via = request.headers["via"].to_str().unwrap();
    assert!(
        via.starts_with("1.1 fusebox-"),
        "Via toward the upstream: {via:?}"
    );
    assert_eq!(upstream.hits(), 2);

    // The upstream's choice is remembered per destination: fusebox offered HTTP/1.1 on its
    // own connection once per destination, then keeps to the pooled HTTP/2 connection.
    let before = upstream.connections();
    for _ in 0..3 {
        let response = direct_client()
            .get(format!("{}/again", fusebox.route_url("route-h2")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(upstream.last_request().unwrap().version, Version::HTTP_2);
    assert_eq!(upstream.connections(), before, "no new connection");
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Egress guard (loopback only)

#[tokio::test]
async fn egress_guard_denies_loopback_unless_a_policy_allows_it() {
    let denied = FakeUpstream::builder().start().await;
    let allowed = FakeUpstream::builder().body("allowed").start().await;
    let routed = FakeUpstream::builder().start().await;
    let allow_policy = format!(
        "hosts = [\"{}\"]\nallow_private = true\n",
        allowed.authority()
    );
    // A route policy inherits allow_private = false from default.toml.
    let route = route_policy(&[routed.authority()], "");
    let fusebox = TestFusebox::start(&[
        ("default", "allow_private = false\n"),
        ("internal", &allow_policy),
        ("route", &route),
    ])
    .await;
    let app = fusebox.app();

    // By IP literal and by a name that resolves to loopback: both checked after resolution.
    for url in [
        denied.url("/blocked"),
        format!("http://localhost:{}/blocked", denied.addr().port()),
    ] {
        let response = app.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 403, "{url}");
        assert_eq!(header(&response, "x-fusebox-reason"), "denied");
        let body = response.text().await.unwrap();
        assert!(body.contains("denied"), "{body:?}");
    }
    assert_eq!(denied.hits(), 0);
    assert_eq!(
        denied.connections(),
        0,
        "a denied destination is never connected to"
    );

    let response = direct_client()
        .get(format!("{}/blocked", fusebox.route_url("route")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(header(&response, "x-fusebox-reason"), "denied");
    assert_eq!(routed.connections(), 0);

    let response = app.get(allowed.url("/ok")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "allowed");
    assert_eq!(allowed.hits(), 1);
    fusebox.shutdown().await;
}

/// A connect to a refused loopback port (the guard allows it by default) is a 502, not a hang.
#[tokio::test]
async fn route_listener_endpoint_refusing_connections_is_a_502() {
    let refused = support::refused_addr().await;
    let policy = route_policy(&[refused.to_string()], "");
    let fusebox = TestFusebox::start(&[("svc", &policy)]).await;
    let response = direct_client()
        .get(format!("{}/", fusebox.route_url("svc")))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(header(&response, "x-fusebox-reason"), "connect-failed");
    fusebox.shutdown().await;
}

/// Over HTTP/2 the upstream reads the target host from `:authority` (RFC 9113 §8.3.1: a
/// client must not send a `Host` that differs from it), so `host_rewrite` must reach it there.
#[tokio::test]
async fn host_rewrite_reaches_an_h2_upstream_as_its_authority() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config_h2())
        .start()
        .await;
    let policy = route_policy(
        &[upstream.authority()],
        "tls = true\nsni = \"localhost\"\nhost_rewrite = \"api.internal\"\n\
         ca_file = \"test-ca.pem\"\n",
    );
    let dir = policies_dir(&[("svc", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;

    let response = direct_client()
        .get(format!("{}/h2", fusebox.route_url("svc")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request = upstream.last_request().unwrap();
    assert_eq!(request.version, Version::HTTP_2);
    let authority = request.uri.authority().map(|a| a.as_str().to_owned());
    let host = request
        .headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_owned());
    eprintln!("h2 upstream saw :authority {authority:?}, host {host:?}");
    assert_eq!(authority.as_deref(), Some("api.internal"));
    assert!(
        host.is_none() || host == authority,
        "Host {host:?} differs from :authority {authority:?}"
    );
    fusebox.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Resting connections are keyed by what made them (issue #22, item 1)

/// Sends `GET <url>` in absolute form on one app connection; the response.
async fn absolute_get(conn: &mut support::raw::RawConn, url: &str) -> support::raw::RawResponse {
    let host = url.split('/').nth(2).expect("an authority");
    conn.send(format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await;
    conn.read_response().await
}

/// After an `http://` request to a cleartext upstream, an absolute-form `https://` request to
/// the same `host:port` does not go out on the resting cleartext connection: fusebox opens a
/// TLS connection, whose handshake the cleartext upstream fails.
#[tokio::test]
async fn an_https_request_never_takes_a_resting_cleartext_connection() {
    let upstream = FakeUpstream::builder().body("cleartext").start().await;
    let fusebox = TestFusebox::start(&[("default", "[retry]\nattempts = 1\n")]).await;
    let mut conn = support::raw::RawConn::connect(fusebox.agent().egress_addr()).await;
    let plain = absolute_get(&mut conn, &upstream.url("/plain")).await;
    assert_eq!(
        (plain.status, plain.body.as_slice()),
        (200, &b"cleartext"[..])
    );
    let https = format!("https://{}/secret", upstream.authority());
    let secured = absolute_get(&mut conn, &https).await;
    assert_eq!(secured.status, 502, "{secured:?}");
    assert_eq!(secured.header("x-fusebox-reason"), Some("connect-failed"));
    assert_eq!(
        upstream.hits(),
        1,
        "the https request never reached it in cleartext"
    );
    fusebox.shutdown().await;
}

/// The reverse: after an `https://` request (TLS verified under the policy's `ca_file`), an
/// `http://` request to the same `host:port` does not go out on the resting TLS connection.
#[tokio::test]
async fn an_http_request_never_takes_a_resting_tls_connection() {
    let pki = TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.server_config())
        .body("over tls")
        .start()
        .await;
    let host = localhost_authority(&upstream);
    let policy =
        format!("hosts = [\"{host}\"]\nca_file = \"test-ca.pem\"\n[retry]\nattempts = 1\n");
    let dir = policies_dir(&[("mixed", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = TestFusebox::start_in(dir).await;
    let mut conn = support::raw::RawConn::connect(fusebox.agent().egress_addr()).await;
    let secured = absolute_get(&mut conn, &format!("https://{host}/a")).await;
    assert_eq!(
        (secured.status, secured.body.as_slice()),
        (200, &b"over tls"[..])
    );
    let plain = absolute_get(&mut conn, &format!("http://{host}/b")).await;
    assert_eq!(plain.status, 502, "{plain:?}");
    assert_eq!(
        upstream.hits(),
        1,
        "the http request never went out on the TLS connection"
    );
    fusebox.shutdown().await;
}
