//! Real clients and servers from other languages, as the apps and upstreams of the tests:
//! Python (`requests`, `grpcio`) from the virtual environment `scripts/test-tools.sh` makes
//! under `target/test-tools`, and Node.js. A missing tool fails the test with the command that
//! installs it: these tests are never skipped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/peers/NAME`.
pub fn peer_script(name: &str) -> PathBuf {
    root().join("tests/peers").join(name)
}

/// The Python with `requests` and `grpcio`: `$FUSEBOX_TEST_PYTHON`, else
/// `target/test-tools/bin/python`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("FUSEBOX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-tools/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/test-tools.sh` (bash .ci/run does) to install the \
         Python test clients",
        path.display()
    );
    path
}

/// `node`, from PATH.
pub fn node() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("node"))
            .find(|p| p.is_file())
    });
    found.expect("node is not on PATH: install Debian's nodejs package (bash .ci/run does)")
}

/// A command with no proxy variables of the test's environment.
pub fn hermetic(program: &Path) -> Command {
    let mut command = Command::new(program);
    for var in super::process::PROXY_VARS {
        command.env_remove(var);
    }
    for var in [
        "grpc_proxy",
        "GRPC_PROXY",
        "no_grpc_proxy",
        "REQUESTS_CA_BUNDLE",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs `command` on the blocking pool (the in-process fusebox keeps running); its stdout.
pub async fn output(mut command: Command) -> String {
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run a peer");
    assert!(
        out.status.success(),
        "peer failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A grpcio server (`tests/peers/grpc_peer.py serve`) on a loopback port, answering each call
/// with the next status of its script. Stopped when dropped.
pub struct GrpcServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
    hits: Arc<Mutex<Vec<String>>>,
}

impl GrpcServer {
    /// `tls`: the certificate and key files to serve TLS with.
    pub fn start(script: &[&str], tls: Option<(&Path, &Path)>) -> GrpcServer {
        let mut command = hermetic(&python());
        command.arg(peer_script("grpc_peer.py")).arg("serve");
        if let Some((cert, key)) = tls {
            command.arg("--tls").arg(cert).arg(key);
        }
        command
            .args(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start the gRPC server");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .expect("the gRPC server printed nothing")
            .expect("read");
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&hits);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(method) = line.strip_prefix("hit ") {
                    seen.lock().unwrap().push(method.to_owned());
                }
            }
        });
        GrpcServer {
            child,
            stdin,
            port,
            hits,
        }
    }

    /// The calls received so far, as `METHOD LEFT` (LEFT: seconds left of the call's deadline
    /// when it arrived, or `none`).
    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// Calls the server received, once at least `n` have been read from its output (each is
    /// printed before its answer, so after the client's last answer this waits only for the
    /// pipe, never for the server).
    pub async fn hits_at_least(&self, n: usize) -> usize {
        for _ in 0..1000 {
            let hits = self.hits.lock().unwrap().len();
            if hits >= n {
                return hits;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.hits.lock().unwrap().len()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `grpc_peer.py call TARGET ARGS..` (a fresh channel); one line per call:
/// `"<status> <details>"`.
pub async fn grpc_call(target: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut command = hermetic(&python());
    command
        .arg(peer_script("grpc_peer.py"))
        .arg("call")
        .arg(target)
        .args(args)
        .envs(env.iter().copied());
    output(command).await.lines().map(str::to_owned).collect()
}
