//! The live view's server side over real sockets (docs/ARCHITECTURE.md §6): the page and its
//! Content-Security-Policy, `GET /events` (a `snapshot`, then `update`s carrying only rows
//! that changed), a trip showing up in the stream, a route's own breaker in its destination's
//! row, the bound on open streams, and `/upstreams`' totals. The page itself is driven in a real browser by `tests/live_view.rs`.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::{direct_client, policies_dir, FakeUpstream, Reply, TestFusebox};

/// A policy covering `upstream`: one try, trips after two failures in a row, open 30 s.
fn tripping_policy(upstream: &FakeUpstream) -> String {
    format!(
        "hosts = [\"{}\"]\n[retry]\nattempts = 1\n\
         [breaker]\nconsecutive_failures = 2\nopen_base = \"30s\"\n",
        upstream.authority()
    )
}

/// One stream of `GET /events`, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(fusebox: &TestFusebox) -> Events {
        let response = direct_client()
            .get(format!("{}/events", fusebox.admin_url()))
            .send()
            .await
            .expect("GET /events");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's name and data; fails after 10 s (the stream sends at least one every
    /// 15 s when idle, every second while anything changes).
    async fn next(&mut self) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return (name, serde_json::from_str(&data).expect("JSON data"));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream read")
                .expect("stream open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads events until a row of `destination` satisfies `test`; that row.
    async fn until(&mut self, destination: &str, test: impl Fn(&Value) -> bool) -> Value {
        self.event_until(destination, test).await["row"].clone()
    }

    /// Reads events until a row of `destination` satisfies `test`: `{"row": …, "event": …}`.
    async fn event_until(&mut self, destination: &str, test: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..20 {
            let (_, data) = self.next().await;
            let found = data["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|row| row["destination"] == destination && test(row))
                .cloned();
            if let Some(row) = found {
                return serde_json::json!({ "row": row, "event": data });
            }
        }
        panic!("no such row of {destination} in 20 events");
    }
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let fusebox = TestFusebox::start(&[]).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/live.js", "text/javascript"),
        ("/live.css", "text/css"),
    ] {
        let response = direct_client()
            .get(format!("{}{path}", fusebox.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        let content_type = headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "require-trusted-types-for 'script'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let page = direct_client()
        .get(fusebox.admin_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("live.js") && page.contains("live.css"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "no inline script: {page}");
    fusebox.shutdown().await;
}

#[tokio::test]
async fn events_show_a_trip_with_its_reason_rates_and_totals() {
    let healthy = FakeUpstream::with_status(200).await;
    let failing = FakeUpstream::with_status(503).await;
    let fusebox = TestFusebox::start_in(policies_dir(&[
        ("pay", &tripping_policy(&failing)),
        ("ok", &format!("hosts = [\"{}\"]\n", healthy.authority())),
    ]))
    .await;
    let app = fusebox.app();
    app.get(healthy.url("/")).send().await.unwrap();

    let mut events = Events::open(&fusebox).await;
    let (name, snapshot) = events.next().await;
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["window_s"], 10);
    let rows = snapshot["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{snapshot}");
    assert_eq!(rows[0]["destination"], healthy.authority());
    assert_eq!(rows[0]["state"], "closed");
    assert_eq!(rows[0]["totals"]["requests"], 1);
    assert!(rows[0]["rps"].is_null(), "no window yet: {snapshot}");

    for _ in 0..3 {
        app.get(failing.url("/")).send().await.unwrap();
    }
    let open = events
        .until(&failing.authority(), |row| row["state"] == "open")
        .await;
    assert_eq!(open["upstream"], "pay");
    assert_eq!(open["reason"], "consecutive_failures");
    assert!(open["reason_text"]
        .as_str()
        .unwrap()
        .contains("too many failures in a row"));
    assert_eq!(open["totals"]["requests"], 3);
    assert_eq!(open["totals"]["errors"], 2);
    assert_eq!(open["totals"]["rejected"], 1, "the third was refused");
    let since = open["since_ms"].as_u64().unwrap();
    let probe = open["next_probe_at_ms"].as_u64().unwrap();
    assert!(probe > since + 20_000, "open 30 s: {open}");
    // Every later event names only rows that changed: once its rate is known (0 per second,
    // in the first update at the latest), the healthy one is not sent again while nothing
    // happens to it.
    app.get(failing.url("/")).send().await.unwrap();
    let refused = events
        .event_until(&failing.authority(), |row| row["totals"]["rejected"] == 2)
        .await;
    assert_eq!(refused["row"]["totals"]["requests"], 4);
    let update = &refused["event"];
    assert!(update["removed"].as_array().unwrap().is_empty());
    for row in update["rows"].as_array().unwrap() {
        assert_ne!(row["destination"], healthy.authority(), "{update}");
    }
    // /upstreams tells the same totals and the breaker window's length.
    let view = fusebox.upstreams("pay").await;
    assert_eq!(view[0]["totals"]["requests"], 4);
    assert_eq!(view[0]["window"]["seconds"], 10);
    fusebox.shutdown().await;
}

/// Two routes over `upstream`: `reports` with a breaker of its own, `status` sharing the
/// destination's; 500s are failures, two in a row trip a breaker for 30 s.
fn routed_policy(upstream: &FakeUpstream) -> String {
    format!(
        "hosts = [\"{}\"]\n[retry]\nattempts = 1\n\
         [breaker]\nconsecutive_failures = 2\nfailure_statuses = [500]\nopen_base = \"30s\"\n\
         [[route]]\nname = \"reports\"\npath_prefix = \"/v1/reports\"\nbreaker = \"own\"\n\
         [[route]]\nname = \"status\"\nmethods = [\"GET\"]\npath = \"/v1/status\"\n",
        upstream.authority()
    )
}

/// The snapshot's row of `routed` lists its two routes, `reports`' own breaker closed; the
/// row of `plain`, whose policy has no route, has no `routes` field at all.
fn routes_in_the_snapshot(snapshot: &Value, routed: &str, plain: &str) {
    let rows = snapshot["rows"].as_array().unwrap();
    let row = |authority: &str| rows.iter().find(|r| r["destination"] == authority).unwrap();
    let routed = row(routed);
    assert_eq!(routed["routes"].as_array().unwrap().len(), 2, "{routed}");
    let reports = &routed["routes"][0];
    assert_eq!(reports["name"], "reports", "{routed}");
    assert_eq!(reports["matches"], "any method path_prefix /v1/reports");
    assert_eq!(reports["breaker"]["state"], "closed");
    assert!(reports["breaker"]["reason"].is_null() && reports["breaker"]["forced"].is_null());
    assert!(reports["breaker"]["since_ms"].is_u64(), "{reports}");
    let status = &routed["routes"][1];
    assert_eq!(status["name"], "status");
    assert_eq!(status["matches"], "GET path /v1/status");
    assert!(
        status["breaker"].is_null(),
        "shares the destination's: {status}"
    );
    let unrouted = row(plain);
    assert!(
        unrouted.get("routes").is_none(),
        "no routes, no field: {unrouted}"
    );
}

#[tokio::test]
async fn rows_carry_their_routes_and_a_route_s_own_breaker_moves_alone() {
    let upstream = FakeUpstream::builder()
        .route("/v1/reports", [Reply::Status(500)])
        .start()
        .await;
    let plain = FakeUpstream::with_status(200).await;
    let fusebox = TestFusebox::start_in(policies_dir(&[
        ("svc", &routed_policy(&upstream)),
        ("plain", &format!("hosts = [\"{}\"]\n", plain.authority())),
    ]))
    .await;
    let app = fusebox.app();
    app.get(upstream.url("/v1/status")).send().await.unwrap();
    app.get(plain.url("/")).send().await.unwrap();

    let mut events = Events::open(&fusebox).await;
    let (_, snapshot) = events.next().await;
    routes_in_the_snapshot(&snapshot, &upstream.authority(), &plain.authority());

    for _ in 0..2 {
        let failed = app.get(upstream.url("/v1/reports")).send().await.unwrap();
        assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let authority = upstream.authority();
    let open = events
        .until(&authority, |row| {
            row["routes"][0]["breaker"]["state"] == "open"
        })
        .await;
    assert_eq!(open["state"], "closed", "the destination's breaker: {open}");
    let breaker = &open["routes"][0]["breaker"];
    assert_eq!(breaker["reason"], "consecutive_failures");
    let since = breaker["since_ms"].as_u64().unwrap();
    let probe = breaker["next_probe_at_ms"].as_u64().unwrap();
    assert!(probe > since + 20_000, "open 30 s: {breaker}");

    let reset = direct_client()
        .post(format!(
            "{}/upstreams/svc/breaker?action=reset&destination={authority}&route=reports",
            fusebox.admin_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    let closed = events
        .until(&authority, |row| {
            row["routes"][0]["breaker"]["state"] == "closed"
        })
        .await;
    assert_eq!(closed["routes"][0]["breaker"]["reason"], "reset");
    assert!(closed["routes"][0]["breaker"]["next_probe_at_ms"].is_null());
    fusebox.shutdown().await;
}

#[tokio::test]
async fn open_streams_are_bounded() {
    let fusebox = TestFusebox::start(&[]).await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut events = Events::open(&fusebox).await;
        assert_eq!(events.next().await.0, "snapshot");
        open.push(events);
    }
    let refused = direct_client()
        .get(format!("{}/events", fusebox.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
    assert!(body["error"].as_str().unwrap().contains("16 live views"));
    // A closed stream gives its place back.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        let response = direct_client()
            .get(format!("{}/events", fusebox.admin_url()))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            again = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "the place of a closed stream is given back"
    );
    fusebox.shutdown().await;
}
