//! `/app` in headless Chromium: start a generated run, watch it complete, open its quality
//! results, insights and report and compare the numbers with the app's store; start a run
//! with a failure switch and see the failure and its dead letter; a run with a slow domain
//! and see its latency flags (a warm-up run shows none). Screenshots go to
//! `target/app-screenshots/`. Same prerequisites as the dashboard's browser test
//! (`/usr/bin/chromium` or `$CHROMIUM`, `node`, `npm ci` in `tests/browser/`); without them
//! the test skips loudly, unless `CI` is set: then it fails.

use std::time::Duration;

use data_pipeline::{DemoConfig, PerformanceSettings};
use serde_json::Value;

use crate::{AppNode, FRONTEND_TOKEN, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_in_headless_chromium() {
    let Some(browser) = crate::browser_common::browser_or_skip("app_in_headless_chromium") else {
        return;
    };
    // A warm-up of two samples: the first two runs (one completed, one failed) warm the
    // analytics steps' latency baselines, the third (slow) run is flagged.
    let node = AppNode::start_with(
        config(),
        DemoConfig {
            rows: 60,
            performance: PerformanceSettings {
                warmup: 2,
                ..PerformanceSettings::default()
            },
            ..DemoConfig::default()
        },
    )
    .await;
    let shots = crate::browser_common::fresh_screenshot_dir("app-screenshots");
    let url = node.url(&format!("/app?token={FRONTEND_TOKEN}"));
    let stdout = browser
        .run(
            "app.mjs",
            &[
                ("APP_URL", url.as_str()),
                ("SCREENSHOT_DIR", shots.to_str().unwrap()),
            ],
            Duration::from_secs(300),
        )
        .await;

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
    // The warm-up run shows the empty state, as the registry holds no flag for it.
    assert!(seen("perf_empty").starts_with("No step of this run left its latency baseline"));
    assert!(
        node.app
            .runs()
            .get(&run)
            .unwrap()
            .performance_anomalies
            .is_empty()
    );
    // The slow run's analytics processor flag, as the registry holds it.
    let slow = node.app.runs().get(&seen("slow_run")).unwrap();
    let f = slow
        .performance_anomalies
        .iter()
        .find(|f| f.component == "analytics-processor")
        .unwrap();
    assert!(f.value >= 400.0, "{f:?}");
    // "analytics: analytics-processor features took V ms, baseline M ± D ms" (integers from
    // 10 ms, one decimal below).
    let text = seen("slow_flag");
    let rest = text
        .strip_prefix("analytics: analytics-processor features took ")
        .unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<f64> = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "{text}");
    for (shown, held) in nums.iter().zip([f.value, f.mean, f.deviation]) {
        assert!((shown - held).abs() <= 0.5, "{text} vs {f:?}");
    }
    assert!(
        rest.contains(" ms, baseline ") && rest.ends_with(" ms"),
        "{text}"
    );
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
