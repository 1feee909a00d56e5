//! `fusebox check` as CI pipelines run it: the built binary on policy directories with one
//! dangerous combination each, in both output formats, with and without `--strict`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[path = "support/check.rs"]
mod check_cli;

use check_cli::{check, Done};

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn json(done: &Done) -> Value {
    serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", done.stdout))
}

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// One lint case: the files, then the `file:line:col` and code of the one warning expected.
type Case = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

const CASES: &[Case] = &[
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[timeouts]\nattempt = \"5s\"\ntotal = \"5s\"\n",
        )],
        "api.toml:3:11",
        "attempt-ge-total",
    ),
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[timeouts]\nconnect = \"3s\"\nattempt = \"1s\"\n\
             total = \"3s\"\n",
        )],
        "api.toml:3:11",
        "connect-ge-total",
    ),
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[retry]\nmethods = [\"GET\", \"POST\"]\n",
        )],
        "api.toml:3:19",
        "non-idempotent-retry",
    ),
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[rate_limit]\nrps = 1\n",
        )],
        "api.toml:3:7",
        "min-calls-unreachable",
    ),
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[breaker]\nmin_calls = 2\nhalf_open_probes = 3\n",
        )],
        "api.toml:4:20",
        "probes-gt-min-calls",
    ),
    (
        &[(
            "default.toml",
            "[breaker]\nopen_base = \"30s\"\nopen_max = \"10s\"\n",
        )],
        "default.toml:3:12",
        "open-max-lt-open-base",
    ),
    (
        &[
            ("a.toml", "hosts = [\"api.test\"]\n"),
            ("b.toml", "hosts = [\"other.test\", \"API.test\"]\n"),
        ],
        "b.toml:1:24",
        "duplicate-host",
    ),
    (
        &[
            (
                "a.toml",
                "listen = \"127.0.0.1:10000\"\nendpoints = [\"up.test:80\"]\n",
            ),
            (
                "b.toml",
                "listen = \"127.0.0.2:10000\"\nendpoints = [\"up.test:80\"]\n",
            ),
        ],
        "b.toml:1:10",
        "listen-port-reused",
    ),
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[[route]]\nname = \"all\"\n[[route]]\nname = \"items\"\n\
             path = \"/items/{id}\"\n",
        )],
        "api.toml:5:8",
        "route-shadowed",
    ),
    (
        &[(
            "api.toml",
            "hosts = [\"api.test\"]\n[[route]]\nname = \"orders\"\n[route.retry]\n\
             methods = [\"POST\"]\n",
        )],
        "api.toml:5:12",
        "route-non-idempotent-retry",
    ),
];

#[test]
fn each_lint_prints_its_warning_and_exits_0_or_2_with_strict() {
    for (files, at, code) in CASES {
        let dir = dir_with(files);
        let done = check(dir.path(), &[]);
        let prefix = format!("{}/{at}: warning[{code}]: ", dir.path().display());
        assert_eq!(done.code, Some(0), "{code}: {}", done.stderr);
        let lines: Vec<&str> = done.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{code}: {}", done.stderr);
        assert!(lines[0].starts_with(&prefix), "{code}: {}", done.stderr);
        // The summary still goes to stdout.
        assert!(
            done.stdout.starts_with("default"),
            "{code}: {}",
            done.stdout
        );

        let strict = check(dir.path(), &["--strict"]);
        assert_eq!(strict.code, Some(2), "{code}: {}", strict.stderr);
        assert_eq!(strict.stderr, done.stderr);
    }
}

