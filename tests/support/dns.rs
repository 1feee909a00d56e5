//! A real DNS server on loopback: Debian's `dnsmasq` (package `dnsmasq-base`, installed by
//! `.ci/run`), serving the names of a hosts file of the test's own, with a TTL the test picks,
//! and nothing else (no upstream servers, no system files). Records change during a test by
//! rewriting the file and sending `SIGHUP` (dnsmasq reads it again). Started and stopped by
//! PID.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `dnsmasq` child on `127.0.0.1:port`. Stopped when dropped.
pub struct DnsServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    /// Serves `records` (`(name, IPs)`) with `ttl` seconds on a free UDP and TCP port.
    pub fn start(records: &[(&str, &[&str])], ttl: u32) -> DnsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("hosts");
        write_hosts(&hosts, records);
        let port = free_port();
        let child = Command::new(dnsmasq())
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
            ])
            .args(["--bind-interfaces", "--listen-address=127.0.0.1"])
            .arg("--except-interface=nonexistent0")
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--local-ttl={ttl}"))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg("--user=root")
            .arg("--log-facility=-")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let server = DnsServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            hosts,
            _dir: dir,
        };
        server.wait_until_answering();
        server
    }

    /// Replaces the records and makes dnsmasq read them (SIGHUP).
    pub fn set(&self, records: &[(&str, &[&str])]) {
        write_hosts(&self.hosts, records);
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status()
                .expect("kill -HUP");
            assert!(status.success(), "SIGHUP to dnsmasq");
        }
    }

    /// Stops it (SIGKILL, by PID): every query from now on goes unanswered.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn wait_until_answering(&self) {
        for _ in 0..500 {
            if answers(self.addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("dnsmasq on {} did not answer within 5 s", self.addr);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_hosts(path: &PathBuf, records: &[(&str, &[&str])]) {
    let mut file = std::fs::File::create(path).expect("hosts file");
    for (name, ips) in records {
        for ip in *ips {
            writeln!(file, "{ip} {name}").expect("write hosts");
        }
    }
}

/// `dnsmasq`, also where a non-root PATH does not list `/usr/sbin`.
fn dnsmasq() -> &'static str {
    if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

fn free_port() -> u16 {
    // A port free for UDP and TCP both: dnsmasq binds the two.
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// Whether a query for `.` (any answer, even a refusal) comes back.
fn answers(addr: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    // ID 1, RD, one question: root, type A, class IN.
    let query = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
    if socket.send_to(&query, addr).is_err() {
        return false;
    }
    let mut reply = [0u8; 512];
    socket.recv_from(&mut reply).is_ok()
}
