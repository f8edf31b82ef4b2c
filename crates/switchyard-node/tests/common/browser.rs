//! Shared by the browser tests (the dashboard's, the app page's, and the CLI's `serve --demo`
//! run): finding Chromium and playwright-core, running one script of `tests/browser/`, and
//! the screenshot directories. Paths are computed from the including crate's manifest
//! directory as `../switchyard-node/...`, which is the same place from `crates/switchyard-node`
//! and from `crates/switchyard-cli`.
#![allow(dead_code, clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a browser test needs: Chromium and the directory with the scripts and playwright-core.
pub struct Browser {
    /// The Chromium executable (`/usr/bin/chromium` or `$CHROMIUM`).
    pub chromium: PathBuf,
    /// `crates/switchyard-node/tests/browser`.
    pub dir: PathBuf,
}

/// The browser, or `None` after a loud skip line when something is missing and `CI` is unset.
/// Under `CI` a missing prerequisite fails the test.
pub fn browser_or_skip(test: &str) -> Option<Browser> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../switchyard-node/tests/browser");
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push(format!(
            "{} (apt-get install -y chromium)",
            chromium.display()
        ));
    }
    if !dir.join("node_modules/playwright-core").exists() {
        missing.push(format!(
            "{}/node_modules/playwright-core (cd {} && npm ci)",
            dir.display(),
            dir.display()
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("node (apt-get install -y nodejs npm)".to_owned());
    }
    if missing.is_empty() {
        return Some(Browser { chromium, dir });
    }
    let missing = missing.join(", ");
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the browser test {test} cannot run: missing {missing}");
    }
    eprintln!("!!!! SKIPPED {test}: missing {missing}");
    None
}

/// `target/<name>`, emptied (only this run's screenshots in it).
pub fn fresh_screenshot_dir(name: &str) -> PathBuf {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("target")
        .join(name);
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    shots
}

impl Browser {
    /// Runs `tests/browser/<script>` with node and the given environment (plus `CHROMIUM`),
    /// within `limit`; panics with the script's output when it fails. Returns its stdout.
    pub async fn run(&self, script: &str, env: &[(&str, &str)], limit: Duration) -> String {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(self.dir.join(script))
            .env("CHROMIUM", &self.chromium)
            .current_dir(&self.dir)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("{script} finishes within {limit:?}"))
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}");
        assert!(
            out.status.success(),
            "browser script {script} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }
}
