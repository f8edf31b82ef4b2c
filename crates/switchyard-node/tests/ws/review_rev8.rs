//! Review rev8: the WebSocket gateway as a client from another language uses it: subscribe
//! patterns against narrower grants, handle/send grants, credentials, input hardening, and
//! a client that does not read its answers (docs/gateway.md "WebSocket").

use std::collections::BTreeSet;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_node::auth::sha256_hex;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{Client, TestNode, WAIT};

const SHOP: &str = "rev8-shop-token";
const OPS: &str = "rev8-ops-token";

fn config(extra: &str) -> String {
    format!(
        r#"
[auth]
enabled = true
[[auth.principals]]
name = "shop"
publish = ["orders.*"]
subscribe = ["orders.*"]
send = ["users.*"]
[[auth.principals]]
name = "ops"
admin = true
[[auth.tokens]]
principal = "shop"
sha256 = "{}"
[[auth.tokens]]
principal = "ops"
sha256 = "{}"
{extra}
"#,
        sha256_hex(SHOP.as_bytes()),
        sha256_hex(OPS.as_bytes())
    )
}

/// "a subscription pattern must lie entirely inside one granted pattern": with `orders.*`
/// granted, every wider pattern is refused (also as a group), the narrower ones work, and
/// nothing outside the grant is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_pattern_wider_than_the_grant_is_forbidden() {
    let node = TestNode::start(&config("")).await;
    let mut shop = Client::connect(&node.ws_url(), Some(SHOP)).await;
    for (i, pattern) in [
        "#",
        "orders.#",
        "orders.*.#",
        "orders.*.*",
        "*.*",
        "*",
        "*.placed",
        "orders",
        "orders.#.placed",
    ]
    .into_iter()
    .enumerate()
    {
        for group in [None, Some("g1")] {
            let mut frame = json!({"op": "subscribe", "id": i, "pattern": pattern});
            if let Some(g) = group {
                frame["group"] = json!(g);
            }
            let v = shop.ask(frame).await;
            assert_eq!(v["op"], "error", "{pattern} {group:?} → {v}");
            assert_eq!(v["error"]["kind"], "forbidden", "{pattern} → {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains("shop"),
                "{v}"
            );
        }
    }
    shop.subscribe("orders.*", json!({})).await;
    let v = shop
        .ask(json!({"op": "subscribe", "id": "exact", "pattern": "orders.placed"}))
        .await;
    assert_eq!(v["op"], "subscribed", "{v}");

    // Published on the bus directly: only the one inside the grant reaches the client.
    for topic in ["secret.x", "orders.a.b", "orders", "orders.last"] {
        node.bus
            .publish_envelope(switchyard::Envelope::new(
                switchyard::Topic::new(topic).unwrap(),
                "{}",
            ))
            .await
            .unwrap();
    }
    let m = shop.expect("message").await;
    assert_eq!(
        m["message"]["topic"], "orders.last",
        "only the topic inside the grant: {m}"
    );
    node.stop().await;
}

/// `handle`, `send` and `request` need a send grant on the topic; a wildcard topic is no
/// way around it; the query token is used only when there is no header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_and_send_outside_the_send_grant_are_refused() {
    let node = TestNode::start(&config("")).await;
    let mut shop = Client::connect(&node.ws_url(), Some(SHOP)).await;
    for frame in [
        json!({"op": "handle", "id": 1, "topic": "billing.charge"}),
        json!({"op": "handle", "id": 2, "topic": "users.*"}),
        json!({"op": "handle", "id": 3, "topic": "users.#"}),
        json!({"op": "handle", "id": 4, "topic": "users.create.more"}),
        json!({"op": "send", "id": 5, "topic": "billing.charge", "payload": {}}),
        json!({"op": "request", "id": 6, "topic": "users", "payload": {}}),
        json!({"op": "send", "id": 7, "topic": "users.*", "payload": {}}),
    ] {
        let v = shop.ask(frame.clone()).await;
        assert_eq!(v["op"], "error", "{frame} → {v}");
        let kind = v["error"]["kind"].as_str().unwrap();
        assert!(
            kind == "forbidden" || kind == "invalid_topic",
            "{frame} → {v}"
        );
    }
    let v = shop
        .ask(json!({"op": "handle", "id": 8, "topic": "users.create"}))
        .await;
    assert_eq!(v["op"], "handling", "{v}");

    // A wrong header is not rescued by a right query token, nor a Basic header.
    for header in ["Bearer wrong", "Basic c2hvcDpzaG9w"] {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}?token={SHOP}",
            node.ws_url()
        ))
        .unwrap();
        req.headers_mut()
            .insert("authorization", header.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401, "{header}"),
            Err(e) => panic!("{header}: expected 401, got {e}"),
            Ok(_) => panic!("{header}: connected"),
        }
    }
    node.stop().await;
}

