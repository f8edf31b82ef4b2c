//! Task fixsmall: what the node shows of WebSocket clients that came and went.
//! A remote handler's circuit breaker goes with its connection (`/v1/stats` `breakers`,
//! `/ready`), and each WebSocket subscription has a name of its own on the bus, so two
//! clients of one principal are told apart (`/v1/subscriptions`, `/v1/stats`).

use serde_json::{Value, json};
use switchyard::{Envelope, Topic};
use tokio::sync::oneshot;

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

/// A remote handler and a remote handler group are listed with their breakers while their
/// connections are open, and not once they closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_remote_handler_leaves_no_breaker_behind() {
    let node = TestNode::start("").await;
    let mut own = node.client().await;
    let v = own
        .ask(json!({"op": "handle", "id": 1, "topic": "jobs.own"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    let mut member = node.client().await;
    let v = member
        .ask(json!({"op": "handle", "id": 1, "topic": "jobs.grouped", "group": "gone"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    let names = breaker_names(&node).await;
    for name in ["ws-handler:anonymous", "ws-handler:group:gone"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    own.close().await;
    member.close().await;
    for name in ["ws-handler:anonymous", "ws-handler:group:gone"] {
        eventually("the handler to end", || async { handler_gone(&node, name) }).await;
    }
    let names = breaker_names(&node).await;
    assert!(
        names.iter().all(|n| !n.starts_with("ws-handler:")),
        "/v1/stats lists the breakers of departed remote handlers: {names:?}"
    );
    node.stop().await;
}

/// A critical remote handler whose breaker opened and whose client then left does not keep
/// the node unready: readiness judges the handlers the node has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_critical_handler_with_an_open_breaker_does_not_keep_the_node_unready() {
    let node =
        TestNode::start("[readiness]\ncritical_handlers = [\"ws-handler:anonymous\"]\n").await;
    let mut client = node.client().await;
    let v = client
        .ask(json!({"op": "handle", "id": 1, "topic": "jobs.fail"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");
    // The client fails every command it gets until told to leave.
    let (leave_tx, mut leave_rx) = oneshot::channel::<()>();
    let answering = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut leave_rx => break,
                cmd = client.recv() => {
                    if cmd["op"] == "command" {
                        client
                            .send(json!({"op": "result", "call": cmd["call"], "ok": false, "error": "disk full"}))
                            .await;
                    }
                }
            }
        }
        client.close().await;
    });
    let bus = node.bus.clone();
    let sending = tokio::spawn(async move {
        for n in 0..100 {
            let env = Envelope::new(
                Topic::new("jobs.fail").unwrap(),
                json!({"n": n}).to_string(),
            );
            let _ = bus.send_envelope(env).await;
        }
    });
    eventually(
        "the critical handler's breaker to open (/ready 503)",
        || async { (get(&node, "/ready").await.0 == 503).then_some(()) },
    )
    .await;
    sending.abort();
    let _ = leave_tx.send(());
    answering.await.unwrap();
    // The command the open breaker turned away waits out its cool-down (30 s) before the
    // handler's subscription can end: a longer bound than `eventually`'s.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while handler_gone(&node, "ws-handler:anonymous").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handler did not end: {:?}",
            node.bus
                .registry()
                .iter()
                .map(|s| (&s.name, s.in_flight, s.depth))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = get(&node, "/ready").await;
    assert_eq!(
        status, 200,
        "the open breaker of a departed handler keeps the node unready: {body}"
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
