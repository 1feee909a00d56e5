//! fusebox started in-process (`fusebox::agent`) on loopback port 0, as most integration
//! tests use it. Kept apart from the rest of the harness, which does not need the library.

use std::path::Path;

use fusebox::agent::{Agent, RunConfig};
use tempfile::TempDir;

use super::app::{app_client, direct_client};
use super::policies_dir;

/// Starts an agent on `dir` with the test defaults of [`RunConfig::new`] (ports 0).
pub async fn start_fusebox(dir: &Path) -> Agent {
    Agent::start(RunConfig::new(dir))
        .await
        .expect("fusebox agent starts")
}

/// An in-process agent together with its policies directory, which lives as long as it.
pub struct TestFusebox {
    // Declared first so it is dropped before the directory it reads.
    agent: Agent,
    dir: TempDir,
}

impl TestFusebox {
    /// Writes these `(name, toml)` policies and starts an agent on them.
    pub async fn start(policies: &[(&str, &str)]) -> Self {
        Self::start_in(policies_dir(policies)).await
    }

    /// Starts an agent on an existing policies directory.
    pub async fn start_in(dir: TempDir) -> Self {
        Self::start_with(dir, |_| {}).await
    }

    /// Starts an agent on `dir` after `configure` adjusts the run configuration.
    pub async fn start_with(dir: TempDir, configure: impl FnOnce(&mut RunConfig)) -> Self {
        let mut config = RunConfig::new(dir.path());
        configure(&mut config);
        let agent = Agent::start(config).await.expect("fusebox agent starts");
        TestFusebox { agent, dir }
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The policies directory (edit files here to test reloads).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT` of the egress listener: the app's `HTTP_PROXY`.
    pub fn egress_url(&self) -> String {
        format!("http://{}", self.agent.egress_addr())
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.agent.admin_addr())
    }

    /// `http://127.0.0.1:PORT` of a policy's route listener.
    pub fn route_url(&self, policy: &str) -> String {
        let addr = self
            .agent
            .route_addr(policy)
            .unwrap_or_else(|| panic!("policy {policy:?} has no route listener"));
        format!("http://{addr}")
    }

    /// An app client whose proxy is this agent.
    pub fn app(&self) -> reqwest::Client {
        app_client(&self.egress_url())
    }

    /// The body of `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> String {
        let response = direct_client()
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("metrics body")
    }

    /// `GET /upstreams/{policy}` on the admin listener: one view per destination.
    pub async fn upstreams(&self, policy: &str) -> serde_json::Value {
        let response = direct_client()
            .get(format!("{}/upstreams/{policy}", self.admin_url()))
            .send()
            .await
            .expect("GET /upstreams");
        let text = response.text().await.expect("upstreams body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Shuts the agent down gracefully, then removes the policies directory.
    pub async fn shutdown(self) {
        let TestFusebox { agent, dir } = self;
        agent.shutdown().await;
        drop(dir);
    }
}
