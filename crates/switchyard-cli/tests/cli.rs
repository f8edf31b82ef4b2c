//! The `switchyard` binary as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use assert_cmd::Command;

#[test]
fn version_and_help() {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("switchyard {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("demo"));
}

#[test]
fn demo_runs_end_to_end() {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["--log", "error", "demo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("0 left unprocessed"), "{text}");
}

#[test]
fn unknown_subcommand_fails_with_usage() {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .arg("nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("Usage"));
}

#[test]
fn demo_pipeline_runs_the_layered_reference_app() {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["--log", "error", "demo", "pipeline", "--rows", "120"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("run-001 completed"), "{text}");
    assert!(text.contains("raw_rows: 120"), "{text}");
}

#[test]
fn demo_zmq_is_listed() {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["demo", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("zmq") && text.contains("pipeline"), "{text}");
}

#[test]
fn a_failed_demo_run_exits_with_failure() {
    // Zero rows: the staging domain finds an empty dataset and the run fails.
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["--log", "error", "demo", "pipeline", "--rows", "0"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("run-001 FAILED"), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 1 run(s) failed"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unsupported_database_url_stops_the_demo_and_the_node_naming_it_without_its_password() {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["--log", "error", "demo", "pipeline", "--rows", "20"])
        .env("DATABASE_URL", "mysql://app:s3cret@db.example/x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mysql://app:***@db.example/x"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // `serve --demo` on an unreachable PostgreSQL: refused before the node listens.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args([
            "--log",
            "error",
            "serve",
            "--demo",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .env_remove("SWITCHYARD_TRANSPORT__KIND")
        .env("DATABASE_URL", "postgres://app:s3cret@127.0.0.1:1/test")
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("postgres://app:***@127.0.0.1:1/test"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
