//! ZeroMQ PULL ingest: messages pushed to a configured endpoint are published to its topic;
//! a message over the size limit is dead-lettered by reference (size, peer, first bytes) and
//! counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

#[path = "../common/mod.rs"]
mod common;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend, ZmqMessage};

use common::{TestNode, client, forward, recv};

/// A loopback TCP endpoint on a port that was free a moment ago, for the node to bind.
fn free_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_messages_are_published_and_oversized_ones_dead_lettered() {
    let endpoint = free_endpoint();
    let toml = format!(
        r#"
[transport]
kind = "memory"
[[ingest.zmq]]
endpoint = "{endpoint}"
topic = "sensors.raw"
max_message_bytes = 64
"#
    );
    let node = TestNode::start(&toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("readings", "sensors.#", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();

    let mut push = zeromq::PushSocket::new();
    push.connect(&endpoint).await.unwrap();
    push.send(ZmqMessage::from(Bytes::from_static(b"{\"t\":21.5}")))
        .await
        .unwrap();
    push.send(ZmqMessage::from(Bytes::from(vec![b'x'; 100])))
        .await
        .unwrap();
    push.send(ZmqMessage::from(Bytes::from_static(b"{\"t\":22.0}")))
        .await
        .unwrap();

    let first = recv(&mut rx, "the first reading").await;
    assert_eq!(first.topic.as_str(), "sensors.raw");
    assert_eq!(&first.payload[..], b"{\"t\":21.5}");
    assert_eq!(first.content_type(), "application/json");
    let second = recv(&mut rx, "the third message (the second was too large)").await;
    assert_eq!(&second.payload[..], b"{\"t\":22.0}");

    let http = client();
    let dlq: Value = http
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 1);
    assert_eq!(dlq["items"][0]["reason"], "rejected");
    assert!(
        dlq["items"][0]["error"]
            .as_str()
            .unwrap()
            .contains("100 bytes is over max_message_bytes (64 bytes)"),
        "{}",
        dlq["items"][0]["error"]
    );
    assert_eq!(
        dlq["items"][0]["message"]["payload_base64"]
            .as_str()
            .unwrap()
            .len(),
        136
    );

    let metrics = http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let too_large = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchyard_pipeline_op_errors_by_type_total")
                && l.contains("error_type=\"too_large\"")
        })
        .unwrap_or_else(|| panic!("no too_large count in\n{metrics}"));
    assert!(too_large.ends_with(" 1"), "{too_large}");
    let _ = push.close().await;
    node.stop().await.unwrap();
}

/// With `Node::set_validation`, an ingested message that violates the registered schema of its
/// topic is dead-lettered with the path and reason, never published; a valid one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_messages_are_validated_against_the_registered_schema() {
    use switchyard_contracts::{MessageType, Registry, Validator};
    let endpoint = free_endpoint();
    let toml = format!(
        r#"
[transport]
kind = "memory"
[[ingest.zmq]]
endpoint = "{endpoint}"
topic = "sensors.raw"
"#
    );
    let mut registry = Registry::new();
    registry
        .insert(MessageType {
            name: "Reading".into(),
            topic: "sensors.raw".into(),
            kind: "event".into(),
            version: 1,
            content_type: "application/json".into(),
            schema: serde_json::json!({
                "type": "object",
                "properties": {"t": {"type": "number"}},
                "required": ["t"]
            }),
            producers: Default::default(),
            consumers: Default::default(),
        })
        .unwrap();
    let validator = Validator::new(&registry).unwrap();
    let node = TestNode::start_with(&toml, |n| n.set_validation(validator)).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    node.bus
        .subscribe("readings", "sensors.#", forward(tx))
        .start()
        .await
        .unwrap()
        .detach();

    let mut push = zeromq::PushSocket::new();
    push.connect(&endpoint).await.unwrap();
    push.send(ZmqMessage::from(Bytes::from_static(b"{\"t\":\"hot\"}")))
        .await
        .unwrap();
    push.send(ZmqMessage::from(Bytes::from_static(b"{\"t\":22.0}")))
        .await
        .unwrap();
    let got = recv(&mut rx, "the valid reading").await;
    assert_eq!(&got.payload[..], b"{\"t\":22.0}");
    node.bus.run_until_idle().await;
    assert!(rx.try_recv().is_err(), "the invalid reading was published");

    let dlq: Value = client()
        .get(node.url("/v1/dlq"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["total"], 1, "{dlq}");
    let error = dlq["items"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("/t") && error.contains("zeromq ingest"),
        "{error}"
    );
    let _ = push.close().await;
    node.stop().await.unwrap();
}
