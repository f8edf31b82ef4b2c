//! `/app` in headless Chromium: start a generated run, watch it complete, open its quality
//! results, insights and report and compare the numbers with the app's store; start a run
//! with a failure switch and see the failure and its dead letter. Screenshots go to
//! `target/app-screenshots/`. Same prerequisites as the dashboard's browser test
//! (`/usr/bin/chromium` or `$CHROMIUM`, `node`, `npm ci` in `tests/browser/`); without them
//! the test skips loudly, unless `CI` is set: then it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::{AppNode, FRONTEND_TOKEN, config};

fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let mut missing = Vec::new();
    if !chromium.exists() {
        missing.push(format!(
            "{} (apt-get install -y chromium)",
            chromium.display()
        ));
    }
    if !browser_dir.join("node_modules/playwright-core").exists() {
        missing.push(format!(
            "{}/node_modules/playwright-core (npm ci)",
            browser_dir.display()
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
        Ok((chromium, browser_dir))
    } else {
        Err(missing.join(", "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_in_headless_chromium() {
    let (chromium, browser_dir) = match prerequisites() {
        Ok(p) => p,
        Err(missing) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED app_in_headless_chromium: missing {missing}");
            return;
        }
        Err(missing) => panic!("CI is set but the browser test cannot run: missing {missing}"),
    };
    let node = AppNode::start(config()).await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/app-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(browser_dir.join("app.mjs"))
        .env("APP_URL", node.url(&format!("/app?token={FRONTEND_TOKEN}")))
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .current_dir(&browser_dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("browser script finishes within 120 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser script failed:\n{stdout}\n{stderr}"
    );

    // The numbers the page showed (the script prints them as `seen <key> <value>`) are the
    // store's.
    let seen = |key: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("app: seen {key} ")))
            .unwrap_or_else(|| panic!("the script did not report {key}:\n{stdout}"))
            .trim()
            .to_owned()
    };
    let run = seen("run");
    let t = node.app.store().run_tables(&run).await.unwrap();
    assert_eq!(seen("staged"), t.raw_rows[&run].len().to_string());
    assert_eq!(seen("valid"), t.sales[&run].len().to_string());
    assert_eq!(seen("issues"), t.quality_issues[&run].len().to_string());
    assert_eq!(
        seen("failed_rows"),
        t.quality_issues[&run].len().to_string()
    );
    assert_eq!(
        seen("revenue"),
        format!("{:.2}", t.features[&run].total_revenue)
    );
    assert_eq!(
        seen("anomalies"),
        t.insights[&run].anomalies.len().to_string()
    );
    assert_eq!(
        seen("recommendations"),
        t.recommendations[&run].len().to_string()
    );
    let md: Value = seen("report_h1").into();
    assert_eq!(md, Value::from(format!("Sales report — run {run}")));
    let failed = seen("failed_run");
    let rec = node.app.runs().get(&failed).unwrap();
    assert_eq!(rec.status, "failed");
    assert_eq!(seen("dead_letter"), rec.dead_letters[0].id);
    // The run cancelled from the page: the page showed what the CPM's registry holds.
    let cancelled = seen("cancelled_run");
    assert_eq!(seen("cancelled_status"), "cancelled");
    let rec = node.app.runs().get(&cancelled).unwrap();
    assert_eq!(rec.status, "cancelled");
    assert!(
        rec.domains.len() < data_pipeline::DOMAINS.len(),
        "{:?}",
        rec.domains
    );
    node.stop().await;
}
