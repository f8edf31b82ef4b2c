//! ZeroMQ ingestion end to end: real publishers (Python's pyzmq and Rust's zeromq) push 10,000
//! messages, some malformed, through the demo pipeline; every valid one must be exported exactly
//! once, every malformed one must be in the dead letters, and the monitor must agree. Plus a
//! shutdown in the middle of a stream, a typed source and PUB → SUB.
//!
//! PUSH/PULL is used for the exactly-once tests: PUB/SUB drops messages by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use data_pipeline::sensors::{DemoConfig, DemoReport, Enriched, ZmqDemo};
use switchyard_core::DeadLetterReason;
use zeromq::{Socket, SocketSend};

#[path = "../../../crates/switchyard-pipeline/tests/zmq/feed.rs"]
mod feed;
use feed::{Sent, message, push_from_rust};

const WAIT: Duration = Duration::from_secs(120);
const COUNT: u64 = 10_000;
const BAD_EVERY: u64 = 50;

fn demo_config(output: &Path) -> DemoConfig {
    DemoConfig {
        endpoint: "tcp://127.0.0.1:0".to_owned(),
        output: output.to_path_buf(),
        ..DemoConfig::default()
    }
}

fn read_exported(path: &Path) -> Vec<Enriched> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every valid message exported exactly once, every malformed one dead-lettered with its bytes,
/// and the monitor's numbers agree with both.
fn check_exactly_once(report: &DemoReport, sent: &Sent, count: u64) {
    let m = &report.run.monitor;
    assert!(report.run.drained, "{m}");
    let exported = read_exported(&report.output);
    let mut seen = BTreeMap::new();
    for e in &exported {
        *seen.entry(e.id).or_insert(0u32) += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "exported more than once: {dupes:?}");
    let ids: BTreeSet<u64> = seen.keys().copied().collect();
    assert_eq!(
        ids, sent.valid_ids,
        "exported ids differ from the valid ids sent"
    );

    let letters = report.dead_letters.list();
    assert_eq!(report.dead_letters.evicted(), 0);
    let mut got: Vec<Vec<u8>> = letters
        .iter()
        .map(|l| l.envelope.payload.to_vec())
        .collect();
    let mut want = sent.malformed.clone();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "dead letters differ from the malformed messages sent"
    );
    let by_reason = letters.iter().fold(HashMap::new(), |mut acc, l| {
        *acc.entry(l.reason).or_insert(0u64) += 1;
        acc
    });
    // Four of the five malformed kinds fail to decode in `parse`; the unknown unit fails in `process`.
    let bad = sent.malformed.len() as u64;
    assert_eq!(
        by_reason
            .get(&DeadLetterReason::HandlerFailed)
            .copied()
            .unwrap_or(0),
        bad / 5
    );
    assert_eq!(
        by_reason
            .get(&DeadLetterReason::DecodeFailed)
            .copied()
            .unwrap_or(0)
            + by_reason
                .get(&DeadLetterReason::HandlerFailed)
                .copied()
                .unwrap_or(0),
        bad
    );

    let valid = sent.valid_ids.len() as u64;
    assert_eq!(
        (m.accepted, m.completed, m.failed, m.rejected),
        (count, valid, bad, 0),
        "{m}"
    );
    let op = |stage: &str| m.op(stage, "run").unwrap();
    assert_eq!(m.op("zmq-source", "recv").unwrap().success, count);
    assert_eq!(op("parse").success + op("parse").errors, count);
    assert_eq!(
        op("process").success + op("process").errors,
        op("parse").success
    );
    assert_eq!(op("parse").errors + op("process").errors, bad);
    assert_eq!(op("metrics").success, valid);
    assert_eq!(op("export").success, valid);
    assert_eq!(op("export").errors, 0);
    assert!(op("export").p99_ns.is_some());
}

