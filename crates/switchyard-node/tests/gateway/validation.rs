//! Validation at the boundary: gateway traffic checked against the registered schema of its
//! topic. `enforce`: dead-lettered with the validation errors, 422 `invalid_message`, never
//! delivered; `warn`: delivered; topics without a schema pass untouched.

use std::collections::BTreeSet;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard::Envelope;
use switchyard_contracts::{Enforcement, MessageType, Registry, Validator};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{MEMORY, TestNode, client, error_of, forward, recv};

fn registry() -> Registry {
    let mut reg = Registry::new();
    for (name, topic) in [("OrderPlaced", "orders.placed"), ("Audit", "audit.login")] {
        reg.insert(MessageType {
            name: name.into(),
            topic: topic.into(),
            kind: "event".into(),
            version: 1,
            content_type: "application/json".into(),
            schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"order": {"type": "integer"}, "amount": {"type": "number"}},
                "required": ["order", "amount"]
            }),
            producers: BTreeSet::new(),
            consumers: BTreeSet::new(),
        })
        .unwrap();
    }
    reg
}

async fn node() -> (
    TestNode,
    mpsc::UnboundedReceiver<Envelope>,
    switchyard::Subscription,
) {
    let validator = Validator::new(&registry())
        .unwrap()
        .mode("audit.#", Enforcement::Warn)
        .unwrap();
    let node = TestNode::start_with(MEMORY, |n| n.set_validation(validator)).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = node
        .bus
        .subscribe("everything", "#", forward(tx))
        .start()
        .await
        .unwrap();
    (node, rx, sub)
}

async fn post(node: &TestNode, topic: &str, body: &str) -> reqwest::Response {
    client()
        .post(node.url(&format!("/v1/publish/{topic}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_invalid_http_publish_is_dead_lettered_with_its_errors_and_never_delivered() {
    let (node, mut rx, _sub) = node().await;
    let res = post(&node, "orders.placed", r#"{"order": "seven"}"#).await;
    let (status, kind, message) = error_of(res).await;
    assert_eq!(
        (status, kind.as_str()),
        (422, "invalid_message"),
        "{message}"
    );
    assert!(message.contains("/order"), "{message}");
    assert!(
        message.contains("amount"),
        "the missing field is named: {message}"
    );

    // The dead letter keeps the message and the errors.
    let dlq: Value = client()
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 1, "{dlq}");
    let letter = &dlq["items"][0];
    assert_eq!(letter["reason"], "rejected");
    assert!(
        letter["error"].as_str().unwrap().contains("/order"),
        "{letter}"
    );
    assert_eq!(letter["message"]["payload"]["order"], "seven");

    // A valid one goes through, and it is the only delivery.
    let res = post(&node, "orders.placed", r#"{"order": 7, "amount": 9.5}"#).await;
    assert_eq!(res.status(), 202);
    let got = recv(&mut rx, "the valid order").await;
    assert_eq!(&got.payload[..], br#"{"order": 7, "amount": 9.5}"#);
    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the invalid message was delivered");
}

#[tokio::test]
async fn warn_topics_and_topics_without_a_schema_are_delivered() {
    let (node, mut rx, _sub) = node().await;
    let res = post(&node, "audit.login", r#"{"who": 5}"#).await;
    assert_eq!(res.status(), 202, "warn delivers");
    assert_eq!(
        recv(&mut rx, "the audit event").await.topic.as_str(),
        "audit.login"
    );
    let res = post(&node, "misc.free", r#"{"anything": true}"#).await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        recv(&mut rx, "the free event").await.topic.as_str(),
        "misc.free"
    );
}

#[tokio::test]
async fn an_invalid_websocket_publish_is_refused_the_same_way() {
    let (node, mut rx, _sub) = node().await;
    let url = node.url("/v1/ws").replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Ws::Text(
        json!({"op": "publish", "id": 1, "topic": "orders.placed", "payload": {"order": 1, "amount": "x"}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let answer = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
            .unwrap()
            .unwrap();
        if let Ws::Text(t) = frame {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == 1 {
                break v;
            }
        }
    };
    assert_eq!(answer["op"], "error", "{answer}");
    assert_eq!(answer["error"]["kind"], "invalid_message", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/amount"),
        "{answer}"
    );
    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the invalid message was delivered");
}

/// On a transport, what arrives over it is checked too (the bus's intake): a message put on
/// the embedded log without the gateway (here by the node's own bus, as another process or a
/// foreign publisher would) is dead-lettered with the path when it comes back, never handled.
#[tokio::test]
async fn on_the_log_the_transport_intake_is_validated_too() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[transport]\nkind = \"log\"\ndata_dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    let validator = Validator::new(&registry()).unwrap();
    let node = TestNode::start_with(&toml, |n| n.set_validation(validator)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = node
        .bus
        .subscribe("orders", "orders.#", forward(tx))
        .start()
        .await
        .unwrap();
    let topic = switchyard::Topic::new("orders.placed").unwrap();
    node.bus
        .publish_envelope(Envelope::new(topic.clone(), r#"{"order": "x"}"#))
        .await
        .unwrap();
    node.bus
        .publish_envelope(Envelope::new(topic, r#"{"order": 1, "amount": 2.5}"#))
        .await
        .unwrap();
    let got = recv(&mut rx, "the valid order").await;
    assert_eq!(&got.payload[..], br#"{"order": 1, "amount": 2.5}"#);
    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the invalid order was handled");
    let dlq: Value = client()
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 1, "{dlq}");
    assert!(
        dlq["items"][0]["error"]
            .as_str()
            .unwrap()
            .contains("/order"),
        "{dlq}"
    );
}
