//! Review rev38: two nodes sharing one NATS JetStream, seen as a user of a distributed bus
//! sees them (docs/gateway.md "Scale-out on NATS", docs/nats.md, docs/transports.md,
//! docs/interop.md). The harness is here: node configs with tracing on, a NATS server of the
//! test's own for faults (killed on drop), a WebSocket client and `/metrics` parsing.
//! `flows` has commands, events, headers, traces and metrics across nodes; `faults` nodes
//! stopped with messages in flight and the NATS server restarted under running nodes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{TestNode, client};

mod faults;
mod flows;

/// Bound of any single wait.
pub const T: Duration = Duration::from_secs(20);

/// A unique suffix for stream and topic names.
pub fn unique() -> String {
    switchyard::MessageId::new().to_string().to_lowercase()
}

/// A node config on NATS at `url`: one stream `stream` holding `prefix.#`, tracing on,
/// `extra` TOML appended (sections of its own).
pub fn config(url: &str, stream: &str, prefix: &str, storage: &str, extra: &str) -> String {
    format!(
        r#"
[transport]
kind = "nats"
url = "{url}"
storage = "{storage}"
max_bytes = 16777216
max_age_s = 3600
[[transport.streams]]
name = "{stream}"
patterns = ["{prefix}.#"]
[retention]
trace_messages = 1000
{extra}
"#
    )
}

/// The shared server's URL.
pub const SHARED: &str = "nats://127.0.0.1:4222";

/// Removes `stream` from the server at `url` (best effort: the test's own leftovers).
pub async fn delete_stream(url: &str, stream: &str) {
    if let Ok(t) =
        switchyard_nats::NatsTransport::connect(switchyard_nats::NatsConfig::new(url)).await
    {
        let _ = t.delete_stream(stream).await;
    }
}

const SERVER_BIN: &str = "/usr/sbin/nats-server";

/// A nats-server with JetStream on a free port with its own store directory; killed on drop.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    /// `None` (with a loud line) when the binary is missing and CI is not set.
    pub fn start() -> Option<Self> {
        if !std::path::Path::new(SERVER_BIN).exists() {
            assert!(std::env::var_os("CI").is_none(), "{SERVER_BIN} missing");
            eprintln!("SKIPPED: {SERVER_BIN} missing");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn(port, &dir);
        Some(Self {
            child: Some(child),
            port,
            dir,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.child = Some(spawn(self.port, &self.dir));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &tempfile::TempDir) -> Child {
    let mut child = Command::new(SERVER_BIN)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nats-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("Server is ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(15))
        .expect("nats-server ready");
    child
}

/// Polls `f` (a real query of a node's state each time: these states have no push
/// notification outside the node) until it returns `Some`, for at most `secs` seconds.
pub async fn eventually<R, F, Fut>(secs: u64, what: &str, mut f: F) -> R
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<R>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` on `node`: (status, JSON body).
pub async fn get(node: &TestNode, path: &str) -> (u16, Value) {
    let res = client().get(node.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// POST `body` (JSON) to `path` on `node` with `headers`: (status, JSON body).
pub async fn post(
    node: &TestNode,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value) {
    let mut req = client()
        .post(node.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `/metrics` of `node` as text.
pub async fn scrape(node: &TestNode) -> String {
    client()
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first `/metrics` sample named `name` whose line contains every needle.
pub fn metric(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name) && needles.iter().all(|n| l.contains(n)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A WebSocket client of `/v1/ws`.
pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(node: &TestNode) -> Self {
        let url = format!("{}/v1/ws", node.url.replacen("http", "ws", 1));
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame (pings skipped), within `T`.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("no WebSocket frame in time")
                .expect("the WebSocket ended")
                .expect("WebSocket read failed");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Subscribes (`extra` adds fields such as `group`) and returns the subscription id.
    pub async fn subscribe(&mut self, pattern: &str, extra: Value) -> String {
        let mut frame = json!({"op": "subscribe", "id": "sub", "pattern": pattern});
        if let (Some(f), Some(e)) = (frame.as_object_mut(), extra.as_object()) {
            f.extend(e.clone());
        }
        self.send(frame).await;
        let v = self.recv().await;
        assert_eq!(v["op"], "subscribed", "{v}");
        v["subscription"].as_str().unwrap().to_owned()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(T, self.ws.next()).await {}
    }
}
