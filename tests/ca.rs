//! `fusebox ca init` / `fusebox ca show`, run as the built binary (docs/ARCHITECTURE.md §13).

use std::process::Command;

fn fusebox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fusebox"))
        .args(args)
        .env_remove("FUSEBOX_CA_DIR")
        .output()
        .expect("run fusebox")
}

#[test]
fn init_creates_a_ca_that_show_prints_and_a_second_init_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = ca_dir.to_str().unwrap();

    let init = fusebox(&["ca", "init", "--dir", ca]);
    assert_eq!(init.status.code(), Some(0), "{init:?}");
    let cert = std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }

    let show = fusebox(&["ca", "show", "--dir", ca]);
    assert_eq!(show.status.code(), Some(0), "{show:?}");
    assert_eq!(String::from_utf8(show.stdout).unwrap(), cert);
    assert!(
        !String::from_utf8_lossy(&show.stderr).contains("PRIVATE KEY"),
        "the key is never printed"
    );

    let again = fusebox(&["ca", "init", "--dir", ca]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(),
        cert
    );

    let forced = fusebox(&["ca", "init", "--dir", ca, "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert_ne!(
        std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(),
        cert
    );
}

#[test]
fn show_without_a_ca_fails_and_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let show = fusebox(&["ca", "show", "--dir", missing.to_str().unwrap()]);
    assert_eq!(show.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&show.stderr);
    assert!(stderr.contains("nothing-here/ca.pem"), "{stderr}");
    let usage = fusebox(&["ca", "show"]);
    assert_eq!(usage.status.code(), Some(64), "--dir is required");
}

/// `intercept = true` needs the local CA: `check` says so at the key unless given `--ca-dir`,
/// and checks that CA too (what `run` would refuse).
#[test]
fn check_refuses_intercept_without_a_ca_and_checks_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("api.toml"),
        "hosts = [\"api.example.com\"]\nintercept = true\n",
    )
    .unwrap();
    let policies = policies.to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "--policies", policies];
        args.extend_from_slice(extra);
        fusebox(&args)
    };
    let without = check(&[]);
    assert_eq!(without.status.code(), Some(1), "{without:?}");
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        stderr.contains("api.toml:2:13") && stderr.contains("--ca-dir"),
        "{stderr}"
    );

    let ca = dir.path().join("ca");
    let missing = check(&["--ca-dir", ca.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1), "a CA that is not there");
    assert_eq!(
        fusebox(&["ca", "init", "--dir", ca.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let with = check(&["--ca-dir", ca.to_str().unwrap()]);
    assert_eq!(with.status.code(), Some(0), "{with:?}");
}
