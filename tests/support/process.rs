//! `FuseboxProcess`: the built `fusebox` binary run as a child process, for what only a real
//! process shows (command line, environment, signals, memory use).
//!
//! Ports are picked by binding `127.0.0.1:0` and releasing them just before the child binds:
//! a small race, acceptable in tests. The child's output goes to a log file (a pipe nobody
//! reads would eventually block it); [`FuseboxProcess::logs`] reads it, and a failed start
//! panics with it. The child is killed, by its own PID, when the value is dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Proxy variables removed from a child's environment unless a test passes them explicitly.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

const READY_ATTEMPTS: u32 = 200;
const READY_INTERVAL: Duration = Duration::from_millis(50);

/// A running `fusebox run` child process.
pub struct FuseboxProcess {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl FuseboxProcess {
    /// Runs `fusebox run --policies DIR --listen 127.0.0.1:P --admin 127.0.0.1:Q EXTRA_ARGS..`
    /// with `env` added to an environment without proxy or `FUSEBOX_*` variables, and waits
    /// (up to ~10 s) until `GET /readyz` answers 200.
    ///
    /// The ports are picked by binding port 0 and letting go, so another test may take one in
    /// between: a start that fails with "Address already in use" is retried on fresh ports.
    pub async fn spawn(policies: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        for _ in 0..5 {
            let mut process = Self::start(policies, extra_args, env);
            match process.wait_ready().await {
                Ok(()) => return process,
                Err(logs) if logs.contains("Address already in use") => continue,
                Err(logs) => panic!("fusebox exited before ready:\n{logs}"),
            }
        }
        panic!("fusebox could not bind free ports in 5 tries");
    }

    fn start(policies: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let (listen, admin) = free_ports();
        let log_dir = tempfile::tempdir().expect("create log dir");
        let log = log_dir.path().join("fusebox.log");
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fusebox"));
        command
            .arg("run")
            .arg("--policies")
            .arg(policies)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log file"))
            .stderr(log_file);
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        // The flags above win over FUSEBOX_* anyway; dropping the rest keeps runs hermetic.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("FUSEBOX_") {
                command.env_remove(var);
            }
        }
        command.envs(env.iter().copied());
        let child = command.spawn().expect("spawn fusebox binary");
        FuseboxProcess {
            child,
            listen,
            admin,
            log,
            _log_dir: log_dir,
        }
    }

    /// `Err` with the logs when the child exited before it was ready.
    async fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..READY_ATTEMPTS {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exit {status}: {}", self.logs()));
            }
            let probe =
                tokio::time::timeout(READY_INTERVAL * 20, get_status(self.admin, "/readyz"));
            if probe.await.ok().flatten() == Some(200) {
                return Ok(());
            }
            tokio::time::sleep(READY_INTERVAL).await;
        }
        panic!(
            "fusebox not ready after {:?}:\n{}",
            READY_INTERVAL * READY_ATTEMPTS,
            self.logs()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn egress_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:PORT` of the egress listener.
    pub fn egress_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Peak resident set size (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// Current resident set size (VmRSS), in KiB.
    pub fn current_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Whether the child has exited (and how), without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait on fusebox child")
    }

    /// Everything the child has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The access-log lines (target `fusebox::access`), once there are `count` of them (the
    /// log is written in batches), or what there is after 10 s; and the whole log, for messages.
    pub async fn access_lines(&self, count: usize) -> (Vec<String>, String) {
        self.lines_with("fusebox::access", count).await
    }

    /// The log lines that contain `needle`, once there are `count` of them, or what there is
    /// after 10 s; and the whole log, for messages.
    pub async fn lines_with(&self, needle: &str, count: usize) -> (Vec<String>, String) {
        let matching = |logs: &str| -> Vec<String> {
            let lines = logs.lines().filter(|l| l.contains(needle));
            lines.map(str::to_owned).collect()
        };
        let started = std::time::Instant::now();
        while matching(&self.logs()).len() < count && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let logs = self.logs();
        (matching(&logs), logs)
    }

    /// `GET /metrics` on its admin port.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin_url());
        let response = super::direct_client()
            .get(url)
            .send()
            .await
            .expect("GET /metrics");
        response.text().await.expect("the metrics")
    }
}

impl Drop for FuseboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct free loopback ports (both bound at once, then released).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (
        a.local_addr().expect("local addr"),
        b.local_addr().expect("local addr"),
    )
}

/// The status of `GET path` on `addr`, or `None` if it could not be had.
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(head.strip_prefix(b"HTTP/1.1 ")?)
        .ok()?
        .parse()
        .ok()
}
