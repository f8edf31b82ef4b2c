//! The reference app on PostgreSQL as a user runs it: `switchyard demo pipeline` and
//! `switchyard serve --demo` with `DATABASE_URL` set, each in its own schema
//! (`DATABASE_SCHEMA`), and the app's tables there hold what the runs wrote. The server is
//! `SWITCHYARD_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`); without one the
//! tests skip loudly, unless `CI` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::process::Stdio;
use std::time::Duration;

use assert_cmd::Command;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The server, or `None` (after saying so) when there is none and CI is not set.
fn pg_url(test: &str) -> Option<String> {
    let url = std::env::var("SWITCHYARD_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let up = std::process::Command::new("psql")
        .args([url.as_str(), "-tAc", "select 1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if up {
        return Some(url);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: PostgreSQL at {url} is needed under CI (psql could not reach it)"
    );
    eprintln!("!!!! SKIPPED {test}: no PostgreSQL at {url} (or no psql); set SWITCHYARD_PG_URL");
    None
}

/// Runs `sql` with psql and returns its unaligned output.
fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A schema of its own for one test, dropped first in case an earlier run left it.
fn fresh_schema(url: &str, name: &str) -> String {
    let schema = format!("cli_{name}_{}", std::process::id());
    psql(url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    schema
}

#[test]
fn demo_pipeline_runs_on_postgres() {
    let Some(url) = pg_url("demo_pipeline_runs_on_postgres") else {
        return;
    };
    let schema = fresh_schema(&url, "demo");
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["--log", "error", "demo", "pipeline", "--rows", "120"])
        .env("DATABASE_URL", &url)
        .env("DATABASE_SCHEMA", &schema)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("run-001 completed"), "{text}");
    // What the run wrote is in PostgreSQL, in the schema it was given.
    assert_eq!(
        psql(&url, &format!("SELECT count(*) FROM {schema}.raw_rows")),
        "120"
    );
    assert_ne!(
        psql(&url, &format!("SELECT count(*) FROM {schema}.sales")),
        "0"
    );
    psql(&url, &format!("DROP SCHEMA {schema} CASCADE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_runs_on_postgres() {
    let Some(url) = pg_url("serve_demo_runs_on_postgres") else {
        return;
    };
    let schema = fresh_schema(&url, "serve");
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "--log",
            "error",
            "serve",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--demo-interval-ms",
            "200",
        ])
        .current_dir(dir.path())
        .env_remove("SWITCHYARD_LISTEN")
        .env_remove("SWITCHYARD_TRANSPORT__KIND")
        .env("DATABASE_URL", &url)
        .env("DATABASE_SCHEMA", &schema)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The banner names the store; the trickle's first run completes on it.
    let mut seen = Vec::new();
    let completed = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.starts_with("demo demo-00001 completed") {
                return true;
            }
            if line.starts_with("demo demo-00001 FAILED") {
                return false;
            }
        }
        false
    })
    .await;
    assert_eq!(completed, Ok(true), "{}", seen.join("\n"));
    assert!(
        seen.iter()
            .any(|l| l.contains("store") && l.contains("postgres")),
        "the banner names the PostgreSQL store: {}",
        seen.join("\n")
    );
    assert_ne!(
        psql(&url, &format!("SELECT count(*) FROM {schema}.raw_rows")),
        "0"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
    psql(&url, &format!("DROP SCHEMA {schema} CASCADE"));
}
