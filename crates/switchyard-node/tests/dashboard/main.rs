//! The dashboard in headless Chromium: a node on an ephemeral port with live traffic, a
//! dead letter, a trace and alerts, driven by `tests/browser/dashboard.mjs` (playwright-core).
//! Screenshots go to `target/dashboard-screenshots/`.
//!
//! Needs `/usr/bin/chromium` (or `$CHROMIUM`), `node`, and `npm ci` in `tests/browser/`.
//! Without them the test skips loudly, unless `CI` is set: then it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/browser.rs"]
mod browser;
#[path = "../common/mod.rs"]
mod common;
mod review_rev19;
mod review_rev43;
mod topology_labels;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{MEMORY, TestNode, client, recv};
use switchyard::{Envelope, Outcome, Pattern, handler_fn};
use switchyard_components::{ComponentSpec, Role, Topology};
use switchyard_node::NodeConfig;
use switchyard_node::auth::sha256_hex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The shop the page shows: the UI publishes orders (declared) and, undeclared, billing
/// charges; orders is declared to publish billing.
fn shop() -> Topology {
    let p = |s: &str| Pattern::new(s).unwrap();
    let mut ui = ComponentSpec::new("shop-ui", Role::Frontend, "shop");
    ui.publishes.push(p("orders.#"));
    let mut orders = ComponentSpec::new("orders", Role::Cpm, "shop");
    orders.subscribes.push(p("orders.#"));
    orders.publishes.push(p("billing.#"));
    let mut billing = ComponentSpec::new("billing", Role::Manager, "shop");
    billing.subscribes.push(p("billing.#"));
    Topology::new(vec![ui, orders, billing])
}

async fn publish(
    http: &reqwest::Client,
    node: &TestNode,
    topic: &str,
    body: &str,
    correlation: Option<&str>,
) {
    let mut req = http
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .header("x-source", "shop-ui")
        .body(body.to_owned());
    if let Some(c) = correlation {
        req = req.header("x-correlation-id", c);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 202, "publish {topic}");
}

/// The screenshot directory, emptied once per run (only this run's screenshots in it).
fn screenshots() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| browser::fresh_screenshot_dir("dashboard-screenshots"))
        .clone()
}

