//! `fusebox status` (docs/ARCHITECTURE.md §2): the built binary against an in-process agent's admin
//! API after real traffic, and against an address where nothing listens.

mod support;

use std::process::Output;

use support::{policies_dir, process::PROXY_VARS, refused_addr, FakeUpstream, TestFusebox};

/// Runs `fusebox status ARGS..` on the blocking pool (the in-process agent keeps serving),
/// without proxy or `FUSEBOX_*` variables. stdout is a pipe, so there is no colour.
async fn status(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fusebox"));
        command.arg("status").args(&args);
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("FUSEBOX_") {
                command.env_remove(var);
            }
        }
        command.output().expect("run fusebox status")
    })
    .await
    .expect("status task")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn tripping_policy(upstream: &FakeUpstream) -> String {
    format!(
        "hosts = [\"{}\"]\n[retry]\nattempts = 1\n\
         [breaker]\nconsecutive_failures = 2\nopen_base = \"30s\"\nslow_call_duration = \"30s\"\n",
        upstream.authority()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_table_of_destinations() {
    let failing = FakeUpstream::with_status(503).await;
    let healthy = FakeUpstream::with_status(200).await;
    let dir = policies_dir(&[("default", ""), ("pay", &tripping_policy(&failing))]);
    let fusebox = TestFusebox::start_with(dir, |config| config.jitter = false).await;
    let admin = fusebox.agent().admin_addr().to_string();

    let output = status(&["--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stdout), "no destinations yet\n");

    let app = fusebox.app();
    for url in [failing.url("/"), failing.url("/"), healthy.url("/")] {
        app.get(url).send().await.expect("app request");
    }

    let output = status(&["--admin", &admin]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!stdout.contains('\x1b'), "no colour into a pipe:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for header in [
        "UPSTREAM",
        "DESTINATION",
        "STATE",
        "SINCE",
        "CALLS/FAIL/SLOW",
    ] {
        assert!(lines[0].contains(header), "{stdout}");
    }
    let open = lines
        .iter()
        .find(|l| l.contains(&failing.authority()))
        .unwrap_or_else(|| panic!("no line for the failing upstream:\n{stdout}"));
    assert!(open.starts_with("pay "), "{stdout}");
    assert!(open.contains(" open "), "{stdout}");
    assert!(open.contains("2/2/0"), "{stdout}");
    assert!(open.contains("consecutive_failures"), "{stdout}");
    assert!(open.contains("s ago"), "{stdout}");
    let closed = lines
        .iter()
        .find(|l| l.contains(&healthy.authority()))
        .unwrap_or_else(|| panic!("no line for the healthy upstream:\n{stdout}"));
    assert!(closed.starts_with("default "), "{stdout}");
    assert!(closed.contains(" closed "), "{stdout}");
    // Columns line up: the state column starts at the same offset on every line.
    let column = lines[0].find("STATE").unwrap();
    assert_eq!(&open[column..column + 4], "open", "{stdout}");
    assert_eq!(&closed[column..column + 6], "closed", "{stdout}");

    // --upstream filters; an unknown one is an error.
    let output = status(&["--admin", &admin, "--upstream", "pay"]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains(&failing.authority()), "{stdout}");
    let output = status(&["--admin", &admin, "--upstream", "nope"]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).contains("no policy named"),
        "{output:?}"
    );

    fusebox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_an_unreachable_admin_address_clearly() {
    let addr = refused_addr().await.to_string();
    let output = status(&["--admin", &addr]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = text(&output.stderr);
    assert_eq!(
        stderr,
        format!(
            "cannot reach fusebox admin at {addr}: connection refused — is `fusebox run` \
             running? (--admin / FUSEBOX_ADMIN)\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_admin_address_from_the_environment() {
    let fusebox = TestFusebox::start(&[("default", "")]).await;
    let admin = fusebox.agent().admin_addr().to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fusebox"));
        command.arg("status").env("FUSEBOX_ADMIN", &admin);
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        command.output().expect("run fusebox status")
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stdout), "no destinations yet\n");
    fusebox.shutdown().await;
}

/// A certificate that does not verify is a trust problem, not a breaker failure (#22, item
/// 10) — and its cause is everywhere an operator looks: the access log line (`cause=`),
/// `/upstreams` `recent`, and a line below `fusebox status`'s table, each with the rustls
/// cause and the fix (`ca_file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_failure_names_its_cause_in_the_log_upstreams_and_status() {
    let pki = support::TestPki::new();
    let upstream = FakeUpstream::builder()
        .tls(pki.wrong_server_config())
        .start()
        .await;
    let host = format!("localhost:{}", upstream.addr().port());
    let policy = format!("hosts = [\"{host}\"]\ntls = true\nca_file = \"test-ca.pem\"\n");
    let dir = policies_dir(&[("secure", &policy)]);
    pki.write_ca(dir.path());
    let fusebox = support::FuseboxProcess::spawn(dir.path(), &[], &[]).await;
    let app = support::app_client(&fusebox.egress_url());
    let response = app.get(format!("http://{host}/")).send().await.unwrap();
    assert_eq!(response.headers()["x-fusebox-reason"], "tls-verify-failed");

    let upstreams = support::direct_client()
        .get(format!("{}/upstreams/secure", fusebox.admin_url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let upstreams: serde_json::Value = serde_json::from_slice(&upstreams).unwrap();
    let recent = &upstreams[0]["recent"];
    assert_eq!(recent.as_array().map(Vec::len), Some(1), "{upstreams}");
    assert_eq!(recent[0]["kind"], "tls_verify_failed", "{upstreams}");
    let cause = recent[0]["text"].as_str().unwrap();
    assert!(
        cause.contains("UnknownIssuer") && cause.contains("ca_file"),
        "{cause}"
    );
    assert_eq!(upstreams[0]["state"], "closed", "not a breaker failure");

    let output = status(&["--admin", &fusebox.admin_addr().to_string()]).await;
    let table = text(&output.stdout);
    let line = format!("secure {host}: tls-verify-failed ");
    assert!(
        table.contains(&line) && table.contains("UnknownIssuer"),
        "{table}"
    );

    // The access log line is written within 100 ms; wait for it, not for a fixed time.
    let mut logs = String::new();
    for _ in 0..100 {
        logs = fusebox.logs();
        if logs.contains("fusebox::access") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let access = logs
        .lines()
        .find(|l| l.contains("fusebox::access"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(access.contains("reason=\"tls-verify-failed\""), "{access}");
    assert!(
        access.contains("cause=\"") && access.contains("UnknownIssuer"),
        "{access}"
    );
}