/// A WebSocket publish labelled JSON whose bytes are not UTF-8 is `malformed_json`, as over
/// HTTP, and is not published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_publish_of_json_that_is_not_utf8_is_malformed_json() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    let v = c
        .ask(json!({"op": "publish", "id": 1, "topic": "orders.bad",
            "payload_base64": "Iv/+Ig==", "content_type": "application/json"}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["error"]["kind"], "malformed_json", "{v}");
    node.stop().await;
}

/// Bad topics over the socket, Unicode included, are typed errors and the connection stays
/// open; a valid Unicode payload arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topics_are_typed_errors_and_unicode_payloads_arrive_intact() {
    let node = TestNode::start("").await;
    let mut c = node.client().await;
    c.subscribe("orders.*", json!({})).await;
    for (i, topic) in [
        "",
        "orders..x",
        "orders.*",
        "orders.#",
        ".orders",
        "orders.a b",
    ]
    .into_iter()
    .enumerate()
    {
        let v = c
            .ask(json!({"op": "publish", "id": i, "topic": topic, "payload": {}}))
            .await;
        assert_eq!(v["op"], "error", "{topic:?} → {v}");
        assert_eq!(v["error"]["kind"], "invalid_topic", "{topic:?} → {v}");
        assert_eq!(v["id"], i);
    }
    let v = c
        .ask(json!({"op": "subscribe", "id": "bad", "pattern": "orders..*"}))
        .await;
    assert_eq!(v["error"]["kind"], "invalid_topic", "{v}");
    let payload = json!({"name": "Zoë ✓ 🚂", "ctl": "\u{0}\u{1f}"});
    let a = c
        .ask(json!({"op": "publish", "id": "ok", "topic": "orders.placed", "payload": payload}))
        .await;
    let b = c.recv().await;
    let (v, m) = if a["op"] == "message" { (b, a) } else { (a, b) };
    assert_eq!(v["op"], "published", "{v}");
    assert_eq!(m["message"]["payload"], payload, "{m}");
    node.stop().await;
}

/// "Answers are never dropped": a client that writes 2000 publishes without reading gets
/// 2000 answers, one per id, in order, once it reads, and 2000 messages were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_loses_none() {
    let node = TestNode::start("[ws]\noutbound_buffer = 8\n").await;
    let recorder = switchyard::testkit::Recorder::start(&node.bus, "load.#")
        .await
        .unwrap();
    let c = node.client().await;
    let (mut sink, mut stream) = c.ws.split();
    const N: usize = 2000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let frame = json!({"op": "publish", "id": i, "topic": format!("load.t{}", i % 7), "payload": i});
            sink.send(Message::text(frame.to_string())).await.unwrap();
        }
        sink
    });
    // Read only once every frame is written (the node may have stopped reading meanwhile:
    // the writer then waits on TCP backpressure, which the reads below release).
    let mut seen = Vec::with_capacity(N);
    while seen.len() < N {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["op"], "published", "{v}");
            seen.push(v["id"].as_u64().unwrap() as usize);
        }
    }
    let _sink = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "every answer, in order");
    node.bus.run_until_idle().await;
    let got: BTreeSet<String> = recorder
        .envelopes()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(got.len(), N, "every publish reached the bus once");
    node.stop().await;
}

