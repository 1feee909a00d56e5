//! Test harness shared by the integration tests (`mod support;` in each `tests/*.rs`).
//!
//! - [`upstream`]: `FakeUpstream`, scripted upstreams on real loopback sockets.
//! - [`tls`]: `TestPki`, certificates made at test time, and rustls configs.
//! - [`mtls`]: client CAs and client certificates, and upstreams that require one (mTLS).
//! - [`app`]: reqwest clients, through fusebox (the app) or direct.
//! - [`agent`]: fusebox in-process (`TestFusebox`).
//! - [`process`]: the built binary as a child process (`FuseboxProcess`).
//! - [`blackhole`]: a loopback address whose connects hang (`syn_blackhole`).
//!
//! Everything binds `127.0.0.1:0`; nothing listens on a fixed port or a non-loopback address.

// Each test binary uses a subset of the harness.
#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod app;
pub mod blackhole;
pub mod check;
pub mod dns;
pub mod metrics;
pub mod mtls;
pub mod peers;
pub mod process;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::process::{Command, Output};

pub use agent::{start_fusebox, TestFusebox};
pub use app::{app_client, app_client_with_tls, direct_client, direct_client_with_tls};
pub use blackhole::{syn_blackhole, SynBlackhole};
pub use process::FuseboxProcess;
pub use tls::{install_crypto, TestPki};
pub use upstream::{download_byte, refused_addr, FakeUpstream, RecordedRequest, Reply};

/// A route-listener policy (`listen` on any free port) sending to `endpoints`, with `extra`
/// TOML after it.
pub fn route_policy(endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "listen = \"127.0.0.1:0\"\nendpoints = [{}]\n{extra}",
        list.join(", ")
    )
}

/// fusebox in-process with the one policy `svc`, and no jitter.
pub async fn start_svc(policy: &str) -> TestFusebox {
    TestFusebox::start_with(policies_dir(&[("svc", policy)]), |config| {
        config.jitter = false;
    })
    .await
}

/// A temporary policies directory holding `name.toml` for each `(name, contents)`.
pub fn policies_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("create policies dir");
    for (name, contents) in files {
        std::fs::write(dir.path().join(format!("{name}.toml")), contents)
            .expect("write policy file");
    }
    dir
}

/// Runs `/usr/bin/curl -sS --max-time 30 ARGS..` without proxy variables (pass `-x URL` to
/// go through fusebox). Blocking: from async tests use [`curl_async`].
pub fn curl(args: &[&str]) -> Output {
    let mut command = Command::new("/usr/bin/curl");
    command.args(["-sS", "--max-time", "30"]).args(args);
    for var in process::PROXY_VARS {
        command.env_remove(var);
    }
    command.output().expect("run /usr/bin/curl")
}

/// [`curl`] on the blocking thread pool, so an in-process agent keeps running meanwhile.
pub async fn curl_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .expect("curl task")
}
