//! Review rev25: more than one node. Three `switchyard serve` processes on one NATS
//! JetStream server the test owns (`/usr/sbin/nats-server -js` on a free port), seen from
//! their HTTP and WebSocket clients as docs/nats.md, docs/gateway.md ("Scale-out on NATS")
//! and docs/cli.md describe them. Every process is killed by a guard on drop. The harness is
//! here; `traffic` has the nodes working together, `faults` nodes that die, stop or leave.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Bound of any single wait.
const WAIT: Duration = Duration::from_secs(15);

const NATS_BIN: &str = "/usr/sbin/nats-server";

/// Copies `r` into the returned buffer on a thread; each line also goes to `lines`.
fn pump(
    r: impl Read + Send + 'static,
    lines: Option<std::sync::mpsc::Sender<String>>,
) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if let Some(tx) = &lines {
                let _ = tx.send(line.clone());
            }
            b.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    buf
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream of the test's own; SIGKILLed on drop.
struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Option<Nats> {
        if !Path::new(NATS_BIN).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{NATS_BIN} missing and CI set"
            );
            eprintln!("SKIPPING NATS TEST: {NATS_BIN} missing");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Nats::spawn(port, dir.path());
        Some(Nats {
            child,
            port,
            _dir: dir,
        })
    }

    /// nats-server on `port` storing under `dir`, once it says it is ready.
    fn spawn(port: u16, dir: &Path) -> Child {
        let mut child = Command::new(NATS_BIN)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = pump(child.stderr.take().unwrap(), Some(tx));
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("Server is ready") => return child,
                Ok(_) => {}
                Err(_) => panic!("nats-server not ready: {}", log.lock().unwrap()),
            }
        }
    }

    /// SIGKILLs the server (its store stays).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        self.child = tokio::task::block_in_place(|| Nats::spawn(self.port, self._dir.path()));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `switchyard serve` child on NATS; SIGKILLed and reaped on drop.
struct Node {
    child: Child,
    url: String,
}

fn node_config(dir: &Path, name: &str, nats_port: u16, storage: &str) -> std::path::PathBuf {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            r#"listen = "127.0.0.1:0"
[transport]
kind = "nats"
url = "nats://127.0.0.1:{nats_port}"
storage = "{storage}"
max_bytes = 16777216
ack_wait_ms = 2000
[[transport.streams]]
name = "REV25"
patterns = ["p.#"]
[logging]
filter = "warn"
[bus]
shutdown_timeout_ms = 2000
"#
        ),
    )
    .unwrap();
    cfg
}

impl Node {
    fn start(dir: &Path, name: &str, nats_port: u16) -> Node {
        Node::start_with(dir, name, nats_port, "memory")
    }

    /// A node whose streams have `storage` (`memory` or `file`).
    fn start_with(dir: &Path, name: &str, nats_port: u16, storage: &str) -> Node {
        let cfg = node_config(dir, name, nats_port, storage);
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .current_dir(dir)
            .env_remove("SWITCHYARD_TRANSPORT__KIND")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let _stdout = pump(child.stdout.take().unwrap(), Some(tx));
        let stderr = pump(child.stderr.take().unwrap(), None);
        let first = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{name} did not start: {}", stderr.lock().unwrap()));
        let url = first
            .trim()
            .strip_prefix("switchyard node listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Node { child, url }
    }

    fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    /// SIGTERM, then waits (bounded) for a graceful exit; returns its exit code.
    fn stop(&mut self) -> Option<i32> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + WAIT;
        tokio::task::block_in_place(|| {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status.code();
                }
                assert!(Instant::now() < deadline, "serve did not stop in {WAIT:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }

    /// `kill -9` and reap.
    fn kill9(&mut self) {
        let ok = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nodes named `names` on `nats` (blocking, outside the runtime's hot path).
fn start_nodes(dir: &Path, nats: &Nats, names: &[&str]) -> Vec<Node> {
    tokio::task::block_in_place(|| {
        names
            .iter()
            .map(|n| Node::start(dir, n, nats.port))
            .collect()
    })
}

/// A WebSocket client: frames to send go in through `tx`; every frame received comes out on
/// the shared channel tagged with `tag`.
struct Client {
    tx: mpsc::UnboundedSender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn connect(node: &Node, tag: &str, out: mpsc::UnboundedSender<(String, Value)>) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(node.ws_url())
            .await
            .unwrap();
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let tag = tag.to_owned();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    f = rx.recv() => match f {
                        Some(f) => { if sink.send(Message::text(f.to_string())).await.is_err() { return; } }
                        None => { let _ = sink.close().await; return; }
                    },
                    m = stream.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            if out.send((tag.clone(), v)).is_err() { return; }
                        }
                        Some(Ok(_)) => {}
                        _ => { let _ = out.send((tag.clone(), json!({"op": "closed"}))); return; }
                    },
                }
            }
        });
        Client { tx, task }
    }

    fn send(&self, v: Value) {
        self.tx.send(v).unwrap();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next frame on `rx` (bounded).
async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a frame in time")
        .expect("open")
}

/// Waits for the answer op `op` tagged `tag` (other frames on the way are kept in `held`).
async fn expect_op(
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
    tag: &str,
    op: &str,
    held: &mut Vec<(String, Value)>,
) -> Value {
    loop {
        let (t, v) = next(rx).await;
        if t == tag && v["op"] == op {
            return v;
        }
        assert_ne!(v["op"], "error", "{t}: {v}");
        held.push((t, v));
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// POST with the id headers of the gateway; returns (status, body JSON).
async fn post(url: &str, path: &str, id: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{url}{path}"))
        .header("x-message-id", id)
        .header("x-correlation-id", format!("corr-{id}"))
        .header("x-causation-id", format!("cause-{id}"))
        .header("x-meta-tenant", "acme")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls `f` until it returns `Some` (bounded).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id, correlation id, causation id and user header published by `post` arrived as sent.
fn assert_ids_kept(msg: &Value) {
    let id = msg["id"].as_str().unwrap();
    assert_eq!(msg["correlation_id"], format!("corr-{id}"), "{msg}");
    assert_eq!(msg["causation_id"], format!("cause-{id}"), "{msg}");
    assert_eq!(msg["headers"]["tenant"], "acme", "{msg}");
}

/// One subscription row of a node's `/v1/subscriptions`, by name.
async fn subscription(url: &str, name: &str) -> Option<Value> {
    let (_, v) = get_json(&format!("{url}/v1/subscriptions")).await;
    v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

#[path = "review_rev25/faults.rs"]
mod faults;
#[path = "review_rev25/traffic.rs"]
mod traffic;
