//! `fusebox check`: validate a policies directory the way `fusebox run` and a reload would.
//!
//! Errors go to stderr as `file:line:col: message`, one per line, and make the exit code 1.
//! A clean directory prints one summary line per policy to stdout and exits 0.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use crate::policy::{load_dir, HostPattern, Policy, PolicySet};

/// Runs `fusebox check` on `dir`; returns the process exit code.
pub fn run(dir: &Path) -> i32 {
    run_to(
        dir,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

fn run_to(dir: &Path, out: &mut impl Write, err: &mut impl Write) -> i32 {
    let set = match load_dir(dir) {
        Ok(set) => set,
        Err(errors) => {
            for error in &errors {
                // A closed stderr must not turn a failed check into a panic.
                let _ = writeln!(err, "{error}");
            }
            return 1;
        }
    };
    // Lint warnings (DESIGN §3: dangerous combinations such as attempt timeout >= total) go
    // here, printed to `err` as `file:line:col: warning: message`, without changing the
    // exit code.
    let _ = out.write_all(summary(&set).as_bytes());
    0
}

/// One line per policy, default first: name, then what routes traffic to it.
fn summary(set: &PolicySet) -> String {
    let width = set.all().map(|p| p.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for policy in set.all() {
        let _ = writeln!(text, "{:width$}  {}", policy.name, describe(policy, set));
    }
    text
}

fn describe(policy: &Policy, set: &PolicySet) -> String {
    let mut parts = Vec::new();
    if std::ptr::eq(policy, &*set.default) {
        parts.push("destinations no other policy matches".to_string());
    }
    if !policy.hosts.is_empty() {
        let hosts: Vec<String> = policy.hosts.iter().map(host_pattern).collect();
        parts.push(format!("hosts {}", hosts.join(", ")));
    }
    if let Some(listen) = policy.listen {
        parts.push(format!("listen {listen}"));
    }
    if !policy.endpoints.is_empty() {
        let endpoints: Vec<String> = policy
            .endpoints
            .iter()
            .map(|e| host_port(&e.host, e.port))
            .collect();
        parts.push(format!("-> {}", endpoints.join(", ")));
    }
    if policy.tls {
        parts.push("tls".to_string());
    }
    if !policy.allow {
        parts.push("denied".to_string());
    }
    parts.join("  ")
}

fn host_pattern(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::HostPort { host, port } => host_port(host, *port),
        HostPattern::Host { host } => host.clone(),
        HostPattern::Wildcard { suffix } => format!("*{suffix}"),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(dir: &Path) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_to(dir, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn clean_directory_prints_a_summary_and_exits_0() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("api.toml"),
            "hosts = [\"api.test\", \"*.api.test\", \"[::1]:8080\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("route.toml"),
            "listen = \"127.0.0.1:10000\"\nendpoints = [\"up.test:443\"]\ntls = true\n",
        )
        .unwrap();
        let (code, out, err) = check(dir.path());
        assert_eq!(code, 0, "{err}");
        assert_eq!(err, "");
        assert_eq!(
            out,
            "default  destinations no other policy matches\n\
             api      hosts api.test, *.api.test, [::1]:8080\n\
             route    listen 127.0.0.1:10000  -> up.test:443  tls\n"
        );
    }

    #[test]
    fn errors_go_to_stderr_as_file_line_col_and_exit_1() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "[retry]\nattempts = 0\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "hosts = [\"*\"]\n").unwrap();
        let (code, out, err) = check(dir.path());
        assert_eq!(code, 1);
        assert_eq!(out, "");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        assert!(lines[0].starts_with(&format!("{}:2:12: `retry.attempts`", a.display())));
        assert!(lines[1].starts_with(&format!("{}:1:10: `hosts`", b.display())));
    }

    #[test]
    fn repository_policies_check_clean() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let (code, out, err) = check(&dir);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("payments"), "{out}");
        assert!(out.contains("listen 127.0.0.1:10000"), "{out}");
    }
}
