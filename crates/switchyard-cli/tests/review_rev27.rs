//! Review rev27: the reference app as `switchyard serve --demo` runs it (a child process on a
//! free port with a temporary data directory), through the gateway calls its `/app` page
//! makes: the trickle's runs in the history with their outcomes and dead letters, a held run
//! cancelled among them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// Bound of any single wait.
const WAIT: Duration = Duration::from_secs(15);

/// A `switchyard serve --demo` child; killed and reaped on drop (also when a test panics).
struct Demo {
    child: Child,
    url: String,
}

impl Demo {
    fn start(dir: &Path) -> Demo {
        let cfg = dir.join("node.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"log\"\ndata_dir = {:?}\n[logging]\nfilter = \"warn\"\n",
                dir.join("data")
            ),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHYARD_") || k == "RUST_LOG" || k.starts_with("DATABASE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .current_dir(dir)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .args(["--demo", "--demo-interval-ms", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {} // keep the pipe drained
        });
        let first = rx.recv_timeout(WAIT).expect("serve --demo listens");
        let url = first
            .trim()
            .strip_prefix("switchyard node listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Demo { child, url }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST /v1/request/<topic>` as the page does it (`x-source: frontend`): the reply's payload.
async fn query(url: &str, topic: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/request/{topic}?timeout_ms=5000"))
        .header("x-source", "frontend")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{topic}");
    res.json::<Value>().await.unwrap()["payload"].clone()
}

async fn publish(url: &str, topic: &str, body: Value) {
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/publish/{topic}"))
        .header("x-source", "frontend")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{topic}");
}

/// Polls `cpm.query.run` until `ok` holds for the run (bounded by [`WAIT`]).
async fn await_run(url: &str, run_id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = query(url, "cpm.query.run", json!({"run_id": run_id})).await;
        if ok(&d["run"]) {
            return d;
        }
        assert!(Instant::now() < deadline, "{run_id}: {}", d["run"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The trickle's runs reach the history newest first with their outcomes: a completed run
/// with its six domains, a run on the missing dataset failed with its error and dead letter;
/// a run the user starts with the hold switch among them is cancelled and stays so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_lists_its_runs_with_their_outcomes_and_cancels_a_held_run() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path());
    let url = demo.url.clone();
    // Every 4th trickle run names a dataset the store does not have.
    let failed = await_run(&url, "demo-00004", |r| r["status"] == "failed").await;
    let run = &failed["run"];
    assert_eq!(run["dataset"], "missing.csv", "{run}");
    assert!(run["error"]["error_type"].is_string(), "{run}");
    assert!(
        !run["dead_letters"].as_array().unwrap().is_empty(),
        "the failed run lists its dead letter: {run}"
    );
    assert!(failed["report"]["markdown"].is_null());
    let done = await_run(&url, "demo-00001", |r| r["status"] != "running").await;
    assert_eq!(done["run"]["status"], "completed", "{}", done["run"]);
    assert_eq!(done["run"]["domains"].as_array().unwrap().len(), 6);
    assert!(
        done["report"]["markdown"]
            .as_str()
            .unwrap()
            .starts_with('#')
    );
    // A held run among the trickle's, cancelled while it holds.
    publish(
        &url,
        "cpm.pipeline.request",
        json!({"run_id": "cli-held", "dataset": "", "rows": 20, "hold": "quality"}),
    )
    .await;
    await_run(&url, "cli-held", |r| {
        r["domains"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    publish(&url, "cpm.pipeline.cancel", json!({"run_id": "cli-held"})).await;
    let d = await_run(&url, "cli-held", |r| r["status"] != "running").await;
    assert_eq!(d["run"]["status"], "cancelled", "{}", d["run"]);
    // Later trickle runs go through; the held run stays cancelled, with fewer than six domains.
    let history = query(&url, "cpm.query.runs", json!({"limit": 500})).await;
    let runs = history["runs"].as_array().unwrap();
    let started: Vec<u64> = runs
        .iter()
        .map(|r| r["started_ms"].as_u64().unwrap())
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {started:?}"
    );
    let last_demo = runs
        .iter()
        .find(|r| r["run_id"].as_str().unwrap().starts_with("demo-"))
        .unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let after = format!("demo-{:05}", last_demo[5..].parse::<u64>().unwrap() + 2);
    await_run(&url, &after, |r| r["status"] != "running").await;
    let d = query(&url, "cpm.query.run", json!({"run_id": "cli-held"})).await;
    assert_eq!(d["run"]["status"], "cancelled", "{}", d["run"]);
    assert!(
        d["run"]["domains"].as_array().unwrap().len() < 6,
        "{}",
        d["run"]
    );
}
