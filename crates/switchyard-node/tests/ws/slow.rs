//! A client that never reads: the node's buffer for it stays bounded and the configured
//! policy applies (drop the oldest, counted and reported; or disconnect with 1008).

use futures::StreamExt;
use serde_json::{Value, json};
use switchyard::{Envelope, Topic};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{TestNode, WAIT, eventually};

const BUFFER: u64 = 8;

fn event(n: u64) -> Envelope {
    // ~2 KB each, so the kernel's socket buffers fill after a few thousand.
    let pad = "x".repeat(2048);
    Envelope::new(
        Topic::new("feed.tick").unwrap(),
        json!({ "n": n, "pad": pad }).to_string(),
    )
}

/// Publishes until `done(stats)` holds (checked every 500 messages), at most 200 000.
async fn publish_until(node: &TestNode, mut done: impl FnMut(&Value) -> bool) -> u64 {
    let mut n = 0;
    loop {
        for _ in 0..500 {
            node.bus.publish_envelope(event(n)).await.unwrap();
            n += 1;
        }
        node.bus.run_until_idle().await;
        if done(&node.gateway_stats(None).await) {
            return n;
        }
        assert!(n < 200_000, "policy never applied after {n} messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_the_oldest_deliveries_counted_and_reported() {
    let node = TestNode::start(&format!(
        "[ws]\noutbound_buffer = {BUFFER}\nslow_client = \"drop_oldest\""
    ))
    .await;
    let mut c = node.client().await;
    c.subscribe("feed.#", json!({})).await;
    // The client reads nothing from here on while messages pile up.
    let published = publish_until(&node, |s| s["ws_dropped"].as_u64().unwrap() > 0).await;
    let stats = node.gateway_stats(None).await;
    assert!(
        stats["ws_buffer_high_water"].as_u64().unwrap() <= BUFFER,
        "the buffer never held more than ws.outbound_buffer: {stats}"
    );

    // Now read everything; an end marker published after the backlog closes the count.
    node.bus
        .publish_envelope(Envelope::new(Topic::new("feed.end").unwrap(), "{}"))
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut reported = 0;
    loop {
        let v = c.recv().await;
        match v["op"].as_str().unwrap() {
            "dropped" => reported += v["count"].as_u64().unwrap(),
            "message" if v["message"]["topic"] == "feed.end" => break,
            "message" => received.push(v["message"]["payload"]["n"].as_u64().unwrap()),
            other => panic!("unexpected op {other}: {v}"),
        }
    }
    let stats = node.gateway_stats(None).await;
    let dropped = stats["ws_dropped"].as_u64().unwrap();
    assert!(dropped > 0);
    assert_eq!(reported, dropped, "every drop was reported to the client");
    assert_eq!(
        received.len() as u64 + dropped,
        published,
        "every message was either delivered or counted as dropped"
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "what arrives keeps publish order"
    );
    assert_eq!(stats["ws_slow_disconnects"], 0);
    assert_eq!(stats["ws_connections"], 1, "the client stays connected");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_with_1008_under_the_disconnect_policy() {
    let node = TestNode::start(&format!(
        "[ws]\noutbound_buffer = {BUFFER}\nslow_client = \"disconnect\""
    ))
    .await;
    let mut c = node.client().await;
    c.subscribe("feed.#", json!({})).await;
    publish_until(&node, |s| s["ws_slow_disconnects"].as_u64().unwrap() == 1).await;
    let stats = node.gateway_stats(None).await;
    assert!(
        stats["ws_buffer_high_water"].as_u64().unwrap() <= BUFFER,
        "{stats}"
    );
    assert_eq!(stats["ws_dropped"], 0);

    // Reading now: what was already on the wire, then the close frame.
    let close = loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("no close in time")
            .expect("stream ended without a close frame")
            .expect("read failed");
        match msg {
            Message::Close(frame) => break frame.expect("a close frame with a code"),
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        close.reason.as_str().contains("outbound"),
        "{}",
        close.reason
    );
    // The subscription went with the connection.
    eventually("the connection's subscription to end", || async {
        (!node
            .bus
            .registry()
            .iter()
            .any(|s| s.name.starts_with("ws:anonymous:")))
        .then_some(())
    })
    .await;
    let stats = node.gateway_stats(None).await;
    assert_eq!(stats["ws_connections"], 0);
    node.stop().await;
}
