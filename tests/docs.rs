//! The design document, `docs/ARCHITECTURE.md`, keeps up with the code: every section that the
//! source, the tests, the README or the dashboards cite exists; every command-line flag and its
//! environment variable, every metric name, every lint code and every local-reply reason is
//! documented there. Nothing may cite a document outside the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md")
}

/// Every file under `dir` (recursively) whose name ends with one of `suffixes`.
fn files(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, suffixes, out);
        } else if suffixes.iter().any(|s| path.to_string_lossy().ends_with(s)) {
            out.push(path);
        }
    }
}

/// The texts that cite the design document: sources, tests, README, dashboards, deploy files.
fn citing_texts() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    files(&root().join("src"), &[".rs"], &mut paths);
    files(&root().join("tests"), &[".rs"], &mut paths);
    files(
        &root().join("dashboards"),
        &[".sh", ".py", ".yml", ".json", ".md", ".prom"],
        &mut paths,
    );
    files(&root().join("deploy"), &[".yml", ".md", ".sh"], &mut paths);
    paths
        .into_iter()
        // This file describes the citations it looks for.
        .filter(|p| !p.ends_with("tests/docs.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn every_cited_section_exists() {
    let doc = architecture();
    let headings: BTreeSet<u32> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("## ")?.split('.').next()?.parse().ok())
        .collect();
    assert!(headings.len() >= 11, "{headings:?}");
    let mut cited = 0;
    for (path, text) in citing_texts() {
        for (at, _) in text.match_indices("ARCHITECTURE.md") {
            // `ARCHITECTURE.md §4`, `ARCHITECTURE.md §1, §3 ...`: each `§N` up to the line end.
            let rest = text[at..].lines().next().unwrap_or("");
            for section in rest.split('§').skip(1) {
                let digits: String = section.chars().take_while(char::is_ascii_digit).collect();
                let n: u32 = digits.parse().unwrap_or(0);
                assert!(
                    headings.contains(&n),
                    "{} cites §{digits}, which docs/ARCHITECTURE.md does not have",
                    path.display()
                );
                cited += 1;
            }
        }
    }
    assert!(
        cited > 20,
        "only {cited} citations found: is the search broken?"
    );
}

#[test]
fn nothing_cites_a_document_outside_the_repository() {
    for (path, text) in citing_texts() {
        // Spelled in pieces, so that this file does not itself name what it looks for.
        for needle in [
            concat!("DESIGN", " §"),
            concat!("DESIGN", ".md"),
            concat!("..", "/shared/bench/prom-check"),
            concat!("SHARED", "_DIR"),
        ] {
            assert!(
                !text.contains(needle),
                "{} mentions {needle:?}",
                path.display()
            );
        }
    }
}

#[test]
fn every_flag_and_environment_variable_is_documented() {
    let doc = architecture();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let cli = fusebox::cli::Cli::command();
    let mut seen = 0;
    for command in cli.get_subcommands() {
        assert!(
            doc.contains(&format!("fusebox {}", command.get_name())),
            "`fusebox {}` is not in docs/ARCHITECTURE.md §2",
            command.get_name()
        );
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            if flag == "--help" {
                continue;
            }
            assert!(doc.contains(&format!("`{flag}`")), "{flag} not in the doc");
            assert!(readme.contains(&flag), "{flag} not in the README");
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(doc.contains(&*env), "{env} not in the doc");
                assert!(readme.contains(&*env), "{env} not in the README");
            }
            seen += 1;
        }
    }
    assert!(seen >= 15, "only {seen} flags found");
}

#[test]
fn every_metric_lint_code_and_reply_reason_is_documented() {
    let doc = architecture();
    let telemetry = std::fs::read_to_string(root().join("src/telemetry.rs")).unwrap();
    let metrics: BTreeSet<&str> = telemetry
        .split('"')
        .filter(|s| {
            s.starts_with("fusebox_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    assert!(metrics.len() >= 14, "{metrics:?}");
    for metric in metrics {
        assert!(doc.contains(&format!("`{metric}`")), "{metric} not in §4");
    }
    for code in fusebox::policy::lint::CODES {
        assert!(doc.contains(&format!("`{code}`")), "lint {code} not in §10");
    }
    use fusebox::outcome::{Outcome, Reason};
    for reason in [
        Reason::BadRequest,
        Reason::HeadersTooLarge,
        Reason::ConnectFailed,
        Reason::Timeout,
        Reason::UpstreamReset,
        Reason::Denied,
        Reason::Loop,
        Reason::BreakerOpen,
        Reason::RateLimited,
        Reason::Overflow,
        Reason::BadResponse,
        Reason::Internal,
    ] {
        let reason = reason.as_str();
        assert!(
            doc.contains(&format!("| `{reason}` |")),
            "{reason} not in §5"
        );
    }
    for outcome in Outcome::ALL {
        let label = outcome.label();
        assert!(
            doc.contains(&format!("`{label}`")),
            "outcome {label} not in §4"
        );
    }
    for result in ["success", "failure", "unchanged"] {
        assert!(
            doc.contains(&format!("`{result}`")),
            "reload result {result}"
        );
    }
}
