//! A node on an ephemeral port and a WebSocket client that speaks the protocol.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::Bus;
use switchyard_node::{Node, NodeConfig};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node serving on 127.0.0.1:<ephemeral> with the memory transport, plus `extra` TOML.
pub struct TestNode {
    pub bus: Bus,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    /// The log's data directory, removed when the node is dropped.
    _dir: Option<tempfile::TempDir>,
}

impl TestNode {
    pub async fn start(extra: &str) -> Self {
        Self::start_with("kind = \"memory\"", extra, None).await
    }

    /// A node on the embedded log, in a fresh temporary directory.
    pub async fn start_on_log(extra: &str) -> Self {
        Self::start_on_log_with("", extra).await
    }

    /// A node on the embedded log, with `transport` TOML added to its `[transport]` table.
    pub async fn start_on_log_with(transport: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let transport = format!(
            "kind = \"log\"\ndata_dir = {:?}\n{transport}",
            dir.path().to_str().unwrap()
        );
        Self::start_with(&transport, extra, Some(dir)).await
    }

    async fn start_with(transport: &str, extra: &str, dir: Option<tempfile::TempDir>) -> Self {
        let toml = format!("listen = \"127.0.0.1:0\"\n[transport]\n{transport}\n{extra}");
        let config = NodeConfig::from_toml(&toml).unwrap();
        let node = Node::start(config).await.unwrap();
        let listener = node.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bus = node.bus().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            node.serve(listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            bus,
            addr,
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client without credentials.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url(), None).await
    }

    /// `GET /v1/stats` → `gateway`.
    pub async fn gateway_stats(&self, token: Option<&str>) -> Value {
        let mut req = reqwest::Client::new().get(self.http("/v1/stats"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["gateway"].clone()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT, served).await.unwrap().unwrap();
        }
    }
}

/// A protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects, with `Authorization: Bearer <token>` when given.
    pub async fn connect(url: &str, token: Option<&str>) -> Self {
        Self::try_connect(url, token).await.unwrap()
    }

    pub async fn try_connect(
        url: &str,
        token: Option<&str>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Self { ws })
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.unwrap();
    }

    /// The next text frame as JSON (pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time")
                .expect("connection ended")
                .expect("read failed");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, which must have op `op`.
    pub async fn expect(&mut self, op: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["op"], op, "expected op {op}, got {v}");
        v
    }

    /// Sends `frame` and returns the next frame (its answer).
    pub async fn ask(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Sends a raw frame and returns the next frame.
    pub async fn ask_raw(&mut self, msg: Message) -> Value {
        self.send_raw(msg).await;
        self.recv().await
    }

    /// Subscribes and returns the subscription id.
    pub async fn subscribe(&mut self, pattern: &str, extra: Value) -> String {
        let mut frame = json!({"op": "subscribe", "id": "sub", "pattern": pattern});
        if let (Some(f), Some(e)) = (frame.as_object_mut(), extra.as_object()) {
            f.extend(e.clone());
        }
        let v = self.ask(frame).await;
        assert_eq!(v["op"], "subscribed", "{v}");
        assert_eq!(v["id"], "sub");
        v["subscription"].as_str().unwrap().to_owned()
    }

    /// Closes the connection and waits until the server has answered the close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// Waits until `f` returns `Some`, checking after each `tick` (the events checked here
/// have no push notification outside the node; each check is a real query of its state).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
