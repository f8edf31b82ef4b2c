//! A node on the log transport, run as a child process, is SIGKILLed while HTTP clients
//! publish; after a restart every publish that got a 202 is delivered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use switchyard::MessageId;
use switchyard_node::{Node, NodeConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use common::{client, forward, recv};

const PUBLISHERS: usize = 4;
/// Publishes acknowledged before the kill.
const BEFORE_KILL: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("node.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
listen = "127.0.0.1:0"
[transport]
kind = "log"
data_dir = "{}"
[retention]
trace_messages = 0
"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-node"))
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the node prints its URL")
        .unwrap()
        .expect("a line");
    let url = first
        .strip_prefix("listening on ")
        .expect("listening on <url>")
        .to_owned();

    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel::<MessageId>();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let url = url.clone();
        let acked_tx = acked_tx.clone();
        publishers.push(tokio::spawn(async move {
            let http = client();
            // Bounded: the node is killed long before this many.
            for _ in 0..100_000 {
                let id = MessageId::new();
                let res = http
                    .post(format!("{url}/v1/publish/load.p{p}"))
                    .header("content-type", "application/json")
                    .header("x-message-id", id.to_string())
                    .body(format!("{{\"p\":{p}}}"))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 202 => {
                        let _ = acked_tx.send(id);
                    }
                    // Killed mid-request or refused after the kill: this publisher is done.
                    _ => return true,
                }
            }
            false
        }));
    }
    drop(acked_tx);
    let mut acked = HashSet::new();
    while acked.len() < BEFORE_KILL {
        acked.insert(recv(&mut acked_rx, "acknowledged publishes").await);
    }
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert!(
        !status.success(),
        "the node was killed, not stopped: {status:?}"
    );
    for p in publishers {
        assert!(p.await.unwrap(), "every publisher was cut off by the kill");
    }
    while let Some(id) = acked_rx.recv().await {
        acked.insert(id);
    }

    // Restart on the same data directory; a new consumer group reads the log from the start.
    let config = NodeConfig::load(Some(&config_path)).unwrap();
    let node = Node::start(config).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = node
        .bus()
        .subscribe("restart-check", "load.#", forward(tx))
        .start()
        .await
        .unwrap();
    let mut missing = acked.clone();
    while !missing.is_empty() {
        let env = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} acknowledged publishes never delivered", missing.len()))
            .expect("subscription open");
        missing.remove(&env.id);
    }
    drop(_sub);
    node.shutdown().await.unwrap();
    assert!(acked.len() >= BEFORE_KILL);
}

#[path = "binary.rs"]
mod binary;
