//! Review rev14, outside in: what an operator sees (`/metrics`, `/v1/stats`, health and
//! readiness, `/v1/status`, traces, topology, the dashboard's `/v1/stream`) checked against
//! known traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/mod.rs"]
mod common;

mod counters;
mod health;
mod views;

use std::time::Duration;

/// Polls `f` until it returns `Some` or `secs` pass; fails naming `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the first `/metrics` sample named `name` whose labels contain every needle.
pub fn metric(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let series = l.split([' ', '{']).next().unwrap_or("");
            series == name && needles.iter().all(|n| l.contains(n))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// GETs `/metrics` as text.
pub async fn scrape(node: &common::TestNode) -> String {
    common::client()
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