/// Connections past `ws.max_connections` from one client are refused with `503 not_ready`
/// naming the limit; closing one frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_slots_are_given_back_when_a_client_closes() {
    let node = TestNode::start("[ws]\nmax_connections = 3\n").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(node.client().await);
    }
    match Client::try_connect(&node.ws_url(), None).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503);
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["kind"], "not_ready");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_connections"),
                "{body}"
            );
        }
        Err(e) => panic!("expected 503, got {e}"),
        Ok(_) => panic!("a 4th connection was accepted"),
    }
    // Abruptly dropped (no close handshake) and politely closed: both give the slot back.
    drop(open.pop());
    open.pop().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = Vec::new();
    while again.len() < 2 {
        match Client::try_connect(&node.ws_url(), None).await {
            Ok(c) => again.push(c),
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed connection's slot never came back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    node.stop().await;
}

/// The gateway's figures equal the traffic: open connections go back down when clients
/// vanish without a close, the total counts every upgrade, and `published` counts every
/// message published through HTTP, `publish` and `publish_batch` (refused ones excluded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_figures_equal_the_traffic_sent() {
    let node = TestNode::start("").await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(node.client().await);
    }
    let mut c = clients.pop().unwrap();
    for i in 0..4 {
        let v = c
            .ask(json!({"op": "publish", "id": i, "topic": "fig.one", "payload": i}))
            .await;
        assert_eq!(v["op"], "published", "{v}");
    }
    let v = c
        .ask(json!({"op": "publish_batch", "id": "b", "messages": [
            {"topic": "fig.a", "payload": 1}, {"topic": "fig.b", "payload": 2},
            {"topic": "fig.c", "payload": 3}]}))
        .await;
    assert_eq!(v["op"], "published_batch", "{v}");
    let v = c
        .ask(json!({"op": "publish_batch", "id": "bad", "messages": [
            {"topic": "fig.a", "payload": 1}, {"topic": "fig..b", "payload": 2}]}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    let v = c
        .ask(json!({"op": "publish", "id": "bad", "topic": "fig.*", "payload": 1}))
        .await;
    assert_eq!(v["op"], "error", "{v}");
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let res = http
            .post(node.http("/v1/publish/fig.http"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    // Two clients vanish without a close handshake.
    drop(clients);
    let g = crate::support::eventually("the open-connection figure back to 1", || async {
        let g = node.gateway_stats(None).await;
        (g["ws_connections"] == 1).then_some(g)
    })
    .await;
    assert_eq!(g["ws_connections_total"], 3, "{g}");
    assert_eq!(g["published"], 4 + 3 + 2, "{g}");
    let status: Value = http
        .get(node.http("/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["published"], 4 + 3 + 2, "{status}");
    let text = http
        .get(node.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = text
        .lines()
        .find(|l| l.starts_with("switchyard_gateway_ws_connections "))
        .unwrap_or_else(|| panic!("no ws_connections gauge in {text}"));
    assert_eq!(gauge.rsplit(' ').next(), Some("1"), "{gauge}");
    drop(c);
    node.stop().await;
}

/// Clients that come and go must not leave `/metrics` growing: 30 short-lived connections,
/// each with its own subscription that received one message, leave no more per-subscription
/// series than the subscriptions that are still open (none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_ws_subscriptions_leave_no_series_behind() {
    let node = TestNode::start("").await;
    let http = reqwest::Client::new();
    for i in 0..30 {
        let mut c = node.client().await;
        c.subscribe(&format!("churn.c{i}"), json!({})).await;
        // The answer and the delivery travel in separate buffers: either may come first.
        let a = c
            .ask(json!({"op": "publish", "id": i, "topic": format!("churn.c{i}"), "payload": i}))
            .await;
        let b = c.recv().await;
        let (v, m) = if a["op"] == "message" { (b, a) } else { (a, b) };
        assert_eq!(v["op"], "published", "{v}");
        assert_eq!(m["message"]["payload"], i, "{m}");
        // A scrape while it is open records its series.
        let text = http
            .get(node.http("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("switchyard_subscription_delivered_total"));
        c.close().await;
    }
    crate::support::eventually("every WebSocket subscription gone from the bus", || async {
        let subs: Value = http
            .get(node.http("/v1/subscriptions"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = subs["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["pattern"].as_str().unwrap_or("").starts_with("churn."))
            .count();
        (n == 0).then_some(())
    })
    .await;
    let text = http
        .get(node.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stale: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("switchyard_subscription_delivered_total{"))
        .collect();
    assert!(
        stale.len() <= 1,
        "{} delivered series for 0 open subscriptions, e.g. {:?}",
        stale.len(),
        stale.iter().next()
    );
}