#[test]
fn repository_policies_are_clean_even_with_strict() {
    let done = check(&repo_policies(), &["--strict"]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert_eq!(done.stderr, "");
    assert!(done.stdout.contains("payments"), "{}", done.stdout);
}

#[test]
fn errors_exit_1_with_or_without_strict() {
    let dir = dir_with(&[
        ("a.toml", "[retry]\nattempts = 0\n"),
        (
            "b.toml",
            "hosts = [\"b.test\"]\n[timeouts]\nattempt = \"9s\"\n",
        ),
    ]);
    for args in [&[][..], &["--strict"]] {
        let done = check(dir.path(), args);
        assert_eq!(done.code, Some(1), "{}", done.stderr);
        assert_eq!(done.stdout, "");
        // Errors keep their `file:line:col: message` form; no lint runs on a broken set.
        let a = dir.path().join("a.toml");
        assert!(
            done.stderr
                .starts_with(&format!("{}:2:12: `retry.attempts`", a.display())),
            "{}",
            done.stderr
        );
        assert!(!done.stderr.contains("warning["), "{}", done.stderr);
    }
}

#[test]
fn json_format_has_every_field() {
    let (files, at, code) = CASES[0];
    let dir = dir_with(files);
    let done = check(dir.path(), &["--format", "json"]);
    assert_eq!(done.code, Some(0), "{}", done.stdout);
    assert_eq!(done.stderr, "");
    let doc = json(&done);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["errors"], serde_json::json!([]));
    let warnings = doc["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{doc:#}");
    let w = &warnings[0];
    let (file, rest) = at.split_once(':').unwrap();
    let (line, col) = rest.split_once(':').unwrap();
    assert_eq!(
        w["file"],
        dir.path().join(file).display().to_string(),
        "{doc:#}"
    );
    assert_eq!(w["line"], line.parse::<u64>().unwrap());
    assert_eq!(w["col"], col.parse::<u64>().unwrap());
    assert_eq!(w["code"], code);
    assert!(w["message"].as_str().unwrap().contains("timeouts.attempt"));
    let policies = doc["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2, "{doc:#}");
    assert_eq!(policies[0]["name"], "default");
    assert_eq!(policies[0]["listen"], Value::Null);
    assert_eq!(policies[1]["name"], "api");
    assert_eq!(policies[1]["hosts"], serde_json::json!(["api.test"]));

    let strict = check(dir.path(), &["--format", "json", "--strict"]);
    assert_eq!(strict.code, Some(2));
    assert_eq!(json(&strict)["ok"], false);
}

#[test]
fn json_format_reports_errors_and_reads_its_variable() {
    let dir = dir_with(&[("a.toml", "hosts = [\"a.test\"]\nbogus = 1\n")]);
    let done = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .arg("check")
        .arg("--policies")
        .arg(dir.path())
        .env("FUSEBOX_CHECK_FORMAT", "json")
        .output()
        .unwrap();
    let done = Done {
        code: done.status.code(),
        stdout: String::from_utf8(done.stdout).unwrap(),
        stderr: String::from_utf8(done.stderr).unwrap(),
    };
    assert_eq!(done.code, Some(1), "{}", done.stdout);
    assert_eq!(done.stderr, "");
    let doc = json(&done);
    assert_eq!(doc["ok"], false);
    let error = &doc["errors"][0];
    assert_eq!(
        error["file"],
        dir.path().join("a.toml").display().to_string()
    );
    assert_eq!(error["line"], 2);
    assert_eq!(error["col"], 1);
    assert!(error["message"].as_str().unwrap().contains("bogus"));
    assert_eq!(doc["warnings"], serde_json::json!([]));
    assert_eq!(doc["policies"], serde_json::json!([]));
}

/// What `fusebox run` would refuse to start with, `check` refuses too: two route listeners on
/// one address, or one on the egress or admin address that `run` gets from the same flags
/// (and environment variables).
#[test]
fn listener_collisions_are_errors_for_the_addresses_run_would_bind() {
    let route = |listen: &str| format!("listen = \"{listen}\"\nendpoints = [\"up.test:80\"]\n");
    let dir = dir_with(&[
        ("a.toml", &route("0.0.0.0:10000")),
        ("b.toml", &route("127.0.0.1:10000")),
        ("c.toml", &route("127.0.0.1:15001")),
    ]);
    let done = check(dir.path(), &[]);
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", done.stderr);
    let at = |file: &str| format!("{}:1:10: ", dir.path().join(file).display());
    assert!(lines[0].starts_with(&at("b.toml")), "{}", done.stderr);
    assert!(lines[0].contains("policy `a`"), "{}", done.stderr);
    assert!(lines[1].starts_with(&at("c.toml")), "{}", done.stderr);
    assert!(lines[1].contains("--listen"), "{}", done.stderr);

    // The egress listener elsewhere: only the two routes still collide.
    let done = check(dir.path(), &["--listen", "127.0.0.1:15999"]);
    assert_eq!(done.code, Some(1));
    assert_eq!(done.stderr.lines().count(), 1, "{}", done.stderr);
    // The admin address from the environment, as `run` reads it.
    let dir = dir_with(&[("c.toml", &route("127.0.0.1:9911"))]);
    let done = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(["check", "--policies"])
        .arg(dir.path())
        .env("FUSEBOX_ADMIN", "127.0.0.1:9911")
        .env_remove("FUSEBOX_LISTEN")
        .output()
        .unwrap();
    assert_eq!(done.status.code(), Some(1));
    let stderr = String::from_utf8(done.stderr).unwrap();
    assert!(
        stderr.contains("admin server (--admin) on 127.0.0.1:9911"),
        "{stderr}"
    );
    assert_eq!(check(dir.path(), &[]).code, Some(0));
}

#[test]
fn json_lists_route_listeners() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy");
    let done = check(&examples, &["--format", "json"]);
    assert_eq!(done.code, Some(0));
    let doc = json(&done);
    let envoy = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy")
        .unwrap_or_else(|| panic!("{doc:#}"));
    assert_eq!(envoy["listen"], "127.0.0.1:10000");
}

#[test]
fn an_unknown_format_is_a_usage_error() {
    let done = check(&repo_policies(), &["--format", "yaml"]);
    // Usage errors exit 64 (EX_USAGE), distinct from 1 (errors) and 2 (--strict warnings).
    assert_eq!(done.code, Some(64), "{}", done.stderr);
    assert_eq!(done.stdout, "");
    assert!(done.stderr.contains("yaml"), "{}", done.stderr);
}

#[test]
fn a_fleet_limit_is_warned_without_redis_and_its_keys_are_checked() {
    let fleet =
        "hosts = [\"api.test\"]\n[rate_limit]\nrps = 50\nscope = \"fleet\"\nfleet_size_hint = 3\n";
    let dir = dir_with(&[("api.toml", fleet)]);
    let without = check(dir.path(), &["--strict"]);
    assert_eq!(without.code, Some(2), "{}", without.stderr);
    let expected = format!(
        "{}/api.toml:4:9: warning[fleet-without-redis]: `rate_limit.scope` = \"fleet\" but no \
         --redis is configured: each instance applies only the fallback limit of 16 rps",
        dir.path().display()
    );
    assert_eq!(without.stderr.trim_end(), expected);
    let with = check(
        dir.path(),
        &["--strict", "--redis", "redis://127.0.0.1:6379"],
    );
    assert_eq!(with.code, Some(0), "{}", with.stderr);

    // Without a size hint or a fallback, Redis failing lets each instance take the whole rate.
    let whole = "hosts = [\"api.test\"]\n[rate_limit]\nrps = 50\nscope = \"fleet\"\n";
    let dir = dir_with(&[("api.toml", whole)]);
    let done = check(dir.path(), &["--redis", "redis://127.0.0.1:6379"]);
    assert!(
        done.stderr
            .contains("api.toml:4:9: warning[fleet-fallback-whole]"),
        "{}",
        done.stderr
    );

    let bad = "[rate_limit]\nscope = \"global\"\nfleet_size_hint = 0\n";
    let dir = dir_with(&[("api.toml", bad)]);
    let done = check(dir.path(), &[]);
    assert_eq!(done.code, Some(1));
    assert!(
        done.stderr
            .contains("api.toml:2:9: `rate_limit.scope`: unknown scope \"global\""),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains("api.toml:3:19: `rate_limit.fleet_size_hint`"),
        "{}",
        done.stderr
    );
}
