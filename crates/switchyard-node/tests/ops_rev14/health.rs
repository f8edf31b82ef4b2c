//! Liveness, readiness, `/v1/health` and the transport gauge when the transport goes away and
//! comes back, and while the node stops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{MEMORY, TestNode, client};
use crate::{eventually, metric, scrape};

const SERVER_BIN: &str = "/usr/sbin/nats-server";

/// A nats-server on a free port with its own store; killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = spawn(port, &dir);
        Self {
            child: Some(child),
            port,
            dir,
        }
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, &self.dir));
    }
}

impl Drop for Server {
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

async fn ready_status(node: &TestNode) -> (u16, Value) {
    let res = client().get(node.url("/ready")).send().await.unwrap();
    let code = res.status().as_u16();
    (code, res.json().await.unwrap())
}

/// A node on a nats-server that is killed: `/ready` turns 503 naming the transport,
/// `/v1/health` says `failing`, `switchyard_transport_connected` 0 and `/health` (liveness)
/// stays 200; the server back on the same port: all of it healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_health_follow_the_nats_server_down_and_back() {
    if !std::path::Path::new(SERVER_BIN).exists() {
        eprintln!("SKIPPING: {SERVER_BIN} missing");
        return;
    }
    let mut server = Server::start();
    let toml = format!(
        r#"
[transport]
kind = "nats"
url = "nats://127.0.0.1:{}"
storage = "memory"
max_bytes = 8388608
[[transport.streams]]
name = "ops"
patterns = ["ops.#"]
"#,
        server.port
    );
    let node = TestNode::start(&toml).await;
    let (code, body) = ready_status(&node).await;
    assert_eq!(code, 200, "{body}");
    let health = crate::common::get_json(&node, "/v1/health").await;
    assert_eq!(health["transport"]["status"], "healthy", "{health}");

    server.kill();
    let body = eventually(20, "/ready 503 after the server died", || async {
        let (code, body) = ready_status(&node).await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "not_ready", "{body}");
    let health = crate::common::get_json(&node, "/v1/health").await;
    assert_eq!(health["transport"]["status"], "failing", "{health}");
    assert_eq!(health["status"], "failing", "{health}");
    let text = scrape(&node).await;
    assert_eq!(
        metric(&text, "switchyard_transport_connected", &[]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "switchyard_ready", &[]), Some(0.0), "{text}");
    // Liveness is not readiness: the process is alive.
    let live = client().get(node.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    // A publish while down is refused with a typed error, not accepted and lost.
    let res = client()
        .post(node.url("/v1/publish/ops.x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "publish while the transport is down");

    server.restart();
    eventually(30, "/ready 200 after the server came back", || async {
        (ready_status(&node).await.0 == 200).then_some(())
    })
    .await;
    let health = crate::common::get_json(&node, "/v1/health").await;
    assert_eq!(health["transport"]["status"], "healthy", "{health}");
    let text = scrape(&node).await;
    assert_eq!(
        metric(&text, "switchyard_transport_connected", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "switchyard_ready", &[]), Some(1.0), "{text}");
    node.stop().await.unwrap();
}

/// `node.shutdown()` (the library's stop without serve): `/ready` turns 503 at once and
/// `/health` liveness stays 200 while the listener is still up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_the_node_shuts_down() {
    let node = TestNode::start(MEMORY).await;
    assert_eq!(ready_status(&node).await.0, 200);
    // A handler held so the bus drain takes a while: readiness must already say no.
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let held_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(held_rx)));
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    node.bus
        .subscribe(
            "slow",
            "slow.#",
            switchyard::handler_fn(move |_e: switchyard::Envelope| {
                let held_rx = held_rx.clone();
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(());
                    if let Some(rx) = held_rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok::<_, std::convert::Infallible>(switchyard::Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let res = client()
        .post(node.url("/v1/publish/slow.x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    crate::common::recv(&mut started, "the slow handler starts").await;
    let bus = node.bus.clone();
    let stopping = tokio::spawn(async move { bus.shutdown(Duration::from_secs(10)).await });
    let body = eventually(10, "/ready 503 while shutting down", || async {
        let (code, body) = ready_status(&node).await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body["status"], "not_ready", "{body}");
    let _ = held_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), stopping).await;
}

/// A stuck subscription: its queue fills past 80 % and `/v1/health` says `degraded` for it
/// (and overall) with a reason; unstuck and drained, `healthy` again with a backlog of 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscription_degrades_health_and_recovers() {
    let node = TestNode::start(MEMORY).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    node.bus
        .subscribe(
            "stuck",
            "stuck.#",
            switchyard::handler_fn(move |_e: switchyard::Envelope| {
                let g = g.clone();
                async move {
                    g.acquire().await.unwrap().forget();
                    Ok::<_, std::convert::Infallible>(switchyard::Outcome::Ack)
                }
            }),
        )
        .queue_capacity(10)
        .overflow(switchyard::Overflow::RejectNew)
        .start()
        .await
        .unwrap()
        .detach();
    let component = |h: &Value| {
        h["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c.to_string().contains("stuck"))
            .cloned()
            .unwrap_or_else(|| panic!("no component for `stuck` in {h}"))
    };
    let h = crate::common::get_json(&node, "/v1/health").await;
    assert_eq!(component(&h)["status"], "healthy", "{h}");
    for _ in 0..10 {
        let res = client()
            .post(node.url("/v1/publish/stuck.x"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let h = eventually(10, "`stuck` degraded", || async {
        let h = crate::common::get_json(&node, "/v1/health").await;
        (component(&h)["status"] != "healthy").then_some(h)
    })
    .await;
    let c = component(&h);
    assert_eq!(c["status"], "degraded", "{h}");
    assert!(!c["reasons"].as_array().unwrap().is_empty(), "{h}");
    assert_ne!(h["status"], "healthy", "{h}");
    gate.add_permits(1000);
    node.bus.run_until_idle().await;
    let h = eventually(10, "`stuck` healthy again", || async {
        let h = crate::common::get_json(&node, "/v1/health").await;
        (component(&h)["status"] == "healthy").then_some(h)
    })
    .await;
    assert_eq!(component(&h)["backlog"], 0, "{h}");
    assert_eq!(h["status"], "healthy", "{h}");
    node.stop().await.unwrap();
}