/// One browser at a time: CI has 2 cores.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some(browser) = browser::browser_or_skip("dashboard_in_headless_chromium") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let node = TestNode::start_with(MEMORY, |n| n.set_topology(shop())).await;
    // orders: acks everything (the live traffic).
    node.bus
        .subscribe(
            "orders",
            "orders.#",
            handler_fn(|_env: Envelope| async { Ok::<_, std::convert::Infallible>(Outcome::Ack) }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    // billing: rejects until the message is replayed (the dead letter the page replays).
    let (tx, mut replayed) = mpsc::unbounded_channel();
    node.bus
        .subscribe(
            "billing",
            "billing.#",
            handler_fn(move |env: Envelope| {
                let tx = tx.clone();
                async move {
                    if env.header("replay-count").is_none() {
                        return Ok::<_, std::convert::Infallible>(Outcome::reject("card declined"));
                    }
                    let _ = tx.send(env);
                    Ok(Outcome::Ack)
                }
            }),
        )
        .start()
        .await
        .unwrap()
        .detach();
    let http = client();
    let correlation = ulid::Ulid::new().to_string();
    publish(
        &http,
        &node,
        "billing.charge",
        r#"{"amount": 42, "card": "4242"}"#,
        Some(&correlation),
    )
    .await;
    // Alerts as an application's alert manager publishes them: one firing, one raised and
    // resolved (the alerts view shows both).
    for (topic, alert) in [
        (
            "system.alert.warning",
            r#"{"rule": "error-rate", "severity": "warning", "subject": "billing", "message": "1 of 1 charges failed", "active": true}"#,
        ),
        (
            "system.alert.critical",
            r#"{"rule": "queue-depth", "severity": "critical", "subject": "orders", "message": "depth 900 of 1024", "active": true}"#,
        ),
        (
            "system.alert.critical",
            r#"{"rule": "queue-depth", "subject": "orders", "active": false}"#,
        ),
    ] {
        publish(&http, &node, topic, alert, None).await;
    }
    node.bus.run_until_idle().await;

    // Live traffic for the page to see moving: one order every 100 ms until the test ends.
    let url = node.url("");
    let traffic = tokio::spawn(async move {
        let http = client();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for n in 0u64.. {
            tick.tick().await;
            let _ = http
                .post(format!("{url}/v1/publish/orders.placed"))
                .header("content-type", "application/json")
                .header("x-source", "shop-ui")
                .body(format!(r#"{{"order": {n}}}"#))
                .send()
                .await;
        }
    });

    let shots = screenshots();
    let out = browser
        .run(
            "dashboard.mjs",
            &[
                ("DASHBOARD_URL", node.url("/").as_str()),
                ("CORRELATION_ID", correlation.as_str()),
                ("SCREENSHOT_DIR", shots.to_str().unwrap()),
            ],
            Duration::from_secs(180),
        )
        .await;
    traffic.abort();
    assert!(out.contains("dashboard: ok"), "{out}");

    // What the page did really happened on the node: the replayed message was handled and the
    // queue is empty.
    let env = recv(&mut replayed, "the replayed billing message").await;
    assert_eq!(env.topic.as_str(), "billing.charge");
    let dlq: serde_json::Value = http
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 0, "{dlq}");
    node.stop().await.unwrap();
}

fn admin_config() -> NodeConfig {
    NodeConfig::from_toml(&format!(
        r#"
[transport]
kind = "memory"
[auth]
enabled = true
[[auth.principals]]
name = "operator"
admin = true
[[auth.tokens]]
principal = "operator"
sha256 = "{}"
"#,
        sha256_hex(ADMIN_TOKEN.as_bytes())
    ))
    .unwrap()
}

const ADMIN_TOKEN: &str = "dashboard-admin-token";

/// A node with admin auth and one acking subscription, on `listener`.
async fn auth_node(listener: TcpListener) -> TestNode {
    let node = TestNode::from_listener(admin_config(), listener, |_| {}).await;
    node.bus
        .subscribe(
            "orders",
            "orders.#",
            common::forward(mpsc::unbounded_channel().0),
        )
        .start()
        .await
        .unwrap()
        .detach();
    node
}

/// The sign-in dialog (a wrong token refused with a message, the right one shows the
/// dashboard) and a node restart (the page says it is reconnecting while the node is down,
/// and is live again, still signed in, once a node serves on the same port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sign_in_and_node_restart() {
    let Some(browser) = browser::browser_or_skip("dashboard_sign_in_and_node_restart") else {
        return;
    };
    let _one = BROWSER.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut node = Some(auth_node(listener).await);
    let url = format!("http://{addr}/");
    let mut child = tokio::process::Command::new("node")
        .arg(browser.dir.join("signin_restart.mjs"))
        .env("DASHBOARD_URL", &url)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SCREENSHOT_DIR", screenshots())
        .env("CHROMIUM", &browser.chromium)
        .current_dir(&browser.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let drive = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            println!("{line}");
            log.push_str(&line);
            log.push('\n');
            match line.as_str() {
                "STOP_NODE" => {
                    node.take().unwrap().stop().await.unwrap();
                    stdin.write_all(b"STOPPED\n").await.unwrap();
                }
                "START_NODE" => {
                    // The same port: the page reconnects to the address it was opened on.
                    let listener = TcpListener::bind(addr)
                        .await
                        .expect("the port is free again");
                    node = Some(auth_node(listener).await);
                    stdin.write_all(b"STARTED\n").await.unwrap();
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), drive)
        .await
        .expect("browser script finishes within 120 s");
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser script failed:\n{log}\n{stderr}"
    );
    assert!(log.contains("signin-restart: ok"), "{log}");
    if let Some(node) = node {
        node.stop().await.unwrap();
    }
}
