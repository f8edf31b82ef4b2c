//! SIGTERM stops a running demo gracefully: the source stops, the stages drain, the file holds
//! every accepted message. In its own test binary because it signals its own process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::time::Duration;

use bytes::Bytes;
use data_pipeline::sensors::{DemoConfig, ZmqDemo};
use switchyard_pipeline::{ShutdownSignal, StopReason, shutdown_signal};
use zeromq::{Socket, SocketSend};

const WAIT: Duration = Duration::from_secs(60);

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_pipeline_and_drains() {
    // Installed before anything else: from here on SIGTERM resolves this future instead of
    // killing the test process.
    let shutdown = shutdown_signal().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let demo = ZmqDemo::start(DemoConfig {
        endpoint: "tcp://127.0.0.1:0".to_owned(),
        output: output.clone(),
        ..DemoConfig::default()
    })
    .await
    .unwrap();
    let mut push = zeromq::PushSocket::new();
    push.connect(demo.endpoint()).await.unwrap();
    for i in 0..500u64 {
        let body = format!(r#"{{"id": {i}, "sensor": "s", "value": 1.5}}"#);
        push.send(Bytes::from(body).into()).await.unwrap();
    }
    let monitor = demo.monitor().clone();
    assert!(monitor.wait_until(WAIT, |m| m.accepted() == 500).await);

    let (tx, rx) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(demo.run_until(async move {
        let signal = shutdown.await;
        let _ = tx.send(signal);
    }));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signal = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    assert_eq!(signal, ShutdownSignal::Terminate);
    let report = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(report.run.reason, StopReason::Requested);
    assert!(report.run.drained);
    assert_eq!(report.run.monitor.completed, 500);
    let lines = std::fs::read_to_string(&output).unwrap().lines().count();
    assert_eq!(lines, 500);
}
