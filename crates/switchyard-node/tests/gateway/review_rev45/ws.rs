//! WebSocket subscribers that ack, nack and reject: their counters in both views, and their
//! series once the connection is gone.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::{Envelope, Topic};
use tokio_tungstenite::tungstenite::Message;

use super::counters::assert_views_agree;
use super::{parse_exposition, scrape, value};
use crate::common::{MEMORY, TestNode, get_json};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON frame whose `op` is `op` (others skipped), within 10 s.
async fn expect(ws: &mut Ws, op: &str) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {op} frame within 10 s"))
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["op"] == op {
                return v;
            }
            assert_ne!(v["op"], "error", "{v}");
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// docs/gateway.md: a WebSocket subscription is listed as `ws:<principal>:<connection>:<id>`
/// "in `/v1/stats`, `/v1/subscriptions`, `/v1/topology` and `/metrics`"; `retried` counts "a
/// WebSocket client's `nack`"; `reject: true` dead-letters now; each figure of `/metrics`
/// equals its `/v1/stats` counterpart; and "its `/v1/stats` `handlers` and `latency` rows and
/// its `/metrics` series go when the subscription ends". Four messages to a manual-ack
/// subscriber: two acked, one nacked then acked on redelivery, one rejected.
#[tokio::test]
async fn websocket_acks_nacks_and_rejects_are_counted_exactly_and_go_with_the_client() {
    let node = TestNode::start(MEMORY).await;
    let url = format!("{}/v1/ws", node.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "pattern": "wsj.#", "ack": "manual"}),
    )
    .await;
    let subscribed = expect(&mut ws, "subscribed").await;
    let name = subscribed["name"].as_str().unwrap().to_owned();
    for i in 0..4 {
        node.bus
            .publish_envelope(Envelope::new(
                Topic::new(&format!("wsj.m{i}")).unwrap(),
                "{}",
            ))
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let m = expect(&mut ws, "message").await;
        let d = m["delivery"].clone();
        match m["message"]["topic"].as_str().unwrap() {
            "wsj.m2" => send(&mut ws, json!({"op": "nack", "delivery": d, "delay_ms": 0})).await,
            "wsj.m3" => {
                send(
                    &mut ws,
                    json!({"op": "nack", "delivery": d, "reject": true, "error": "bad"}),
                )
                .await
            }
            _ => send(&mut ws, json!({"op": "ack", "delivery": d})).await,
        }
    }
    let again = expect(&mut ws, "message").await;
    assert_eq!(again["message"]["topic"], "wsj.m2", "{again}");
    send(&mut ws, json!({"op": "ack", "delivery": again["delivery"]})).await;
    tokio::time::timeout(Duration::from_secs(30), node.bus.run_until_idle())
        .await
        .unwrap();
    let samples = parse_exposition(&scrape(&node, None).await);
    let stats = get_json(&node, "/v1/stats").await;
    assert_views_agree(&samples, &stats, &name);
    let s = [("subscription", name.as_str())];
    let got = |m: &str| value(&samples, m, &s);
    assert_eq!(
        got("switchyard_subscription_acked_total"),
        Some(3.0),
        "{stats}"
    );
    assert_eq!(
        got("switchyard_subscription_retried_total"),
        Some(1.0),
        "{stats}"
    );
    assert_eq!(
        got("switchyard_subscription_dead_lettered_total"),
        Some(1.0),
        "{stats}"
    );
    assert_eq!(value(&samples, "switchyard_dlq_size", &[]), Some(1.0));

    ws.close(None).await.unwrap();
    drop(ws);
    // The subscription ends with the connection: wait (bounded) until the bus no longer lists
    // it, then the next scrape must have none of its series.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let subs = get_json(&node, "/v1/stats").await;
        if !subs["bus"]["subscriptions"].to_string().contains(&name) {
            let rows = subs["handlers"]["handlers"].to_string();
            assert!(!rows.contains(&name), "handlers row kept: {rows}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = scrape(&node, None).await;
    assert!(!text.contains(&name), "series of {name} remain:\n{text}");
    node.stop().await.unwrap();
}
