//! The design document's layering (docs/ARCHITECTURE.md §9) holds: every `crate::` path in a
//! top-level module's code (its tests and doc comments aside) names a module the document
//! allows it to import, and the allowed imports form no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each top-level module may import, as §9 draws it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("grpc_code", &[]),
    ("address", &[]),
    ("guard", &[]),
    ("histogram", &[]),
    ("live_stats", &["histogram", "outcome"]),
    ("logging", &[]),
    ("ca", &[]),
    ("outcome", &["grpc_code"]),
    ("policy", &["grpc_code", "address"]),
    ("telemetry", &["policy", "outcome", "grpc_code"]),
    ("upstream", &["policy", "guard", "address"]),
    (
        "pipeline",
        &["policy", "outcome", "telemetry", "grpc_code", "histogram"],
    ),
    ("fleet", &["pipeline", "policy", "telemetry"]),
    (
        "registry",
        &[
            "policy",
            "pipeline",
            "upstream",
            "telemetry",
            "fleet",
            "guard",
            "address",
            "live_stats",
        ],
    ),
    (
        "proxy",
        &[
            "registry",
            "pipeline",
            "upstream",
            "telemetry",
            "outcome",
            "policy",
            "address",
            "logging",
            "ca",
            "ca_dir",
        ],
    ),
    ("reload", &["policy", "registry", "proxy", "ca_dir", "ca"]),
    (
        "admin",
        &["registry", "reload", "pipeline", "policy", "live_stats"],
    ),
    ("check", &["policy", "ca"]),
    ("ca_dir", &["ca"]),
    ("ca_cli", &["ca"]),
    ("status", &["admin", "upstream"]),
    (
        "cli",
        &["agent", "ca_cli", "check", "status", "logging", "policy"],
    ),
    (
        "agent",
        &[
            "admin",
            "ca",
            "ca_dir",
            "fleet",
            "policy",
            "proxy",
            "registry",
            "reload",
            "telemetry",
            "upstream",
            "guard",
            "logging",
            "outcome",
            "pipeline",
        ],
    ),
    (
        "fuzz",
        &[
            "address", "guard", "pipeline", "policy", "proxy", "upstream",
        ],
    ),
];

/// The top-level module a file of `src/` belongs to.
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The modules named by `crate::` paths in `text`, its test module and comments aside.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let name: String = line[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_is_one_the_design_document_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for path in all {
        let module = module_of(&path, &src);
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` is not in §9",
                path.display()
            ));
            continue;
        };
        for import in imports(&std::fs::read_to_string(&path).unwrap()) {
            if import != module && !may.contains(&import.as_str()) {
                wrong.push(format!("{}: `{module}` imports `{import}`", path.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports §9 does not allow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_allowed_imports_form_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Depth-first from every module: reaching the start again is a cycle.
    for start in allowed.keys() {
        let mut stack: Vec<&str> = allowed[start].to_vec();
        let mut seen = BTreeSet::new();
        while let Some(next) = stack.pop() {
            assert_ne!(next, *start, "a cycle through `{start}`");
            if seen.insert(next) {
                stack.extend(allowed.get(next).copied().unwrap_or_default());
            }
        }
    }
}
