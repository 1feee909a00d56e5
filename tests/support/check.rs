//! `fusebox check` run as CI runs it: the built binary on a policies directory, with none of
//! the environment variables that would change what it reads or prints.

use std::path::Path;
use std::process::Command;

/// How a `fusebox check` run ended.
pub struct Done {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `fusebox check --policies DIR ARGS...`.
pub fn check(dir: &Path, args: &[&str]) -> Done {
    let out = Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .arg("check")
        .arg("--policies")
        .arg(dir)
        .args(args)
        .env_remove("FUSEBOX_POLICIES")
        .env_remove("FUSEBOX_CHECK_FORMAT")
        .env_remove("FUSEBOX_LISTEN")
        .env_remove("FUSEBOX_ADMIN")
        .env_remove("FUSEBOX_REDIS")
        .output()
        .expect("run fusebox check");
    Done {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}
