//! Fleet-wide rate limits (docs/ARCHITECTURE.md §15) against a real `redis-server` on a loopback
//! port: one limit shared by three fusebox processes, and what happens when Redis dies and
//! comes back (every request answered, fallback within a second, fleet mode again after).

mod support;

use std::time::{Duration, Instant};

use support::metrics::metric;
use support::redis::RedisServer;
use support::{app_client, policies_dir, FakeUpstream, FuseboxProcess, TestFusebox};

/// A policy for `upstream` with a fleet limit of `rps` and `extra` `[rate_limit]` keys.
fn fleet_policy(upstream: &FakeUpstream, rps: u32, extra: &str) -> String {
    format!(
        "hosts = [\"{}\"]\n[retry]\nattempts = 1\n[rate_limit]\nrps = {rps}\nscope = \"fleet\"\n{extra}",
        upstream.authority()
    )
}

async fn fleet_mode(admin_url: &str, destination: &str) -> String {
    let body: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{admin_url}/upstreams/api"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    let rows = body.as_array().cloned().unwrap_or_default();
    rows.iter()
        .find(|row| row["destination"] == destination)
        .map(|row| row["fleet"].as_str().unwrap_or("none").to_owned())
        .unwrap_or_else(|| "absent".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_limit_falls_back_while_redis_is_down_and_returns_after() {
    let mut redis = RedisServer::start();
    let upstream = FakeUpstream::with_status(200).await;
    let policy = fleet_policy(&upstream, 5, "fleet_fallback_rps = 2\n");
    let url = redis.url();
    let fusebox = TestFusebox::start_with(policies_dir(&[("api", &policy)]), |config| {
        config.redis = Some(url);
    })
    .await;
    let app = fusebox.app();
    let target = upstream.url("/");
    let destination = upstream.authority();

    // Connected: the limit's 5 tokens (capacity rps + burst), then 429s that say when.
    let mut ok = 0;
    for _ in 0..20 {
        let response = app.get(&target).send().await.unwrap();
        match response.status().as_u16() {
            200 => ok += 1,
            429 => assert!(response.headers().contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!((5..=7).contains(&ok), "about 5 allowed at once, got {ok}");
    assert_eq!(
        fleet_mode(&fusebox.admin_url(), &destination).await,
        "connected"
    );

    // Redis dies: every request still gets an answer, quickly; within a second (the first
    // request that needs Redis after the fleet's last "no token" ran out) the local fallback
    // applies.
    redis.kill();
    let killed = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let start = Instant::now();
        let response = app.get(&target).send().await.unwrap();
        slowest = slowest.max(start.elapsed());
        let status = response.status().as_u16();
        assert!(status == 200 || status == 429, "never a failure: {status}");
        if fleet_mode(&fusebox.admin_url(), &destination).await == "fallback" {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "fallback within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "fallback {:?} after Redis died; slowest answer meanwhile {slowest:?}",
        killed.elapsed()
    );
    assert!(slowest < Duration::from_secs(1), "no stall: {slowest:?}");
    let metrics = fusebox.metrics().await;
    let labels = [("upstream", "api"), ("destination", destination.as_str())];
    assert!(
        metric(&metrics, "fusebox_fleet_limiter_errors_total", &labels) >= 1.0,
        "{metrics}"
    );
    let fallback = [
        ("upstream", "api"),
        ("destination", destination.as_str()),
        ("state", "fallback"),
    ];
    assert_eq!(
        metric(&metrics, "fusebox_fleet_limiter_state", &fallback),
        1.0
    );

    // Redis is back: after the backoff (at most 5 s), the fleet's limit applies again.
    redis.restart();
    let admin = fusebox.admin_url();
    let back = Duration::from_secs(15);
    wait_for_mode(&admin, &destination, "connected", back, &app, &target).await;
}

/// Waits until the admin API at `admin_url` shows `destination` in `mode`, sending a request
/// through `app` each round (a fleet limit learns of Redis only when a request needs it);
/// panics after `within`. Returns how long it took.
async fn wait_for_mode(
    admin_url: &str,
    destination: &str,
    mode: &str,
    within: Duration,
    app: &reqwest::Client,
    target: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        let _ = app.get(target).send().await;
        if fleet_mode(admin_url, destination).await == mode {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{mode} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a GET through `proxy` every `every` until `stop`; returns (ok, limited, other,
/// slowest) counted from `from` on.
async fn drive(
    proxy: String,
    target: String,
    every: Duration,
    from: Instant,
    stop: Instant,
) -> (u64, u64, u64, Duration) {
    let app = app_client(&proxy);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut ok, mut limited, mut other, mut slowest) = (0, 0, 0, Duration::ZERO);
    while Instant::now() < stop {
        tick.tick().await;
        let start = Instant::now();
        let status = match app.get(&target).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        slowest = slowest.max(start.elapsed());
        if start < from {
            continue;
        }
        match status {
            200 => ok += 1,
            429 => limited += 1,
            _ => other += 1,
        }
    }
    (ok, limited, other, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_limit_of_50_rps() {
    let mut redis = RedisServer::start();
    let upstream = FakeUpstream::with_status(200).await;
    let dir = policies_dir(&[("api", &fleet_policy(&upstream, 50, "fleet_size_hint = 3\n"))]);
    let url = redis.url();
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(FuseboxProcess::spawn(dir.path(), &["--redis", &url], &[]).await);
    }
    let target = upstream.url("/");
    let destination = upstream.authority();

    // 600 requests a second offered (two clients per process, one every 10 ms each) for 11 s;
    // counted over the last 10 (the first second also spends the limit's initial capacity).
    let start = Instant::now();
    let (from, stop) = (
        start + Duration::from_secs(1),
        start + Duration::from_secs(11),
    );
    let mut clients = Vec::new();
    for process in &fleet {
        for _ in 0..2 {
            let every = Duration::from_millis(10);
            let run = drive(process.egress_url(), target.clone(), every, from, stop);
            clients.push(tokio::spawn(run));
        }
    }
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for client in clients {
        let (o, l, x, _) = client.await.unwrap();
        (ok, limited, other) = (ok + o, limited + l, other + x);
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = ok as f64 / 10.0;
    println!(
        "fleet of 3, limit 50 rps: accepted {rate:.1} rps over 10 s ({ok} ok, {limited} rate-limited, {other} other)"
    );
    assert_eq!(other, 0, "only 200s and 429s");
    assert!((45.0..=55.0).contains(&rate), "50 rps ± 10 %: {rate:.1}");

    // Redis dies mid-run: every process is in fallback within a second, nothing fails or
    // stalls; then Redis comes back and so does fleet mode.
    let start = Instant::now();
    let stop = start + Duration::from_secs(3);
    let mut clients = Vec::new();
    for process in &fleet {
        let every = Duration::from_millis(10);
        clients.push(tokio::spawn(drive(
            process.egress_url(),
            target.clone(),
            every,
            start,
            stop,
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let killed = Instant::now();
    let second = Duration::from_secs(1);
    for process in &fleet {
        let app = app_client(&process.egress_url());
        let (admin, dest) = (process.admin_url(), &destination);
        wait_for_mode(&admin, dest, "fallback", second, &app, &target).await;
    }
    assert!(killed.elapsed() < second, "all in fallback within a second");
    println!(
        "every process in fallback {:?} after Redis died",
        killed.elapsed()
    );
    let (mut ok, mut other, mut slowest) = (0, 0, Duration::ZERO);
    for client in clients {
        let (o, _, x, s) = client.await.unwrap();
        (ok, other, slowest) = (ok + o, other + x, slowest.max(s));
    }
    println!("while Redis was down: {ok} ok, slowest answer {slowest:?}");
    assert_eq!(other, 0, "no request failed while Redis was down");
    assert!(slowest < Duration::from_secs(1), "no stall: {slowest:?}");

    redis.restart();
    let back = Duration::from_secs(15);
    for process in &fleet {
        let app = app_client(&process.egress_url());
        let (admin, dest) = (process.admin_url(), &destination);
        wait_for_mode(&admin, dest, "connected", back, &app, &target).await;
    }
}

/// fusebox with `policy` as `api`, its fleet limits in `redis`; no jitter, no watch.
async fn fleet_fusebox(redis: &RedisServer, policy: &str) -> TestFusebox {
    let url = redis.url();
    TestFusebox::start_with(policies_dir(&[("api", policy)]), |config| {
        config.redis = Some(url);
        config.jitter = false;
        config.watch = false;
    })
    .await
}

/// `POST` a breaker command to `api`'s destination.
async fn breaker(fusebox: &TestFusebox, destination: &str, action: &str) {
    let url = format!(
        "{}/upstreams/api/breaker?action={action}&destination={destination}",
        fusebox.admin_url()
    );
    let response = support::direct_client().post(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{action}");
}

/// Fleet tokens only for admitted tries (#22, item 6): with the breaker forced open, refused
/// requests lease nothing from Redis — every one is a `503 breaker-open` (the first leased the
/// fleet's one token and the rest got `429`), and the token is still there once the breaker
/// is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_the_breaker_refuses_leases_no_fleet_token() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::with_status(200).await;
    let fusebox = fleet_fusebox(&redis, &fleet_policy(&upstream, 1, "")).await;
    let (app, target, destination) = (fusebox.app(), upstream.url("/"), upstream.authority());
    breaker(&fusebox, &destination, "force-open").await;
    for _ in 0..5 {
        let response = app.get(&target).send().await.unwrap();
        assert_eq!(
            response.status(),
            503,
            "the breaker answers, not the limiter"
        );
    }
    breaker(&fusebox, &destination, "reset").await;
    assert_eq!(app.get(&target).send().await.unwrap().status(), 200);
    assert_eq!(upstream.hits(), 1);
}

/// A shadow fleet limit spends no token of the enforcing fleet (#22, item 6): its requests are
/// counted against a key of their own, so an enforcing instance of the same policy still has
/// its whole limit after a shadow one sent many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_fleet_limit_spends_no_token_of_the_enforcing_fleet() {
    let redis = RedisServer::start();
    let upstream = FakeUpstream::with_status(200).await;
    let start = |mode: &str| {
        let policy = fleet_policy(&upstream, 1, &format!("mode = \"{mode}\"\n"));
        let url = redis.url();
        TestFusebox::start_with(policies_dir(&[("api", &policy)]), |config| {
            config.redis = Some(url);
        })
    };
    let (shadow, enforcing) = (start("shadow").await, start("enforce").await);
    let target = upstream.url("/");
    for _ in 0..5 {
        let response = shadow.app().get(&target).send().await.unwrap();
        assert_eq!(response.status(), 200, "shadow never refuses");
    }
    let response = enforcing.app().get(&target).send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "the enforcing fleet's token is still there"
    );
}

/// The fleet gauge says the mode `/upstreams` reports, across reloads (#22, item 6): a reload
/// that changes only `[timeouts]` while Redis is down keeps the limit (carried over, in
/// `fallback`), and the gauge too says `fallback` (the new destination's own limit set it to
/// `connected`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_gauge_keeps_the_mode_across_a_reload() {
    let mut redis = RedisServer::start();
    let upstream = FakeUpstream::with_status(200).await;
    let policy = fleet_policy(&upstream, 5, "fleet_fallback_rps = 2\n");
    let fusebox = fleet_fusebox(&redis, &policy).await;
    let (app, target, destination) = (fusebox.app(), upstream.url("/"), upstream.authority());
    assert_eq!(app.get(&target).send().await.unwrap().status(), 200);
    redis.kill();
    let admin = fusebox.admin_url();
    let within = Duration::from_secs(10);
    wait_for_mode(&admin, &destination, "fallback", within, &app, &target).await;
    let reloaded = format!("{policy}[timeouts]\nattempt = \"3s\"\n");
    std::fs::write(fusebox.dir().join("api.toml"), reloaded).unwrap();
    let response = support::direct_client()
        .post(format!("{admin}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(fleet_mode(&admin, &destination).await, "fallback");
    let metrics = fusebox.metrics().await;
    let gauge = |state| {
        let labels = [
            ("upstream", "api"),
            ("destination", destination.as_str()),
            ("state", state),
        ];
        metric(&metrics, "fusebox_fleet_limiter_state", &labels)
    };
    assert_eq!(
        (gauge("fallback"), gauge("connected")),
        (1.0, 0.0),
        "{metrics}"
    );
}
