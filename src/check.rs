//! `fusebox check`: validate a policies directory the way `fusebox run` and a reload would,
//! then lint it for dangerous combinations of valid values ([`crate::policy::lint`]).
//!
//! Text format (default): errors go to stderr as `file:line:col: message` and warnings as
//! `file:line:col: warning[code]: message`, one per line; a loaded directory prints one
//! summary line per policy to stdout. JSON format: one document on stdout (see [`Report`]),
//! nothing on stderr.
//!
//! Exit codes: 1 if there is any error; otherwise 2 with `--strict` if there is any warning;
//! otherwise 0.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::ca::LocalCa;
use crate::policy::intercept::missing_ca;
use crate::policy::lint::{fleet_without_redis, lint, Warning};
use crate::policy::listeners::{listener_conflicts, FixedListener};
use crate::policy::{load_dir, HostPattern, Policy, PolicyError, PolicySet};

/// Output format of `fusebox check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Compiler-style lines on stderr, a summary on stdout.
    #[default]
    Text,
    /// One JSON document on stdout, for CI pipelines.
    Json,
}

/// Exit code: errors.
pub const EXIT_ERRORS: i32 = 1;
/// Exit code: warnings only, with `--strict`.
pub const EXIT_WARNINGS: i32 = 2;

/// What `fusebox check` checks: the policies directory, and the listeners `fusebox run` would
/// bind besides the route listeners (`--listen`, `--admin`).
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub dir: &'a Path,
    pub fixed: Vec<FixedListener>,
    /// `--ca-dir`: the local CA `run` will load, if any.
    pub ca_dir: Option<&'a Path>,
    /// `--redis` is given: fleet-wide limits will be shared.
    pub redis: bool,
}

/// What `run` would refuse about the local CA: one it cannot load, or `intercept = true`
/// without one.
fn ca_errors(set: &PolicySet, ca_dir: Option<&Path>) -> Vec<PolicyError> {
    let Some(dir) = ca_dir else {
        return missing_ca(set, false);
    };
    match LocalCa::load(dir) {
        Ok(_) => Vec::new(),
        Err(error) => vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot use the local CA (--ca-dir): {error}"),
        }],
    }
}

