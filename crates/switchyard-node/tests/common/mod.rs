//! Shared by the integration tests: a node on an ephemeral port and an HTTP client.
#![allow(dead_code, clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use switchyard::Bus;
use switchyard_node::{Node, NodeConfig, NodeError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node serving on 127.0.0.1:<ephemeral>.
pub struct TestNode {
    pub url: String,
    pub bus: Bus,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), NodeError>>>,
}

impl TestNode {
    /// Starts a node from a TOML config (listen is replaced by an ephemeral port).
    pub async fn start(toml: &str) -> Self {
        Self::start_with(toml, |_| {}).await
    }

    /// Like `start`, calling `setup` on the node before it serves.
    pub async fn start_with(toml: &str, setup: impl FnOnce(&Node)) -> Self {
        let config = NodeConfig::from_toml(toml).expect("valid test config");
        Self::from_config(config, setup).await
    }

    pub async fn from_config(config: NodeConfig, setup: impl FnOnce(&Node)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::from_listener(config, listener, setup).await
    }

    /// Like `from_config`, serving on `listener` (a node restarted on the same port).
    pub async fn from_listener(
        config: NodeConfig,
        listener: TcpListener,
        setup: impl FnOnce(&Node),
    ) -> Self {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let node = Node::start(config).await.expect("node starts");
        setup(&node);
        let addr = listener.local_addr().expect("addr");
        let bus = node.bus().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("{scheme}://{addr}"),
            bus,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops serving and shuts the bus down; returns what serve returned.
    pub async fn stop(mut self) -> Result<(), NodeError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("node stops within 30 s")
            .expect("serve task did not panic")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The in-memory node config most tests use.
pub const MEMORY: &str = r#"
[transport]
kind = "memory"
"#;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GETs `path` on `node` and reads the answer as JSON.
#[allow(dead_code)] // not every test binary that shares this module reads JSON this way
pub async fn get_json(node: &TestNode, path: &str) -> serde_json::Value {
    client()
        .get(node.url(path))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}

/// Reads an error answer: (status, kind, message).
pub async fn error_of(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.expect("error body is JSON");
    let kind = body["error"]["kind"]
        .as_str()
        .expect("error.kind")
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .expect("error.message")
        .to_owned();
    (status, kind, message)
}

/// Receives one item within `timeout` or fails the test naming `what`.
pub async fn recv<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel closed waiting for {what}"))
}

/// A handler that forwards every envelope to a channel and acks.
pub fn forward(
    tx: tokio::sync::mpsc::UnboundedSender<switchyard::Envelope>,
) -> switchyard::BoxHandler {
    switchyard::handler_fn(move |env: switchyard::Envelope| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(env);
            Ok::<_, std::convert::Infallible>(switchyard::Outcome::Ack)
        }
    })
}
