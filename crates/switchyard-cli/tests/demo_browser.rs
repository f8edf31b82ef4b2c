//! `switchyard serve --demo`, the README's first command, as a user runs it: the real binary
//! on an ephemeral port in an empty directory (embedded log under ./switchyard-data), looked
//! at in headless Chromium through the dashboard and the app page
//! (`crates/switchyard-node/tests/browser/demo.mjs`). Nothing is staged by the test: the
//! numbers, dead letters, traces and runs are the demo's own. Screenshots go to
//! `target/demo-screenshots/`. Skips loudly without Chromium/node/playwright-core unless `CI`
//! is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../../switchyard-node/tests/common/browser.rs"]
mod browser;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_in_headless_chromium() {
    let Some(browser) = browser::browser_or_skip("serve_demo_in_headless_chromium") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--demo-interval-ms",
            "250",
        ])
        .current_dir(dir.path())
        .env_remove("SWITCHYARD_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the node prints its URL within 60 s")
        .unwrap()
        .expect("a first line");
    let url = first
        .strip_prefix("switchyard node listening on ")
        .unwrap_or_else(|| panic!("first line names the URL: {first}"))
        .to_owned();
    // Keep reading stdout so the node never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let shots = browser::fresh_screenshot_dir("demo-screenshots");
    let out = browser
        .run(
            "demo.mjs",
            &[
                ("DASHBOARD_URL", url.as_str()),
                ("SCREENSHOT_DIR", shots.to_str().unwrap()),
            ],
            Duration::from_secs(180),
        )
        .await;
    assert!(out.contains("demo: ok"), "{out}");
    // The demo ran on the embedded log in the directory it was started in.
    assert!(dir.path().join("switchyard-data").is_dir());
    child.start_kill().unwrap();
    let _ = child.wait().await;
    drain.abort();
}