fn python_with_pyzmq() -> Option<&'static str> {
    ["python3", "python"].into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import zmq"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publisher_10k_exactly_once() {
    let Some(python) = python_with_pyzmq() else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("pyzmq is required under CI: `pip install pyzmq`");
        }
        // Straight to the process's stderr, past the test harness's output capture, so the skip
        // shows in a passing run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPING python_publisher_10k_exactly_once: pyzmq is not installed\n\
             !!! (pip install pyzmq); under CI=true this test fails instead.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let demo = ZmqDemo::start(demo_config(&dir.path().join("out.jsonl")))
        .await
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/publish.py");
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(python)
            .arg(&script)
            .arg(demo.endpoint())
            .arg(COUNT.to_string())
            .arg(BAD_EVERY.to_string())
            .output(),
    )
    .await
    .expect("python publisher timed out")
    .unwrap();
    assert!(
        output.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["sent"], COUNT);
    let sent = Sent {
        valid_ids: summary["valid_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect(),
        malformed: summary["malformed_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| hex_decode(v.as_str().unwrap()))
            .collect(),
    };
    assert_eq!(sent.malformed.len() as u64, COUNT / BAD_EVERY);

    let monitor = demo.monitor().clone();
    assert!(
        monitor.wait_until(WAIT, |m| m.settled() == COUNT).await,
        "only {} of {COUNT} settled: {}",
        monitor.settled(),
        monitor.snapshot()
    );
    let report = demo.run_until(std::future::ready(())).await;
    check_exactly_once(&report, &sent, COUNT);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publisher_10k_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let demo = ZmqDemo::start(demo_config(&dir.path().join("out.jsonl")))
        .await
        .unwrap();
    let sent = tokio::time::timeout(WAIT, push_from_rust(demo.endpoint(), COUNT, BAD_EVERY))
        .await
        .expect("rust publisher timed out");
    let monitor = demo.monitor().clone();
    assert!(
        monitor.wait_until(WAIT, |m| m.settled() == COUNT).await,
        "only {} of {COUNT} settled: {}",
        monitor.settled(),
        monitor.snapshot()
    );
    let report = demo.run_until(std::future::ready(())).await;
    check_exactly_once(&report, &sent, COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let demo = ZmqDemo::start(demo_config(&dir.path().join("out.jsonl")))
        .await
        .unwrap();
    let endpoint = demo.endpoint().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // Pushes valid readings until told to stop (or 1,000,000 are sent).
    let publisher = tokio::spawn(async move {
        let mut push = zeromq::PushSocket::new();
        push.connect(&endpoint).await.unwrap();
        let mut sent = 0u64;
        while sent < 1_000_000 && !s.load(Ordering::Relaxed) {
            let (_, payload) = message(sent, 0);
            if push.send(Bytes::from(payload).into()).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let monitor = demo.monitor().clone();
    assert!(monitor.wait_until(WAIT, |m| m.accepted() >= 3_000).await);
    // Shut down while messages are still streaming in.
    let report = demo.run_until(std::future::ready(())).await;
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    let m = &report.run.monitor;
    assert!(report.run.drained, "{m}");
    assert_eq!(m.in_flight(), 0);
    assert!(m.accepted >= 3_000);
    assert!(m.accepted <= sent);
    // Everything acknowledged (accepted) was exported, exactly once.
    let exported = read_exported(&report.output);
    let ids: BTreeSet<u64> = exported.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), exported.len(), "duplicates in the export");
    assert_eq!(exported.len() as u64, m.accepted, "{m}");
    assert_eq!((m.completed, m.failed), (m.accepted, 0));
    // PULL delivers in order from one peer: the accepted ids are exactly 0..accepted.
    assert_eq!(ids.iter().next_back().copied(), Some(m.accepted - 1));
    // A message received but refused by the closed intake is dead-lettered, never dropped.
    let letters = report.dead_letters.list();
    assert_eq!(letters.len() as u64, m.rejected);
    assert!(m.rejected <= 1);
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Shutdown)
    );
}
