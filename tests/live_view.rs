//! The live view (`GET /` on the admin port, fed by `GET /events`; docs/ARCHITECTURE.md §6) in a
//! real browser: Debian's chromium driven by Playwright for Python (`tests/peers/live_view.py`,
//! which says what it checks), against the real `fusebox` binary under real traffic, with an
//! admin token so the page's commands pass the real authorization.
//!
//! The policies: `payments` (a healthy upstream), `ml` (the same upstream in shadow mode),
//! `inventory` (two endpoints, one refusing connections: ejected), `failing` (answers 500, trips
//! after [`TRIP`] failures in a row and stays open), `search` (500, 500, then a hanging probe:
//! half-open), a policy whose file is named `<img src=x onerror=alert(1)>.toml` with one
//! endpoint, and `default`, which takes an app's hostile host name and 1,000 loopback
//! addresses nobody listens on. DNS goes to a loopback port nobody listens on
//! (`--dns-server`), so nothing leaves the machine.
//!
//! Writes `target/ci-artifacts/live-view.png` and `live-view.aria.yml` (the table's
//! accessibility snapshot); with `FUSEBOX_README_SHOT=1`, also `docs/live-view.png`.

mod support;

use std::path::Path;

use support::peers::{hermetic, output, peer_script, python};
use support::{policies_dir, refused_addr, FakeUpstream, FuseboxProcess, Reply};

const TOKEN: &str = "live-view-test-token";
/// `[breaker] consecutive_failures` of the `failing` policy.
const TRIP: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_in_a_browser_follows_trips_and_commands_and_keeps_names_as_text() {
    let ok = FakeUpstream::with_status(200).await;
    let evil = FakeUpstream::with_status(200).await;
    let inventory = FakeUpstream::with_status(200).await;
    let failing = FakeUpstream::with_status(500).await;
    let search = FakeUpstream::builder()
        .replies([Reply::Status(500), Reply::Status(500), Reply::Stall])
        .start()
        .await;
    let refused = refused_addr().await;

    let failing_policy = format!(
        "hosts = [\"{}\"]\n[breaker]\nconsecutive_failures = {TRIP}\nopen_base = \"60s\"\n\
         open_max = \"60s\"\n",
        failing.authority()
    );
    let search_policy = format!(
        "hosts = [\"{}\"]\n[timeouts]\nattempt = \"60s\"\ntotal = \"60s\"\n[breaker]\n\
         consecutive_failures = 2\nopen_base = \"200ms\"\n",
        search.authority()
    );
    let dir = policies_dir(&[
        ("default", "[retry]\nattempts = 1\n"),
        (
            "payments",
            &format!(
                "hosts = [\"{}\"]\n[rate_limit]\nrps = 100\n[concurrency]\nmax_in_flight = 20\n",
                ok.authority()
            ),
        ),
        (
            "ml",
            &format!(
                "hosts = [\"ml.test\"]\nendpoints = [\"{}\"]\n[breaker]\nmode = \"shadow\"\n",
                ok.authority()
            ),
        ),
        (
            "inventory",
            &format!(
                "hosts = [\"inventory.test\"]\nendpoints = [\"{}\", \"{refused}\"]\n\
                 [outlier]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\n",
                inventory.authority()
            ),
        ),
        ("failing", &failing_policy),
        ("search", &search_policy),
        (
            "<img src=x onerror=alert(1)>",
            &format!(
                "hosts = [\"evil.test\"]\nendpoints = [\"{}\"]\n",
                evil.authority()
            ),
        ),
    ]);
    let fusebox = FuseboxProcess::spawn(
        dir.path(),
        &["--dns-server", &refused.to_string()],
        &[("FUSEBOX_ADMIN_TOKEN", TOKEN)],
    )
    .await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = hermetic(&python());
    command
        .arg(peer_script("live_view.py"))
        .args(["--admin", &fusebox.admin_url()])
        .args(["--proxy", &fusebox.egress_url()])
        .args(["--token", TOKEN])
        .args(["--ok", &ok.authority()])
        .args(["--failing", &failing.authority()])
        .args(["--failing-trip", &TRIP.to_string()])
        .args(["--search", &search.authority()])
        .args(["--inventory", &inventory.authority()])
        .args(["--evil-destination", &evil.authority()])
        .args(["--refused-port", &refused.port().to_string()])
        .args(["--many", "1000"])
        .arg("--artifacts")
        .arg(root.join("target/ci-artifacts"));
    if std::env::var_os("FUSEBOX_README_SHOT").is_some_and(|v| v == "1") {
        command
            .arg("--readme-shot")
            .arg(root.join("docs/live-view.png"));
    }
    let report = output(command).await;
    print!("{report}");
    assert!(
        report.contains("live view: every check passed"),
        "{report}\nfusebox logs:\n{}",
        fusebox.logs()
    );
}
