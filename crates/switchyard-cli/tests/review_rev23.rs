//! Review rev23: the reference is the truth. A user configures and operates
//! `switchyard serve` from docs/cli.md, docs/gateway.md and the README; these tests drive the
//! built binary as a child process (free port, temporary directory, memory transport unless a
//! test needs another) and hold it to what those documents say: configuration keys and their
//! errors, `/metrics` series and labels, routes and WebSocket frames, `--help`, and the
//! README's first commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Bound of any single wait.
const WAIT: Duration = Duration::from_secs(15);

#[path = "review_rev23/cli.rs"]
mod cli;
#[path = "review_rev23/config.rs"]
mod config;
#[path = "review_rev23/fixsmall.rs"]
mod fixsmall;
#[path = "review_rev23/serve_fixes.rs"]
mod serve_fixes;
#[path = "review_rev23/wire.rs"]
mod wire;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A minimal config: memory transport on a free loopback port, warnings only.
const MEMORY: &str = "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n\
                      [logging]\nfilter = \"warn\"\n[bus]\nshutdown_timeout_ms = 2000\n";

/// A `switchyard serve` child; killed and reaped on drop (also when a test panics).
struct Node {
    child: Child,
    url: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

/// Copies `r` into the returned buffer on a thread; the first line also goes to `first`.
fn pump(
    r: impl Read + Send + 'static,
    first: Option<std::sync::mpsc::Sender<String>>,
) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut first = first;
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if let Some(tx) = first.take() {
                let _ = tx.send(line.clone());
            }
            b.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    buf
}

/// A command on the binary with none of the caller's `SWITCHYARD_*`, `RUST_LOG` or
/// `DATABASE_*` variables (so the test sees only what it sets).
fn bin(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") || k == "RUST_LOG" || k.starts_with("DATABASE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

impl Node {
    /// `serve --config <dir>/node.toml ARGS` with `env`; `Err((exit code, stderr, stdout))`
    /// when it exits without listening.
    fn try_start(
        dir: &Path,
        toml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Node, (Option<i32>, String, String)> {
        let cfg = dir.join("node.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut cmd = bin(dir);
        cmd.args(["serve", "--config", cfg.to_str().unwrap()])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = pump(child.stdout.take().unwrap(), Some(tx));
        let stderr = pump(child.stderr.take().unwrap(), None);
        let mut node = Node {
            child,
            url: String::new(),
            stdout,
            stderr,
        };
        match rx.recv_timeout(WAIT) {
            Ok(first) => {
                node.url = first
                    .trim()
                    .strip_prefix("switchyard node listening on ")
                    .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
                    .to_owned();
                Ok(node)
            }
            Err(_) => {
                let status = node.wait_exit();
                // The pumps end with the pipes; wait (bounded) for them to have it all.
                let deadline = Instant::now() + Duration::from_secs(2);
                while node.stderr.lock().unwrap().is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let out = node.stdout.lock().unwrap().clone();
                Err((status.code(), node.stderr.lock().unwrap().clone(), out))
            }
        }
    }

    fn start(dir: &Path, toml: &str, args: &[&str]) -> Node {
        Node::try_start(dir, toml, args, &[])
            .unwrap_or_else(|(code, err, _)| panic!("serve exited {code:?}: {err}"))
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    /// Waits (bounded, polling the process state) for the child to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit in {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON text frame (bounded).
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends `frame` and returns the next frame, which must have op `op`.
async fn ws_call(ws: &mut Ws, frame: Value, op: &str) -> Value {
    ws_send(ws, frame.clone()).await;
    let v = ws_next(ws).await;
    assert_eq!(v["op"], op, "{frame} answered {v}");
    v
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn publish(url: &str, topic: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = http()
        .post(format!("{url}/v1/publish/{topic}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
