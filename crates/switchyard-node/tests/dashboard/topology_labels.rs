//! The topology's rate labels with many edges into one topic, driven by
//! `tests/browser/topology_labels.mjs` (the dashboard's own assets, the API mocked): no two
//! rate labels overlap and no other edge runs through one (before the fix, 59 of 62 labels
//! were crossed by the bundle converging on the topic).

use std::process::Stdio;

use crate::{BROWSER, browser, screenshots};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_labels_of_many_edges_into_one_topic_stay_readable() {
    let Some(browser) =
        browser::browser_or_skip("rate_labels_of_many_edges_into_one_topic_stay_readable")
    else {
        return;
    };
    let _one = BROWSER.lock().await;
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(browser.dir.join("topology_labels.mjs"))
            .env("CHROMIUM", &browser.chromium)
            .env("SCREENSHOT", screenshots().join("topology-labels.png"))
            .current_dir(&browser.dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script ends within 180 s")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(stdout.contains("\"publishers\":60"), "{stdout}");
}
