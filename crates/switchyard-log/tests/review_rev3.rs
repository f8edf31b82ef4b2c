//! Review rev3: kill -9 under `Durability::Interval` and `Durability::Never`. docs/log.md,
//! Durability: under both "a process crash loses nothing" (`publish` resolves after the
//! `write`, the page cache outlives the process). A child process (this binary, re-invoked
//! with an environment variable) publishes and prints every confirmed id; the parent kills it
//! with SIGKILL at random points and checks every confirmed id is in the reopened log.
//! One `#[test]` runs both modes one after the other (two crash tests at once in one process
//! disturb each other: docs/log.md, "Tests").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use switchyard_core::{Envelope, Publisher, Topic};
use switchyard_log::{Durability, LogConfig, LogTransport};

const CHILD_ENV: &str = "SWITCHYARD_LOG_REV3_CHILD";
const MODE_ENV: &str = "SWITCHYARD_LOG_REV3_MODE";

fn config(dir: &Path, mode: &str) -> LogConfig {
    let durability = match mode {
        "never" => Durability::Never,
        // Never reached within a cycle: every record is written, none synced by the timer.
        _ => Durability::Interval(Duration::from_secs(3600)),
    };
    LogConfig::new(dir)
        .with_durability(durability)
        .with_segment_bytes(16 * 1024)
}

/// Runs only inside the child process: publishes until killed.
#[test]
fn rev3_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_ENV), std::env::var(MODE_ENV)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = match LogTransport::open(config(Path::new(&dir), &mode)) {
            Ok(log) => log,
            Err(e) => {
                println!("OPEN-ERROR {e}");
                std::process::exit(3);
            }
        };
        let mut tasks = Vec::new();
        for p in 0..4u32 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let topic = Topic::new("crash.events").unwrap();
                for i in 0u64.. {
                    let n = 1 + (i % 3) as usize;
                    let batch: Vec<Envelope> = (0..n)
                        .map(|j| Envelope::new(topic.clone(), format!("p{p}-{i}-{j}")))
                        .collect();
                    let ids: Vec<_> = batch.iter().map(|e| e.id.clone()).collect();
                    log.publish(batch).await.unwrap();
                    for id in ids {
                        println!("CONFIRMED {id}");
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_cycles(mode: &str, cycles: usize) {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("{mode}: seed {rng}");
    let mut confirmed: HashSet<String> = HashSet::new();
    for cycle in 0..cycles {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args(["--exact", "rev3_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, dir.path())
                .env(MODE_ENV, mode)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let target = 1 + rng % 200;
        let mut lines = Vec::new();
        let mut seen = 0;
        while seen < target {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("{mode} cycle {cycle}: child stopped confirming"));
            assert!(
                !line.starts_with("OPEN-ERROR"),
                "{mode} cycle {cycle}: {line}"
            );
            if line.starts_with("CONFIRMED ") {
                seen += 1;
            }
            lines.push(line);
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in lines {
            if let Some(id) = line.strip_prefix("CONFIRMED ") {
                confirmed.insert(id.to_owned());
            }
        }
        let log = LogTransport::open(config(dir.path(), mode))
            .unwrap_or_else(|e| panic!("{mode} cycle {cycle}: reopen after kill -9 failed: {e}"));
        let records = log.read_range("default", 0, usize::MAX).unwrap();
        let stored: HashSet<String> = records.iter().map(|r| r.envelope.id.to_string()).collect();
        assert_eq!(
            stored.len(),
            records.len(),
            "{mode} cycle {cycle}: duplicates"
        );
        let missing: Vec<_> = confirmed.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "{mode} cycle {cycle}: {} confirmed ids lost after a process crash, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        drop(log);
    }
    println!("{mode}: {cycles} cycles, {} confirmed", confirmed.len());
    assert!(!confirmed.is_empty());
}

#[test]
fn kill_9_under_interval_and_never_loses_no_confirmed_publish() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    run_cycles("interval", 25);
    run_cycles("never", 25);
}
