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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_messages_are_published_and_oversized_ones_dead_lettered() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
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
    assert_eq!(first.content_type.as_str(), "application/json");
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