/// Runs `fusebox check`; returns the process exit code.
pub fn run(target: &Target<'_>, format: Format, strict: bool) -> i32 {
    run_to(
        target,
        format,
        strict,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

fn run_to(
    target: &Target<'_>,
    format: Format,
    strict: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    // The same refusals as `fusebox run`: what does not load, and listeners it cannot bind.
    let (set, errors) = match load_dir(target.dir) {
        Ok(set) => {
            let mut errors = listener_conflicts(&set, &target.fixed);
            errors.extend(ca_errors(&set, target.ca_dir));
            (Some(set), errors)
        }
        Err(errors) => (None, errors.0),
    };
    let mut warnings = set.as_ref().map(lint).unwrap_or_default();
    if let Some(set) = set.as_ref().filter(|_| !target.redis) {
        warnings.extend(fleet_without_redis(set));
    }
    let code = if !errors.is_empty() {
        EXIT_ERRORS
    } else if strict && !warnings.is_empty() {
        EXIT_WARNINGS
    } else {
        0
    };
    // A closed stdout or stderr must not turn a check into a panic: write errors are ignored.
    match format {
        Format::Text => {
            for error in &errors {
                let _ = writeln!(err, "{error}");
            }
            for warning in &warnings {
                let _ = writeln!(err, "{warning}");
            }
            if let Some(set) = &set {
                let _ = out.write_all(summary(set).as_bytes());
            }
        }
        Format::Json => {
            let report = Report::new(code == 0, &errors, &warnings, set.as_ref());
            if let Ok(mut json) = serde_json::to_string_pretty(&report) {
                json.push('\n');
                let _ = out.write_all(json.as_bytes());
            }
        }
    }
    code
}

/// The `--format json` document. `ok` is true exactly when the exit code is 0; `policies` is
/// empty when the directory did not load.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    errors: Vec<JsonError>,
    warnings: Vec<JsonWarning>,
    policies: Vec<JsonPolicy>,
}

#[derive(Debug, Serialize)]
struct JsonError {
    file: String,
    line: usize,
    col: usize,
    message: String,
}

#[derive(Debug, Serialize)]
struct JsonWarning {
    file: String,
    line: usize,
    col: usize,
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
struct JsonPolicy {
    name: String,
    file: String,
    hosts: Vec<String>,
    listen: Option<String>,
}

impl Report {
    fn new(
        ok: bool,
        errors: &[PolicyError],
        warnings: &[Warning],
        set: Option<&PolicySet>,
    ) -> Self {
        Report {
            ok,
            errors: errors
                .iter()
                .map(|e| JsonError {
                    file: e.file.display().to_string(),
                    line: e.line,
                    col: e.col,
                    message: e.message.clone(),
                })
                .collect(),
            warnings: warnings
                .iter()
                .map(|w| JsonWarning {
                    file: w.file.display().to_string(),
                    line: w.line,
                    col: w.col,
                    code: w.code,
                    message: w.message.clone(),
                })
                .collect(),
            policies: set
                .into_iter()
                .flat_map(PolicySet::all)
                .map(|p| JsonPolicy {
                    name: p.name.clone(),
                    file: p.file.display().to_string(),
                    hosts: p.hosts.iter().map(host_pattern).collect(),
                    listen: p.listen.map(|a| a.to_string()),
                })
                .collect(),
        }
    }
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
    if !policy.routes.is_empty() {
        let names: Vec<&str> = policy.routes.iter().map(|r| r.name.as_str()).collect();
        parts.push(format!("routes {}", names.join(", ")));
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
        check_with(dir, Format::Text, false)
    }

    fn check_with(dir: &Path, format: Format, strict: bool) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let target = Target {
            dir,
            fixed: vec![
                FixedListener::egress("127.0.0.1:15001".parse().unwrap()),
                FixedListener::admin("127.0.0.1:9901".parse().unwrap()),
            ],
            ca_dir: None,
            redis: false,
        };
        let code = run_to(&target, format, strict, &mut out, &mut err);
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
    fn repository_policies_check_clean_and_open_no_route_listener() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let (code, out, err) = check_with(&dir, Format::Text, true);
        assert_eq!((code, err.as_str()), (0, ""));
        assert!(out.contains("payments"), "{out}");
        assert!(
            !out.contains("listen"),
            "bundled policies must not open listeners: {out}"
        );
    }

    #[test]
    fn every_example_directory_checks_clean() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&examples).unwrap() {
            let dir = entry.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            if dir.ends_with("broken") {
                // The README's example of an error: it must stay broken, at the place it shows.
                let (code, _, err) = check(&dir);
                assert_eq!(code, EXIT_ERRORS);
                let at = format!(
                    "{}:7:1: unknown key `timeouts.conect`",
                    dir.join("payments.toml").display()
                );
                assert!(err.starts_with(&at), "{err}");
                continue;
            }
            // As a user does (and `.ci/run`): private keys made private, which git's checkout
            // does not keep; then the copy must check clean.
            let copy = tempfile::tempdir().unwrap();
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                let to = copy.path().join(file.file_name().unwrap());
                std::fs::copy(&file, &to).unwrap();
                if to.to_string_lossy().ends_with("key.pem") {
                    use std::os::unix::fs::PermissionsExt;
                    let private = std::fs::Permissions::from_mode(0o600);
                    std::fs::set_permissions(&to, private).unwrap();
                }
            }
            let (code, out, err) = check_with(copy.path(), Format::Text, true);
            assert_eq!((code, err.as_str()), (0, ""), "{}", dir.display());
            assert!(out.starts_with("default"), "{out}");
            seen += 1;
        }
        assert!(
            seen >= 1,
            "no example directory under {}",
            examples.display()
        );
    }

    #[test]
    fn listener_conflicts_are_errors_at_the_listen_value() {
        let dir = tempfile::tempdir().unwrap();
        let route = |listen: &str| format!("listen = \"{listen}\"\nendpoints = [\"u.test:1\"]\n");
        std::fs::write(dir.path().join("a.toml"), route("127.0.0.1:10000")).unwrap();
        std::fs::write(dir.path().join("b.toml"), route("127.0.0.1:10000")).unwrap();
        std::fs::write(dir.path().join("c.toml"), route("127.0.0.1:15001")).unwrap();
        std::fs::write(dir.path().join("d.toml"), route("0.0.0.0:9901")).unwrap();
        let (code, out, err) = check(dir.path());
        assert_eq!(code, 1, "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        let at = |file: &str| format!("{}:1:10: ", dir.path().join(file).display());
        assert!(lines[0].starts_with(&at("b.toml")), "{err}");
        assert!(lines[0].contains("policy `a`"), "{err}");
        assert!(lines[1].starts_with(&at("c.toml")), "{err}");
        assert!(
            lines[1].contains("egress listener (--listen) on 127.0.0.1:15001"),
            "{err}"
        );
        assert!(lines[2].starts_with(&at("d.toml")), "{err}");
        assert!(
            lines[2].contains("admin server (--admin) on 127.0.0.1:9901"),
            "{err}"
        );
        assert!(
            out.contains("default"),
            "the summary still shows what loaded: {out}"
        );
    }

    fn risky_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("api.toml"),
            "hosts = [\"api.test\"]\n[timeouts]\nattempt = \"5s\"\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn warnings_go_to_stderr_and_exit_0_unless_strict() {
        let dir = risky_dir();
        let file = dir.path().join("api.toml");
        let (code, out, err) = check(dir.path());
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("api      hosts api.test"), "{out}");
        assert!(
            err.starts_with(&format!(
                "{}:3:11: warning[attempt-ge-total]: `timeouts.attempt` = 5s",
                file.display()
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        let (code, _, err2) = check_with(dir.path(), Format::Text, true);
        assert_eq!(code, EXIT_WARNINGS);
        assert_eq!(err2, err);
    }

    #[test]
    fn strict_does_not_turn_errors_into_2() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "[retry]\nattempts = 0\n").unwrap();
        let (code, _, _) = check_with(dir.path(), Format::Text, true);
        assert_eq!(code, EXIT_ERRORS);
    }

    #[test]
    fn json_reports_everything_on_stdout() {
        let dir = risky_dir();
        let (code, out, err) = check_with(dir.path(), Format::Json, false);
        assert_eq!(code, 0);
        assert_eq!(err, "");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["errors"], serde_json::json!([]));
        let warning = &doc["warnings"][0];
        assert_eq!(warning["code"], "attempt-ge-total");
        assert_eq!(warning["line"], 3);
        assert_eq!(warning["col"], 11);
        assert_eq!(doc["policies"][1]["hosts"], serde_json::json!(["api.test"]));
        assert_eq!(doc["policies"][0]["name"], "default");
        assert_eq!(doc["policies"][0]["listen"], serde_json::Value::Null);

        let (code, out, _) = check_with(dir.path(), Format::Json, true);
        assert_eq!(code, EXIT_WARNINGS);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["ok"], false);

        std::fs::write(dir.path().join("bad.toml"), "nope = 1\n").unwrap();
        let (code, out, err) = check_with(dir.path(), Format::Json, false);
        assert_eq!(code, EXIT_ERRORS);
        assert_eq!(err, "");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["errors"][0]["line"], 1);
        assert!(doc["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown key `nope`"));
        assert_eq!(doc["warnings"], serde_json::json!([]));
        assert_eq!(doc["policies"], serde_json::json!([]));
    }
}
