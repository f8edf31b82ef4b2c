//! Task fixsmall: what the node shows of WebSocket clients that came and went.
//! A departed handler's circuit breaker is no longer listed (`/v1/stats` `breakers`,
//! `/ready`), and each WebSocket subscription has a name of its own on the bus, so two
//! clients of one principal are told apart (`/v1/subscriptions`, `/v1/stats`).

use serde_json::{Value, json};
use switchyard::{BoxError, Envelope, Outcome, Topic};

use crate::support::{TestNode, eventually};

async fn get(node: &TestNode, path: &str) -> (u16, Value) {
    let resp = reqwest::get(node.http(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn breaker_names(node: &TestNode) -> Vec<String> {
    get(node, "/v1/stats").await.1["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["handler"].as_str().unwrap().to_owned())
        .collect()
}

fn handler_gone(node: &TestNode, name: &str) -> Option<()> {
    (!node.bus.registry().iter().any(|s| s.name == name)).then_some(())
}

/// A handler the node's bus wraps with a breaker (a Rust subscription on `node.bus`) is
/// listed with it while it is subscribed, and not once its `Subscription` is dropped: its
/// breaker would never move again (an open one would keep a critical handler's node unready
/// for good). Before the fix the departed handlers' breakers stayed listed. (What a WebSocket
/// client registers has no breaker at all: `no_breaker.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_handler_leaves_no_breaker_behind() {
    let node = TestNode::start("").await;
    let sub = node
        .bus
        .subscribe(
            "rust-worker",
            "jobs.rust",
            switchyard::handler_fn(|_env: Envelope| async { Ok::<_, BoxError>(Outcome::Ack) }),
        )
        .start()
        .await
        .unwrap();
    let names = breaker_names(&node).await;
    assert!(
        names.iter().any(|n| n == "rust-worker"),
        "rust-worker not in {names:?}"
    );
    drop(sub);
    eventually("the handler to end", || async {
        handler_gone(&node, "rust-worker")
    })
    .await;
    let names = breaker_names(&node).await;
    assert!(
        names.iter().all(|n| n != "rust-worker"),
        "/v1/stats lists the breaker of a departed handler: {names:?}"
    );
    node.stop().await;
}

async fn ws_rows(node: &TestNode) -> Vec<(String, String)> {
    get(node, "/v1/subscriptions").await.1["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["pattern"].as_str().unwrap().to_owned(),
            )
        })
        .filter(|(n, _)| n.starts_with("ws:"))
        .collect()
}

/// Two clients of one principal, each with a subscription of its own: the bus has two
/// subscriptions with distinct names (`ws:<principal>:<connection>:<subscription>`), whose
/// figures are their own; one leaving removes its row and its `/v1/stats` handler rows only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_subscriptions_of_one_principal_have_distinct_names() {
    let node = TestNode::start("").await;
    let mut a = node.client().await;
    let mut b = node.client().await;
    a.subscribe("fa.#", json!({})).await;
    b.subscribe("fb.#", json!({})).await;
    let rows = ws_rows(&node).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_ne!(
        rows[0].0, rows[1].0,
        "two WebSocket subscriptions share one bus name: {rows:?}"
    );
    let name_of = |pattern: &str| {
        rows.iter()
            .find(|(_, p)| p == pattern)
            .map(|(n, _)| n.clone())
            .unwrap()
    };
    let (name_a, name_b) = (name_of("fa.#"), name_of("fb.#"));
    assert!(name_a.starts_with("ws:anonymous:"), "{name_a}");
    node.bus
        .publish_envelope(Envelope::new(Topic::new("fa.x").unwrap(), "{}"))
        .await
        .unwrap();
    assert_eq!(a.expect("message").await["message"]["topic"], "fa.x");
    node.bus.run_until_idle().await;
    let subs = get(&node, "/v1/stats").await.1["bus"]["subscriptions"].clone();
    let delivered = |name: &str| {
        subs.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["stats"]["delivered"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("{name} not in {subs}"))
    };
    assert_eq!((delivered(&name_a), delivered(&name_b)), (1, 0), "{subs}");

    a.close().await;
    eventually("a's subscription to end", || async {
        handler_gone(&node, &name_a)
    })
    .await;
    let rows = ws_rows(&node).await;
    assert_eq!(rows, vec![(name_b.clone(), "fb.#".to_owned())]);
    let stats = get(&node, "/v1/stats").await.1;
    let text = stats["handlers"].to_string() + &stats["latency"].to_string();
    assert!(
        !text.contains(&name_a),
        "/v1/stats keeps rows of the departed subscription {name_a}: {text}"
    );
    b.close().await;
    node.stop().await;
}
