//! The live view (`GET /` on the admin port, fed by `GET /events`; docs/ARCHITECTURE.md §6) in a
//! real browser: Debian's chromium driven by Playwright for Python (`tests/peers/live_view.py`,
//! which says what it checks), against the real `fusebox` binary under real traffic, with an
//! admin token so the page's commands pass the real authorization.
//!
//! The policies: `payments` (a healthy upstream), `ml` (the same upstream in shadow mode),
//! `inventory` (two endpoints, one refusing connections: ejected), `failing` (answers 500, trips
//! after [`TRIP`] failures in a row and stays open), `search` (500, 500, then a hanging probe:
//! half-open), `routed` (two `[[route]]`s: `reports`, with a breaker of its own, on a path the
//! upstream answers 500, and `status`, on one it answers 200), a policy whose file is named
//! `<img src=x onerror=alert(1)>.toml` with one endpoint, and `default`, which takes an app's
//! hostile host name and 1,000 loopback addresses nobody listens on. DNS goes to a loopback
//! port nobody listens on (`--dns-server`), so nothing leaves the machine.
//!
//! Writes `target/ci-artifacts/live-view.png` and `live-view.aria.yml` (the table's
//! accessibility snapshot); with `FUSEBOX_README_SHOT=1`, also `docs/live-view.png`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use support::peers::{hermetic, output, peer_script, python};
use support::{policies_dir, refused_addr, FakeUpstream, FuseboxProcess, Reply};
use tempfile::TempDir;

const TOKEN: &str = "live-view-test-token";
/// `[breaker] consecutive_failures` of the `failing` policy.
const TRIP: u32 = 3;

/// The fake upstreams of the policies, and the address nobody listens on.
struct Upstreams {
    ok: FakeUpstream,
    evil: FakeUpstream,
    inventory: FakeUpstream,
    failing: FakeUpstream,
    search: FakeUpstream,
    routed: FakeUpstream,
    refused: SocketAddr,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            ok: FakeUpstream::with_status(200).await,
            evil: FakeUpstream::with_status(200).await,
            inventory: FakeUpstream::with_status(200).await,
            failing: FakeUpstream::with_status(500).await,
            search: FakeUpstream::builder()
                .replies([Reply::Status(500), Reply::Status(500), Reply::Stall])
                .start()
                .await,
            routed: FakeUpstream::builder()
                .route("/v1/reports", [Reply::Status(500)])
                .start()
                .await,
            refused: refused_addr().await,
        }
    }

    /// The policies directory (see the module's documentation).
    fn policies(&self) -> TempDir {
        let failing_policy = format!(
            "hosts = [\"{}\"]\n[breaker]\nconsecutive_failures = {TRIP}\nopen_base = \"60s\"\n\
             open_max = \"60s\"\n",
            self.failing.authority()
        );
        let search_policy = format!(
            "hosts = [\"{}\"]\n[timeouts]\nattempt = \"60s\"\ntotal = \"60s\"\n[breaker]\n\
             consecutive_failures = 2\nopen_base = \"200ms\"\n",
            self.search.authority()
        );
        let routed_policy = format!(
            "hosts = [\"{}\"]\n[retry]\nattempts = 1\n[breaker]\nconsecutive_failures = {TRIP}\n\
             failure_statuses = [500]\nopen_base = \"60s\"\nopen_max = \"60s\"\n\
             [[route]]\nname = \"reports\"\npath_prefix = \"/v1/reports\"\nbreaker = \"own\"\n\
             [[route]]\nname = \"status\"\nmethods = [\"GET\"]\npath = \"/v1/status\"\n",
            self.routed.authority()
        );
        let ok = self.ok.authority();
        policies_dir(&[
            ("default", "[retry]\nattempts = 1\n"),
            (
                "payments",
                &format!(
                    "hosts = [\"{ok}\"]\n[rate_limit]\nrps = 100\n[concurrency]\n\
                     max_in_flight = 20\n"
                ),
            ),
            (
                "ml",
                &format!(
                    "hosts = [\"ml.test\"]\nendpoints = [\"{ok}\"]\n[breaker]\nmode = \"shadow\"\n"
                ),
            ),
            (
                "inventory",
                &format!(
                    "hosts = [\"inventory.test\"]\nendpoints = [\"{}\", \"{}\"]\n\
                     [outlier]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\n",
                    self.inventory.authority(),
                    self.refused
                ),
            ),
            ("failing", &failing_policy),
            ("search", &search_policy),
            ("routed", &routed_policy),
            (
                "<img src=x onerror=alert(1)>",
                &format!(
                    "hosts = [\"evil.test\"]\nendpoints = [\"{}\"]\n",
                    self.evil.authority()
                ),
            ),
        ])
    }

    /// The browser script's command line against `fusebox`.
    fn script(&self, fusebox: &FuseboxProcess) -> Command {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = hermetic(&python());
        command
            .arg(peer_script("live_view.py"))
            .args(["--admin", &fusebox.admin_url()])
            .args(["--proxy", &fusebox.egress_url()])
            .args(["--token", TOKEN])
            .args(["--ok", &self.ok.authority()])
            .args(["--failing", &self.failing.authority()])
            .args(["--failing-trip", &TRIP.to_string()])
            .args(["--search", &self.search.authority()])
            .args(["--inventory", &self.inventory.authority()])
            .args(["--routed", &self.routed.authority()])
            .args(["--evil-destination", &self.evil.authority()])
            .args(["--refused-port", &self.refused.port().to_string()])
            .args(["--many", "1000"])
            .arg("--artifacts")
            .arg(root.join("target/ci-artifacts"));
        if std::env::var_os("FUSEBOX_README_SHOT").is_some_and(|v| v == "1") {
            command
                .arg("--readme-shot")
                .arg(root.join("docs/live-view.png"));
        }
        command
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_in_a_browser_follows_trips_and_commands_and_keeps_names_as_text() {
    let upstreams = Upstreams::start().await;
    let dir = upstreams.policies();
    let fusebox = FuseboxProcess::spawn(
        dir.path(),
        &["--dns-server", &upstreams.refused.to_string()],
        &[("FUSEBOX_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let report = output(upstreams.script(&fusebox)).await;
    print!("{report}");
    assert!(
        report.contains("live view: every check passed"),
        "{report}\nfusebox logs:\n{}",
        fusebox.logs()
    );
}
